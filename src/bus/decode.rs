//! The receive-side decode path: size, content type, tag, version,
//! fingerprint (reading another schema by the writer's), codec, upcast;
//! each refusal with its reason. Fuzzed below.

use std::sync::Arc;

use super::schemas::SchemaCache;
use super::stats::{Count, Counters, RejectReason};
use super::text::bounded;
use crate::codec::{BINCODE_CONTENT_TYPE, Codec, Codecs, JSON_CONTENT_TYPE, bincode_event_name};
use crate::compression::{Inflate, decompress};
use crate::event::{Event, EventRegistry, Registration, registered_events};
use crate::headers::{FINGERPRINT_HEADER, TAG_HEADER, VERSION_HEADER};
use crate::schema::Fingerprint;
use crate::transport::seam::{Header, Received, Transport};

/// What a message must pass to be decoded.
pub(crate) struct Decoder {
    codecs: Codecs,
    max_message_size: usize,
    /// The writers' schemas looked up.
    schemas: SchemaCache,
}

impl Decoder {
    pub(crate) fn new(codecs: Codecs, max_message_size: usize) -> Self {
        Self {
            codecs,
            max_message_size,
            schemas: SchemaCache::default(),
        }
    }
}

/// A refusal: why, and the detail.
type Refusal = (RejectReason, String);

