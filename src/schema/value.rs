//! `Value`: an event read by its writer's schema, by field name, and the
//! `Deserializer` that reads the receiver's type back out of it. Through it
//! a field the receiver lacks is ignored and one the writer lacks is filled
//! by serde (`Option`, `#[serde(default)]`) or named as missing.

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeSeed, EnumAccess, IntoDeserializer, VariantAccess, Visitor};

/// An event's data, self-describing: what bincode drops (field and variant
/// names) put back from the writer's schema.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `()` or a unit struct.
    Unit,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A signed 128-bit integer.
    I128(i128),
    /// An unsigned 128-bit integer.
    U128(u128),
    /// A float.
    F64(f64),
    /// A character.
    Char(char),
    /// A string.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// `None`.
    None,
    /// `Some(..)`.
    Some(Box<Value>),
    /// A sequence, tuple, or tuple struct.
    Seq(Vec<Value>),
    /// A map.
    Map(Vec<(Value, Value)>),
    /// A struct, by field name.
    Struct(Vec<(String, Value)>),
    /// An enum variant by name, with its content (`Unit` for a unit variant).
    Variant(String, Box<Value>),
}

/// A deserialization error: a message.
#[doc(hidden)]
#[derive(Debug)]
pub(crate) struct ValueError(String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

impl de::Error for ValueError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self(message.to_string())
    }
}

/// Reads a type out of a [`Value`]; `human_readable` is what the writer's
/// codec said (JSON yes, bincode no), so that types which encode
/// differently in the two (addresses, UUIDs) read back as written.
#[derive(Debug)]
pub(crate) struct ValueDeserializer {
    value: Value,
    human_readable: bool,
}

impl ValueDeserializer {
    pub(crate) fn new(value: Value, human_readable: bool) -> Self {
        Self {
            value,
            human_readable,
        }
    }
}

impl IntoDeserializer<'_, ValueError> for ValueDeserializer {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// Turns a list of values into deserializers that keep the flag.
fn wrapped(values: Vec<Value>, human_readable: bool) -> impl Iterator<Item = ValueDeserializer> {
    values
        .into_iter()
        .map(move |value| ValueDeserializer::new(value, human_readable))
}

