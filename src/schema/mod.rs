//! **Event schemas**: the complete serde format of an event type, its deep
//! fingerprint, and reading an event written with another schema.
//!
//! A schema is traced once per type with `serde-reflection` (which records
//! what serde does, so renames, nested types and containers all count and
//! the spelling of a type does not). It travels as JSON: publishers store
//! theirs on the broker, receivers look up a writer's schema when its
//! fingerprint differs from their own, and lock files keep them in a repo.

mod compat;
mod fingerprint;
mod format;
mod read;
mod sample;
pub(crate) mod store;
mod trace;
mod value;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use compat::Incompatible;
pub use fingerprint::Fingerprint;
#[doc(hidden)]
pub use value::Value;

use format::{ContainerFormat, Containers, Format};
pub(crate) use value::ValueDeserializer;

/// **The schema of one event type at one version**: its tag, version,
/// complete serde format, and deep fingerprint; or, for a type whose format
/// cannot be traced, why not.
///
/// Serialized as JSON for the broker's schema store, lock files and
/// exports. Get a derived type's with [`EventType::schema`](crate::EventType::schema).
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::{Event, EventType};
///
/// #[derive(Serialize, Deserialize, Debug)]
/// struct Line { sku: String, cents: u64 }
///
/// #[derive(Event, Serialize, Deserialize, Debug)]
/// #[event(name = "schema.order_placed")]
/// struct OrderPlaced { id: u64, lines: Vec<Line> }
///
/// #[derive(Event, Serialize, Deserialize, Debug)]
/// #[event(name = "schema.order_placed", version = 2)]
/// struct OrderPlacedV2 { id: u64, lines: Vec<Line>, coupon: Option<String> }
///
/// let v1 = OrderPlaced::schema();
/// let v2 = OrderPlacedV2::schema();
/// assert_eq!(v1.fields(), ["id", "lines"]);
/// assert!(v1.is_traced() && v1.fingerprint() != v2.fingerprint());
/// assert!(v1.can_read(v1).is_ok());
/// // Another version is a breaking change: readers of v2 upcast v1.
/// assert!(v2.can_read(v1).is_err());
/// println!("{}", v1.to_json_schema()); // for other languages
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    tag: String,
    version: u32,
    fingerprint: Fingerprint,
    /// The root format; `None` when the type could not be traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root: Option<Format>,
    /// The containers the root names, by serde name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    types: Containers,
    /// The `#[serde(alias)]` names of the event's own fields, by field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    aliases: BTreeMap<String, Vec<String>>,
    /// The fields a reader of this schema fills when they are absent
    /// (`Option`, `#[serde(default)]`), by container (`Enum::Variant` for
    /// a struct variant).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    optional: BTreeMap<String, BTreeSet<String>>,
    /// Why the format could not be traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    untraced: Option<String>,
}

impl Schema {
    /// **Traces a type's schema**: `aliases` are the `#[serde(alias)]`
    /// names of each of its own fields that serde reads, in order (or
    /// nothing when none has one), and `fallback` the fingerprint to use if
    /// its format cannot be traced (the derive's, of the type as written).
    /// Used by `#[derive(Event)]`.
    #[doc(hidden)]
    #[must_use]
    pub fn trace<T: DeserializeOwned>(
        tag: &str,
        version: u32,
        aliases: &[&[&str]],
        fallback: Fingerprint,
    ) -> Self {
        let mut schema = Self {
            tag: tag.to_owned(),
            version,
            fingerprint: fallback,
            root: None,
            types: Containers::new(),
            aliases: BTreeMap::new(),
            optional: BTreeMap::new(),
            untraced: None,
        };
        match trace::trace::<T>(aliases) {
            Ok(traced) => {
                schema.optional = sample::optional_fields::<T>(&traced.root, &traced.containers);
                schema.root = Some(traced.root);
                schema.types = traced.containers;
                schema.aliases = traced.aliases;
                schema.fingerprint = schema.deep_fingerprint();
            }
            Err(why) => {
                tracing::warn!(
                    tag,
                    version,
                    "the schema of this event type cannot be traced: {why}; events of another shape will be refused under bincode rather than read by name"
                );
                schema.untraced = Some(why);
            }
        }
        schema
    }

    /// The fingerprint of a traced schema's content.
    fn deep_fingerprint(&self) -> Fingerprint {
        let root = self
            .root
            .as_ref()
            .map_or_else(String::new, |root| trace::canonical(root, &self.types));
        let canonical = format!("tag={};version={};{root}", self.tag, self.version);
        Fingerprint::from_u64(fnv1a(canonical.as_bytes()))
    }

