//! Settlement of a delivery whose handlers failed: retrying after a
//! delay, dead-lettering with a reason.

use std::time::Duration;

use tracing::{debug, error, warn};

use super::listener::Shared;
use super::stats::Count;
use super::text::bounded;
use crate::error::Result;
use crate::transport::seam::{DeadLetter, Received};

impl Shared {
    /// Retries a delivery that failed for `reason` (after the backoff, or
    /// after the delay `asked` for), or dead-letters it after the last
    /// attempt.
    pub(super) async fn settle_failure(
        &self,
        incoming: &dyn Received,
        tag: &str,
        reason: &str,
        error: String,
        asked: Option<Duration>,
    ) {
        let attempt = incoming.attempt();
        let message_id = bounded(incoming.message_id().unwrap_or(""));
        if attempt >= self.settings.max_attempts {
            warn!(tag, message_id = %message_id, attempt, reason, error = %error, "failed on the last attempt; dead-lettering");
            return self
                .dead_letter(incoming, tag, DeadLetter::new(reason, &error))
                .await;
        }
        let delay = asked.unwrap_or_else(|| self.settings.retry_delay(attempt));
        debug!(tag, message_id = %message_id, attempt, reason, delay = ?delay, outcome = "retried", "retrying after a delay");
        match incoming.retry(attempt + 1, delay).await {
            Ok(()) => {
                self.counters.count(Count::Retried, tag, reason);
                self.settled(incoming.ack().await);
            }
            // The connection went: the broker gives the delivery back by
            // itself, after recovery, and nothing loops meanwhile.
            Err(e) if e.is_closed() || e.is_connect() => {
                debug!(error = %e, tag, message_id = %message_id, "parking a failed delivery for retry failed with the connection; the broker will redeliver it");
                if let Err(e) = incoming.requeue().await {
                    debug!(error = %e, "requeueing a delivery failed");
                }
            }
            // Anything else (a retry queue that cannot be declared or is
            // missing, as under passive mode without it) would fail the same
            // way at once: requeueing would make the delivery loop, so it
            // goes to the dead letters with both errors.
            Err(e) => {
                let error = format!("parking it for a retry failed ({e}) after: {error}");
                warn!(tag, message_id = %message_id, attempt, reason, error = %error, "cannot retry; dead-lettering");
                self.dead_letter(incoming, tag, DeadLetter::new("retry_failed", &error))
                    .await;
            }
        }
    }

    /// Logs a failed acknowledgement.
    pub(super) fn settled(&self, acked: Result<()>) {
        match acked {
            Ok(()) => {}
            // The channel went with a lost connection: the broker delivers
            // the event again, and the dedup window recognises it.
            Err(e) if e.is_closed() || e.is_connect() => {
                debug!(error = %e, "acknowledging after the channel was lost; the broker will redeliver");
            }
            Err(e) => warn!(error = %e, "acknowledging an event failed"),
        }
    }

    /// Sends a message (of event type `tag`, if known) to the dead
    /// letters, then acks it; if that fails, rejects it (the transport
    /// drops it), counts it and says so.
    pub(super) async fn dead_letter(
        &self,
        incoming: &dyn Received,
        tag: &str,
        letter: DeadLetter<'_>,
    ) {
        self.counters.count(Count::DeadLettered, tag, letter.reason);
        match incoming.dead_letter(letter).await {
            Ok(()) => {
                debug!(
                    outcome = "dead_lettered",
                    reason = letter.reason,
                    "sent to the dead letters"
                );
                self.settled(incoming.ack().await);
            }
            Err(e) => {
                self.counters
                    .count(Count::DeadLettersDropped, "", letter.reason);
                error!(error = %e, reason = letter.reason, message_id = %bounded(incoming.message_id().unwrap_or("")), "dead-lettering failed (is the dead-letter queue full?); the message is dropped");
                if let Err(e) = incoming.reject().await {
                    warn!(error = %e, "rejecting a message failed");
                }
            }
        }
    }
}
