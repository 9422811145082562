//! Codecs: how values become message bodies and back.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde::de::{DeserializeOwned, DeserializeSeed};

use crate::error::{Error, ErrorKind, Result};

/// The `content-type` of bodies written by [`Bincode`].
pub const BINCODE_CONTENT_TYPE: &str = "application/x-bincode";
/// The `content-type` of bodies written by [`Json`].
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The visitor a codec hands its deserializer to; see [`Codec::decode_with`].
pub type DecodeVisitor<'a> =
    dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error> + 'a;

/// **A wire format**: turns any `Serialize` value into a message body and a
/// body back into any `Deserialize` value, and names itself with a MIME
/// `content-type` that travels with every message.
///
/// The trait is object safe (it speaks [`erased_serde`]), so a receiver can
/// hold several codecs and pick one per message by its `content-type`. Use the
/// typed helpers on `dyn Codec`, [`encode`](trait.Codec.html#method.encode-1)
/// and [`decode`](trait.Codec.html#method.decode), rather than the erased
/// methods.
///
/// Two codecs are built in: [`Bincode`] (the default: compact, not
/// self-describing) and [`Json`]. A codec must never trust the bytes: length
/// prefixes are bounded, trailing bytes are an error.
///
/// # Examples
///
/// ```
/// use tidings::{Bincode, Codec, Json};
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Point { x: i32, y: i32 }
///
/// let json: &dyn Codec = &Json;
/// let body = json.encode(&Point { x: 1, y: -2 })?;
/// assert_eq!(body, br#"{"x":1,"y":-2}"#);
/// assert_eq!(json.decode::<Point>(&body)?, Point { x: 1, y: -2 });
///
/// let bincode: &dyn Codec = &Bincode;
/// let body = bincode.encode(&Point { x: 1, y: -2 })?;
/// assert_eq!(body, [2, 3]); // zigzag varints
/// assert!(bincode.decode::<Point>(&[2, 3, 0]).is_err()); // trailing byte
/// # Ok::<(), tidings::Error>(())
/// ```
pub trait Codec: Send + Sync + fmt::Debug + 'static {
    /// The MIME type written to each message's `content-type` property.
    fn content_type(&self) -> &str;

    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encode`] when the value cannot be represented.
    fn encode_erased(&self, value: &dyn erased_serde::Serialize, out: &mut Vec<u8>) -> Result<()>;

    /// Builds a deserializer over the whole of `bytes` and passes it to
    /// `visit`; fails if `visit` fails or leaves bytes unread.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Decode`] when the bytes are malformed, truncated, longer
    /// than the value, or claim more memory than the codec allows.
    fn decode_with(&self, bytes: &[u8], visit: &mut DecodeVisitor<'_>) -> Result<()>;
}

/// The size of the body last encoded by `<dyn Codec>::encode`: the next
/// one starts with room for it (rounded up to a power of two).
static LAST_BODY: AtomicUsize = AtomicUsize::new(0);
/// The largest capacity [`LAST_BODY`] gives a new body: a large event
/// now and then must not make every small one after it hold as much.
const MAX_BODY_HINT: usize = 4096;

impl dyn Codec {
    /// **Encodes a value** into a new body.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encode`] when the value cannot be represented.
    pub fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        // Sized like the last body, so that a stream of similar events
        // encodes without growing the buffer.
        let hint = LAST_BODY
            .load(Ordering::Relaxed)
            .next_power_of_two()
            .clamp(64, MAX_BODY_HINT);
        let mut out = Vec::with_capacity(hint);
        self.encode_erased(&value, &mut out)?;
        LAST_BODY.store(out.len(), Ordering::Relaxed);
        Ok(out)
    }

    /// **Decodes a body** into a value of type `T`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Decode`] when the body is not a valid `T` in this format.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let mut out = None;
        self.decode_with(bytes, &mut |de| {
            out = Some(erased_serde::deserialize::<T>(de)?);
            Ok(())
        })?;
        out.ok_or_else(|| decode_error(self.content_type(), "the decoder produced no value"))
    }
}

/// **bincode 2 with its standard configuration**: little-endian varints, no
/// field names. The default codec: compact and fast, but not
/// self-describing, so sender and receiver must agree on the exact type.
///
/// Decoding is bounded: a length prefix may claim at most eight times the
/// body's size in memory, so a 22-byte message claiming a 2^40-byte string
/// fails cleanly instead of aborting the process; trailing bytes are an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

/// **JSON through `serde_json`**: self-describing and readable by anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

/// bincode's writer appending to a `Vec`.
struct Append<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for Append<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// How many bytes of memory a bincode length prefix may claim per body byte.
const BINCODE_CLAIM_FACTOR: usize = 8;

impl Codec for Bincode {
    fn content_type(&self) -> &str {
        BINCODE_CONTENT_TYPE
    }

    fn encode_erased(&self, value: &dyn erased_serde::Serialize, out: &mut Vec<u8>) -> Result<()> {
        // Straight into `out`: no body-sized Vec of bincode's own to copy.
        bincode::serde::encode_into_writer(value, Append(out), bincode::config::standard()).map_err(
            |e| {
                Error::with_source(
                    ErrorKind::Encode,
                    format!("bincode encoding failed: {e}"),
                    e,
                )
            },
        )
    }

