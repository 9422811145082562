//! Reading a body by its writer's schema into a [`Value`]: bincode, which
//! carries no names, by walking the writer's format; JSON as it is.

use std::fmt;

use super::format::{ContainerFormat, Containers, Format, Named, VariantFormat};
use super::value::Value;
use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

/// How deep a value may nest, counting every struct, sequence, option and
/// newtype on the way (serde_json allows 128 arrays and objects).
const MAX_DEPTH: usize = 256;

/// Elements preallocated at most, whatever a length prefix claims.
const MAX_PREALLOCATED: usize = 1024;

/// Reads one value of `format` from a deserializer of a format that writes
/// no names (bincode): structs are tuples, enums variant indexes.
#[derive(Clone, Copy)]
pub(crate) struct ByFormat<'a> {
    pub(crate) format: &'a Format,
    pub(crate) containers: &'a Containers,
    pub(crate) depth: usize,
}

impl<'a> ByFormat<'a> {
    fn nested(&self, format: &'a Format) -> Self {
        Self {
            format,
            containers: self.containers,
            depth: self.depth + 1,
        }
    }
}

impl<'de> DeserializeSeed<'de> for ByFormat<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom(format!(
                "the value nests more than {MAX_DEPTH} levels deep"
            )));
        }
        let visitor = Read(self);
        match self.format {
            Format::TypeName(name) => {
                let Some(container) = self.containers.get(name) else {
                    return Err(de::Error::custom(format!(
                        "the writer's schema names type `{name}` without describing it"
                    )));
                };
                match container {
                    ContainerFormat::UnitStruct => Ok(Value::Unit),
                    ContainerFormat::NewTypeStruct(inner) => self.nested(inner).deserialize(de),
                    ContainerFormat::TupleStruct(items) => {
                        de.deserialize_tuple(items.len(), ReadTuple(self, items))
                    }
                    ContainerFormat::Struct(fields) => {
                        de.deserialize_tuple(fields.len(), ReadStruct(self, fields))
                    }
                    ContainerFormat::Enum(_) => de.deserialize_enum("", &[], visitor),
                }
            }
            Format::Unit => de.deserialize_unit(visitor),
            Format::Bool => de.deserialize_bool(visitor),
            Format::I8 => de.deserialize_i8(visitor),
            Format::I16 => de.deserialize_i16(visitor),
            Format::I32 => de.deserialize_i32(visitor),
            Format::I64 => de.deserialize_i64(visitor),
            Format::I128 => de.deserialize_i128(visitor),
            Format::U8 => de.deserialize_u8(visitor),
            Format::U16 => de.deserialize_u16(visitor),
            Format::U32 => de.deserialize_u32(visitor),
            Format::U64 => de.deserialize_u64(visitor),
            Format::U128 => de.deserialize_u128(visitor),
            Format::F32 => de.deserialize_f32(visitor),
            Format::F64 => de.deserialize_f64(visitor),
            Format::Char => de.deserialize_char(visitor),
            // The borrowed forms: bincode's slice reader answers them with
            // the bytes in the body, and the visitor's `to_owned` is the one
            // copy (asked for an owned `String`, it zero-fills a new buffer
            // and copies into it).
            Format::Str => de.deserialize_str(visitor),
            Format::Bytes => de.deserialize_bytes(visitor),
            Format::Option(_) => de.deserialize_option(visitor),
            Format::Seq(_) => de.deserialize_seq(visitor),
            Format::Map { .. } => de.deserialize_map(visitor),
            Format::Tuple(items) => de.deserialize_tuple(items.len(), ReadTuple(self, items)),
            Format::TupleArray { content, size } => {
                de.deserialize_tuple(*size, ReadArray(self.nested(content), *size))
            }
        }
    }
}

/// The visitor for primitives, options, sequences, maps and enums.
struct Read<'a>(ByFormat<'a>);

macro_rules! visit {
    ($($method:ident($ty:ty) => $variant:ident $(as $cast:ty)?),* $(,)?) => {
        $(fn $method<E: de::Error>(self, v: $ty) -> Result<Value, E> {
            Ok(Value::$variant(v $(as $cast)?))
        })*
    };
}

