//! Whether a reader's schema can read everything a writer's can write:
//! the same rules that reading a [`Value`](super::Value) by name applies,
//! checked without a message, so that a lock file or two services'
//! contracts can be compared in a test.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use super::Schema;
use super::format::{ContainerFormat, Containers, Format, Named, VariantFormat};
use super::trace::primitive_name;

/// **One field a reader cannot read** as a writer writes it: its path in
/// the event (`lines[].cents`, `status::Shipped.at`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatible {
    path: String,
    reason: String,
}

impl Incompatible {
    fn new(path: &str, reason: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    /// An incompatibility of the event as a whole.
    pub(crate) fn whole(reason: impl Into<String>) -> Self {
        Self::new("", reason)
    }

    /// The field's path; empty for the event as a whole.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with it.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Incompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "field `{}`: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for Incompatible {}

pub(super) fn check(writer: &Schema, reader: &Schema) -> Result<(), Vec<Incompatible>> {
    let whole = |reason: String| Err(vec![Incompatible::new("", reason)]);
    if writer.tag != reader.tag {
        return whole(format!(
            "the tags differ: {:?} and {:?}",
            writer.tag, reader.tag
        ));
    }
    if writer.version != reader.version {
        return whole(format!(
            "the versions differ: the writer has {} and the reader {}; a version change is breaking (readers of the newer version upcast the older one)",
            writer.version, reader.version
        ));
    }
    if writer.fingerprint == reader.fingerprint {
        return Ok(());
    }
    let (Some(w), Some(r)) = (&writer.root, &reader.root) else {
        let untraced = if writer.root.is_none() {
            writer
        } else {
            reader
        };
        return whole(format!(
            "the fingerprints differ and the {} type could not be traced ({}); only an identical type can be read",
            if writer.root.is_none() {
                "writer's"
            } else {
                "reader's"
            },
            untraced.untraced.as_deref().unwrap_or("no format")
        ));
    };
    let mut walk = Walk {
        writer,
        reader,
        seen: HashSet::new(),
        errors: Vec::new(),
    };
    walk.format(w, r, "", true);
    if walk.errors.is_empty() {
        Ok(())
    } else {
        Err(walk.errors)
    }
}

/// A format with names and newtypes looked through.
enum Node<'a> {
    Primitive(&'a Format),
    Option(&'a Format),
    Seq(&'a Format),
    Map(&'a Format, &'a Format),
    Tuple(Vec<&'a Format>),
    Struct(&'a str, &'a [Named<Format>]),
    Enum(&'a str, &'a BTreeMap<u32, Named<VariantFormat>>),
}

impl Node<'_> {
    fn kind(&self) -> String {
        match self {
            Node::Primitive(f) => primitive_name(f).to_owned(),
            Node::Option(_) => "an option".to_owned(),
            Node::Seq(_) => "a sequence".to_owned(),
            Node::Map(..) => "a map".to_owned(),
            Node::Tuple(items) => format!("a tuple of {}", items.len()),
            Node::Struct(..) => "a struct".to_owned(),
            Node::Enum(..) => "an enum".to_owned(),
        }
    }
}

/// Looks through type names and newtypes (serde reads a newtype as what it
/// wraps).
fn view<'a>(mut format: &'a Format, containers: &'a Containers) -> (Option<&'a str>, Node<'a>) {
    let mut name = None;
    for _ in 0..64 {
        let Format::TypeName(n) = format else { break };
        name = Some(n.as_str());
        match containers.get(n) {
            Some(ContainerFormat::NewTypeStruct(inner)) => format = inner,
            Some(ContainerFormat::UnitStruct) => return (name, Node::Primitive(&Format::Unit)),
            Some(ContainerFormat::TupleStruct(items)) => {
                return (name, Node::Tuple(items.iter().collect()));
            }
            Some(ContainerFormat::Struct(fields)) => return (name, Node::Struct(n, fields)),
            Some(ContainerFormat::Enum(variants)) => return (name, Node::Enum(n, variants)),
            None => break,
        }
    }
    let node = match format {
        Format::Option(inner) => Node::Option(inner),
        Format::Seq(inner) => Node::Seq(inner),
        Format::Map { key, value } => Node::Map(key, value),
        Format::Tuple(items) => Node::Tuple(items.iter().collect()),
        Format::TupleArray { content, size } => Node::Tuple(vec![&**content; (*size).min(256)]),
        other => Node::Primitive(other),
    };
    (name, node)
}

struct Walk<'s> {
    writer: &'s Schema,
    reader: &'s Schema,
    /// Pairs of named types compared already (types may contain themselves).
    seen: HashSet<(&'s str, &'s str)>,
    errors: Vec<Incompatible>,
}

fn join(path: &str, part: &str) -> String {
    if path.is_empty() {
        part.to_owned()
    } else {
        format!("{path}.{part}")
    }
}

impl<'s> Walk<'s> {
    fn fail(&mut self, path: &str, reason: impl Into<String>) {
        self.errors.push(Incompatible::new(path, reason));
    }

    fn format(&mut self, w: &'s Format, r: &'s Format, path: &str, root: bool) {
        let (w_name, w_node) = view(w, &self.writer.types);
        let (r_name, r_node) = view(r, &self.reader.types);
        if let (Some(a), Some(b)) = (w_name, r_name)
            && !self.seen.insert((a, b))
        {
            return;
        }
        match (w_node, r_node) {
            (Node::Option(w), Node::Option(r)) => self.format(w, r, path, false),
            (Node::Option(_), _) => self.fail(
                path,
                "the writer may leave it empty (an Option) and the reader requires a value",
            ),
            (w_node, Node::Option(r)) => {
                // A value read as `Some`: compare with what the option holds.
                let (_, r_inner) = view(r, &self.reader.types);
                self.nodes(w_node, r_inner, path, root);
            }
            (w_node, r_node) => self.nodes(w_node, r_node, path, root),
        }
    }

    fn nodes(&mut self, w: Node<'s>, r: Node<'s>, path: &str, root: bool) {
        match (w, r) {
            (Node::Primitive(w), Node::Primitive(r)) => {
                if !widens(w, r) {
                    self.fail(
                        path,
                        format!(
                            "the writer sends {} and the reader expects {}",
                            primitive_name(w),
                            primitive_name(r)
                        ),
                    );
                }
            }
            (Node::Seq(w), Node::Seq(r)) => self.format(w, r, &format!("{path}[]"), false),
            (Node::Map(wk, wv), Node::Map(rk, rv)) => {
                self.format(wk, rk, &format!("{path}{{key}}"), false);
                self.format(wv, rv, &format!("{path}{{}}"), false);
            }
            (Node::Tuple(w), Node::Tuple(r)) if w.len() == r.len() => {
                for (i, (w, r)) in w.into_iter().zip(r).enumerate() {
                    self.format(w, r, &format!("{path}.{i}"), false);
                }
            }
            (Node::Struct(_, w), Node::Struct(r_name, r)) => self.fields(w, r, r_name, path, root),
            (Node::Enum(_, w), Node::Enum(r_name, r)) => self.variants(w, r, r_name, path),
            (w, r) => {
                let (w, r) = (w.kind(), r.kind());
                self.fail(
                    path,
                    format!("the writer sends {w} and the reader expects {r}"),
                );
            }
        }
    }

    fn fields(
        &mut self,
        w: &'s [Named<Format>],
        r: &'s [Named<Format>],
        container: &str,
        path: &str,
        root: bool,
    ) {
        let reader = self.reader;
        let optional = reader.optional.get(container);
        for field in r {
            let names = self.names(&field.name, root);
            match w.iter().find(|wf| names.contains(wf.name.as_str())) {
                Some(wf) => self.format(&wf.value, &field.value, &join(path, &field.name), false),
                None if optional.is_some_and(|o| o.contains(&field.name)) => {}
                None => self.fail(
                    &join(path, &field.name),
                    "the reader requires it and the writer does not send it (make it an Option or #[serde(default)] in the reader, or keep sending it)",
                ),
            }
        }
    }

    /// The names the writer may send a reader's field under: its own, and
    /// at the top level the aliases either side declares.
    fn names(&self, field: &'s str, root: bool) -> BTreeSet<&'s str> {
        let mut names = BTreeSet::from([field]);
        if root {
            if let Some(aliases) = self.reader.aliases.get(field) {
                names.extend(aliases.iter().map(String::as_str));
            }
            for (theirs, aliases) in &self.writer.aliases {
                if aliases.iter().any(|a| a == field) {
                    names.insert(theirs.as_str());
                }
            }
        }
        names
    }

    fn variants(
        &mut self,
        w: &'s BTreeMap<u32, Named<VariantFormat>>,
        r: &'s BTreeMap<u32, Named<VariantFormat>>,
        container: &str,
        path: &str,
    ) {
        for wv in w.values() {
            let here = format!("{path}::{}", wv.name);
            let Some(rv) = r.values().find(|rv| rv.name == wv.name) else {
                self.fail(
                    &here,
                    format!(
                        "the writer may send variant `{}` and the reader does not know it",
                        wv.name
                    ),
                );
                continue;
            };
            match (&wv.value, &rv.value) {
                (VariantFormat::Unit, VariantFormat::Unit) => {}
                (VariantFormat::NewType(w), VariantFormat::NewType(r)) => {
                    self.format(w, r, &here, false)
                }
                (VariantFormat::Tuple(w), VariantFormat::Tuple(r)) if w.len() == r.len() => {
                    for (i, (w, r)) in w.iter().zip(r).enumerate() {
                        self.format(w, r, &format!("{here}.{i}"), false);
                    }
                }
                (VariantFormat::Struct(w), VariantFormat::Struct(r)) => {
                    let key = format!("{container}::{}", rv.name);
                    self.fields(w, r, &key, &here, false);
                }
                _ => self.fail(&here, "the variant's content changed its kind"),
            }
        }
    }
}

/// Whether a reader of `r` reads every value a writer of `w` writes.
fn widens(w: &Format, r: &Format) -> bool {
    use Format::*;
    if w == r {
        return true;
    }
    let range = |f: &Format| -> std::option::Option<(i128, u128)> {
        Some(match f {
            U8 => (0, u8::MAX.into()),
            U16 => (0, u16::MAX.into()),
            U32 => (0, u32::MAX.into()),
            U64 => (0, u64::MAX.into()),
            U128 => (0, u128::MAX),
            I8 => (i8::MIN.into(), i8::MAX as u128),
            I16 => (i16::MIN.into(), i16::MAX as u128),
            I32 => (i32::MIN.into(), i32::MAX as u128),
            I64 => (i64::MIN.into(), i64::MAX as u128),
            I128 => (i128::MIN, i128::MAX as u128),
            _ => return None,
        })
    };
    match (range(w), range(r)) {
        (Some((w_min, w_max)), Some((r_min, r_max))) => r_min <= w_min && w_max <= r_max,
        _ => matches!((w, r), (F32, F64) | (Char, Str)),
    }
}
