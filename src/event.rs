//! The `Event` trait, its static side `EventType`, schema fingerprints, and
//! the registry of derived event types.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use fnv::FnvBuildHasher as FnvBuild;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};
use crate::schema::{Fingerprint, Schema, Value};

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
/// assert_eq!(event.fingerprint(), InvoiceSent::schema().fingerprint());
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

    /// The version: `#[event(version = N)]`, 1 by default.
    fn version(&self) -> u32;

    /// The deep schema fingerprint of the type ([`Schema::fingerprint`]).
    fn fingerprint(&self) -> Fingerprint;

    /// The routing key: `#[event(routing_key = "..")]`, or the tag.
    fn routing_key(&self) -> &'static str;

    /// The event as `Any`, to downcast to its concrete type.
    fn as_any(&self) -> &dyn Any;

    /// The shared event as `Any`, to downcast without copying.
    fn into_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// **The static side of a derived event**: its tag, version and routing
/// key as constants, its schema, and serde both ways. Typed APIs
/// ([`Subscribers::subscribe`](crate::Subscribers::subscribe)) take an
/// `EventType`.
pub trait EventType: Event + Serialize + DeserializeOwned + Sized {
    /// The wire tag.
    const TAG: &'static str;
    /// The version, 1 unless `#[event(version = N)]`.
    const VERSION: u32;
    /// The routing key.
    const ROUTING_KEY: &'static str;

    /// The type's schema, traced on first use.
    fn schema() -> &'static Schema;
}

/// Reads an event out of a [`Value`]; the flags say whether the writer's
/// codec was human-readable, and whether a failure names the field's path.
type ReadFn = fn(Value, bool, bool) -> std::result::Result<Box<dyn Event>, String>;

/// Turns the previous version of an event into this one.
#[doc(hidden)]
pub type UpcastFn = fn(Arc<dyn Event>) -> std::result::Result<Arc<dyn Event>, String>;

/// One derived event type, as registered by `#[derive(Event)]`.
#[derive(Clone, Copy)]
pub struct Registration {
    tag: &'static str,
    version: u32,
    type_name: &'static str,
    wire_name: &'static str,
    schema: fn() -> &'static Schema,
    read: ReadFn,
    upcast: Option<UpcastFn>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("tag", &self.tag)
            .field("version", &self.version)
            .field("type_name", &self.type_name)
            .field("upcasts", &self.upcast.is_some())
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// Used by generated code; not public API.
    #[doc(hidden)]
    #[must_use]
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        tag: &'static str,
        version: u32,
        type_name: &'static str,
        wire_name: &'static str,
        schema: fn() -> &'static Schema,
        read: ReadFn,
        upcast: Option<UpcastFn>,
    ) -> Self {
        Self {
            tag,
            version,
            type_name,
            wire_name,
            schema,
            read,
            upcast,
        }
    }

    /// The wire tag.
    #[must_use]
    pub fn tag(&self) -> &'static str {
        self.tag
    }

    /// The version.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The Rust path of the type.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The deep schema fingerprint.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.schema().fingerprint()
    }

    /// The type's schema.
    #[must_use]
    pub fn schema(&self) -> &'static Schema {
        (self.schema)()
    }

    /// The name the body carries the event under: the tag for version 1,
    /// `<tag>@v<N>` after.
    pub(crate) fn wire_name(&self) -> &'static str {
        self.wire_name
    }

    /// Reads the event out of a value resolved from another schema. A
    /// failure does not say where: read it again with
    /// [`read_naming_path`](Self::read_naming_path) to word the error.
    pub(crate) fn read(
        &self,
        value: Value,
        human_readable: bool,
    ) -> std::result::Result<Box<dyn Event>, String> {
        (self.read)(value, human_readable, false)
    }

    /// The same, and a failure names the field's path.
    pub(crate) fn read_naming_path(
        &self,
        value: Value,
        human_readable: bool,
    ) -> std::result::Result<Box<dyn Event>, String> {
        (self.read)(value, human_readable, true)
    }

    /// Turns an event of the previous version into this one, if this
    /// version declares `upcast_from`.
    pub(crate) fn upcast(&self) -> Option<UpcastFn> {
        self.upcast
    }
}

inventory::collect!(Registration);

/// **Every event type derived in this binary**, by tag and version.
#[derive(Debug)]
pub struct EventRegistry {
    /// By tag, each tag's versions in order. FNV is unkeyed, which is
    /// safe here: the map is built at start-up and only searched with tags
    /// from the wire (a crafted tag costs at most one more comparison).
    by_tag: HashMap<&'static str, Vec<Registration>, FnvBuild>,
}

impl EventRegistry {
    /// The type registered for a tag at a version.
    #[must_use]
    pub fn get(&self, tag: &str, version: u32) -> Option<&Registration> {
        self.by_tag.get(tag)?.iter().find(|r| r.version == version)
    }

    /// The type registered for a tag at a version, and the tag's later
    /// versions in order (those an event of it is upcast through): one
    /// search for both.
    pub(crate) fn get_with_later(
        &self,
        tag: &str,
        version: u32,
    ) -> Option<(&Registration, &[Registration])> {
        let versions = self.by_tag.get(tag)?;
        let at = versions.iter().position(|r| r.version == version)?;
        Some((&versions[at], &versions[at + 1..]))
    }

    /// The newest version registered for a tag.
    #[must_use]
    pub fn newest(&self, tag: &str) -> Option<u32> {
        self.by_tag.get(tag)?.last().map(|r| r.version)
    }

    /// Every registered type, ordered by tag and version.
    #[must_use]
    pub fn all(&self) -> Vec<&Registration> {
        let mut all: Vec<&Registration> = self.by_tag.values().flatten().collect();
        all.sort_by_key(|r| (r.tag, r.version));
        all
    }

    /// How many types are registered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_tag.values().map(Vec::len).sum()
    }

    /// Whether none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_tag.is_empty()
    }
}

/// **Every event type derived in this binary**, by tag and version.
///
/// # Errors
///
/// [`ErrorKind::InvalidConfig`] naming both types when two types are
/// registered under one tag and version (typetag alone would only notice at
/// the first decode of that tag).
pub fn registered_events() -> Result<&'static EventRegistry> {
    static REGISTRY: std::sync::OnceLock<Result<EventRegistry, String>> =
        std::sync::OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            let mut by_tag: HashMap<&'static str, Vec<Registration>, FnvBuild> =
                HashMap::default();
            let mut all: Vec<&Registration> = inventory::iter::<Registration>.into_iter().collect();
            all.sort_by_key(|r| (r.tag, r.version, r.type_name));
            all.dedup_by_key(|r| (r.tag, r.version, r.type_name));
            for registration in all {
                let versions = by_tag.entry(registration.tag).or_default();
                if let Some(first) = versions.iter().find(|r| r.version == registration.version) {
                    let version = if registration.version == 1 {
                        String::new()
                    } else {
                        format!(" at version {}", registration.version)
                    };
                    return Err(format!(
                        "event tag {:?}{version} is registered by two types, {} and {}; give one of them another #[event(name = \"...\")] or #[event(version = N)]",
                        registration.tag, first.type_name, registration.type_name
                    ));
                }
                versions.push(*registration);
            }
            Ok(EventRegistry { by_tag })
        })
        .as_ref()
        .map_err(|message| Error::new(ErrorKind::InvalidConfig, message.clone()))
}
