//! Recovery: the task that watches a connection, and when it is lost,
//! reconnects with capped exponential backoff and jitter, declares the
//! topology again, and tells everyone waiting for the new connection.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use crate::amqp::connection_event::ConnectionEvent;
use crate::error::Result;

/// The state of the underlying connection.
#[derive(Clone)]
pub(crate) enum Link {
    Up(Arc<lapin::Connection>),
    /// Lost; the supervisor is reconnecting.
    Down,
    /// Closed by the application.
    Closed,
}

/// What the supervisor needs of the connection it recovers.
pub(crate) trait Supervised: Send + Sync + 'static {
    /// The underlying connection now.
    fn link(&self) -> Link;
    /// Replaces the underlying connection (unless closed).
    fn set_link(&self, link: Link);
    /// Whether the broker blocks publishing.
    fn set_blocked(&self, blocked: bool);
    /// Tells the application.
    fn emit(&self, event: ConnectionEvent);
    /// The delays between reconnect attempts.
    fn backoff(&self) -> Backoff;
    /// Counts a recovery.
    fn recovered(&self);
    /// A new underlying connection with the topology declared again, and
    /// the address it reached.
    fn reopen(
        &self,
    ) -> impl std::future::Future<Output = Result<(Arc<lapin::Connection>, String)>> + Send;
}

/// How often the supervisor checks the connection's status, in case it
/// died without an error event.
const STATUS_CHECK: Duration = Duration::from_secs(1);

/// **Capped exponential backoff**: attempt `n` waits `min * 2^(n-1)`, at
/// most `max` ([`ceiling`](Backoff::ceiling)); with jitter, a random delay
/// between half and all of that ([`delay`](Backoff::delay)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt + 1`, without jitter.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before attempt `attempt + 1`, with jitter.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        // Jitter from a random UUID: no extra dependency, and reconnects
        // are rare enough for its cost not to matter.
        let random = (uuid::Uuid::new_v4().as_u128() % 1024) as u32;
        ceiling / 2 + ceiling / 2 * random / 1024
    }
}

/// Watches the connection in `link` until the application closes it or
/// drops every handle; recovers it each time it is lost.
pub(crate) async fn supervise<S: Supervised>(inner: Weak<S>, mut link: watch::Receiver<Link>) {
    loop {
        let Some(amqp) = current(&inner) else { return };
        let reason = tokio::select! {
            biased;
            () = closed(&mut link) => return,
            reason = lost(&inner, &amqp) => reason,
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.set_link(Link::Down);
        strong.set_blocked(false);
        warn!(reason = %reason, "connection to the broker lost; reconnecting");
        strong.emit(ConnectionEvent::Disconnected { reason });
        let backoff = strong.backoff();
        drop(strong);
        let down_since = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let reopened = tokio::select! {
                biased;
                () = closed(&mut link) => return,
                reopened = strong.reopen() => reopened,
            };
            match reopened {
                Ok((amqp, address)) => {
                    let downtime = down_since.elapsed();
                    strong.recovered();
                    strong.set_link(Link::Up(amqp));
                    info!(?downtime, attempts = attempt, %address, "connection recovered");
                    strong.emit(ConnectionEvent::Recovered {
                        downtime,
                        attempts: attempt,
                        address,
                    });
                    break;
                }
                Err(error) => {
                    let retry_in = backoff.delay(attempt);
                    warn!(attempt, error = %error, ?retry_in, "reconnecting failed");
                    strong.emit(ConnectionEvent::ReconnectFailed {
                        attempt,
                        error: error.to_string(),
                        retry_in,
                    });
                    drop(strong);
                    tokio::select! {
                        biased;
                        () = closed(&mut link) => return,
                        () = tokio::time::sleep(retry_in) => {}
                    }
                }
            }
        }
    }
}

/// Resolves once the application closed the connection or dropped every
/// handle of it.
async fn closed(link: &mut watch::Receiver<Link>) {
    let _ = link.wait_for(|l| matches!(l, Link::Closed)).await;
}

fn current<S: Supervised>(inner: &Weak<S>) -> Option<Arc<lapin::Connection>> {
    match inner.upgrade()?.link() {
        Link::Up(amqp) => Some(amqp),
        Link::Down | Link::Closed => None,
    }
}

/// Waits until `amqp` is lost and says why; reports blocked and unblocked
/// on the way.
async fn lost<S: Supervised>(inner: &Weak<S>, amqp: &lapin::Connection) -> String {
    let mut events = amqp.events_listener();
    let mut check = tokio::time::interval(STATUS_CHECK);
    loop {
        tokio::select! {
            event = events.next() => match event {
                // A soft error closes one channel, not the connection (a
                // refused publish, a failed declaration): its owner handles
                // it, and reconnecting would only fight the live connection
                // for its exclusive queues.
                Some(lapin::Event::Error(e)) if is_soft(&e) && amqp.status().connected() => {
                    debug!(error = %e, "a channel was closed by the broker; the connection is up");
                }
                Some(lapin::Event::Error(e)) => return e.to_string(),
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    let Some(strong) = inner.upgrade() else { return "dropped".to_owned() };
                    warn!(reason = %reason, "the broker blocked the connection");
                    strong.set_blocked(true);
                    strong.emit(ConnectionEvent::Blocked { reason });
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    let Some(strong) = inner.upgrade() else { return "dropped".to_owned() };
                    info!("the broker unblocked the connection");
                    strong.set_blocked(false);
                    strong.emit(ConnectionEvent::Unblocked);
                }
                Some(_) => {}
                None => return "the connection's event stream ended".to_owned(),
            },
            _ = check.tick() => {
                if !amqp.status().connected() {
                    return "the connection is no longer open".to_owned();
                }
            }
        }
    }
}

/// Whether `error` is a channel-level (soft) AMQP error.
fn is_soft(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e) if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap() {
        let backoff = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..100 {
            let first = backoff.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff.delay(40);
            assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2));
        }
    }
}
