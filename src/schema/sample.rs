//! Sample values of a traced format, to learn which fields a type fills
//! itself when they are absent; and the JSON Schema of a format.

use std::collections::{BTreeMap, BTreeSet};

use super::Schema;
use super::format::{ContainerFormat, Containers, Format, Named, VariantFormat};
use super::value::Value;
use serde::de::DeserializeOwned;
use serde_json::json;

/// The fields of each struct (and struct variant, `Enum::Variant`) in `T`
/// that `T` reads when they are absent: it is tried, field by field, on a
/// sample value with that one field left out.
pub(super) fn optional_fields<T: DeserializeOwned>(
    root: &Format,
    containers: &Containers,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut optional = BTreeMap::<String, BTreeSet<String>>::new();
    let reads = |omit: Option<(&str, &str)>| {
        let mut sampler = Sampler { containers, omit };
        let value = sampler.sample(root, 0);
        // Only a sample that reached the field tells anything.
        (sampler.omit.is_none()) && super::read_value::<T>(value, false).is_ok()
    };
    if !Sampler::reads_whole::<T>(root, containers) {
        return optional;
    }
    for (name, container) in containers {
        let structs: Vec<(String, &[Named<Format>])> = match container {
            ContainerFormat::Struct(fields) => vec![(name.clone(), fields)],
            ContainerFormat::Enum(variants) => variants
                .values()
                .filter_map(|v| match &v.value {
                    VariantFormat::Struct(fields) => {
                        Some((format!("{name}::{}", v.name), &fields[..]))
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        for (key, fields) in structs {
            for field in fields {
                if reads(Some((&key, &field.name))) {
                    optional
                        .entry(key.clone())
                        .or_default()
                        .insert(field.name.clone());
                }
            }
        }
    }
    optional
}

/// Builds one sample value, steering towards the field to leave out.
struct Sampler<'a> {
    containers: &'a Containers,
    /// The struct and field to leave out; `None` once left out.
    omit: Option<(&'a str, &'a str)>,
}

impl Sampler<'_> {
    fn reads_whole<T: DeserializeOwned>(root: &Format, containers: &Containers) -> bool {
        let mut sampler = Sampler {
            containers,
            omit: None,
        };
        super::read_value::<T>(sampler.sample(root, 0), false).is_ok()
    }

    /// Whether `format` contains the struct still to be sampled.
    fn leads(&self, format: &Format, seen: &mut BTreeSet<String>) -> bool {
        let Some((target, _)) = self.omit else {
            return false;
        };
        let mut names = Vec::new();
        format.names(&mut names);
        names.into_iter().any(|name| {
            if name == target || target.starts_with(&format!("{name}::")) {
                return true;
            }
            if !seen.insert(name.clone()) {
                return false;
            }
            self.containers.get(&name).is_some_and(|c| {
                container_formats(c)
                    .into_iter()
                    .any(|f| self.leads(f, seen))
            })
        })
    }

    fn toward(&self, format: &Format) -> bool {
        self.leads(format, &mut BTreeSet::new())
    }

    fn sample(&mut self, format: &Format, depth: usize) -> Value {
        if depth > 64 {
            return Value::Unit;
        }
        match format {
            Format::TypeName(name) => match self.containers.get(name) {
                Some(container) => self.container(name, container, depth),
                None => Value::Unit,
            },
            Format::Unit => Value::Unit,
            Format::Bool => Value::Bool(false),
            Format::I8 | Format::I16 | Format::I32 | Format::I64 => Value::I64(0),
            Format::I128 => Value::I128(0),
            Format::U8 | Format::U16 | Format::U32 | Format::U64 => Value::U64(0),
            Format::U128 => Value::U128(0),
            Format::F32 | Format::F64 => Value::F64(0.0),
            Format::Char => Value::Char('A'),
            Format::Str => Value::Str(String::new()),
            Format::Bytes => Value::Bytes(vec![0; 16]),
            Format::Option(inner) if self.toward(inner) => {
                Value::Some(Box::new(self.sample(inner, depth + 1)))
            }
            Format::Option(_) => Value::None,
            Format::Seq(inner) if self.toward(inner) => {
                Value::Seq(vec![self.sample(inner, depth + 1)])
            }
            Format::Seq(_) => Value::Seq(Vec::new()),
            Format::Map { key, value } if self.toward(key) || self.toward(value) => {
                let key = self.sample(key, depth + 1);
                Value::Map(vec![(key, self.sample(value, depth + 1))])
            }
            Format::Map { .. } => Value::Map(Vec::new()),
            Format::Tuple(items) => {
                Value::Seq(items.iter().map(|f| self.sample(f, depth + 1)).collect())
            }
            Format::TupleArray { content, size } => Value::Seq(
                (0..*size.min(&4096))
                    .map(|_| self.sample(content, depth + 1))
                    .collect(),
            ),
        }
    }

    fn container(&mut self, name: &str, container: &ContainerFormat, depth: usize) -> Value {
        match container {
            ContainerFormat::UnitStruct => Value::Unit,
            ContainerFormat::NewTypeStruct(inner) => self.sample(inner, depth + 1),
            ContainerFormat::TupleStruct(items) => {
                Value::Seq(items.iter().map(|f| self.sample(f, depth + 1)).collect())
            }
            ContainerFormat::Struct(fields) => self.fields(name, fields, depth),
            ContainerFormat::Enum(variants) => {
                let leading = variants.values().find(|v| {
                    let key = format!("{name}::{}", v.name);
                    self.omit.is_some_and(|(target, _)| target == key)
                        || variant_formats(&v.value)
                            .into_iter()
                            .any(|f| self.toward(f))
                });
                let Some(variant) = leading.or_else(|| variants.values().next()) else {
                    return Value::Unit;
                };
                let content = match &variant.value {
                    VariantFormat::Unit => Value::Unit,
                    VariantFormat::NewType(inner) => self.sample(inner, depth + 1),
                    VariantFormat::Tuple(items) => {
                        Value::Seq(items.iter().map(|f| self.sample(f, depth + 1)).collect())
                    }
                    VariantFormat::Struct(fields) => {
                        self.fields(&format!("{name}::{}", variant.name), fields, depth)
                    }
                };
                Value::Variant(variant.name.clone(), Box::new(content))
            }
        }
    }

    fn fields(&mut self, key: &str, fields: &[Named<Format>], depth: usize) -> Value {
        let omit = match self.omit {
            Some((target, field)) if target == key => {
                self.omit = None;
                Some(field)
            }
            _ => None,
        };
        Value::Struct(
            fields
                .iter()
                .filter(|f| Some(f.name.as_str()) != omit)
                .map(|f| (f.name.clone(), self.sample(&f.value, depth + 1)))
                .collect(),
        )
    }
}

fn container_formats(container: &ContainerFormat) -> Vec<&Format> {
    match container {
        ContainerFormat::UnitStruct => Vec::new(),
        ContainerFormat::NewTypeStruct(inner) => vec![inner],
        ContainerFormat::TupleStruct(items) => items.iter().collect(),
        ContainerFormat::Struct(fields) => fields.iter().map(|f| &f.value).collect(),
        ContainerFormat::Enum(variants) => variants
            .values()
            .flat_map(|v| variant_formats(&v.value))
            .collect(),
    }
}

fn variant_formats(variant: &VariantFormat) -> Vec<&Format> {
    match variant {
        VariantFormat::Unit => Vec::new(),
        VariantFormat::NewType(inner) => vec![inner],
        VariantFormat::Tuple(items) => items.iter().collect(),
        VariantFormat::Struct(fields) => fields.iter().map(|f| &f.value).collect(),
    }
}

/// The JSON Schema of an event's body content under JSON.
pub(super) fn json_schema(schema: &Schema) -> serde_json::Value {
    let Some(root) = &schema.root else {
        return json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": schema.tag,
            "description": format!("untraced: {}", schema.untraced.as_deref().unwrap_or("")),
        });
    };
    let defs: serde_json::Map<String, serde_json::Value> = schema
        .types
        .iter()
        .map(|(name, container)| (name.clone(), container_schema(schema, name, container)))
        .collect();
    let mut out = format_schema(root);
    if let serde_json::Value::Object(map) = &mut out {
        map.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        map.insert("title".into(), json!(schema.tag));
        map.insert("x-tidings-version".into(), json!(schema.version));
        map.insert(
            "x-tidings-fingerprint".into(),
            json!(schema.fingerprint.to_string()),
        );
        map.insert("$defs".into(), serde_json::Value::Object(defs));
    }
    out
}

