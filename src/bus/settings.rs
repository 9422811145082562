//! How a bus settles and handles deliveries, set on its builder.

use std::time::Duration;

use crate::amqp::recovery::Backoff;

/// The longest a retry waits.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// How deliveries are settled and handled; set on the
/// [`BusBuilder`](crate::BusBuilder).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) self_delivery: bool,
    pub(crate) dedup_window: usize,
    pub(crate) max_attempts: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) concurrency: usize,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) unknown_events: UnknownEvents,
    /// Every publish mandatory: unroutable ones fail instead of vanishing.
    pub(crate) mandatory: bool,
    /// The dead-letter queue's limits: messages, bytes.
    pub(crate) dead_letter_limits: (u64, u64),
    /// Every event published carries its send time, `x-tidings-sent-at`.
    pub(crate) sent_at: bool,
}

/// **What a bus does with an event of a type this process does not know**
/// (no type registered under its tag), set with
/// [`BusBuilder::unknown_events`](crate::BusBuilder::unknown_events).
///
/// On a fanout exchange every listener receives every type, so during a
/// rolling deploy old instances see the new types of new ones: that is not
/// an error, and by default such an event is acknowledged and counted
/// ([`Stats::unknown_events`](crate::Stats::unknown_events), by tag in
/// [`Bus::unknown_events`](crate::Bus::unknown_events)), and its tag is
/// logged once, at INFO. What cannot be decoded at all is dead-lettered
/// either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownEvents {
    /// Acknowledge and count it (the default).
    #[default]
    Acknowledge,
    /// Dead-letter it with the reason `unknown_tag`, as poison.
    DeadLetter,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            self_delivery: true,
            dedup_window: 10_000,
            max_attempts: 5,
            retry_delay: Duration::from_secs(1),
            concurrency: 1,
            handler_timeout: None,
            unknown_events: UnknownEvents::Acknowledge,
            mandatory: false,
            dead_letter_limits: (
                crate::amqp::connection::DEAD_LETTER_MAX_MESSAGES,
                crate::amqp::connection::DEAD_LETTER_MAX_BYTES,
            ),
            sent_at: true,
        }
    }
}

impl Settings {
    /// The delay before attempt `attempt + 1`: doubling, capped.
    pub(super) fn retry_delay(&self, attempt: u32) -> Duration {
        let backoff = Backoff {
            min: self.retry_delay,
            max: MAX_RETRY_DELAY,
        };
        backoff.ceiling(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let settings = Settings {
            retry_delay: Duration::from_secs(1),
            ..Settings::default()
        };
        let delays: Vec<u64> = (1..=4).map(|a| settings.retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(settings.retry_delay(40), MAX_RETRY_DELAY);
    }
}
