//! The private Tokio runtime behind the blocking facades.

use std::future::Future;

use crate::error::{Error, ErrorKind, Result};

/// A runtime with one worker thread, so the connection's background tasks
/// (heartbeats, channel bookkeeping) keep running between blocking calls.
pub(crate) fn new(name: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Usage,
                format!("cannot start a tokio runtime: {e}"),
                e,
            )
        })
}

/// Runs `future` to completion on `runtime`, refusing to do so from inside
/// another runtime (where blocking would stall it, and Tokio would panic).
pub(crate) fn block_on<F: Future>(
    runtime: &tokio::runtime::Runtime,
    future: F,
) -> Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::new(
            ErrorKind::Usage,
            "a blocking tidings call was made inside an async runtime; use the async API there (Connection, Producer, Consumer)",
        ));
    }
    Ok(runtime.block_on(future))
}