fn integer(min: i128, max: u128) -> serde_json::Value {
    json!({"type": "integer", "minimum": min as f64, "maximum": max as f64})
}

fn format_schema(format: &Format) -> serde_json::Value {
    match format {
        Format::TypeName(name) => json!({"$ref": format!("#/$defs/{name}")}),
        Format::Unit => json!({"type": "null"}),
        Format::Bool => json!({"type": "boolean"}),
        Format::I8 => integer(i8::MIN.into(), i8::MAX as u128),
        Format::I16 => integer(i16::MIN.into(), i16::MAX as u128),
        Format::I32 => integer(i32::MIN.into(), i32::MAX as u128),
        Format::I64 | Format::I128 => json!({"type": "integer"}),
        Format::U8 => integer(0, u8::MAX.into()),
        Format::U16 => integer(0, u16::MAX.into()),
        Format::U32 => integer(0, u32::MAX.into()),
        Format::U64 | Format::U128 => json!({"type": "integer", "minimum": 0}),
        Format::F32 | Format::F64 => json!({"type": "number"}),
        Format::Char => json!({"type": "string", "minLength": 1, "maxLength": 1}),
        Format::Str => json!({"type": "string"}),
        Format::Bytes => json!({"type": "array", "items": integer(0, 255)}),
        Format::Option(inner) => json!({"anyOf": [format_schema(inner), {"type": "null"}]}),
        Format::Seq(inner) => json!({"type": "array", "items": format_schema(inner)}),
        Format::Map { value, .. } => {
            json!({"type": "object", "additionalProperties": format_schema(value)})
        }
        Format::Tuple(items) => tuple_schema(items),
        Format::TupleArray { content, size } => {
            json!({"type": "array", "items": format_schema(content), "minItems": size, "maxItems": size})
        }
    }
}

