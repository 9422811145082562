//! The settings of a stream listener ([`Listen::stream`]): where a reader
//! with no saved offset starts, whose offset is kept, and how long the
//! stream keeps events.
//!
//! [`Listen::stream`]: crate::Listen::stream

use std::time::{Duration, SystemTime};

/// **Where a stream listener starts** when it has no saved offset: a new
/// consumer name, or a listener without one.
///
/// A listener that saved an offset resumes after it whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StreamStart {
    /// The oldest event the stream still keeps: the whole retained history.
    Beginning,
    /// Events published from this time on. The broker starts at the chunk
    /// that holds the time; events of it sent earlier (by their
    /// `x-tidings-sent-at` header) are skipped.
    Time(SystemTime),
    /// Only events published after the listener starts (the default).
    #[default]
    Now,
    /// The event at this offset of the stream and those after it.
    Offset(u64),
}

/// **How long a stream keeps events**: by age and by size; the broker
/// drops whole segments, oldest first, once one of the limits is passed.
///
/// The defaults: 7 days, 1 GiB, 64 MiB segments (so retention drops
/// about a sixteenth of the stream at a time). They are sent when the
/// stream is declared (`x-max-age`, `x-max-length-bytes`,
/// `x-stream-max-segment-size-bytes`); a stream that exists with other
/// values makes the declaration fail, as for any queue.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tidings::{Listen, Retention};
///
/// let audit = Listen::stream("audit")
///     .consumer("audit-1")
///     .retention(Retention::default().max_age(Duration::from_secs(30 * 24 * 3600)).max_bytes(10 << 30));
/// # let _ = audit;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    max_age: Duration,
    max_bytes: u64,
    segment_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
        }
    }
}

impl Retention {
    /// Events older than this go (rounded up to whole seconds).
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// The stream's size is kept under about this many bytes.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The size of the stream's segment files, the unit retention drops.
    #[must_use]
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// `x-max-age` as RabbitMQ writes it: whole seconds, at least one.
    pub(crate) fn max_age_arg(&self) -> String {
        let secs = self.max_age.as_secs() + u64::from(self.max_age.subsec_nanos() > 0);
        format!("{}s", secs.max(1))
    }

    pub(crate) fn max_bytes_arg(&self) -> i64 {
        i64::try_from(self.max_bytes).unwrap_or(i64::MAX)
    }

    pub(crate) fn segment_bytes_arg(&self) -> i64 {
        i64::try_from(self.segment_bytes).unwrap_or(i64::MAX)
    }
}

/// What a stream listener is: the stream, whose offset, where to start,
/// how long events are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamSpec {
    pub(crate) name: String,
    pub(crate) consumer: Option<String>,
    pub(crate) start: StreamStart,
    pub(crate) retention: Retention,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_whole_seconds_rounded_up() {
        let r = Retention::default();
        assert_eq!(r.max_age_arg(), "604800s");
        assert_eq!(r.max_age(Duration::from_millis(1500)).max_age_arg(), "2s");
        assert_eq!(r.max_age(Duration::ZERO).max_age_arg(), "1s");
        assert_eq!(r.max_bytes(u64::MAX).max_bytes_arg(), i64::MAX);
    }
}