    fn decode_with(&self, bytes: &[u8], visit: &mut DecodeVisitor<'_>) -> Result<()> {
        bincode_seed(bytes, ErasedSeed(visit))
    }
}

/// Decodes the whole of `bytes` with a seed, as [`Bincode`] does: bounded,
/// and with no bytes left over.
pub(crate) fn bincode_seed<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value> {
    let claim = bytes.len().saturating_mul(BINCODE_CLAIM_FACTOR).max(4096);
    bincode_decode_within(claim, bytes, seed)
}

/// The name a bincode event body carries its event under (typetag's
/// one-entry map, `{name: event}`), without reading the event; `None` when
/// the body does not start so.
pub(crate) fn bincode_event_name(body: &[u8]) -> Option<&str> {
    let config = bincode::config::standard().with_limit::<1024>();
    match bincode::serde::borrow_decode_from_slice::<(u64, &str), _>(body, config) {
        Ok(((1, name), _)) => Some(name),
        _ => None,
    }
}

/// Decodes with the smallest compiled-in claim limit at least `claim`:
/// bincode takes its limit as a const generic, so runtime sizes map to tiers.
fn bincode_decode_within<'de, S: DeserializeSeed<'de>>(
    claim: usize,
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value> {
    macro_rules! tiers {
        ($($shift:literal)*) => {
            $(
                if claim <= 1usize << $shift {
                    let config = bincode::config::standard().with_limit::<{ 1usize << $shift }>();
                    return bincode_decode(bytes, config, seed);
                }
            )*
        };
    }
    tiers!(12 14 16 18 20 22 24 26 28 30 32);
    Err(decode_error(
        BINCODE_CONTENT_TYPE,
        format!("body of {} bytes is too large to decode", bytes.len()),
    ))
}

fn bincode_decode<'de, C: bincode::config::Config, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    config: C,
    seed: S,
) -> Result<S::Value> {
    let (value, read) = bincode::serde::seed_decode_from_slice(seed, bytes, config)
        .map_err(|e| decode_error(BINCODE_CONTENT_TYPE, bincode_cause(e)))?;
    if read != bytes.len() {
        return Err(decode_error(
            BINCODE_CONTENT_TYPE,
            format!("{} trailing bytes after the value", bytes.len() - read),
        ));
    }
    Ok(value)
}

/// Says what a bincode error means; errors from inside the erased visitor
/// arrive as strings.
fn bincode_cause(e: bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError;
    let mut text = match e {
        DecodeError::OtherString(text) => text,
        other => other.to_string(),
    };
    // Each serde layer between bincode and the erased visitor wraps the
    // message in the Debug form of `OtherString`; unwrap them.
    while let Some(inner) = text
        .strip_prefix("OtherString(\"")
        .and_then(|t| t.strip_suffix("\")"))
    {
        text = inner.replace("\\\"", "\"").replace("\\\\", "\\");
    }
    if text.contains("LimitExceeded") {
        "a length prefix claims more memory than the body can hold (decode limit exceeded)"
            .to_owned()
    } else {
        text
    }
}

/// Runs an erased visitor from inside a typed `Deserializer`.
struct ErasedSeed<'v, 'a>(&'v mut DecodeVisitor<'a>);

impl<'de> DeserializeSeed<'de> for ErasedSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let mut erased = <dyn erased_serde::Deserializer<'de>>::erase(deserializer);
        (self.0)(&mut erased).map_err(serde::de::Error::custom)
    }
}

impl Codec for Json {
    fn content_type(&self) -> &str {
        JSON_CONTENT_TYPE
    }

    fn encode_erased(&self, value: &dyn erased_serde::Serialize, out: &mut Vec<u8>) -> Result<()> {
        serde_json::to_writer(out, value).map_err(|e| {
            Error::with_source(ErrorKind::Encode, format!("json encoding failed: {e}"), e)
        })
    }

    fn decode_with(&self, bytes: &[u8], visit: &mut DecodeVisitor<'_>) -> Result<()> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        ErasedSeed(visit)
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| decode_error(JSON_CONTENT_TYPE, e))
    }
}

/// The codec a URL's `codec=` names.
pub(crate) fn builtin(name: &str) -> Result<Arc<dyn Codec>> {
    match name {
        "bincode" => Ok(Arc::new(Bincode)),
        "json" => Ok(Arc::new(Json)),
        other => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("unknown codec {other:?}; use bincode or json"),
        )),
    }
}

/// **The codecs a receiver knows**, looked up by `content-type`: the
/// sender-side codec of the props first, then the built-in ones.
#[derive(Debug, Clone)]
pub(crate) struct Codecs {
    primary: Arc<dyn Codec>,
}

impl Codecs {
    pub(crate) fn new(primary: Arc<dyn Codec>) -> Self {
        Self { primary }
    }

