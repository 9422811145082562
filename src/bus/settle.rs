//! Settlement: acknowledging in batches, retrying after a delay, and
//! dead-lettering with a reason.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, warn};

use super::listener::Shared;
use super::stats::Counters;
use crate::error::Result;
use crate::event::Event;
use crate::transport::seam::{DeadLetter, Received};

/// Deliveries acknowledged together, at most: one `multiple` ack for this
/// many handled deliveries (or half the prefetch, if less).
const ACK_BATCH: usize = 64;
/// How long handled deliveries wait for others to be acknowledged with,
/// once none is waiting. Acks do not delay handlers; they only hold
/// prefetch room and, on a crash, make the broker redeliver (the dedup
/// window drops those).
pub(super) const ACK_DELAY: Duration = Duration::from_millis(2);

/// Handled deliveries not yet acknowledged, acknowledged together with
/// `multiple` (deliveries of one listener are settled in order when it
/// handles one at a time, so every one before the last is settled).
pub(super) struct AckBatch {
    pub(super) last: Option<Box<dyn Received>>,
    count: usize,
    limit: usize,
}

impl AckBatch {
    pub(super) fn new(prefetch: u16) -> Self {
        Self {
            last: None,
            count: 0,
            limit: ACK_BATCH.min(usize::from(prefetch / 2)).max(1),
        }
    }

    pub(super) async fn add(&mut self, shared: &Shared, incoming: Box<dyn Received>) {
        self.last = Some(incoming);
        self.count += 1;
        if self.count >= self.limit {
            self.flush(shared).await;
        }
    }

    pub(super) async fn flush(&mut self, shared: &Shared) {
        self.count = 0;
        if let Some(last) = self.last.take() {
            shared.settled(last.ack_through().await);
        }
    }
}

/// The longest text from the wire that goes into a log line or a header.
const TEXT_MAX: usize = 1024;

/// `text` cut to at most [`TEXT_MAX`] bytes (at a character boundary),
/// marked when cut: text from the wire can be as large as a frame.
pub(crate) fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= TEXT_MAX {
        return text.into();
    }
    let mut end = TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}

impl Shared {
    /// Retries a delivery whose handlers failed, or dead-letters it after
    /// the last attempt.
    pub(super) async fn settle_failure(
        &self,
        incoming: &dyn Received,
        event: &Arc<dyn Event>,
        error: String,
    ) {
        let attempt = incoming.attempt();
        let message_id = bounded(incoming.message_id().unwrap_or(""));
        if attempt >= self.settings.max_attempts {
            warn!(tag = event.tag(), message_id = %message_id, attempt, error = %error, "handlers failed on the last attempt; dead-lettering");
            return self
                .dead_letter(incoming, DeadLetter::new("handler_failed", &error))
                .await;
        }
        let delay = self.settings.retry_delay(attempt);
        debug!(tag = event.tag(), message_id = %message_id, attempt, delay = ?delay, "retrying after a delay");
        Counters::add(&self.counters.retried);
        match incoming.retry(attempt + 1, delay).await {
            Ok(()) => self.settled(incoming.ack().await),
            Err(e) => {
                warn!(error = %e, tag = event.tag(), message_id = %message_id, "parking a failed delivery for retry failed; requeueing it");
                if let Err(e) = incoming.requeue().await {
                    warn!(error = %e, "requeueing a delivery failed");
                }
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

    /// Sends a message to the dead letters, then acks it; if that fails,
    /// rejects it (the transport drops it), counts it and says so.
    pub(super) async fn dead_letter(&self, incoming: &dyn Received, letter: DeadLetter<'_>) {
        Counters::add(&self.counters.dead_lettered);
        match incoming.dead_letter(letter).await {
            Ok(()) => self.settled(incoming.ack().await),
            Err(e) => {
                Counters::add(&self.counters.dead_letters_dropped);
                error!(error = %e, reason = letter.reason, message_id = %bounded(incoming.message_id().unwrap_or("")), "dead-lettering failed (is the dead-letter queue full?); the message is dropped");
                if let Err(e) = incoming.reject().await {
                    warn!(error = %e, "rejecting a message failed");
                }
            }
        }
    }
}
