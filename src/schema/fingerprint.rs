//! `Fingerprint`: the hash of an event type's schema, as it travels in a
//! header.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};

/// **A stable hash of an event type's shape**: its tag, version and
/// complete serde format ([`Schema`](crate::Schema)). Two processes whose fingerprints
/// differ for one tag disagree about the type's layout, and the receiver
/// reads the event by the writer's schema.
///
/// Printed and sent as 16 hex digits.
///
/// # Examples
///
/// ```
/// let fp: tidings::Fingerprint = "00000000000000ff".parse()?;
/// assert_eq!(fp.to_string(), "00000000000000ff");
/// assert_eq!(fp, tidings::Fingerprint::from_u64(255));
/// # Ok::<(), tidings::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// Wraps a raw 64-bit fingerprint.
    #[must_use]
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }

    /// The raw 64-bit value.
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Fingerprint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 16 {
            return Err(Error::new(
                ErrorKind::Decode,
                format!("fingerprint {s:?} is not 16 hex digits"),
            ));
        }
        u64::from_str_radix(s, 16).map(Self).map_err(|_| {
            Error::new(
                ErrorKind::Decode,
                format!("fingerprint {s:?} is not 16 hex digits"),
            )
        })
    }
}