impl Decoder {
    /// Checks and decodes one message; says why when it cannot. An event of
    /// another schema is read by the writer's (looked up through
    /// `transport`), and one of an older version is upcast.
    pub(super) async fn decode(
        &self,
        incoming: &dyn Received,
        counters: &Counters,
        transport: &dyn Transport,
    ) -> Result<Arc<dyn Event>, Refusal> {
        let body = incoming.body();
        if body.len() > self.max_message_size {
            return Err((
                RejectReason::TooLarge,
                format!(
                    "body of {} bytes exceeds the maximum message size of {}",
                    body.len(),
                    self.max_message_size
                ),
            ));
        }
        let codec = self
            .codecs
            .for_content_type(incoming.content_type())
            .map_err(|e| (RejectReason::ContentType, e.to_string()))?;
        // Decompressed never past the maximum size (a bomb costs at most
        // that much memory); after the signature was checked.
        let body = &*decompress(body, incoming.content_encoding(), self.max_message_size).map_err(
            |e| match e {
                Inflate::Bomb(detail) => (RejectReason::DecompressionBomb, detail),
                Inflate::Unknown(detail) => (RejectReason::ContentEncoding, detail),
                Inflate::Corrupt(detail) => (RejectReason::Decode, detail),
            },
        )?;
        let tag = text_header(incoming, TAG_HEADER)?
            .ok_or_else(|| (RejectReason::MissingTag, format!("no {TAG_HEADER} header")))?;
        if tag.len() > 255 {
            return Err((
                RejectReason::BadHeader,
                format!(
                    "{TAG_HEADER} header of {} bytes is longer than any event tag (255 bytes at most)",
                    tag.len()
                ),
            ));
        }
        let version = match text_header(incoming, VERSION_HEADER)? {
            None => 1,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| {
                    (
                        RejectReason::BadHeader,
                        format!(
                            "{VERSION_HEADER} header {:?} is not a version (a whole number from 1)",
                            bounded(text)
                        ),
                    )
                })?,
        };
        let Ok(events) = registered_events() else {
            return Err((
                RejectReason::UnknownTag,
                "the event registry is not valid".to_owned(),
            ));
        };
        let (registered, later) = registration(events, tag, version)?;
        let theirs =
            text_header(incoming, FINGERPRINT_HEADER)?.and_then(|t| t.parse::<Fingerprint>().ok());
        let ours = registered.fingerprint();
        let event: Box<dyn Event> = if theirs == Some(ours) {
            read_own(body, codec, registered, tag)?
        } else {
            counters.count(Count::FingerprintMismatches, tag, "");
            let event = self
                .resolve(body, codec, registered, theirs, transport)
                .await?;
            counters.count(Count::SchemasResolved, tag, "");
            event
        };
        if event.tag() != tag {
            return Err((
                RejectReason::TagMismatch,
                format!(
                    "body holds event {:?} but the {TAG_HEADER} header says {tag:?}",
                    event.tag()
                ),
            ));
        }
        if event.version() != version {
            return Err((
                RejectReason::TagMismatch,
                format!(
                    "body holds version {} of event {tag:?} but the {VERSION_HEADER} header says {version}",
                    event.version()
                ),
            ));
        }
        let mut event: Arc<dyn Event> = Arc::from(event);
        // Through each next version that upcasts from the one before.
        for (at, next) in (version..).zip(later) {
            let Some(upcast) = next.upcast().filter(|_| next.version() == at + 1) else {
                break;
            };
            event = upcast(event).map_err(|e| {
                (
                    RejectReason::Decode,
                    format!("event {tag:?} version {at}: {e}"),
                )
            })?;
            counters.count(Count::Upcasts, tag, "");
        }
        Ok(event)
    }

    /// Reads an event whose writer's schema differs from this process's.
    async fn resolve(
        &self,
        body: &[u8],
        codec: &dyn Codec,
        registered: &Registration,
        theirs: Option<Fingerprint>,
        transport: &dyn Transport,
    ) -> Result<Box<dyn Event>, Refusal> {
        let tag = registered.tag();
        let ours = registered.schema();
        let writer = match theirs {
            Some(fingerprint) => self.schemas.find(fingerprint, transport).await,
            None => None,
        };
        let theirs = theirs.map_or_else(|| "none".to_owned(), |f| f.to_string());
        let json = codec.content_type() == JSON_CONTENT_TYPE;
        let reader_of_body = match &writer {
            Some(writer) => writer.as_ref(),
            // JSON names its fields: the reader's own schema reads it.
            None if json => ours,
            None => {
                return Err((
                    RejectReason::UnknownSchema,
                    format!(
                        "event {tag:?} has schema fingerprint {theirs}, this process has {}, and the writer's schema is in no schema store this bus reads; was it published by a bus (which stores it first)?",
                        ours.fingerprint()
                    ),
                ));
            }
        };
        if let Some(writer) = &writer
            && (writer.tag() != tag || writer.version() != registered.version())
        {
            return Err((
                RejectReason::FingerprintMismatch,
                format!(
                    "event {tag:?}: fingerprint {theirs} is the schema of {:?} version {}",
                    writer.tag(),
                    writer.version()
                ),
            ));
        }
        let value = || {
            let mut value = reader_of_body
                .read(body, codec, registered.wire_name())
                .map_err(|e| {
                    let reason = if e.contains("could not be traced") {
                        RejectReason::FingerprintMismatch
                    } else {
                        RejectReason::Decode
                    };
                    (
                        reason,
                        format!("event {tag:?} (writer's schema {theirs}): {e}"),
                    )
                })?;
            if let Some(writer) = &writer {
                writer.rename_for(ours, &mut value);
            }
            Ok::<_, Refusal>(value)
        };
        // A failure is read again to name the field (see `read_own`).
        if let Ok(event) = registered.read(value()?, json) {
            return Ok(event);
        }
        registered.read_naming_path(value()?, json).map_err(|e| {
            (
                RejectReason::IncompatibleSchema,
                format!(
                    "event {tag:?} of schema {theirs} cannot be read as this process's {} ({}): {e}",
                    ours.fingerprint(),
                    registered.type_name()
                ),
            )
        })
    }
}

