//! Tracing a type's complete serde format with `serde-reflection`, and the
//! canonical form the deep fingerprint hashes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde_reflection::{Samples, Tracer, TracerConfig};

use super::format::{ContainerFormat, Containers, Format, Named, VariantFormat};

/// Traces `T`. `aliases` are the `#[serde(alias)]` names of `T`'s own
/// fields, which serde lists with the field names and which would
/// otherwise shift the traced fields; aliases in nested types cannot be told
/// apart and make the trace fail.
pub(crate) fn trace<T: DeserializeOwned>(aliases: &[&[&str]]) -> Result<Traced, String> {
    // serde-reflection explores one more variant of an enum per pass, once
    // the enum's "incomplete" mark is taken; it takes the root's itself,
    // the nested enums' are taken here, which needs their names: found by
    // tracing, so tracing repeats until no new enum turns up.
    let mut enums = BTreeSet::new();
    let (root, mut traced) = loop {
        let (root, registry) = trace_passes::<T>(&enums)?;
        let found: BTreeSet<String> = registry
            .iter()
            .filter(|(_, c)| matches!(c, serde_reflection::ContainerFormat::Enum(_)))
            .map(|(name, _)| name.clone())
            .collect();
        let complete = registry.values().all(|container| match container {
            serde_reflection::ContainerFormat::Enum(variants) => {
                variants.keys().all(|index| *index < u32::MAX / 2)
            }
            _ => true,
        });
        if complete {
            break (root, registry);
        }
        if found.is_subset(&enums) {
            return Err("the variants of its enums cannot all be traced".to_owned());
        }
        enums.extend(found);
    };
    let mut by_field = BTreeMap::new();
    let alias_names: BTreeSet<&str> = aliases.iter().flat_map(|a| a.iter().copied()).collect();
    if !alias_names.is_empty()
        && let serde_reflection::Format::TypeName(name) = &root
        && let Some(serde_reflection::ContainerFormat::Struct(fields)) = traced.get_mut(name)
    {
        // serde lists the field names with their aliases among them; the
        // visitor read only the fields, in order, so the traced formats are
        // the first ones and the names those that are not aliases.
        let names: Vec<String> = fields
            .iter()
            .map(|f| f.name.clone())
            .filter(|n| !alias_names.contains(n.as_str()))
            .collect();
        fields.truncate(names.len());
        for (field, name) in fields.iter_mut().zip(&names) {
            field.name.clone_from(name);
        }
        if names.len() == aliases.len() {
            for (name, aliases) in names.iter().zip(aliases) {
                if !aliases.is_empty() {
                    by_field.insert(
                        name.clone(),
                        aliases.iter().map(|a| (*a).to_owned()).collect(),
                    );
                }
            }
        }
    }
    let mut containers = Containers::new();
    for (name, container) in traced.iter() {
        let container = ContainerFormat::try_from(container).map_err(|_| {
            format!(
                "the format of its part `{name}` cannot be traced (a #[serde(alias)] in a nested type, or a type that reads only some values)"
            )
        })?;
        containers.insert(name.clone(), container);
    }
    let root =
        Format::try_from(&root).map_err(|_| "its root format cannot be traced".to_owned())?;
    Ok(Traced {
        root,
        containers,
        aliases: by_field,
    })
}

/// Traces `T` in passes until none of `enums` is left incomplete.
fn trace_passes<T: DeserializeOwned>(
    enums: &BTreeSet<String>,
) -> Result<(serde_reflection::Format, serde_reflection::Registry), String> {
    // 16 bytes for byte strings: UUIDs check their length.
    let config = TracerConfig::default()
        .default_borrowed_bytes_value(&[0; 16])
        .default_byte_buf_value(vec![0; 16]);
    let mut tracer = Tracer::new(config);
    for _ in 0..1024 {
        let (root, _) = tracer
            .trace_type::<T>(&Samples::new())
            .map_err(|e| format!("its serde format cannot be traced: {e}"))?;
        let mut incomplete = false;
        for name in enums {
            incomplete |= tracer.check_incomplete_enum(name).is_some();
        }
        if !incomplete {
            return Ok((root, tracer.registry_unchecked()));
        }
    }
    Err("its enums have more variants than can be traced".to_owned())
}

/// What tracing finds.
pub(crate) struct Traced {
    pub(crate) root: Format,
    pub(crate) containers: Containers,
    /// The aliases of the root's own fields, by field.
    pub(crate) aliases: BTreeMap<String, Vec<String>>,
}