impl<'de> Visitor<'de> for Read<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a value of the writer's schema")
    }

    visit! {
        visit_bool(bool) => Bool,
        visit_i8(i8) => I64 as i64, visit_i16(i16) => I64 as i64, visit_i32(i32) => I64 as i64,
        visit_i64(i64) => I64, visit_i128(i128) => I128,
        visit_u8(u8) => U64 as u64, visit_u16(u16) => U64 as u64, visit_u32(u32) => U64 as u64,
        visit_u64(u64) => U64, visit_u128(u128) => U128,
        visit_f32(f32) => F64 as f64, visit_f64(f64) => F64,
        visit_char(char) => Char,
        visit_string(String) => Str,
        visit_byte_buf(Vec<u8>) => Bytes,
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Unit)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::None)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        let Format::Option(inner) = self.0.format else {
            return Err(de::Error::custom("an option where the schema has none"));
        };
        Ok(Value::Some(Box::new(self.0.nested(inner).deserialize(de)?)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let Format::Seq(inner) = self.0.format else {
            return Err(de::Error::custom("a sequence where the schema has none"));
        };
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOCATED));
        while let Some(value) = seq.next_element_seed(self.0.nested(inner))? {
            values.push(value);
        }
        Ok(Value::Seq(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Format::Map { key, value } = self.0.format else {
            return Err(de::Error::custom("a map where the schema has none"));
        };
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_PREALLOCATED));
        while let Some(entry) = map.next_entry_seed(self.0.nested(key), self.0.nested(value))? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let Format::TypeName(name) = self.0.format else {
            return Err(de::Error::custom("an enum where the schema has none"));
        };
        let Some(ContainerFormat::Enum(variants)) = self.0.containers.get(name) else {
            return Err(de::Error::custom("an enum where the schema has none"));
        };
        let (index, access) = data.variant_seed(VariantIndex)?;
        let Some(variant) = variants.get(&index) else {
            return Err(de::Error::custom(format!(
                "variant index {index} of `{name}` is not in the writer's schema"
            )));
        };
        let by = ByFormat {
            depth: self.0.depth + 1,
            ..self.0
        };
        let content = match &variant.value {
            VariantFormat::Unit => {
                access.unit_variant()?;
                Value::Unit
            }
            VariantFormat::NewType(inner) => access.newtype_variant_seed(by.nested(inner))?,
            VariantFormat::Tuple(items) => {
                access.tuple_variant(items.len(), ReadTuple(by, items))?
            }
            VariantFormat::Struct(fields) => {
                access.tuple_variant(fields.len(), ReadStruct(by, fields))?
            }
        };
        Ok(Value::Variant(variant.name.clone(), Box::new(content)))
    }
}

/// Reads a variant index.
struct VariantIndex;

impl<'de> DeserializeSeed<'de> for VariantIndex {
    type Value = u32;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<u32, D::Error> {
        u32::deserialize(de)
    }
}

use serde::Deserialize as _;

/// Reads a tuple or tuple struct, item by item.
struct ReadTuple<'a>(ByFormat<'a>, &'a [Format]);

impl<'de> Visitor<'de> for ReadTuple<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a tuple of {}", self.1.len())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut values = Vec::with_capacity(self.1.len());
        for item in self.1 {
            let value = seq
                .next_element_seed(self.0.nested(item))?
                .ok_or_else(|| de::Error::invalid_length(values.len(), &self))?;
            values.push(value);
        }
        Ok(Value::Seq(values))
    }
}

/// Reads a fixed-size array.
struct ReadArray<'a>(ByFormat<'a>, usize);

impl<'de> Visitor<'de> for ReadArray<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {}", self.1)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut values = Vec::with_capacity(self.1.min(MAX_PREALLOCATED));
        for _ in 0..self.1 {
            let value = seq
                .next_element_seed(self.0)?
                .ok_or_else(|| de::Error::invalid_length(values.len(), &self))?;
            values.push(value);
        }
        Ok(Value::Seq(values))
    }
}

/// Reads a struct written as a tuple, and names its fields.
struct ReadStruct<'a>(ByFormat<'a>, &'a [Named<Format>]);

impl<'de> Visitor<'de> for ReadStruct<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a struct of {} fields", self.1.len())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut fields = Vec::with_capacity(self.1.len());
        for field in self.1 {
            let value = seq
                .next_element_seed(self.0.nested(&field.value))?
                .ok_or_else(|| de::Error::invalid_length(fields.len(), &self))?;
            fields.push((field.name.clone(), value));
        }
        Ok(Value::Struct(fields))
    }
}

/// Reads a whole event body: typetag's one-entry map `{wire name: event}`.
#[derive(Clone, Copy)]
pub(crate) struct ReadEvent<'a> {
    pub(crate) root: ByFormat<'a>,
    pub(crate) wire_name: &'a str,
}

impl<'de> DeserializeSeed<'de> for ReadEvent<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReadEvent<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an event `{}`", self.wire_name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if map.next_key_seed(EventName(self.wire_name))?.is_none() {
            return Err(de::Error::custom("the body holds no event"));
        }
        let value = map.next_value_seed(self.root)?;
        if map.next_key::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("the body holds more than one event"));
        }
        Ok(value)
    }
}

/// Checks an event's name against the one expected, without a copy of it.
struct EventName<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for EventName<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for EventName<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an event name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<(), E> {
        if name == self.0 {
            Ok(())
        } else {
            Err(E::custom(format!(
                "the body holds event `{name}`, not `{}`",
                self.0
            )))
        }
    }
}