/// Decodes an event of this process's own schema. Under bincode a traced
/// type is read by its schema into its concrete type: depth-limited (bincode
/// has no limit, and through typetag's erased serde an error deep inside
/// grew with every level: a recursive event 40 levels deep took gigabytes),
/// and cheaper than typetag's erased path. Otherwise through typetag.
fn read_own(
    body: &[u8],
    codec: &dyn Codec,
    registered: &Registration,
    tag: &str,
) -> Result<Box<dyn Event>, Refusal> {
    let decode_error = |e: String| (RejectReason::Decode, format!("event {tag:?}: {e}"));
    let ours = registered.schema();
    if codec.content_type() != BINCODE_CONTENT_TYPE || !ours.is_traced() {
        return codec.decode(body).map_err(|e| decode_error(e.to_string()));
    }
    // The read checks the event's name in the body: only a failure needs
    // telling a body of another event (a tag mismatch) from a bad one.
    let tag_mismatch = || {
        let name = bincode_event_name(body).filter(|name| *name != registered.wire_name())?;
        Some((
            RejectReason::TagMismatch,
            format!(
                "body holds event {:?} but the {TAG_HEADER} header says {tag:?}",
                bounded(name)
            ),
        ))
    };
    let value = || {
        ours.read(body, codec, registered.wire_name())
            .map_err(|e| tag_mismatch().unwrap_or_else(|| decode_error(e)))
    };
    // Without tracking the path (which clones every field name); a failure
    // is read again, with it, to name the field.
    if let Ok(event) = registered.read(value()?, false) {
        return Ok(event);
    }
    registered
        .read_naming_path(value()?, false)
        .map_err(decode_error)
}

/// The type registered for `tag` at `version` and the tag's later
/// versions, or why there is none.
fn registration<'a>(
    events: &'a EventRegistry,
    tag: &str,
    version: u32,
) -> Result<(&'a Registration, &'a [Registration]), Refusal> {
    if let Some(found) = events.get_with_later(tag, version) {
        return Ok(found);
    }
    match events.newest(tag) {
        None => Err((
            RejectReason::UnknownTag,
            format!("unknown event tag {tag:?}: no such event type in this process"),
        )),
        Some(newest) if version > newest => Err((
            RejectReason::NewerVersion,
            format!(
                "event {tag:?} version {version} is newer than this process knows (up to version {newest}); upgrade this service to read it"
            ),
        )),
        Some(newest) => Err((
            RejectReason::UnknownVersion,
            format!(
                "event {tag:?} version {version} is older than this process's version {newest}, and no version here upcasts from it (#[event(upcast_from = ..)])"
            ),
        )),
    }
}

/// A string header: `None` when absent, refused when of another type.
fn text_header<'a>(incoming: &'a dyn Received, name: &str) -> Result<Option<&'a str>, Refusal> {
    match incoming.header(name) {
        Header::Text(text) => Ok(Some(text)),
        Header::Absent => Ok(None),
        Header::WrongType => Err((
            RejectReason::BadHeader,
            format!("{name} header is not a string"),
        )),
    }
}

/// **Decodes messages as a listener does**, without a queue: for the
/// benchmark of the decode path (the fast path, and reading another
/// schema). Not public API.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct ListenerDecoder {
    decoder: Decoder,
    counters: Counters,
    transport: Box<dyn Transport>,
}

impl Default for ListenerDecoder {
    fn default() -> Self {
        Self::with_max_size(64 * 1024 * 1024)
    }
}

impl ListenerDecoder {
    /// A decoder that refuses bodies over `max_message_size`.
    #[must_use]
    pub fn with_max_size(max_message_size: usize) -> Self {
        Self {
            decoder: Decoder::new(
                Codecs::new(Arc::new(crate::codec::Bincode)),
                max_message_size,
            ),
            counters: Counters::default(),
            transport: crate::transport::test_transport(),
        }
    }

    /// Keeps a writer's schema where this decoder finds it.
    pub fn store(&self, schema: &crate::schema::Schema) {
        crate::schema::store::local()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(schema.fingerprint(), Arc::new(schema.clone()));
    }