/// The canonical text of a format, which the deep fingerprint hashes:
/// containers are written out where they are used, so the names of Rust
/// types do not count, only what reaches the wire and what names a field
/// or a variant. A type that contains itself refers back by depth (`^n`).
pub(crate) fn canonical(root: &Format, containers: &Containers) -> String {
    let mut out = String::new();
    let mut stack = Vec::new();
    write_format(&mut out, root, containers, &mut stack);
    out
}

fn write_format<'a>(
    out: &mut String,
    format: &'a Format,
    containers: &'a Containers,
    stack: &mut Vec<&'a str>,
) {
    match format {
        Format::TypeName(name) => {
            if let Some(depth) = stack.iter().rposition(|n| n == name) {
                let _ = write!(out, "^{}", stack.len() - depth);
                return;
            }
            let Some(container) = containers.get(name) else {
                let _ = write!(out, "?{name}");
                return;
            };
            stack.push(name);
            write_container(out, container, containers, stack);
            stack.pop();
        }
        Format::Option(inner) => {
            out.push_str("option(");
            write_format(out, inner, containers, stack);
            out.push(')');
        }
        Format::Seq(inner) => {
            out.push_str("seq(");
            write_format(out, inner, containers, stack);
            out.push(')');
        }
        Format::Map { key, value } => {
            out.push_str("map(");
            write_format(out, key, containers, stack);
            out.push(',');
            write_format(out, value, containers, stack);
            out.push(')');
        }
        Format::Tuple(items) => write_list(out, "tuple", items, containers, stack),
        Format::TupleArray { content, size } => {
            out.push_str("array(");
            write_format(out, content, containers, stack);
            let _ = write!(out, ";{size})");
        }
        primitive => out.push_str(primitive_name(primitive)),
    }
}

fn write_list<'a>(
    out: &mut String,
    what: &str,
    items: &'a [Format],
    containers: &'a Containers,
    stack: &mut Vec<&'a str>,
) {
    out.push_str(what);
    out.push('(');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_format(out, item, containers, stack);
    }
    out.push(')');
}

fn write_fields<'a>(
    out: &mut String,
    fields: &'a [Named<Format>],
    containers: &'a Containers,
    stack: &mut Vec<&'a str>,
) {
    out.push('{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&field.name);
        out.push(':');
        write_format(out, &field.value, containers, stack);
    }
    out.push('}');
}

fn write_container<'a>(
    out: &mut String,
    container: &'a ContainerFormat,
    containers: &'a Containers,
    stack: &mut Vec<&'a str>,
) {
    match container {
        ContainerFormat::UnitStruct => out.push_str("unit"),
        ContainerFormat::NewTypeStruct(inner) => {
            out.push_str("newtype(");
            write_format(out, inner, containers, stack);
            out.push(')');
        }
        ContainerFormat::TupleStruct(items) => write_list(out, "tuple", items, containers, stack),
        ContainerFormat::Struct(fields) => {
            out.push_str("struct");
            write_fields(out, fields, containers, stack);
        }
        ContainerFormat::Enum(variants) => {
            out.push_str("enum{");
            for (i, (index, variant)) in variants.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{index}:{}", variant.name);
                match &variant.value {
                    VariantFormat::Unit => {}
                    VariantFormat::NewType(inner) => {
                        out.push('(');
                        write_format(out, inner, containers, stack);
                        out.push(')');
                    }
                    VariantFormat::Tuple(items) => write_list(out, "", items, containers, stack),
                    VariantFormat::Struct(fields) => write_fields(out, fields, containers, stack),
                }
            }
            out.push('}');
        }
    }
}

/// The name of a primitive format, as the canonical form and messages
/// write it.
pub(crate) fn primitive_name(format: &Format) -> &'static str {
    match format {
        Format::Unit => "unit",
        Format::Bool => "bool",
        Format::I8 => "i8",
        Format::I16 => "i16",
        Format::I32 => "i32",
        Format::I64 => "i64",
        Format::I128 => "i128",
        Format::U8 => "u8",
        Format::U16 => "u16",
        Format::U32 => "u32",
        Format::U64 => "u64",
        Format::U128 => "u128",
        Format::F32 => "f32",
        Format::F64 => "f64",
        Format::Char => "char",
        Format::Str => "string",
        Format::Bytes => "bytes",
        Format::Option(_) => "option",
        Format::Seq(_) => "sequence",
        Format::Map { .. } => "map",
        Format::Tuple(_) => "tuple",
        Format::TupleArray { .. } => "array",
        Format::TypeName(_) => "type",
    }
}