fn tuple_schema(items: &[Format]) -> serde_json::Value {
    let prefix: Vec<_> = items.iter().map(format_schema).collect();
    json!({"type": "array", "prefixItems": prefix, "minItems": items.len(), "maxItems": items.len()})
}

fn object_schema(schema: &Schema, key: &str, fields: &[Named<Format>]) -> serde_json::Value {
    let optional = schema.optional.get(key);
    let properties: serde_json::Map<_, _> = fields
        .iter()
        .map(|f| (f.name.clone(), format_schema(&f.value)))
        .collect();
    let required: Vec<&str> = fields
        .iter()
        .map(|f| f.name.as_str())
        .filter(|name| !optional.is_some_and(|o| o.contains(*name)))
        .collect();
    json!({"type": "object", "properties": properties, "required": required})
}

fn container_schema(schema: &Schema, name: &str, container: &ContainerFormat) -> serde_json::Value {
    match container {
        ContainerFormat::UnitStruct => json!({"type": "null"}),
        ContainerFormat::NewTypeStruct(inner) => format_schema(inner),
        ContainerFormat::TupleStruct(items) => tuple_schema(items),
        ContainerFormat::Struct(fields) => object_schema(schema, name, fields),
        ContainerFormat::Enum(variants) => {
            let one_of: Vec<_> = variants
                .values()
                .map(|v| {
                    let content = match &v.value {
                        VariantFormat::Unit => return json!({"const": v.name}),
                        VariantFormat::NewType(inner) => format_schema(inner),
                        VariantFormat::Tuple(items) => tuple_schema(items),
                        VariantFormat::Struct(fields) => {
                            object_schema(schema, &format!("{name}::{}", v.name), fields)
                        }
                    };
                    json!({"type": "object", "properties": {v.name.clone(): content}, "required": [v.name], "additionalProperties": false})
                })
                .collect();
            json!({"oneOf": one_of})
        }
    }
}
