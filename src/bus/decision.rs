//! `Decision`: what a handler decides for the delivery it handled, and how
//! the decisions of several handlers of one event combine.

use std::time::Duration;

/// **What a handler decides for the delivery it handled**: acknowledge it,
/// retry it after a delay of its choosing, give it back to the queue now,
/// or send it to the dead letters with a reason of its own.
///
/// A handler returns a `Decision` (or `Result<Decision, E>`) instead of `()`
/// when it wants more than "done" or "failed". An `Err` is the same as
/// [`Decision::RetryAfter`] with the bus's own backoff
/// ([`retry_delay`](crate::BusBuilder::retry_delay)).
///
/// **Several handlers of one event**: the strictest decision wins,
/// `DeadLetter` > `RetryAfter` (or an error) > `Requeue` > `Ack`. Of two
/// retries the longer delay wins; of two dead letters the first reason. So
/// a delivery is acknowledged only when every handler said `Ack` (or
/// returned `()` / `Ok`), exactly as before.
///
/// | decision | what the bus does | attempt |
/// |---|---|---|
/// | `Ack` | acknowledges; the message id enters the dedup window | — |
/// | `RetryAfter(d)` | parks it in a retry queue (`<queue>.retry.<ms>`) for `d`, then handles it again | raised by one; after [`max_attempts`](crate::BusBuilder::max_attempts) it is dead-lettered (reason `handler_retry`) |
/// | `Requeue` | gives it back to its queue at once (AMQP `basic.nack` with requeue; RabbitMQ puts it back at its place, `memory://` at the end), to this or another consumer | not raised: a handler that always requeues loops |
/// | `DeadLetter(reason)` | publishes it to `<exchange>.dead-letter` with `x-tidings-reason: handler_rejected` and the handler's reason in `x-tidings-error`, then acknowledges it | — |
///
/// On RabbitMQ each distinct retry delay has a retry queue of its own
/// (`<queue>.retry.<ms>`, deleted ten minutes after its last use), so
/// handlers should choose among a few delays rather than compute one per
/// message.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use serde::{Deserialize, Serialize};
/// use tidings::{Decision, Event, Subscribers};
///
/// #[derive(Event, Serialize, Deserialize, Debug)]
/// #[event(name = "decision.charge")]
/// struct Charge { cents: i64 }
///
/// let subscribers = Subscribers::new();
/// let _g = subscribers.subscribe(|c: &Charge| match c.cents {
///     ..=0 => Decision::dead_letter("a charge must be positive"),
///     1_000_000.. => Decision::RetryAfter(Duration::from_secs(60)), // the fraud check is busy
///     _ => Decision::Ack,
/// });
/// let _h = subscribers.subscribe(|_: &Charge| Decision::Ack);
///
/// let dispatch = subscribers.notify(Charge { cents: -5 }).await;
/// assert_eq!(*dispatch.decision(), Decision::dead_letter("a charge must be positive"));
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Handled: acknowledge it.
    #[default]
    Ack,
    /// Handle it again after this delay, as the next attempt.
    RetryAfter(Duration),
    /// Give it back to its queue at once, attempt unchanged.
    Requeue,
    /// Send it to the dead letters with this reason.
    DeadLetter(String),
}

impl Decision {
    /// [`Decision::DeadLetter`] with this reason.
    #[must_use]
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Self::DeadLetter(reason.into())
    }

    /// How strict a decision is: the strictest of several handlers wins.
    fn rank(&self) -> u8 {
        match self {
            Self::Ack => 0,
            Self::Requeue => 1,
            Self::RetryAfter(_) => 2,
            Self::DeadLetter(_) => 3,
        }
    }

    /// The decision of two handlers of one event together: the stricter;
    /// of two retries the longer delay, of two dead letters the first.
    #[must_use]
    pub fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::RetryAfter(a), Self::RetryAfter(b)) => Self::RetryAfter(a.max(b)),
            (this, other) if other.rank() > this.rank() => other,
            (this, _) => this,
        }
    }

    /// Whether it acknowledges.
    #[must_use]
    pub fn is_ack(&self) -> bool {
        matches!(self, Self::Ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strictest_decision_wins() {
        let retry = |s| Decision::RetryAfter(Duration::from_secs(s));
        let dead = Decision::dead_letter;
        assert_eq!(Decision::Ack.and(Decision::Requeue), Decision::Requeue);
        assert_eq!(Decision::Requeue.and(retry(1)), retry(1));
        assert_eq!(retry(5).and(retry(1)), retry(5), "the longer delay");
        assert_eq!(retry(1).and(dead("x")), dead("x"));
        assert_eq!(dead("x").and(dead("y")), dead("x"), "the first reason");
        assert_eq!(dead("x").and(Decision::Ack), dead("x"));
        assert_eq!(Decision::Ack.and(Decision::Ack), Decision::Ack);
    }
}
