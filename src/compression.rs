//! Compression: bodies compressed by a publisher, named in the AMQP
//! `content-encoding` property, and decompressed by receivers, bounded.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use crate::error::{Error, ErrorKind, Result};

/// Bodies smaller than this are sent as they are: compressing them saves
/// little and costs a receiver a decompression.
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 1024;

/// **How bodies are compressed**, named on the wire by the AMQP
/// `content-encoding` property (`gzip`, `zstd`, `lz4`). Receivers read every
/// algorithm this build has, whatever they send with.
///
/// gzip is always built (pure Rust); zstd needs the cargo feature `zstd`
/// (the C library), lz4 the feature `lz4` (pure Rust). Chosen per bus
/// (`compression=gzip` in the URL, [`AmqpProps::with_compression`](crate::AmqpProps::with_compression),
/// [`BusBuilder::compression`](crate::BusBuilder::compression)) or per
/// event ([`PublishOptions::compression`](crate::PublishOptions::compression)),
/// with a size below which nothing is compressed (default
/// [`DEFAULT_COMPRESSION_THRESHOLD`]).
///
/// # Examples
///
/// ```
/// use tidings::Compression;
///
/// let body = br#"{"orders.placed":{"id":1,"item":"tea"}}"#.repeat(50);
/// let packed = Compression::Gzip.compress(&body)?;
/// assert!(packed.len() < body.len() / 10);
/// assert_eq!(Compression::Gzip.content_encoding(), Some("gzip"));
/// assert_eq!("gzip".parse::<Compression>()?, Compression::Gzip);
/// # Ok::<(), tidings::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Bodies as the codec wrote them (the default); no `content-encoding`.
    #[default]
    None,
    /// gzip (RFC 1952) at level 1, its fastest: read by anything.
    Gzip,
    /// zstd, level 3: smaller and faster than gzip (feature `zstd`).
    Zstd,
    /// LZ4 frames: the fastest, compresses least (feature `lz4`).
    Lz4,
}

impl Compression {
    /// The `content-encoding` this writes; `None` for [`Compression::None`].
    #[must_use]
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Gzip => Some("gzip"),
            Self::Zstd => Some("zstd"),
            Self::Lz4 => Some("lz4"),
        }
    }

    /// Whether this build of tidings can compress and decompress it.
    #[must_use]
    pub fn is_built(self) -> bool {
        match self {
            Self::None | Self::Gzip => true,
            Self::Zstd => cfg!(feature = "zstd"),
            Self::Lz4 => cfg!(feature = "lz4"),
        }
    }

    /// Fails unless this build has it, saying which feature to turn on.
    pub(crate) fn check_built(self) -> Result<Self> {
        if self.is_built() {
            return Ok(self);
        }
        let feature = if self == Self::Zstd { "zstd" } else { "lz4" };
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "compression {self} is not built into this tidings; turn on its cargo feature `{feature}`"
            ),
        ))
    }

    /// **Compresses a body.**
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for an algorithm this build lacks,
    /// [`ErrorKind::Encode`] when compressing fails.
    pub fn compress(self, body: &[u8]) -> Result<Vec<u8>> {
        let failed = |e: std::io::Error| {
            Error::with_source(
                ErrorKind::Encode,
                format!("{self} compression failed: {e}"),
                e,
            )
        };
        match self.check_built()? {
            Self::None => Ok(body.to_vec()),
            Self::Gzip => {
                let mut out = Vec::with_capacity(body.len() / 4 + 64);
                let mut encoder = flate2::read::GzEncoder::new(body, flate2::Compression::new(1));
                encoder.read_to_end(&mut out).map_err(failed)?;
                Ok(out)
            }
            #[cfg(feature = "zstd")]
            Self::Zstd => zstd::bulk::compress(body, 3).map_err(failed),
            #[cfg(feature = "lz4")]
            Self::Lz4 => {
                use std::io::Write;
                let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
                encoder.write_all(body).map_err(failed)?;
                encoder
                    .finish()
                    .map_err(|e| failed(std::io::Error::other(e)))
            }
            #[allow(unreachable_patterns)] // an algorithm not built was refused above
            _ => Ok(body.to_vec()),
        }
    }

    /// The algorithm a `content-encoding` names (case-insensitive;
    /// `identity` and none are [`Compression::None`]), whether or not
    /// this build has it; `None` for one tidings does not know.
    #[must_use]
    pub fn from_content_encoding(encoding: Option<&str>) -> Option<Self> {
        let Some(encoding) = encoding.map(str::trim) else {
            return Some(Self::None);
        };
        let is = |name: &str| encoding.eq_ignore_ascii_case(name);
        if encoding.is_empty() || is("identity") {
            Some(Self::None)
        } else if is("gzip") || is("x-gzip") {
            Some(Self::Gzip)
        } else if is("zstd") {
            Some(Self::Zstd)
        } else if is("lz4") {
            Some(Self::Lz4)
        } else {
            None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.content_encoding().unwrap_or("none"))
    }
}

