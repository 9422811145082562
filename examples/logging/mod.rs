//! Logs for the examples: tidings logs through `tracing` and installs no
//! subscriber, so each example installs this one: `RUST_LOG` (default
//! `info`; e.g. `RUST_LOG=tidings=debug` for a span per message) to
//! stderr, without lapin's frame logs at TRACE (they print the login).

use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::prelude::*;

/// Installs the examples' subscriber.
pub(crate) fn init() {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let filter = wanted.parse::<Targets>().unwrap_or_else(|e| {
        eprintln!("RUST_LOG={wanted:?} is not a filter ({e}); logging at info");
        Targets::new().with_default(tracing::Level::INFO)
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .with_filter(filter_fn(|meta| !tidings::log::is_lapin_frame_trace(meta))),
        )
        .init();
}
