//! The `Event` trait, its static side `EventType`, schema fingerprints, and
//! the registry of derived event types.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

/// **An event that can cross processes**: serializable as a trait object,
/// decodable only when its type is registered, and self-describing enough to
/// be dispatched to typed subscribers.
///
/// Implement it with `#[derive(Event)]` (with serde's `Serialize` and
/// `Deserialize`), never by hand: the derive registers the type under its
/// wire tag and computes its schema [`Fingerprint`].
///
/// On the wire an event is externally tagged, so a JSON body reads
/// `{"invoices.sent":{"id":7,"item":"tea"}}`.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::{Event, EventType};
///
/// #[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
/// #[event(name = "invoices.sent")]
/// struct InvoiceSent { id: u64, item: String }
///
/// let event: Box<dyn Event> = Box::new(InvoiceSent { id: 7, item: "tea".into() });
/// assert_eq!(event.tag(), "invoices.sent");
/// assert_eq!(event.routing_key(), "invoices.sent");
/// assert_eq!(event.fingerprint(), InvoiceSent::FINGERPRINT);
/// assert_eq!(serde_json::to_string(&event).unwrap(), r#"{"invoices.sent":{"id":7,"item":"tea"}}"#);
///
/// let back: Box<dyn Event> = serde_json::from_str(r#"{"invoices.sent":{"id":8,"item":"cake"}}"#).unwrap();
/// let order = back.as_any().downcast_ref::<InvoiceSent>().unwrap();
/// assert_eq!(order.id, 8);
/// ```
#[typetag::serde]
pub trait Event: Any + Send + Sync + fmt::Debug {
    /// The wire tag: `#[event(name = "..")]`, or the type's name.
    fn tag(&self) -> &'static str;

    /// The schema fingerprint of the type.
    fn fingerprint(&self) -> Fingerprint;

    /// The routing key: `#[event(routing_key = "..")]`, or the tag.
    fn routing_key(&self) -> &'static str;

    /// The event as `Any`, to downcast to its concrete type.
    fn as_any(&self) -> &dyn Any;

    /// The shared event as `Any`, to downcast without copying.
    fn into_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// **The static side of a derived event**: its tag, fingerprint and routing
/// key as constants, and serde both ways. Typed APIs
/// ([`Subscribers::subscribe`](crate::Subscribers::subscribe)) take an
/// `EventType`.
pub trait EventType: Event + Serialize + DeserializeOwned + Sized {
    /// The wire tag.
    const TAG: &'static str;
    /// The schema fingerprint.
    const FINGERPRINT: Fingerprint;
    /// The routing key.
    const ROUTING_KEY: &'static str;
}

/// **A stable hash of an event type's shape**: its tag, field names, field
/// types as written, and variant names. Two processes whose fingerprints
/// differ for one tag disagree about the type's layout.
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

/// One derived event type, as registered by `#[derive(Event)]`.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    tag: &'static str,
    type_name: &'static str,
    fingerprint: Fingerprint,
}

impl Registration {
    /// Used by generated code; not public API.
    #[doc(hidden)]
    #[must_use]
    pub const fn new(tag: &'static str, type_name: &'static str, fingerprint: Fingerprint) -> Self {
        Self {
            tag,
            type_name,
            fingerprint,
        }
    }

    /// The wire tag.
    #[must_use]
    pub fn tag(&self) -> &'static str {
        self.tag
    }

    /// The Rust path of the type.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The schema fingerprint.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

inventory::collect!(Registration);

/// **Every event type derived in this binary**, by tag.
///
/// # Errors
///
/// [`ErrorKind::InvalidConfig`] naming both types when two types are
/// registered under one tag (typetag alone would only notice at the first
/// decode of that tag).
pub fn registered_events() -> Result<&'static HashMap<&'static str, Registration>> {
    static REGISTRY: std::sync::OnceLock<Result<HashMap<&'static str, Registration>, String>> =
        std::sync::OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            let mut by_tag = HashMap::new();
            let mut all: Vec<&Registration> = inventory::iter::<Registration>.into_iter().collect();
            all.sort_by_key(|r| (r.tag, r.type_name));
            for registration in all {
                if let Some(first) = by_tag.insert(registration.tag, *registration)
                    && first.type_name != registration.type_name
                {
                    return Err(format!(
                        "event tag {:?} is registered by two types, {} and {}; give one of them another #[event(name = \"...\")]",
                        registration.tag, first.type_name, registration.type_name
                    ));
                }
            }
            Ok(by_tag)
        })
        .as_ref()
        .map_err(|message| Error::new(ErrorKind::InvalidConfig, message.clone()))
}