    /// Parses a schema from its JSON form and checks that its fingerprint
    /// is that of its content.
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let schema: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("not a schema: {e}"))?;
        if schema.root.is_some() && schema.deep_fingerprint() != schema.fingerprint {
            return Err(format!(
                "schema of {:?} claims fingerprint {} but its content hashes to {}",
                schema.tag,
                schema.fingerprint,
                schema.deep_fingerprint()
            ));
        }
        Ok(schema)
    }

    /// The JSON form.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The name an event's body carries it under: the tag for version 1,
    /// `<tag>@v<N>` after (as `#[derive(Event)]` registers it).
    pub(crate) fn wire_name(&self) -> String {
        if self.version == 1 {
            self.tag.clone()
        } else {
            format!("{}@v{}", self.tag, self.version)
        }
    }

    /// The wire tag.
    #[must_use]
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The version: `#[event(version = N)]`, 1 by default.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The deep fingerprint: a hash of the tag, the version and the
    /// complete serde format.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Whether the format was traced. An untraced type (one serde reads with
    /// `deserialize_any`: untagged or internally tagged enums, `flatten`)
    /// keeps a fingerprint of its fields as written, and an event of another
    /// shape is refused under bincode rather than resolved.
    #[must_use]
    pub fn is_traced(&self) -> bool {
        self.root.is_some()
    }

    /// Why the format could not be traced, for an untraced type.
    #[must_use]
    pub fn untraced_reason(&self) -> Option<&str> {
        self.untraced.as_deref()
    }

    /// The names of the event's own fields, for a struct.
    #[must_use]
    pub fn fields(&self) -> Vec<&str> {
        match self.root_container() {
            Some(ContainerFormat::Struct(fields)) => {
                fields.iter().map(|f| f.name.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }

    fn root_container(&self) -> Option<&ContainerFormat> {
        match self.root.as_ref()? {
            Format::TypeName(name) => self.types.get(name),
            _ => None,
        }
    }

    /// **Can a reader with this schema read every event written with
    /// `writer`?** Fields are matched by name (and by the event's own field
    /// aliases); a field the reader lacks is ignored, one the writer lacks
    /// must be optional for the reader; a type must not change except to
    /// widen (`u32` to `u64`, `T` to `Option<T>`); every variant the writer
    /// has, the reader must have.
    ///
    /// # Errors
    ///
    /// Every [`Incompatible`] field, each naming the field's path.
    pub fn can_read(&self, writer: &Self) -> Result<(), Vec<Incompatible>> {
        compat::check(writer, self)
    }

    /// A JSON Schema (draft 2020-12) of the event's body content (what is
    /// inside `{"<tag>": ...}` under JSON).
    #[must_use]
    pub fn to_json_schema(&self) -> serde_json::Value {
        sample::json_schema(self)
    }

    /// The writer's body read into a [`Value`] by this, the writer's,
    /// schema: bincode by walking the format, JSON as it is.
    pub(crate) fn read(
        &self,
        body: &[u8],
        codec: &dyn crate::codec::Codec,
        wire_name: &str,
    ) -> Result<Value, String> {
        if codec.content_type() == crate::codec::JSON_CONTENT_TYPE {
            let mut json: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(body).map_err(|e| format!("not a JSON event: {e}"))?;
            if json.len() != 1 {
                return Err("the body holds no single event".to_owned());
            }
            return match json.remove(wire_name) {
                Some(inner) => Ok(Value::from(inner)),
                None => Err(format!("the body holds no event `{wire_name}`")),
            };
        }
        let Some(root) = &self.root else {
            return Err(format!(
                "the writer's type could not be traced ({}), so its {} body cannot be read by name",
                self.untraced.as_deref().unwrap_or("no format"),
                codec.content_type()
            ));
        };
        if codec.content_type() != crate::codec::BINCODE_CONTENT_TYPE {
            return Err(format!(
                "an event of another schema can be read from bincode or JSON, not {}",
                codec.content_type()
            ));
        }
        // bincode itself, not through the codec's erased deserializer: an
        // error deep inside would be wrapped once per level there.
        let seed = read::ReadEvent {
            root: read::ByFormat {
                format: root,
                containers: &self.types,
                depth: 0,
            },
            wire_name,
        };
        crate::codec::bincode_seed(body, seed).map_err(|e| e.to_string())
    }

    /// Renames the writer's top-level fields that the reader knows by one of
    /// their aliases (the writer's or its own).
    pub(crate) fn rename_for(&self, reader: &Self, value: &mut Value) {
        let Value::Struct(fields) = value else {
            return;
        };
        let theirs = reader.fields();
        for (name, _) in fields.iter_mut() {
            if theirs.contains(&name.as_str()) {
                continue;
            }
            let known = self.aliases.get(name.as_str()).and_then(|aliases| {
                aliases
                    .iter()
                    .find(|a| theirs.contains(&a.as_str()))
                    .cloned()
            });
            if let Some(known) = known {
                *name = known;
            }
        }
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema")
            .field("tag", &self.tag)
            .field("version", &self.version)
            .field("fingerprint", &self.fingerprint)
            .field("traced", &self.is_traced())
            .finish_non_exhaustive()
    }
}

/// Reads a `T` out of a [`Value`]; a failure says what was wrong but not
/// where: read the value again with [`read_value_naming_path`] to word it.
/// (`serde_path_to_error` clones every key and field name it passes, so the
/// path is only tracked once something failed.)
pub(crate) fn read_value<T: DeserializeOwned>(
    value: Value,
    human_readable: bool,
) -> Result<T, String> {
    T::deserialize(ValueDeserializer::new(value, human_readable)).map_err(|e| e.to_string())
}

/// Reads a `T` out of a [`Value`], naming the field's path on failure.
pub(crate) fn read_value_naming_path<T: DeserializeOwned>(
    value: Value,
    human_readable: bool,
) -> Result<T, String> {
    serde_path_to_error::deserialize(ValueDeserializer::new(value, human_readable)).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("field `{path}`: {}", e.inner())
        }
    })
}

/// 64-bit FNV-1a: tiny, and the same on every compiler and platform.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests;
