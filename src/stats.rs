//! Counters of a bus: cheap atomics, read as a `Stats` snapshot.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// **Why a received message was rejected** instead of dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RejectReason {
    /// The body is larger than the maximum message size.
    TooLarge,
    /// No codec reads the `content-type`, or there is none.
    ContentType,
    /// The type-tag header is missing.
    MissingTag,
    /// A tidings header has another AMQP type than a string.
    BadHeader,
    /// No event type of this process is registered under the tag.
    UnknownTag,
    /// The schema fingerprint differs from this process's, and the codec
    /// cannot decode across the difference.
    FingerprintMismatch,
    /// The body is not a valid event.
    Decode,
    /// The tag in the body differs from the tag header.
    TagMismatch,
}

impl RejectReason {
    /// Every reason, in a fixed order.
    pub const ALL: [RejectReason; 8] = [
        Self::TooLarge,
        Self::ContentType,
        Self::MissingTag,
        Self::BadHeader,
        Self::UnknownTag,
        Self::FingerprintMismatch,
        Self::Decode,
        Self::TagMismatch,
    ];

    /// A short snake_case name, used in logs and headers.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::ContentType => "content_type",
            Self::MissingTag => "missing_tag",
            Self::BadHeader => "bad_header",
            Self::UnknownTag => "unknown_tag",
            Self::FingerprintMismatch => "fingerprint_mismatch",
            Self::Decode => "decode",
            Self::TagMismatch => "tag_mismatch",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live counters of a bus.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) confirmed: AtomicU64,
    pub(crate) returned: AtomicU64,
    pub(crate) publish_failed: AtomicU64,
    pub(crate) buffered: AtomicU64,
    pub(crate) republished: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dispatched: AtomicU64,
    pub(crate) handled: AtomicU64,
    pub(crate) handler_failures: AtomicU64,
    pub(crate) handler_timeouts: AtomicU64,
    pub(crate) own_skipped: AtomicU64,
    pub(crate) fingerprint_mismatches: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) deduplicated: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reject(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            published: get(&self.published),
            confirmed: get(&self.confirmed),
            returned: get(&self.returned),
            publish_failed: get(&self.publish_failed),
            buffered: get(&self.buffered),
            republished: get(&self.republished),
            reconnects: 0,
            delivered: get(&self.delivered),
            dispatched: get(&self.dispatched),
            handled: get(&self.handled),
            handler_failures: get(&self.handler_failures),
            handler_timeouts: get(&self.handler_timeouts),
            own_skipped: get(&self.own_skipped),
            fingerprint_mismatches: get(&self.fingerprint_mismatches),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            deduplicated: get(&self.deduplicated),
            rejected: RejectReason::ALL.map(|r| get(&self.rejected[r.index()])),
        }
    }
}

/// **A snapshot of a bus's counters.**
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events accepted by `publish` (not yet necessarily confirmed).
    pub published: u64,
    /// Events the broker confirmed.
    pub confirmed: u64,
    /// Events the broker returned because no queue was bound to their
    /// routing key ([`send_to`](crate::Bus::send_to) a queue that does not
    /// exist).
    pub returned: u64,
    /// Events the broker refused, or that were still unconfirmed when the
    /// bus was closed or gave up; each was logged and, for
    /// `publish_confirmed`, returned as an error.
    pub publish_failed: u64,
    /// Events accepted and not yet settled now: waiting to be sent (during
    /// an outage) or sent and waiting for the broker's confirm. Bounded by
    /// the props' publish buffer.
    pub buffered: u64,
    /// Sends of events again after a lost connection or channel, because
    /// the broker had not confirmed them.
    pub republished: u64,
    /// Times the connection was lost and recovered.
    pub reconnects: u64,
    /// Messages received from the transport.
    pub delivered: u64,
    /// Events decoded and dispatched to the local subscribers.
    pub dispatched: u64,
    /// Events whose handlers all succeeded (then acknowledged).
    pub handled: u64,
    /// Handler calls that failed or panicked.
    pub handler_failures: u64,
    /// Dispatches that did not finish within the handler timeout (each
    /// also counted as a failure).
    pub handler_timeouts: u64,
    /// This process's own events skipped because self-delivery is off.
    pub own_skipped: u64,
    /// Events whose schema fingerprint differed from this process's,
    /// whether they could still be decoded (JSON) or not.
    pub fingerprint_mismatches: u64,
    /// Deliveries whose handlers failed, parked to be retried later.
    pub retried: u64,
    /// Messages sent to the dead-letter exchange: rejected ones, and those
    /// whose handlers failed on every attempt.
    pub dead_lettered: u64,
    /// Deliveries of a message id handled lately, acknowledged without
    /// reaching the handlers again.
    pub deduplicated: u64,
    rejected: [u64; RejectReason::ALL.len()],
}

impl Stats {
    /// Messages rejected for this reason.
    #[must_use]
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()]
    }

    /// Messages rejected for any reason.
    #[must_use]
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}
