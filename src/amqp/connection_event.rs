//! `ConnectionEvent`: what happens to a connection, as a stream an
//! application can watch.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tracing::debug;

/// **Something that happened to the connection to the broker**, from
/// [`Connection::events`](crate::Connection::events) or
/// `Bus::connection_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The connection is up. A new [`ConnectionEvents`] stream starts with
    /// this when the connection is up at the time.
    Connected {
        /// The broker address it reached, `host:port` (of a host list, the
        /// one that answered); `memory://<name>` on the memory transport.
        address: String,
    },
    /// The connection was lost; tidings is reconnecting.
    Disconnected {
        /// Why, in words: the broker's reason, an I/O error, a missed
        /// heartbeat.
        reason: String,
    },
    /// A reconnection attempt failed; the next one follows after `retry_in`.
    ReconnectFailed {
        /// Attempts made since the connection was lost.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// The connection is back: exchanges, queues and bindings are declared
    /// again, consumers resume, and unconfirmed publishes are sent again.
    Recovered {
        /// How long the connection was down.
        downtime: Duration,
        /// Attempts it took.
        attempts: u32,
        /// The broker address it reached now, `host:port`: on a cluster,
        /// another node than before when that one was lost.
        address: String,
    },
    /// The broker stopped reading from this connection (a memory or disk
    /// alarm); publishes wait or fail, by the
    /// [`WhenFull`](crate::WhenFull) setting.
    Blocked {
        /// The broker's reason.
        reason: String,
    },
    /// The broker reads from this connection again.
    Unblocked,
    /// The application closed the connection; no more events follow.
    Closed,
}

impl fmt::Display for ConnectionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected { address } => write!(f, "connected to {address}"),
            Self::Disconnected { reason } => write!(f, "disconnected: {reason}"),
            Self::ReconnectFailed {
                attempt,
                error,
                retry_in,
            } => write!(
                f,
                "reconnect attempt {attempt} failed: {error}; retrying in {retry_in:?}"
            ),
            Self::Recovered {
                downtime,
                attempts,
                address,
            } => write!(
                f,
                "recovered on {address} after {downtime:?} down, {attempts} attempt(s)"
            ),
            Self::Blocked { reason } => write!(f, "blocked by the broker: {reason}"),
            Self::Unblocked => f.write_str("unblocked"),
            Self::Closed => f.write_str("closed"),
        }
    }
}

/// **The [`ConnectionEvent`]s of one connection, as a [`Stream`].** It ends
/// after [`ConnectionEvent::Closed`]. A stream that is not read keeps only
/// the newest 64 events.
pub struct ConnectionEvents {
    first: Option<ConnectionEvent>,
    stream: BroadcastStream<ConnectionEvent>,
    done: bool,
}

impl ConnectionEvents {
    /// The event the stream starts with, if any, before it is read.
    pub(crate) fn first(&self) -> Option<&ConnectionEvent> {
        self.first.as_ref()
    }

    /// The events sent on `receiver`, after `first` (a transport's current
    /// state, such as [`ConnectionEvent::Connected`]).
    #[must_use]
    pub fn new(
        first: Option<ConnectionEvent>,
        receiver: broadcast::Receiver<ConnectionEvent>,
    ) -> Self {
        Self {
            first,
            stream: BroadcastStream::new(receiver),
            done: false,
        }
    }
}

impl Stream for ConnectionEvents {
    type Item = ConnectionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        loop {
            match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => {
                    self.done = event == ConnectionEvent::Closed;
                    return Poll::Ready(Some(event));
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    debug!(missed = n, "a connection event stream fell behind");
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl fmt::Debug for ConnectionEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionEvents").finish_non_exhaustive()
    }
}
