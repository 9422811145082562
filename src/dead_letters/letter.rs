//! `DeadLetterMessage`: one dead letter as read from the queue: why it was
//! dead-lettered, where it came from, and its body, decoded when this
//! process can.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::event::Event;
use crate::headers::{
    ATTEMPT_HEADER, BODY_DROPPED_HEADER, ERROR_HEADER, FINGERPRINT_HEADER, ORIGIN_HEADER,
    QUEUE_HEADER, REASON_HEADER, ROUTING_KEY_HEADER, TAG_HEADER, VERSION_HEADER,
};
use crate::schema::Fingerprint;

/// **One message in a dead-letter queue**, as [`DeadLetters`] lists it:
/// why it was dead-lettered (the `x-tidings-*` headers a bus adds), what
/// it was (tag, version, message id, origin), and its body: as the event
/// when this process knows its type, and as JSON for display when the
/// body is JSON or the writer's schema is in the exchange's schema
/// stream.
///
/// [`DeadLetters`]: crate::DeadLetters
pub struct DeadLetterMessage {
    pub(super) properties: BasicProperties,
    pub(super) body: Vec<u8>,
    pub(super) event: Option<Box<dyn Event>>,
    pub(super) json: Option<serde_json::Value>,
    pub(super) note: Option<String>,
}

impl DeadLetterMessage {
    pub(super) fn new(properties: BasicProperties, body: Vec<u8>) -> Self {
        Self {
            properties,
            body,
            event: None,
            json: None,
            note: None,
        }
    }

    /// Why it was dead-lettered (`x-tidings-reason`): `handler_failed`,
    /// `unknown_tag`, `decode`, `too_large`... (the names of
    /// [`RejectReason`](crate::RejectReason)).
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        self.header(REASON_HEADER)
    }

    /// The last handler error, or what could not be decoded
    /// (`x-tidings-error`).
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.header(ERROR_HEADER)
    }

    /// How many times it was tried (`x-tidings-attempt`).
    #[must_use]
    pub fn attempt(&self) -> Option<u32> {
        self.header(ATTEMPT_HEADER)?.parse().ok()
    }

    /// The routing key it was first published with (`x-tidings-routing-key`).
    #[must_use]
    pub fn routing_key(&self) -> Option<&str> {
        self.header(ROUTING_KEY_HEADER)
    }

    /// The queue it was consumed from (`x-tidings-queue`): where a replay
    /// to the queue sends it.
    #[must_use]
    pub fn queue(&self) -> Option<&str> {
        self.header(QUEUE_HEADER)
    }

    /// The event's wire tag (`x-tidings-tag`).
    #[must_use]
    pub fn tag(&self) -> Option<&str> {
        self.header(TAG_HEADER)
    }

    /// The event's version (`x-tidings-version`, 1 when absent).
    #[must_use]
    pub fn version(&self) -> u32 {
        self.header(VERSION_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// The writer's schema fingerprint (`x-tidings-fingerprint`).
    #[must_use]
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.header(FINGERPRINT_HEADER)?.parse().ok()
    }

    /// The message id the publisher gave it, kept through dead-lettering
    /// and replay.
    #[must_use]
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|id| id.as_str())
    }

    /// The publisher's instance id (`x-origin`).
    #[must_use]
    pub fn origin(&self) -> Option<&str> {
        self.header(ORIGIN_HEADER)
    }

    /// When it was first published (the `timestamp` property, whole
    /// seconds).
    #[must_use]
    pub fn timestamp(&self) -> Option<SystemTime> {
        self.properties
            .timestamp()
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
    }

    /// The body's `content-type`.
    #[must_use]
    pub fn content_type(&self) -> Option<&str> {
        self.properties.content_type().as_ref().map(|t| t.as_str())
    }

    /// Every header, as JSON values (strings, numbers, tables as objects).
    #[must_use]
    pub fn headers(&self) -> BTreeMap<String, serde_json::Value> {
        crate::headers::to_json(self.properties.headers().as_ref())
    }

    /// A string header, `None` when it is absent or not a string.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        header_text(self.properties.headers().as_ref()?, name)
    }

    /// The size of the event's body: the size it had when the body was
    /// dropped (see [`body_dropped`](Self::body_dropped)).
    #[must_use]
    pub fn body_size(&self) -> usize {
        self.dropped_size().unwrap_or(self.body.len())
    }

    /// Whether the body was dropped when it was dead-lettered (it was
    /// over the maximum message size): such a letter tells what happened
    /// but cannot be replayed.
    #[must_use]
    pub fn body_dropped(&self) -> bool {
        self.header(BODY_DROPPED_HEADER).is_some()
    }

    fn dropped_size(&self) -> Option<usize> {
        self.header(BODY_DROPPED_HEADER)?.parse().ok()
    }

    /// The body, as it was published (empty when it was dropped).
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The event, when this process knows its type (tag and version are
    /// registered) and can read the body: its own schema, a JSON body, or
    /// a bincode body whose writer's schema is in the schema stream.
    #[must_use]
    pub fn event(&self) -> Option<&dyn Event> {
        self.event.as_deref()
    }

    /// The body as JSON, for display: a JSON body as it is
    /// (`{"<tag>": {..}}`), a bincode body read by its writer's schema
    /// into the same shape. `None` when it cannot be read (see
    /// [`body_note`](Self::body_note)).
    #[must_use]
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.json.as_ref()
    }

    /// Why the body could not be shown as JSON or decoded, when it could
    /// not.
    #[must_use]
    pub fn body_note(&self) -> Option<&str> {
        self.note.as_deref()
    }
}

impl fmt::Debug for DeadLetterMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterMessage")
            .field("message_id", &self.message_id())
            .field("tag", &self.tag())
            .field("reason", &self.reason())
            .field("queue", &self.queue())
            .field("body_size", &self.body_size())
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

/// A string header of a table.
pub(super) fn header_text<'a>(table: &'a FieldTable, name: &str) -> Option<&'a str> {
    match table.inner().get(name)? {
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
        AMQPValue::ShortString(text) => Some(text.as_str()),
        _ => None,
    }
}
