//! `Bus::scope`: a bus that is always closed (and its publishes flushed)
//! when the code given it ends, also by an error or a panic.

use std::future::Future;
use std::panic::resume_unwind;

use super::handler_call::CatchUnwind;
use super::{Bus, BusBuilder};
use crate::error::Error;

impl Bus {
    /// **Runs `body` with a bus that is closed when it ends**, however it
    /// ends (Python's `with`, the Distributer's scoped `connect`/`close`):
    /// connects the builder's bus, awaits `body(bus)`, then
    /// [`close`](Bus::close)s it, which flushes every event published to
    /// the broker's confirms (within the
    /// [close timeout](BusBuilder::close_timeout)). When `body` returns an
    /// error, the bus is closed and the error returned; when it panics, the
    /// bus is closed and the panic resumed.
    ///
    /// This is the way to not lose events in code that may fail: a `Bus`
    /// dropped without `close` cannot flush (a destructor cannot wait for
    /// the broker); it logs at ERROR how many events were still
    /// unconfirmed. Only a scope future that is itself dropped before it
    /// ends (cancelled) leaves the bus unclosed, like a dropped bus.
    ///
    /// # Errors
    ///
    /// The error of [`BusBuilder::connect`], of `body`, or of
    /// [`close`](Bus::close) (body's first), converted into `body`'s error
    /// type.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tidings::Result<()> {
    /// use serde::{Deserialize, Serialize};
    /// use tidings::{Bus, Event};
    ///
    /// #[derive(Event, Serialize, Deserialize, Debug)]
    /// #[event(name = "scope.audit")]
    /// struct Audit { line: String }
    ///
    /// let published = Bus::scope(Bus::builder("memory://scope-doc")?.publish_only(), |bus| async move {
    ///     bus.publish(&Audit { line: "started".into() }).await?;
    ///     Ok::<_, tidings::Error>(bus.stats().published)
    /// })
    /// .await?; // closed and flushed here, also had the body failed
    /// assert_eq!(published, 1);
    /// # Ok(()) }
    /// ```
    pub async fn scope<F, Fut, T, E>(builder: BusBuilder, body: F) -> Result<T, E>
    where
        F: FnOnce(Bus) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let bus = builder.connect().await?;
        let ended = CatchUnwind(Box::pin(body(bus.clone()))).await;
        let closed = bus.close().await;
        match ended {
            Err(panic) => resume_unwind(panic),
            Ok(Err(e)) => Err(e),
            Ok(Ok(value)) => {
                closed?;
                Ok(value)
            }
        }
    }
}
