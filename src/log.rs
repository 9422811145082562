//! **Logging without leaking the password.**
//!
//! tidings logs through [`tracing`] and installs no subscriber: what is
//! printed, and where, is the application's choice. One choice leaks: at
//! TRACE, lapin (the AMQP client underneath) logs every frame it sends,
//! including the login (`Connection.StartOk`), whose `response:
//! LongString([0, 117, 115, 101, 114, 0, ...])` is the user name and the
//! password, byte by byte. tidings cannot change lapin; cap lapin's frame
//! targets at DEBUG instead, with [`LAPIN_FRAMES_AT_DEBUG`] in a filter
//! string or [`is_lapin_frame_trace`] in a filter function.
//!
//! # Examples
//!
//! With a filter string (`RUST_LOG` style, for `EnvFilter` or `Targets`):
//!
//! ```
//! use tracing_subscriber::filter::Targets;
//! use tracing_subscriber::prelude::*;
//!
//! let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
//! // The cap goes last: the most specific directive wins.
//! let filter: Targets = format!("{wanted},{}", tidings::log::LAPIN_FRAMES_AT_DEBUG).parse()?;
//! let _ = tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer().with_filter(filter))
//!     .try_init();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! As a filter function, which only removes (it never turns a target up):
//!
//! ```
//! use tracing_subscriber::filter::{LevelFilter, filter_fn};
//! use tracing_subscriber::prelude::*;
//!
//! let _ = tracing_subscriber::registry()
//!     .with(
//!         tracing_subscriber::fmt::layer()
//!             .with_filter(LevelFilter::TRACE)
//!             .with_filter(filter_fn(|meta| !tidings::log::is_lapin_frame_trace(meta))),
//!     )
//!     .try_init();
//! ```

/// **The log targets of lapin 4.12 that print whole AMQP frames at TRACE**:
/// frames sent (`lapin::io_loop`, "will write to buffer", the login among
/// them), frames received (`lapin::channels`, "will handle frame"), and
/// frames discarded (`lapin::frames`).
pub const LAPIN_FRAME_TARGETS: [&str; 3] = ["lapin::io_loop", "lapin::channels", "lapin::frames"];

/// **Filter directives that cap lapin's frame targets at DEBUG**, for a
/// `RUST_LOG`-style filter string (`tracing_subscriber`'s `EnvFilter` or
/// `Targets`): append them after the application's own directives, as in
/// `format!("trace,{LAPIN_FRAMES_AT_DEBUG}")`. A directive sets its target's
/// level, so with a filter quieter than DEBUG these targets log at DEBUG
/// (a few lines per connection); [`is_lapin_frame_trace`] only removes.
pub const LAPIN_FRAMES_AT_DEBUG: &str =
    "lapin::io_loop=debug,lapin::channels=debug,lapin::frames=debug";

/// **Whether a log event is a TRACE event of one of lapin's frame
/// targets** ([`LAPIN_FRAME_TARGETS`]), the events that may show the
/// password. Leave them out with `tracing_subscriber::filter::filter_fn(|meta|
/// !is_lapin_frame_trace(meta))`.
#[must_use]
pub fn is_lapin_frame_trace(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() == tracing::Level::TRACE
        && LAPIN_FRAME_TARGETS.iter().any(|target| {
            meta.target()
                .strip_prefix(target)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}