    /// Decodes one message with these contents.
    ///
    /// # Errors
    ///
    /// The reason and detail of a refusal.
    pub fn decode(
        &self,
        body: Vec<u8>,
        content_type: &'static str,
        tag: &'static str,
        fingerprint: String,
    ) -> Result<Arc<dyn Event>, String> {
        let incoming = crate::transport::test_message(body, content_type, tag, fingerprint);
        self.decode_received(&*incoming)
            .map_err(|(reason, detail)| format!("{reason}: {detail}"))
    }

    /// Decodes one received message; the memory transport's schema store
    /// answers at once, so this never waits.
    pub(crate) fn decode_received(
        &self,
        incoming: &dyn Received,
    ) -> Result<Arc<dyn Event>, Refusal> {
        crate::runtime::now_or_never(self.decoder.decode(
            incoming,
            &self.counters,
            &*self.transport,
        ))
        .unwrap_or_else(|| Err((RejectReason::Decode, "the decoder waited".to_owned())))
    }
}

/// Feeds the whole receive-side decode path with malformed input: valid
/// encodings mutated (bit flips, truncation, inserted length prefixes that
/// claim huge sizes) and random bytes, under both codecs and with right,
/// wrong and missing headers. Nothing may panic or abort; everything must
/// come back as an event or a reason.
#[cfg(test)]
mod fuzz {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::codec::{Bincode, Codec, Json};
    use crate::event::EventType;

    #[derive(crate::Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[event(name = "fuzz.order")]
    struct Order {
        id: u64,
        customer: String,
        lines: Vec<(String, u32)>,
        note: Option<String>,
        state: State,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    enum State {
        Open,
        Closed { reason: String },
    }

    /// An event that contains itself: the wire decides how deep.
    #[derive(crate::Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[event(name = "fuzz.thread")]
    struct Thread {
        id: u64,
        replies: Vec<Thread>,
    }

    /// A bincode `Thread` nested `depth` deep, cut off at the bottom.
    fn nested_thread(depth: usize) -> Vec<u8> {
        let mut body = vec![1u8, 11];
        body.extend(b"fuzz.thread");
        for _ in 0..depth {
            body.extend([0, 1]); // id 0, one reply
        }
        body
    }

    /// A recursive event nested deeper than any honest one, under bincode
    /// (which has no depth limit of its own): refused with a short reason,
    /// in bounded memory, at every depth. Through erased serde an
    /// error deep inside was wrapped once per level, doubling its text:
    /// 40 levels took gigabytes.
    #[test]
    fn deeply_nested_events_are_refused_cheaply() {
        let shared = ListenerDecoder::with_max_size(1 << 20);
        let fingerprint = Thread::schema().fingerprint().to_string();
        for depth in [10, 40, 127, 129, 1_000, 100_000] {
            let body = nested_thread(depth);
            let refused = shared.decode_received(&*incoming(
                body,
                crate::codec::BINCODE_CONTENT_TYPE,
                "fuzz.thread",
                fingerprint.clone(),
            ));
            let (reason, detail) = refused.expect_err("a cut-off body is refused");
            assert_eq!(reason, RejectReason::Decode, "depth {depth}: {detail}");
            assert!(
                detail.len() < 4096,
                "depth {depth}: a {} byte reason",
                detail.len()
            );
        }
        // JSON has serde_json's own limit of 128.
        for depth in [10, 127, 129, 100_000] {
            let body = format!(
                r#"{{"fuzz.thread":{}"#,
                r#"{"id":0,"replies":["#.repeat(depth)
            );
            let refused = shared.decode_received(&*incoming(
                body.into_bytes(),
                JSON_CONTENT_TYPE,
                "fuzz.thread",
                fingerprint.clone(),
            ));
            let (_, detail) = refused.expect_err("a cut-off body is refused");
            assert!(
                detail.len() < 4096,
                "json depth {depth}: a {} byte reason",
                detail.len()
            );
        }
        // An honest depth decodes.
        let mut body = nested_thread(100); // 200 levels: a struct and a sequence each
        body.extend([0, 0]);
        let event = shared
            .decode_received(&*incoming(
                body,
                crate::codec::BINCODE_CONTENT_TYPE,
                "fuzz.thread",
                fingerprint,
            ))
            .unwrap();
        assert_eq!(event.tag(), "fuzz.thread");
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
        }
    }

