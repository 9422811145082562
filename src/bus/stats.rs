//! Counters of a bus: cheap atomics, read as a `Stats` snapshot.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use fnv::FnvBuildHasher as FnvBuild;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::telemetry;
use crate::transport::seam::PublishCounters;

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
    /// The schema fingerprint differs from this process's, and the writer's
    /// type could not be traced, so bincode cannot be read across the
    /// difference.
    FingerprintMismatch,
    /// The body is not a valid event.
    Decode,
    /// The tag in the body differs from the tag header.
    TagMismatch,
    /// The event's version is newer than any this process knows for its tag.
    NewerVersion,
    /// The event's version is older than this process's, and no version
    /// here upcasts from it.
    UnknownVersion,
    /// The schema fingerprint differs and the writer's schema is in no
    /// schema store this bus can read (under bincode, which needs it).
    UnknownSchema,
    /// The writer's schema differs in a way the reader's type cannot take:
    /// a field's type changed, a required field is missing. The detail
    /// names the field.
    IncompatibleSchema,
    /// The bus [requires signed events](crate::Signing::require_signed)
    /// and this one carries no signature.
    Unsigned,
    /// The signature does not match the event: forged, or altered on the
    /// way.
    BadSignature,
    /// The event is signed with a key id this bus does not hold (or
    /// without one).
    UnknownKey,
    /// The event's signed send time is outside the bus's
    /// [window](crate::Signing::with_max_age): a replay, or a clock far off.
    Stale,
    /// The body's `content-encoding` is not one this receiver reads
    /// (gzip always; zstd and lz4 with their cargo features).
    ContentEncoding,
    /// The compressed body would decompress past the maximum message size;
    /// it was refused without being decompressed whole.
    DecompressionBomb,
}

impl RejectReason {
    /// Every reason, in a fixed order.
    pub const ALL: [RejectReason; 18] = [
        Self::TooLarge,
        Self::ContentType,
        Self::MissingTag,
        Self::BadHeader,
        Self::UnknownTag,
        Self::FingerprintMismatch,
        Self::Decode,
        Self::TagMismatch,
        Self::NewerVersion,
        Self::UnknownVersion,
        Self::UnknownSchema,
        Self::IncompatibleSchema,
        Self::Unsigned,
        Self::BadSignature,
        Self::UnknownKey,
        Self::Stale,
        Self::ContentEncoding,
        Self::DecompressionBomb,
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
            Self::NewerVersion => "newer_version",
            Self::UnknownVersion => "unknown_version",
            Self::UnknownSchema => "unknown_schema",
            Self::IncompatibleSchema => "incompatible_schema",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::Stale => "stale",
            Self::ContentEncoding => "content_encoding",
            Self::DecompressionBomb => "decompression_bomb",
        }
    }

    /// Whether the refusal may pass if the message is tried again later:
    /// the writer's schema may not be stored yet (it is stored in the
    /// background when a type is first published).
    pub(crate) fn may_pass(self) -> bool {
        self == Self::UnknownSchema
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

/// **What a bus counts**, each also a metric `tidings_<name>_total` (with
/// the `metrics` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Published,
    Delivered,
    Dispatched,
    Handled,
    HandlerFailures,
    HandlerTimeouts,
    OwnSkipped,
    FingerprintMismatches,
    SchemasResolved,
    Upcasts,
    Retried,
    DeadLettered,
    Deduplicated,
    DeadLettersDropped,
    UnknownEvents,
    Requeued,
}

impl Count {
    const ALL: [Count; 16] = [
        Self::Published,
        Self::Delivered,
        Self::Dispatched,
        Self::Handled,
        Self::HandlerFailures,
        Self::HandlerTimeouts,
        Self::OwnSkipped,
        Self::FingerprintMismatches,
        Self::SchemasResolved,
        Self::Upcasts,
        Self::Retried,
        Self::DeadLettered,
        Self::Deduplicated,
        Self::DeadLettersDropped,
        Self::UnknownEvents,
        Self::Requeued,
    ];

    /// The metric's name.
    pub(crate) fn metric(self) -> &'static str {
        match self {
            Self::Published => "tidings_published_total",
            Self::Delivered => "tidings_delivered_total",
            Self::Dispatched => "tidings_dispatched_total",
            Self::Handled => "tidings_handled_total",
            Self::HandlerFailures => "tidings_handler_failures_total",
            Self::HandlerTimeouts => "tidings_handler_timeouts_total",
            Self::OwnSkipped => "tidings_own_skipped_total",
            Self::FingerprintMismatches => "tidings_fingerprint_mismatches_total",
            Self::SchemasResolved => "tidings_schemas_resolved_total",
            Self::Upcasts => "tidings_upcasts_total",
            Self::Retried => "tidings_retried_total",
            Self::DeadLettered => "tidings_dead_lettered_total",
            Self::Deduplicated => "tidings_deduplicated_total",
            Self::DeadLettersDropped => "tidings_dead_letters_dropped_total",
            Self::UnknownEvents => "tidings_unknown_events_total",
            Self::Requeued => "tidings_requeued_total",
        }
    }

    /// Counted per tag in [`Stats::by_tag`] too.
    fn by_tag(self) -> bool {
        matches!(
            self,
            Self::Published
                | Self::Handled
                | Self::HandlerFailures
                | Self::Retried
                | Self::DeadLettered
        )
    }
}

