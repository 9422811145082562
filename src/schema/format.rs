//! The serde data model of a traced type, as schemas keep it: the shape
//! `serde-reflection` records, without its tracing-time variables (which
//! are neither `Send` nor serializable).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The format of a value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Format {
    /// A named container, described in the schema's types.
    TypeName(String),
    Unit,
    Bool,
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    F32,
    F64,
    Char,
    Str,
    Bytes,
    Option(Box<Format>),
    Seq(Box<Format>),
    Map {
        key: Box<Format>,
        value: Box<Format>,
    },
    Tuple(Vec<Format>),
    TupleArray {
        content: Box<Format>,
        size: usize,
    },
}

/// The format of a struct or enum.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ContainerFormat {
    UnitStruct,
    NewTypeStruct(Box<Format>),
    TupleStruct(Vec<Format>),
    Struct(Vec<Named<Format>>),
    /// Variants by index (bincode writes the index).
    Enum(BTreeMap<u32, Named<VariantFormat>>),
}

/// A field or a variant: its name and format.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Named<T> {
    pub(crate) name: String,
    pub(crate) value: T,
}

/// The content of an enum variant.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum VariantFormat {
    Unit,
    NewType(Box<Format>),
    Tuple(Vec<Format>),
    Struct(Vec<Named<Format>>),
}

/// The containers of a schema, by serde name.
pub(crate) type Containers = BTreeMap<String, ContainerFormat>;

/// A traced format that still holds an unresolved variable.
#[derive(Debug)]
pub(crate) struct Unresolved;

impl TryFrom<&serde_reflection::Format> for Format {
    type Error = Unresolved;

    fn try_from(format: &serde_reflection::Format) -> Result<Self, Unresolved> {
        use serde_reflection::Format as F;
        let boxed = |f: &F| Self::try_from(f).map(Box::new);
        let list = |items: &[F]| {
            items
                .iter()
                .map(Self::try_from)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match format {
            F::Variable(variable) => match &*variable.borrow() {
                Some(known) => Self::try_from(known)?,
                None => return Err(Unresolved),
            },
            F::TypeName(name) => Self::TypeName(name.clone()),
            F::Unit => Self::Unit,
            F::Bool => Self::Bool,
            F::I8 => Self::I8,
            F::I16 => Self::I16,
            F::I32 => Self::I32,
            F::I64 => Self::I64,
            F::I128 => Self::I128,
            F::U8 => Self::U8,
            F::U16 => Self::U16,
            F::U32 => Self::U32,
            F::U64 => Self::U64,
            F::U128 => Self::U128,
            F::F32 => Self::F32,
            F::F64 => Self::F64,
            F::Char => Self::Char,
            F::Str => Self::Str,
            F::Bytes => Self::Bytes,
            F::Option(inner) => Self::Option(boxed(inner)?),
            F::Seq(inner) => Self::Seq(boxed(inner)?),
            F::Map { key, value } => Self::Map {
                key: boxed(key)?,
                value: boxed(value)?,
            },
            F::Tuple(items) => Self::Tuple(list(items)?),
            F::TupleArray { content, size } => Self::TupleArray {
                content: boxed(content)?,
                size: *size,
            },
        })
    }
}

fn fields(
    fields: &[serde_reflection::Named<serde_reflection::Format>],
) -> Result<Vec<Named<Format>>, Unresolved> {
    fields
        .iter()
        .map(|f| {
            Ok(Named {
                name: f.name.clone(),
                value: Format::try_from(&f.value)?,
            })
        })
        .collect()
}

impl TryFrom<&serde_reflection::VariantFormat> for VariantFormat {
    type Error = Unresolved;

    fn try_from(variant: &serde_reflection::VariantFormat) -> Result<Self, Unresolved> {
        use serde_reflection::VariantFormat as V;
        Ok(match variant {
            V::Variable(variable) => match &*variable.borrow() {
                Some(known) => Self::try_from(known)?,
                None => return Err(Unresolved),
            },
            V::Unit => Self::Unit,
            V::NewType(inner) => Self::NewType(Box::new(Format::try_from(&**inner)?)),
            V::Tuple(items) => Self::Tuple(
                items
                    .iter()
                    .map(Format::try_from)
                    .collect::<Result<_, _>>()?,
            ),
            V::Struct(named) => Self::Struct(fields(named)?),
        })
    }
}

impl TryFrom<&serde_reflection::ContainerFormat> for ContainerFormat {
    type Error = Unresolved;

    fn try_from(container: &serde_reflection::ContainerFormat) -> Result<Self, Unresolved> {
        use serde_reflection::ContainerFormat as C;
        Ok(match container {
            C::UnitStruct => Self::UnitStruct,
            C::NewTypeStruct(inner) => Self::NewTypeStruct(Box::new(Format::try_from(&**inner)?)),
            C::TupleStruct(items) => Self::TupleStruct(
                items
                    .iter()
                    .map(Format::try_from)
                    .collect::<Result<_, _>>()?,
            ),
            C::Struct(named) => Self::Struct(fields(named)?),
            C::Enum(variants) => Self::Enum(
                variants
                    .iter()
                    .map(|(index, v)| {
                        Ok((
                            *index,
                            Named {
                                name: v.name.clone(),
                                value: VariantFormat::try_from(&v.value)?,
                            },
                        ))
                    })
                    .collect::<Result<_, Unresolved>>()?,
            ),
        })
    }
}

impl Format {
    /// Every container name this format uses directly (not through other
    /// containers).
    pub(crate) fn names(&self, out: &mut Vec<String>) {
        match self {
            Self::TypeName(name) => out.push(name.clone()),
            Self::Option(inner) | Self::Seq(inner) => inner.names(out),
            Self::Map { key, value } => {
                key.names(out);
                value.names(out);
            }
            Self::Tuple(items) => items.iter().for_each(|f| f.names(out)),
            Self::TupleArray { content, .. } => content.names(out),
            _ => {}
        }
    }
}
