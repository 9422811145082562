//! The private Tokio runtime behind the blocking facades, and a poll-once
//! helper for async code.

use std::fmt;
use std::future::Future;

use crate::error::{Error, ErrorKind, Result};

/// A runtime with one worker thread, so the connection's background tasks
/// (heartbeats, channel bookkeeping) keep running between blocking calls.
pub(crate) struct BlockingRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl BlockingRuntime {
    /// Starts the runtime; refuses inside another runtime, where every
    /// blocking call would fail.
    pub(crate) fn new(name: &str) -> Result<Self> {
        refuse_inside_runtime()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
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
            })?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` to completion, refusing to do so from inside another
    /// runtime (where blocking would stall it, and Tokio would panic).
    pub(crate) fn block_on<F: Future>(&self, future: F) -> Result<F::Output> {
        refuse_inside_runtime()?;
        match &self.runtime {
            Some(runtime) => Ok(runtime.block_on(future)),
            None => Err(Error::new(
                ErrorKind::Closed,
                "the blocking runtime is shut down",
            )),
        }
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        // Dropping a runtime inside another one panics; shutting it down in
        // the background does not.
        if let Some(runtime) = self.runtime.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for BlockingRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingRuntime").finish_non_exhaustive()
    }
}

fn refuse_inside_runtime() -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::new(
            ErrorKind::Usage,
            "a blocking tidings call was made inside an async runtime; use the async API there (Connection, Producer, Consumer)",
        ));
    }
    Ok(())
}

/// The output of `future` if it is ready at its first poll (dropped
/// otherwise, so it must be cancel safe).
pub(crate) fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// Locks `mutex`, also after a panic while it was held.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