/// The live counters of a bus.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    counts: [AtomicU64; Count::ALL.len()],
    /// Counts of the event types this bus published or handled, by tag
    /// (tags of registered types only, which no peer can add to, so the
    /// unkeyed FNV rather than SipHash).
    tags: RwLock<HashMap<String, TagCounters, FnvBuild>>,
    /// Unknown events by tag, for at most [`UNKNOWN_TAGS`] tags.
    unknown_tags: Mutex<BTreeMap<String, u64>>,
    rejected: [AtomicU64; RejectReason::ALL.len()],
}

/// The per-tag counters of one event type.
#[derive(Debug, Default)]
struct TagCounters {
    published: AtomicU64,
    handled: AtomicU64,
    handler_failures: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
}

/// How many distinct unknown tags are counted one by one; the rest are
/// counted under [`OTHER_TAGS`].
const UNKNOWN_TAGS: usize = 256;
/// The key under which unknown tags beyond the first 256 are counted.
pub const OTHER_TAGS: &str = "(other tags)";

impl Counters {
    /// Counts one of `what`, for event type `tag` (empty when not known)
    /// and `reason` (empty when none), in the stats and as a metric.
    pub(crate) fn count(&self, what: Count, tag: &str, reason: &str) {
        self.counts[what as usize].fetch_add(1, Ordering::Relaxed);
        if what.by_tag() && !tag.is_empty() {
            self.with_tag(tag, |counters| {
                let counter = match what {
                    Count::Published => &counters.published,
                    Count::Handled => &counters.handled,
                    Count::HandlerFailures => &counters.handler_failures,
                    Count::Retried => &counters.retried,
                    _ => &counters.dead_lettered,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            });
        }
        telemetry::count(what.metric(), tag, reason);
    }

    /// Takes back a count (a publish the transport did not accept).
    pub(crate) fn uncount(&self, what: Count, tag: &str) {
        self.counts[what as usize].fetch_sub(1, Ordering::Relaxed);
        if what == Count::Published && !tag.is_empty() {
            self.with_tag(tag, |counters| {
                counters.published.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    pub(crate) fn get(&self, what: Count) -> u64 {
        self.counts[what as usize].load(Ordering::Relaxed)
    }

    /// Runs `change` on the counters of `tag`: under the read lock, once
    /// they exist (the first event of a type adds them).
    fn with_tag(&self, tag: &str, change: impl FnOnce(&TagCounters)) {
        if let Some(found) = self.tags.read().unwrap_or_else(|p| p.into_inner()).get(tag) {
            return change(found);
        }
        change(
            self.tags
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(tag.to_owned())
                .or_default(),
        );
    }

    pub(crate) fn reject(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
        telemetry::count("tidings_rejected_total", "", reason.as_str());
    }

    /// Counts an event of a type this process does not know; true the
    /// first time this tag is seen (to log it once).
    pub(crate) fn unknown(&self, tag: &str) -> bool {
        // Tags come from the wire: keep at most 255 bytes of one, and
        // label no metric with them.
        self.count(Count::UnknownEvents, "", "");
        let mut tags = self.unknown_tags.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = tags.get_mut(tag) {
            *count += 1;
            return false;
        }
        let key = if tags.len() < UNKNOWN_TAGS {
            let mut end = tag.len().min(255);
            while !tag.is_char_boundary(end) {
                end -= 1;
            }
            tag[..end].to_owned()
        } else {
            OTHER_TAGS.to_owned()
        };
        let count = tags.entry(key).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Unknown events counted by tag.
    pub(crate) fn unknown_tags(&self) -> BTreeMap<String, u64> {
        self.unknown_tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The bus's counters with its transport's publish counters.
    pub(crate) fn snapshot(&self, publish: &PublishCounters) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let count = |what: Count| self.get(what);
        let by_tag = self
            .tags
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(tag, c)| {
                let counts = TagStats {
                    published: get(&c.published),
                    handled: get(&c.handled),
                    handler_failures: get(&c.handler_failures),
                    retried: get(&c.retried),
                    dead_lettered: get(&c.dead_lettered),
                };
                (tag.clone(), counts)
            })
            .collect();
        Stats {
            published: count(Count::Published),
            confirmed: get(&publish.confirmed),
            returned: get(&publish.returned),
            publish_failed: get(&publish.failed),
            buffered: get(&publish.buffered),
            republished: get(&publish.republished),
            reconnects: 0,
            late_replies: 0,
            delivered: count(Count::Delivered),
            dispatched: count(Count::Dispatched),
            handled: count(Count::Handled),
            handler_failures: count(Count::HandlerFailures),
            handler_timeouts: count(Count::HandlerTimeouts),
            own_skipped: count(Count::OwnSkipped),
            fingerprint_mismatches: count(Count::FingerprintMismatches),
            schemas_resolved: count(Count::SchemasResolved),
            upcasts: count(Count::Upcasts),
            retried: count(Count::Retried),
            dead_lettered: count(Count::DeadLettered),
            deduplicated: count(Count::Deduplicated),
            requeued: count(Count::Requeued),
            dead_letters_dropped: count(Count::DeadLettersDropped),
            unknown_events: count(Count::UnknownEvents),
            rejected: Rejected(RejectReason::ALL.map(|r| get(&self.rejected[r.index()]))),
            by_tag,
            unknown_tags: self.unknown_tags(),
        }
    }
}

/// **A snapshot of a bus's counters.** Serializes (to JSON, say) with the
/// rejections labelled by reason and the counts of each event type by tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
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
    /// whether they could be read by the writer's schema or not.
    pub fingerprint_mismatches: u64,
    /// Events of another schema read by name against this process's type
    /// (a compatible change during a rolling upgrade).
    pub schemas_resolved: u64,
    /// Events of an older version turned into a newer one (`upcast_from`).
    pub upcasts: u64,
    /// Deliveries whose handlers failed, parked to be retried later.
    pub retried: u64,
    /// Messages sent to the dead-letter exchange: rejected ones, and those
    /// whose handlers failed on every attempt.
    pub dead_lettered: u64,
    /// Deliveries of a message id handled lately, acknowledged without
    /// reaching the handlers again.
    pub deduplicated: u64,
    /// Deliveries a handler gave back to their queue at once
    /// ([`Decision::Requeue`](crate::Decision::Requeue)).
    pub requeued: u64,
    /// Dead letters the dead-letter queue refused (it was full) or the
    /// broker did not take: each was logged at ERROR and dropped.
    pub dead_letters_dropped: u64,
    /// Events of a type this process has no type for, acknowledged and
    /// counted under [`UnknownEvents::Acknowledge`](crate::UnknownEvents)
    /// (by tag: [`Bus::unknown_events`](crate::Bus::unknown_events)).
    pub unknown_events: u64,
    /// Replies that came after their [call](crate::Bus::call) had timed
    /// out or was dropped, and were dropped.
    pub late_replies: u64,
    /// Messages rejected, by reason ([`Stats::rejected`]).
    rejected: Rejected,
    /// The counts of each event type this bus published or handled, by tag.
    pub by_tag: BTreeMap<String, TagStats>,
    /// Events of types this process does not know, by tag (as
    /// [`Bus::unknown_events`](crate::Bus::unknown_events)).
    pub unknown_tags: BTreeMap<String, u64>,
}

/// **The counts of one event type**, in [`Stats::by_tag`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TagStats {
    /// Events of this type accepted by `publish`.
    pub published: u64,
    /// Events of this type whose handlers all succeeded.
    pub handled: u64,
    /// Handler calls for events of this type that failed or panicked.
    pub handler_failures: u64,
    /// Deliveries of this type parked to be retried.
    pub retried: u64,
    /// Events of this type sent to the dead letters after their handlers
    /// failed.
    pub dead_lettered: u64,
}

/// Rejection counts by reason, shown labelled.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Rejected([u64; RejectReason::ALL.len()]);

impl Serialize for Rejected {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(RejectReason::ALL.len()))?;
        for reason in RejectReason::ALL {
            map.serialize_entry(reason.as_str(), &self.0[reason.index()])?;
        }
        map.end()
    }
}

impl fmt::Debug for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                RejectReason::ALL
                    .iter()
                    .map(|r| (r.as_str(), self.0[r.index()])),
            )
            .finish()
    }
}

