//! One handler's call, erased: its future, and how it fails (an error or
//! a panic), shared by single-event and batch handlers.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use super::decision::Decision;
use crate::error::HandlerError;

/// A handler's future, erased.
pub(super) type BoxFuture = Pin<Box<dyn Future<Output = Result<Decision, HandlerError>> + Send>>;

/// Why a handler did not decide: it failed or panicked.
pub(super) enum Failure {
    Error(HandlerError),
    Panic(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(e) => write!(f, "handler failed: {e}"),
            Self::Panic(message) => write!(f, "handler panicked: {message}"),
        }
    }
}

/// Polls a future, turning a panic into an `Err`.
pub(super) struct CatchUnwind<F>(pub(super) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut self.0).poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Awaits an async handler: its decision, or its error or panic as a
/// failure.
pub(super) async fn outcome(future: BoxFuture) -> Result<Decision, Failure> {
    match CatchUnwind(future).await {
        Ok(result) => result.map_err(Failure::Error),
        Err(panic) => Err(Failure::Panic(panic_text(panic))),
    }
}

/// The text of a panic's payload.
pub(super) fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    crate::amqp::consumer_thread::panic_message(&*panic).to_owned()
}