impl std::str::FromStr for Compression {
    type Err = Error;

    /// `none`, `gzip`, `zstd` or `lz4`.
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            "lz4" => Ok(Self::Lz4),
            other => Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("unknown compression {other:?}; use none, gzip, zstd or lz4"),
            )),
        }
    }
}

/// **Compression with the size it starts at**: what a bus (or one publish)
/// compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compress {
    pub(crate) algorithm: Compression,
    /// Bodies shorter than this are not compressed.
    pub(crate) threshold: usize,
}

impl Default for Compress {
    fn default() -> Self {
        Self {
            algorithm: Compression::None,
            threshold: DEFAULT_COMPRESSION_THRESHOLD,
        }
    }
}

impl Compress {
    /// `body` compressed if it is long enough, and its `content-encoding`.
    pub(crate) fn apply(self, body: Vec<u8>) -> Result<(Vec<u8>, Option<&'static str>)> {
        if self.algorithm == Compression::None || body.len() < self.threshold {
            return Ok((body, None));
        }
        let packed = self.algorithm.compress(&body)?;
        Ok((packed, self.algorithm.content_encoding()))
    }
}

/// Why a body could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inflate {
    /// It would decompress past the limit.
    Bomb(String),
    /// The `content-encoding` is not one this build reads.
    Unknown(String),
    /// The bytes are not what the encoding says.
    Corrupt(String),
}

/// **A body decompressed by its `content-encoding`**, never past `limit`
/// bytes: decompression reads through a reader limited to `limit + 1`
/// bytes, so a bomb costs at most that much memory before it is refused.
pub(crate) fn decompress<'a>(
    body: &'a [u8],
    encoding: Option<&str>,
    limit: usize,
) -> std::result::Result<Cow<'a, [u8]>, Inflate> {
    // Text from the wire: at most 64 characters of it in an error.
    let shown = || encoding.unwrap_or("").chars().take(64).collect::<String>();
    let algorithm = Compression::from_content_encoding(encoding).ok_or_else(|| {
        Inflate::Unknown(format!(
            "unknown content-encoding {:?}; this receiver reads {}",
            shown(),
            built_encodings()
        ))
    })?;
    if !algorithm.is_built() {
        return Err(Inflate::Unknown(format!(
            "content-encoding {:?} is not built into this receiver (cargo feature `{algorithm}`); it reads {}",
            shown(),
            built_encodings()
        )));
    }
    let reader: Box<dyn Read + '_> = match algorithm {
        Compression::None => return Ok(Cow::Borrowed(body)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        #[cfg(feature = "zstd")]
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(body)
                .map_err(|e| Inflate::Corrupt(format!("zstd body: {e}")))?,
        ),
        #[cfg(feature = "lz4")]
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(body)),
        #[allow(unreachable_patterns)] // refused above when not built
        _ => return Ok(Cow::Borrowed(body)),
    };
    let cap = limit.saturating_add(1);
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(cap).min(1 << 20));
    reader
        .take(cap as u64)
        .read_to_end(&mut out)
        .map_err(|e| Inflate::Corrupt(format!("{algorithm} body does not decompress: {e}")))?;
    if out.len() > limit {
        return Err(Inflate::Bomb(format!(
            "{algorithm} body of {} bytes decompresses to more than the maximum message size of {limit} bytes",
            body.len()
        )));
    }
    Ok(Cow::Owned(out))
}