    /// The decoder under test.
    fn shared() -> ListenerDecoder {
        ListenerDecoder::with_max_size(64 * 1024)
    }

    fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
        let mut bytes = valid.to_vec();
        match rng.below(5) {
            0 => {
                for _ in 0..=rng.below(3) {
                    let i = rng.below(bytes.len());
                    if let Some(b) = bytes.get_mut(i) {
                        *b ^= 1 << rng.below(8);
                    }
                }
            }
            1 => bytes.truncate(rng.below(bytes.len())),
            2 => {
                // A varint length prefix claiming up to 2^64 bytes.
                let at = rng.below(bytes.len() + 1);
                let mut bomb = vec![[0xFB, 0xFC, 0xFD][rng.below(3)]];
                bomb.extend_from_slice(&rng.next().to_le_bytes());
                bytes.splice(at..at, bomb);
            }
            3 => bytes = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            _ => bytes.extend((0..=rng.below(8)).map(|_| rng.next() as u8)),
        }
        bytes
    }

    fn incoming(
        body: Vec<u8>,
        content_type: &'static str,
        tag: &'static str,
        fingerprint: String,
    ) -> Box<dyn Received> {
        crate::transport::test_message(body, content_type, tag, fingerprint)
    }

    fn order() -> Order {
        Order {
            id: 42,
            customer: "Zoë".into(),
            lines: vec![("tea".into(), 2), ("cake".into(), 1)],
            note: Some("ring".into()),
            state: State::Closed {
                reason: "paid".into(),
            },
        }
    }

    /// How a valid encoding is damaged: bit flips, a cut, inserted bytes.
    #[derive(Debug, Clone)]
    enum Damage {
        Flip(usize, u8),
        Truncate(usize),
        Insert(usize, Vec<u8>),
    }

    /// A random damage; positions are reduced modulo the length when applied.
    fn damage(rng: &mut Rng) -> Damage {
        let at = rng.next() as usize;
        match rng.below(3) {
            0 => Damage::Flip(at, 1 + rng.below(255) as u8),
            1 => Damage::Truncate(at),
            _ => Damage::Insert(
                at,
                (0..1 + rng.below(11)).map(|_| rng.next() as u8).collect(),
            ),
        }
    }

    fn apply(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
        for damage in damages {
            let len = bytes.len();
            match damage {
                Damage::Flip(at, bits) if len > 0 => bytes[at % len] ^= bits,
                Damage::Flip(..) => {}
                Damage::Truncate(at) => bytes.truncate(at % (len + 1)),
                Damage::Insert(at, more) => {
                    let at = at % (len + 1);
                    bytes.splice(at..at, more.iter().copied());
                }
            }
        }
        bytes
    }

    const CONTENT_TYPES: [&str; 4] = [
        "application/x-bincode",
        "application/json",
        "text/plain",
        "",
    ];
    const TAGS: [&str; 4] = ["fuzz.order", "fuzz.order", "unknown.tag", ""];
    /// Cases per generated test; the seed makes every run the same.
    const CASES: usize = 3000;

    /// A fingerprint header: 16 hex digits, or up to 20 arbitrary characters.
    fn fingerprint(rng: &mut Rng) -> String {
        if rng.below(2) == 0 {
            format!("{:016x}", rng.next())
        } else {
            (0..rng.below(21))
                .filter_map(|_| char::from_u32((rng.next() % 0x11_0000) as u32))
                .collect()
        }
    }

    /// Any bytes under any content type and headers: an event of the
    /// header's type, or a reason; never a panic.
    #[test]
    fn arbitrary_bytes_are_an_event_or_a_reason() {
        let shared = shared();
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for case in 0..CASES {
            let body: Vec<u8> = (0..rng.below(256)).map(|_| rng.next() as u8).collect();
            let content_type = CONTENT_TYPES[rng.below(CONTENT_TYPES.len())];
            let tag = TAGS[rng.below(TAGS.len())];
            let fingerprint = fingerprint(&mut rng);
            let what = format!("case {case}: {content_type:?} {tag:?} {fingerprint:?} {body:?}");
            match shared.decode_received(&*incoming(body, content_type, tag, fingerprint)) {
                Ok(event) => assert_eq!(event.tag(), tag, "{what}"),
                Err((_, detail)) => assert!(!detail.is_empty(), "{what}"),
            }
        }
    }

    /// A valid event damaged in a few places, under both codecs: still an
    /// event of the right type, or a reason; never a panic and never an
    /// allocation beyond the decode limit.
    #[test]
    fn damaged_events_are_an_event_or_a_reason() {
        let shared = shared();
        let mut rng = Rng(0x8CB9_2BA7_2F3D_8DD7);
        let event: Box<dyn Event> = Box::new(order());
        for case in 0..CASES {
            let json = rng.below(2) == 0;
            let damages: Vec<Damage> = (0..rng.below(4)).map(|_| damage(&mut rng)).collect();
            let right_fingerprint = rng.below(2) == 0;
            let (codec, content_type): (&dyn Codec, &'static str) = if json {
                (&Json, "application/json")
            } else {
                (&Bincode, "application/x-bincode")
            };
            let valid = codec.encode(&event).unwrap();
            let body = apply(valid, &damages);
            let fingerprint = if right_fingerprint {
                Order::schema().fingerprint().to_string()
            } else {
                "0123456789abcdef".to_owned()
            };
            let what = format!("case {case}: {content_type} {damages:?} {fingerprint}");
            match shared.decode_received(&*incoming(body, content_type, "fuzz.order", fingerprint))
            {
                Ok(event) => assert_eq!(event.tag(), "fuzz.order", "{what}"),
                Err((reason, detail)) => {
                    assert!(!detail.is_empty(), "{what}");
                    // An intact event with the right headers always decodes.
                    assert!(
                        !(damages.is_empty() && right_fingerprint),
                        "{what}: {reason}: {detail}"
                    );
                }
            }
        }
    }

    #[test]
    fn malformed_input_never_panics() {
        let shared = shared();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let order = Order {
            id: 42,
            customer: "Zoë".into(),
            lines: vec![("tea".into(), 2)],
            note: Some("ring".into()),
            state: State::Closed {
                reason: "paid".into(),
            },
        };
        let event: Box<dyn Event> = Box::new(order.clone());
        let codecs: [(&dyn Codec, &'static str); 2] = [
            (&Bincode, "application/x-bincode"),
            (&Json, "application/json"),
        ];
        let (mut decoded, mut rejected) = (0u32, 0u32);
        for round in 0..20_000 {
            let (codec, content_type) = codecs[round % 2];
            let valid = codec.encode(&event).unwrap();
            let body = if round % 10 == 0 {
                valid
            } else {
                mutate(&mut rng, &valid)
            };
            let fingerprint = match rng.below(4) {
                0 => "0123456789abcdef".to_owned(),
                1 => "not hex".to_owned(),
                _ => Order::schema().fingerprint().to_string(),
            };
            let tag = ["fuzz.order", "fuzz.order", "unknown.tag", ""][rng.below(4)];
            let incoming = incoming(body, content_type, tag, fingerprint);
            match shared.decode_received(&*incoming) {
                Ok(event) => {
                    decoded += 1;
                    assert_eq!(event.tag(), "fuzz.order");
                }
                Err((_, detail)) => {
                    rejected += 1;
                    assert!(!detail.is_empty());
                }
            }
        }
        assert!(
            decoded > 300 && rejected > 15_000,
            "decoded {decoded}, rejected {rejected}"
        );
    }
}