impl<'de> de::Deserializer<'de> for ValueDeserializer {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        let human_readable = self.human_readable;
        match self.value {
            Value::Unit => visitor.visit_unit(),
            Value::Bool(v) => visitor.visit_bool(v),
            Value::I64(v) => visitor.visit_i64(v),
            Value::U64(v) => visitor.visit_u64(v),
            Value::I128(v) => visitor.visit_i128(v),
            Value::U128(v) => visitor.visit_u128(v),
            Value::F64(v) => visitor.visit_f64(v),
            Value::Char(v) => visitor.visit_char(v),
            Value::Str(v) => visitor.visit_string(v),
            Value::Bytes(v) => visitor.visit_byte_buf(v),
            Value::None => visitor.visit_none(),
            Value::Some(v) => visitor.visit_some(Self::new(*v, human_readable)),
            Value::Seq(values) => {
                let mut seq = SeqDeserializer::new(wrapped(values, human_readable));
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Map(entries) => {
                let entries = entries
                    .into_iter()
                    .map(|(k, v)| (Self::new(k, human_readable), Self::new(v, human_readable)));
                let mut map = MapDeserializer::new(entries);
                let out = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
            Value::Struct(fields) => {
                let fields = fields
                    .into_iter()
                    .map(|(k, v)| (k, Self::new(v, human_readable)));
                let mut map = MapDeserializer::new(fields);
                let out = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
            Value::Variant(name, content) => visitor.visit_enum(Variant {
                name,
                content: Self::new(*content, human_readable),
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.value {
            Value::None | Value::Unit => visitor.visit_none(),
            Value::Some(v) => visitor.visit_some(Self::new(*v, self.human_readable)),
            // A writer's `T` read as the reader's `Option<T>`.
            value => visitor.visit_some(Self::new(value, self.human_readable)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        let human_readable = self.human_readable;
        match self.value {
            Value::Variant(name, content) => visitor.visit_enum(Variant {
                name,
                content: Self::new(*content, human_readable),
            }),
            Value::Str(name) => visitor.visit_enum(Variant {
                name,
                content: Self::new(Value::Unit, human_readable),
            }),
            // A JSON enum: `{"Variant": content}`.
            Value::Struct(mut fields) if fields.len() == 1 => {
                let (name, content) = fields.remove(0);
                visitor.visit_enum(Variant {
                    name,
                    content: Self::new(content, human_readable),
                })
            }
            other => Err(de::Error::invalid_type(unexpected(&other), &visitor)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self.value {
            // JSON writes a unit struct as `null`.
            Value::Unit | Value::None => visitor.visit_unit(),
            _ => self.deserialize_any(visitor),
        }
    }

    fn is_human_readable(&self) -> bool {
        self.human_readable
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// What a value is, for an "invalid type" message.
fn unexpected(value: &Value) -> de::Unexpected<'_> {
    use de::Unexpected;
    match value {
        Value::Unit => Unexpected::Unit,
        Value::Bool(v) => Unexpected::Bool(*v),
        Value::I64(v) => Unexpected::Signed(*v),
        Value::U64(v) => Unexpected::Unsigned(*v),
        Value::I128(_) | Value::U128(_) => Unexpected::Other("128-bit integer"),
        Value::F64(v) => Unexpected::Float(*v),
        Value::Char(v) => Unexpected::Char(*v),
        Value::Str(v) => Unexpected::Str(v),
        Value::Bytes(v) => Unexpected::Bytes(v),
        Value::None | Value::Some(_) => Unexpected::Option,
        Value::Seq(_) => Unexpected::Seq,
        Value::Map(_) | Value::Struct(_) => Unexpected::Map,
        Value::Variant(..) => Unexpected::Enum,
    }
}

/// An enum variant being read.
struct Variant {
    name: String,
    content: ValueDeserializer,
}

impl<'de> EnumAccess<'de> for Variant {
    type Error = ValueError;
    type Variant = ValueDeserializer;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, ValueDeserializer), ValueError> {
        let name: de::value::StringDeserializer<ValueError> = self.name.into_deserializer();
        Ok((seed.deserialize(name)?, self.content))
    }
}

impl<'de> VariantAccess<'de> for ValueDeserializer {
    type Error = ValueError;

    fn unit_variant(self) -> Result<(), ValueError> {
        match self.value {
            Value::Unit | Value::None => Ok(()),
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &"a unit variant",
            )),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, ValueError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}

/// From a JSON document: objects become structs (an enum variant is read
/// from a one-key object when the reader asks for an enum).
impl From<serde_json::Value> for Value {
    fn from(json: serde_json::Value) -> Self {
        match json {
            serde_json::Value::Null => Self::None,
            serde_json::Value::Bool(v) => Self::Bool(v),
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(Self::U64)
                .or_else(|| n.as_i64().map(Self::I64))
                .unwrap_or_else(|| Self::F64(n.as_f64().unwrap_or(f64::NAN))),
            serde_json::Value::String(v) => Self::Str(v),
            serde_json::Value::Array(values) => {
                Self::Seq(values.into_iter().map(Self::from).collect())
            }
            serde_json::Value::Object(fields) => Self::Struct(
                fields
                    .into_iter()
                    .map(|(k, v)| (k, Self::from(v)))
                    .collect(),
            ),
        }
    }
}

impl Value {
    /// The value as JSON, for showing an event whose type this process
    /// does not know: structs are objects, enum variants `"Unit"` or
    /// `{"Variant": content}` (as serde_json writes them), map keys text,
    /// integers beyond JSON's numbers strings.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as Json;
        match self {
            Self::Unit | Self::None => Json::Null,
            Self::Bool(v) => Json::Bool(*v),
            Self::I64(v) => Json::from(*v),
            Self::U64(v) => Json::from(*v),
            Self::I128(v) => {
                i64::try_from(*v).map_or_else(|_| Json::String(v.to_string()), Json::from)
            }
            Self::U128(v) => {
                u64::try_from(*v).map_or_else(|_| Json::String(v.to_string()), Json::from)
            }
            Self::F64(v) => serde_json::Number::from_f64(*v).map_or(Json::Null, Json::Number),
            Self::Char(v) => Json::String(v.to_string()),
            Self::Str(v) => Json::String(v.clone()),
            Self::Bytes(v) => Json::Array(v.iter().map(|b| Json::from(*b)).collect()),
            Self::Some(v) => v.to_json(),
            Self::Seq(values) => Json::Array(values.iter().map(Self::to_json).collect()),
            Self::Map(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        let key = match k.to_json() {
                            Json::String(text) => text,
                            other => other.to_string(),
                        };
                        (key, v.to_json())
                    })
                    .collect(),
            ),
            Self::Struct(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(name, v)| (name.clone(), v.to_json()))
                    .collect(),
            ),
            Self::Variant(name, content) => match **content {
                Self::Unit => Json::String(name.clone()),
                ref content => {
                    let mut object = serde_json::Map::new();
                    object.insert(name.clone(), content.to_json());
                    Json::Object(object)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Kind {
        One,
        Two(u32),
        Three { x: i64 },
        Four(u8, u8),
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Reader {
        id: u64,
        #[serde(alias = "qty")]
        quantity: u32,
        note: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
        kinds: Vec<Kind>,
        map: BTreeMap<u8, bool>,
        addr: std::net::Ipv4Addr,
    }

    fn read<T: for<'de> Deserialize<'de>>(value: Value, hr: bool) -> Result<T, String> {
        serde_path_to_error::deserialize(ValueDeserializer::new(value, hr))
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    fn writer(quantity: Value) -> Value {
        Value::Struct(vec![
            ("id".into(), Value::U64(7)),
            ("qty".into(), quantity),
            ("extra".into(), Value::Str("ignored".into())),
            (
                "kinds".into(),
                Value::Seq(vec![
                    Value::Variant("One".into(), Box::new(Value::Unit)),
                    Value::Variant("Two".into(), Box::new(Value::U64(2))),
                    Value::Variant(
                        "Three".into(),
                        Box::new(Value::Struct(vec![("x".into(), Value::I64(-3))])),
                    ),
                    Value::Variant(
                        "Four".into(),
                        Box::new(Value::Seq(vec![Value::U64(4), Value::U64(5)])),
                    ),
                ]),
            ),
            (
                "map".into(),
                Value::Map(vec![(Value::U64(1), Value::Bool(true))]),
            ),
            (
                "addr".into(),
                Value::Seq(vec![
                    Value::U64(10),
                    Value::U64(0),
                    Value::U64(0),
                    Value::U64(1),
                ]),
            ),
        ])
    }

    #[test]
    fn reads_by_name_fills_missing_and_ignores_extra() {
        let reader: Reader = read(writer(Value::U64(3)), false).unwrap();
        assert_eq!(
            reader,
            Reader {
                id: 7,
                quantity: 3,
                note: None,
                tags: vec![],
                kinds: vec![
                    Kind::One,
                    Kind::Two(2),
                    Kind::Three { x: -3 },
                    Kind::Four(4, 5)
                ],
                map: BTreeMap::from([(1, true)]),
                addr: std::net::Ipv4Addr::new(10, 0, 0, 1),
            }
        );
    }

    #[test]
    fn a_changed_type_names_the_field() {
        let error = read::<Reader>(writer(Value::Str("three".into())), false).unwrap_err();
        assert_eq!(error, "qty: invalid type: string \"three\", expected u32");
        let mut missing = writer(Value::U64(3));
        if let Value::Struct(fields) = &mut missing {
            fields.retain(|(name, _)| name != "id");
        }
        assert_eq!(
            read::<Reader>(missing, false).unwrap_err(),
            ". missing field `id`".replace(". ", ".: ")
        );
    }

    #[test]
    fn json_objects_read_as_structs_and_enums() {
        let json = serde_json::json!({"x": {"Three": {"x": 1}}, "y": "One", "z": null});
        #[derive(Deserialize, Debug, PartialEq)]
        struct Holder {
            x: Kind,
            y: Kind,
            z: Option<u8>,
        }
        let holder: Holder = read(Value::from(json), true).unwrap();
        assert_eq!(
            holder,
            Holder {
                x: Kind::Three { x: 1 },
                y: Kind::One,
                z: None
            }
        );
    }

    #[test]
    fn values_show_as_the_json_serde_json_would_write() {
        let value = Value::Struct(vec![
            ("id".into(), Value::U64(7)),
            (
                "note".into(),
                Value::Some(Box::new(Value::Str("hi".into()))),
            ),
            ("none".into(), Value::None),
            (
                "kind".into(),
                Value::Variant("One".into(), Box::new(Value::Unit)),
            ),
            (
                "two".into(),
                Value::Variant("Two".into(), Box::new(Value::U64(2))),
            ),
            ("big".into(), Value::U128(u128::MAX)),
            (
                "map".into(),
                Value::Map(vec![(Value::U64(1), Value::Bool(true))]),
            ),
        ]);
        assert_eq!(
            value.to_json(),
            serde_json::json!({
                "id": 7, "note": "hi", "none": null, "kind": "One", "two": {"Two": 2},
                "big": u128::MAX.to_string(), "map": {"1": true}
            })
        );
    }
}