/// **Decompresses as a receiver does**, bounded by `limit`: for the
/// benchmark of what decompression costs. Not public API.
///
/// # Errors
///
/// Why the body was refused.
#[doc(hidden)]
pub fn decompress_probe(
    body: &[u8],
    encoding: Option<&str>,
    limit: usize,
) -> std::result::Result<Vec<u8>, String> {
    decompress(body, encoding, limit)
        .map(Cow::into_owned)
        .map_err(|e| format!("{e:?}"))
}

/// The encodings this build reads, for errors.
fn built_encodings() -> String {
    [Compression::Gzip, Compression::Zstd, Compression::Lz4]
        .into_iter()
        .filter(|c| c.is_built())
        .map(|c| c.to_string())
        .chain(["identity".to_owned()])
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built() -> Vec<Compression> {
        [Compression::Gzip, Compression::Zstd, Compression::Lz4]
            .into_iter()
            .filter(|c| c.is_built())
            .collect()
    }

    #[test]
    fn every_built_algorithm_round_trips() {
        let body = br#"{"a":"some text that repeats","n":12345}"#.repeat(100);
        for algorithm in built() {
            let packed = algorithm.compress(&body).unwrap();
            assert!(packed.len() < body.len() / 5, "{algorithm}");
            let plain = decompress(&packed, algorithm.content_encoding(), body.len()).unwrap();
            assert_eq!(&*plain, &body[..], "{algorithm}");
        }
    }

    #[test]
    fn a_bomb_is_refused_without_inflating_it_whole() {
        let zeros = vec![0u8; 64 << 20];
        for algorithm in built() {
            let bomb = algorithm.compress(&zeros).unwrap();
            assert!(bomb.len() < 1 << 20, "{algorithm}: {}", bomb.len());
            let e = decompress(&bomb, algorithm.content_encoding(), 1 << 20).unwrap_err();
            assert!(matches!(e, Inflate::Bomb(_)), "{algorithm}: {e:?}");
            // Exactly at the limit is fine.
            let fits = decompress(&bomb, algorithm.content_encoding(), 64 << 20).unwrap();
            assert_eq!(fits.len(), 64 << 20);
        }
    }

    #[test]
    fn unknown_and_corrupt_bodies_are_refused() {
        let e = decompress(b"x", Some("br"), 100).unwrap_err();
        assert!(
            matches!(&e, Inflate::Unknown(m) if m.contains("\"br\"")),
            "{e:?}"
        );
        let e = decompress(b"not gzip at all", Some("gzip"), 100).unwrap_err();
        assert!(matches!(e, Inflate::Corrupt(_)), "{e:?}");
        assert_eq!(&*decompress(b"x", Some("identity"), 100).unwrap(), b"x");
        assert_eq!(&*decompress(b"x", None, 100).unwrap(), b"x");
        let e = decompress(b"x", Some(" GZIP "), 100).unwrap_err();
        assert!(matches!(e, Inflate::Corrupt(_)), "read as gzip: {e:?}");
    }

    #[test]
    fn small_bodies_stay_plain() {
        let compress = Compress {
            algorithm: Compression::Gzip,
            threshold: 100,
        };
        assert_eq!(compress.apply(vec![1; 99]).unwrap(), (vec![1; 99], None));
        let (packed, encoding) = compress.apply(vec![1; 100]).unwrap();
        assert_eq!(encoding, Some("gzip"));
        assert_ne!(packed, vec![1; 100]);
    }
}
