//! `DeadLetterFilter`: which dead letters an operation takes.

use std::time::SystemTime;

use super::letter::DeadLetterMessage;

/// **Which dead letters to list, replay or purge**: by reason, tag, time
/// range and message id; each condition set must hold. The default takes
/// every one.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tidings::DeadLetterFilter;
///
/// let last_hour = DeadLetterFilter::new()
///     .reason("handler_failed")
///     .tag("orders.placed")
///     .since(SystemTime::now() - Duration::from_secs(3600));
/// assert!(!last_hour.is_everything());
/// assert!(DeadLetterFilter::new().is_everything());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    reason: Option<String>,
    tag: Option<String>,
    message_id: Option<String>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    limit: Option<usize>,
}

impl DeadLetterFilter {
    /// Every dead letter.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Only those dead-lettered for this reason (`x-tidings-reason`, such
    /// as `handler_failed` or `unknown_tag`).
    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Only events of this tag.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Only the message with this id.
    #[must_use]
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Only events published at or after this time (their `timestamp`;
    /// one without a timestamp does not match).
    #[must_use]
    pub fn since(mut self, time: SystemTime) -> Self {
        self.since = Some(time);
        self
    }

    /// Only events published before this time.
    #[must_use]
    pub fn until(mut self, time: SystemTime) -> Self {
        self.until = Some(time);
        self
    }

    /// At most this many matching dead letters, the oldest first.
    #[must_use]
    pub fn limit(mut self, count: usize) -> Self {
        self.limit = Some(count);
        self
    }

    /// Whether this filter takes every dead letter.
    #[must_use]
    pub fn is_everything(&self) -> bool {
        *self == Self::default()
    }

    /// The most dead letters to take.
    pub(super) fn limit_of(&self) -> u64 {
        self.limit
            .map_or(u64::MAX, |n| u64::try_from(n).unwrap_or(u64::MAX))
    }

    /// Whether `letter` passes.
    pub(super) fn matches(&self, letter: &DeadLetterMessage) -> bool {
        let is = |wanted: &Option<String>, found: Option<&str>| {
            wanted.as_deref().is_none_or(|w| found == Some(w))
        };
        let at = letter.timestamp();
        is(&self.reason, letter.reason())
            && is(&self.tag, letter.tag())
            && is(&self.message_id, letter.message_id())
            && self
                .since
                .is_none_or(|since| at.is_some_and(|at| at >= since))
            && self
                .until
                .is_none_or(|until| at.is_some_and(|at| at < until))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;

    fn letter(reason: &str, tag: &str, at: Option<u64>) -> DeadLetterMessage {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-tidings-reason".into(),
            AMQPValue::LongString(reason.into()),
        );
        headers.insert("x-tidings-tag".into(), AMQPValue::LongString(tag.into()));
        let mut properties = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(headers);
        if let Some(at) = at {
            properties = properties.with_timestamp(at);
        }
        DeadLetterMessage::new(properties, Vec::new())
    }

    #[test]
    fn every_condition_given_must_hold() {
        let letter = letter("handler_failed", "orders.placed", Some(1000));
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert!(DeadLetterFilter::new().matches(&letter));
        assert!(
            DeadLetterFilter::new()
                .reason("handler_failed")
                .tag("orders.placed")
                .matches(&letter)
        );
        assert!(
            !DeadLetterFilter::new()
                .reason("handler_failed")
                .tag("other")
                .matches(&letter)
        );
        assert!(DeadLetterFilter::new().message_id("m-1").matches(&letter));
        assert!(!DeadLetterFilter::new().message_id("m-2").matches(&letter));
        assert!(
            DeadLetterFilter::new()
                .since(at(1000))
                .until(at(1001))
                .matches(&letter)
        );
        assert!(!DeadLetterFilter::new().since(at(1001)).matches(&letter));
        assert!(
            !DeadLetterFilter::new().until(at(1000)).matches(&letter),
            "until is exclusive"
        );
    }

    #[test]
    fn a_letter_without_a_timestamp_is_outside_every_time_range() {
        let letter = letter("decode", "x", None);
        assert!(!DeadLetterFilter::new().since(UNIX_EPOCH).matches(&letter));
        assert!(
            !DeadLetterFilter::new()
                .until(SystemTime::now())
                .matches(&letter)
        );
        assert!(DeadLetterFilter::new().reason("decode").matches(&letter));
    }
}