    /// The codec for a message's `content-type`.
    pub(crate) fn for_content_type(&self, content_type: Option<&str>) -> Result<&dyn Codec> {
        let Some(content_type) = content_type else {
            return Err(Error::new(
                ErrorKind::UnknownContentType,
                "message has no content-type; the publisher must set one (application/x-bincode or application/json)",
            ));
        };
        // What tidings itself sends: found without parsing.
        if content_type == self.primary.content_type() {
            return Ok(&*self.primary);
        }
        // Parameters such as `; charset=utf-8` do not change the format, and
        // MIME types are case-insensitive (RFC 2045): `Application/JSON` is JSON.
        let mime = content_type.split(';').next().unwrap_or_default().trim();
        let is = |name: &str| mime.eq_ignore_ascii_case(name);
        if is(self.primary.content_type()) {
            return Ok(&*self.primary);
        }
        match mime {
            _ if is(BINCODE_CONTENT_TYPE) => Ok(&Bincode),
            _ if is(JSON_CONTENT_TYPE) => Ok(&Json),
            _ => Err(Error::new(
                ErrorKind::UnknownContentType,
                format!(
                    "unknown content-type {content_type:?}; this receiver decodes {}, {BINCODE_CONTENT_TYPE} and {JSON_CONTENT_TYPE}",
                    self.primary.content_type()
                ),
            )),
        }
    }
}

fn decode_error(content_type: &str, cause: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("cannot decode {content_type} body: {cause}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Status {
        Open,
        Closed { reason: String },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Order {
        id: u64,
        name: String,
        tags: Vec<String>,
        note: Option<String>,
        status: Status,
        lines: BTreeMap<String, f64>,
    }

    fn order() -> Order {
        Order {
            id: 7,
            name: "café ☕".into(),
            tags: vec!["a".into(), String::new()],
            note: None,
            status: Status::Closed {
                reason: "done".into(),
            },
            lines: [("x".to_owned(), 1.5)].into(),
        }
    }

    fn codecs() -> [&'static dyn Codec; 2] {
        [&Bincode, &Json]
    }

    #[test]
    fn round_trip_in_both_codecs() {
        for codec in codecs() {
            let body = codec.encode(&order()).unwrap();
            assert_eq!(codec.decode::<Order>(&body).unwrap(), order(), "{codec:?}");
        }
    }

    #[test]
    fn trailing_and_truncated_bytes_are_rejected() {
        for codec in codecs() {
            let mut body = codec.encode(&order()).unwrap();
            let truncated = &body[..body.len() - 1];
            assert_eq!(
                codec.decode::<Order>(truncated).unwrap_err().kind(),
                ErrorKind::Decode
            );
            body.push(b' ');
            body.push(0);
            let e = codec.decode::<Order>(&body).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Decode, "{codec:?}");
        }
    }

    #[test]
    fn bincode_length_bomb_fails_cleanly() {
        // A String whose varint length prefix says 2^40: 0xFD then a u64.
        let mut bomb = vec![0xFD];
        bomb.extend_from_slice(&(1u64 << 40).to_le_bytes());
        bomb.extend_from_slice(&[b'a'; 13]);
        assert_eq!(bomb.len(), 22);
        let e = (&Bincode as &dyn Codec)
            .decode::<String>(&bomb)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode);
        assert!(e.to_string().contains("decode limit exceeded"), "{e}");
        let e = (&Bincode as &dyn Codec)
            .decode::<Vec<u64>>(&bomb)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode);
    }

    #[test]
    fn large_but_honest_bodies_decode() {
        let big = "z".repeat(3_000_000);
        let codec: &dyn Codec = &Bincode;
        assert_eq!(
            codec
                .decode::<String>(&codec.encode(&big).unwrap())
                .unwrap(),
            big
        );
        let small_ints = vec![1u64; 100_000];
        assert_eq!(
            codec
                .decode::<Vec<u64>>(&codec.encode(&small_ints).unwrap())
                .unwrap(),
            small_ints
        );
    }

    #[test]
    fn content_type_picks_the_codec() {
        let codecs = Codecs::new(Arc::new(Bincode));
        assert_eq!(
            codecs
                .for_content_type(Some("application/json; charset=utf-8"))
                .unwrap()
                .content_type(),
            JSON_CONTENT_TYPE
        );
        assert_eq!(
            codecs
                .for_content_type(Some(BINCODE_CONTENT_TYPE))
                .unwrap()
                .content_type(),
            BINCODE_CONTENT_TYPE
        );
        for (content_type, expected) in [
            ("APPLICATION/JSON", JSON_CONTENT_TYPE),
            ("Application/Json;charset=UTF-8", JSON_CONTENT_TYPE),
            ("Application/X-Bincode; charset=utf-8", BINCODE_CONTENT_TYPE),
            (" application/X-BINCODE ", BINCODE_CONTENT_TYPE),
        ] {
            assert_eq!(
                codecs
                    .for_content_type(Some(content_type))
                    .unwrap()
                    .content_type(),
                expected,
                "{content_type}"
            );
        }
        let e = codecs.for_content_type(Some("text/x-pickle")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownContentType);
        assert!(e.to_string().contains("text/x-pickle"));
        assert_eq!(
            codecs.for_content_type(None).unwrap_err().kind(),
            ErrorKind::UnknownContentType
        );
    }
}