impl Stats {
    /// Messages rejected for this reason.
    #[must_use]
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected.0[reason.index()]
    }

    /// Messages rejected for any reason.
    #[must_use]
    pub fn rejected_total(&self) -> u64 {
        self.rejected.0.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_labels_each_rejection_count() {
        let counters = Counters::default();
        counters.reject(RejectReason::Decode);
        let text = format!("{:?}", counters.snapshot(&PublishCounters::default()));
        assert!(text.contains("\"decode\": 1"), "{text}");
        assert!(text.contains("\"too_large\": 0"), "{text}");
    }

    #[test]
    fn unknown_tags_are_counted_by_tag_and_bounded() {
        let counters = Counters::default();
        assert!(counters.unknown("a"), "first of a tag");
        assert!(!counters.unknown("a"));
        for n in 0..1000 {
            counters.unknown(&format!("t{n}"));
        }
        let tags = counters.unknown_tags();
        assert_eq!(tags.len(), UNKNOWN_TAGS + 1);
        assert_eq!(tags["a"], 2);
        assert_eq!(tags[OTHER_TAGS], 1000 - (UNKNOWN_TAGS as u64 - 1));
        assert_eq!(
            counters
                .snapshot(&PublishCounters::default())
                .unknown_events,
            1002
        );
    }
}
