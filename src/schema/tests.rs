//! Schemas of changing types: what the deep fingerprint sees, what
//! `can_read` allows, and reading bincode by the writer's schema.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;
use crate::codec::{Bincode, Codec, Json};

fn schema<T: DeserializeOwned>(aliases: &[&[&str]]) -> Schema {
    Schema::trace::<T>("orders.placed", 1, aliases, Fingerprint::from_u64(0))
}

mod v1 {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub(super) struct Line {
        pub(super) sku: String,
        pub(super) cents: u64,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub(super) enum Status {
        Open,
        Paid { at: u64 },
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub(super) struct Order {
        pub(super) id: u64,
        pub(super) qty: u32,
        pub(super) note: Option<String>,
        pub(super) lines: Vec<Line>,
        pub(super) status: Status,
    }

    pub(super) fn order() -> Order {
        Order {
            id: 7,
            qty: 3,
            note: Some("ring".into()),
            lines: vec![Line {
                sku: "tea".into(),
                cents: 250,
            }],
            status: Status::Paid { at: 99 },
        }
    }
}

/// Added an optional field, removed an optional one, renamed one with an
/// alias, widened a nested integer.
mod v2 {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub(super) struct Line {
        pub(super) sku: String,
        pub(super) cents: u64,
        #[serde(default)]
        pub(super) gift: bool,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub(super) enum Status {
        Open,
        Paid { at: u64 },
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub(super) struct Order {
        pub(super) id: u64,
        #[serde(alias = "qty")]
        pub(super) quantity: u32,
        pub(super) lines: Vec<Line>,
        pub(super) status: Status,
        pub(super) coupon: Option<String>,
    }
}

/// A nested field's type changed.
mod retyped {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub(super) struct Line {
        pub(super) sku: String,
        pub(super) cents: String,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub(super) enum Status {
        Open,
        Paid { at: u64 },
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub(super) struct Order {
        pub(super) id: u64,
        pub(super) qty: u32,
        pub(super) note: Option<String>,
        pub(super) lines: Vec<Line>,
        pub(super) status: Status,
    }
}

#[test]
fn traces_nested_types_and_learns_optional_fields() {
    let v1 = schema::<v1::Order>(&[]);
    assert!(v1.is_traced(), "{:?}", v1.untraced_reason());
    assert_eq!(v1.fields(), ["id", "qty", "note", "lines", "status"]);
    assert_eq!(
        v1.optional
            .get("Order")
            .map(|f| f.iter().map(String::as_str).collect::<Vec<_>>()),
        Some(vec!["note"])
    );
    let v2 = schema::<v2::Order>(&[&[], &["qty"], &[], &[], &[]]);
    assert_eq!(v2.fields(), ["id", "quantity", "lines", "status", "coupon"]);
    assert_eq!(v2.aliases.get("quantity"), Some(&vec!["qty".to_owned()]));
    assert!(v2.optional["Line"].contains("gift"));
}

#[test]
fn the_deep_fingerprint_sees_nested_changes_and_serde_names_not_type_names() {
    let base = schema::<v1::Order>(&[]).fingerprint();
    assert_ne!(
        base,
        schema::<retyped::Order>(&[]).fingerprint(),
        "a nested type changed"
    );
    mod renamed {
        use super::*;
        type Cents = u64;
        #[derive(Serialize, Deserialize)]
        pub(super) struct Item {
            pub(super) sku: String,
            pub(super) cents: Cents,
        }
        #[derive(Serialize, Deserialize)]
        pub(super) enum State {
            Open,
            Paid { at: u64 },
        }
        #[derive(Serialize, Deserialize)]
        pub(super) struct Placed {
            pub(super) id: u64,
            pub(super) qty: u32,
            pub(super) note: Option<String>,
            pub(super) lines: Vec<Item>,
            pub(super) status: State,
        }
    }
    assert_eq!(
        base,
        schema::<renamed::Placed>(&[]).fingerprint(),
        "type names and aliases are not the wire"
    );
    #[derive(Serialize, Deserialize)]
    struct WireRenamed {
        id: u64,
        #[serde(rename = "quantity")]
        qty: u32,
        note: Option<String>,
        lines: Vec<v1::Line>,
        status: v1::Status,
    }
    assert_ne!(
        base,
        schema::<WireRenamed>(&[]).fingerprint(),
        "a serde rename is the wire"
    );
    assert_ne!(
        base,
        Schema::trace::<v1::Order>("orders.placed", 2, &[], Fingerprint::from_u64(0)).fingerprint(),
        "the version counts"
    );
}

#[test]
fn compatible_changes_are_readable_both_ways() {
    let v1 = schema::<v1::Order>(&[]);
    let v2 = schema::<v2::Order>(&[&[], &["qty"], &[], &[], &[]]);
    assert_eq!(v2.can_read(&v1), Ok(()));
    assert_eq!(v1.can_read(&v2), Ok(()));
}

#[test]
fn incompatible_changes_name_the_field() {
    let v1 = schema::<v1::Order>(&[]);
    let retyped = schema::<retyped::Order>(&[]);
    let problems = retyped.can_read(&v1).unwrap_err();
    assert_eq!(
        problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["field `lines[].cents`: the writer sends u64 and the reader expects string"]
    );
    #[derive(Serialize, Deserialize)]
    struct NeedsMore {
        id: u64,
        qty: u32,
        due: u64,
    }
    let problems = schema::<NeedsMore>(&[]).can_read(&v1).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path(), "due");
    assert!(
        problems[0].reason().contains("requires it"),
        "{}",
        problems[0]
    );
}

/// Encodes like a `Box<dyn Event>`: `{wire name: event}`.
fn body<T: Serialize>(codec: &dyn Codec, event: &T) -> Vec<u8> {
    codec
        .encode(&BTreeMap::from([("orders.placed", event)]))
        .unwrap()
}

fn read_as<T: DeserializeOwned>(
    writer: &Schema,
    reader: &Schema,
    codec: &dyn Codec,
    body: &[u8],
) -> Result<T, String> {
    let mut value = writer.read(body, codec, "orders.placed")?;
    writer.rename_for(reader, &mut value);
    read_value_naming_path::<T>(
        value,
        codec.content_type() == crate::codec::JSON_CONTENT_TYPE,
    )
}

#[test]
fn a_new_reader_reads_an_old_writer_and_back_under_both_codecs() {
    let (old, new) = (
        schema::<v1::Order>(&[]),
        schema::<v2::Order>(&[&[], &["qty"], &[], &[], &[]]),
    );
    for codec in [&Bincode as &dyn Codec, &Json] {
        let read: v2::Order = read_as(&old, &new, codec, &body(codec, &v1::order())).unwrap();
        assert_eq!(read.quantity, 3);
        assert_eq!(read.coupon, None);
        assert_eq!(read.lines[0].cents, 250);
        assert!(!read.lines[0].gift);

        let newer = v2::Order {
            id: 8,
            quantity: 5,
            lines: vec![],
            status: v2::Status::Open,
            coupon: Some("XMAS".into()),
        };
        let read: v1::Order = read_as(&new, &old, codec, &body(codec, &newer)).unwrap();
        assert_eq!(
            (read.id, read.qty, read.note),
            (8, 5, None),
            "{}",
            codec.content_type()
        );
    }
}

#[test]
fn a_changed_type_is_refused_with_the_field_named() {
    let (old, retyped) = (schema::<v1::Order>(&[]), schema::<retyped::Order>(&[]));
    for codec in [&Bincode as &dyn Codec, &Json] {
        let error = read_as::<retyped::Order>(&old, &retyped, codec, &body(codec, &v1::order()))
            .unwrap_err();
        assert_eq!(
            error,
            "field `lines[0].cents`: invalid type: integer `250`, expected a string"
        );
    }
}

#[test]
fn hostile_bodies_and_schemas_fail_cleanly() {
    let old = schema::<v1::Order>(&[]);
    let good = body(&Bincode, &v1::order());
    for cut in 0..good.len() {
        assert!(old.read(&good[..cut], &Bincode, "orders.placed").is_err());
    }
    assert!(old.read(&good, &Bincode, "orders.other").is_err());
    // A schema that nests without end, and a body that follows it.
    let deep: Schema = serde_json::from_value(serde_json::json!({
        "tag": "orders.placed", "version": 1, "fingerprint": "0000000000000000",
        "root": {"type_name": "Deep"},
        "types": {"Deep": {"new_type_struct": {"option": {"type_name": "Deep"}}}}
    }))
    .unwrap();
    let mut nested = vec![1u8, 13];
    nested.extend(b"orders.placed");
    nested.extend(std::iter::repeat_n(1u8, 10_000));
    let error = deep.read(&nested, &Bincode, "orders.placed").unwrap_err();
    assert!(error.contains("nests more than"), "{error}");
    // A claimed fingerprint that is not the content's is refused.
    let mut json = serde_json::to_value(&old).unwrap();
    json["fingerprint"] = "00000000000000ff".into();
    let error = Schema::from_json(json.to_string().as_bytes()).unwrap_err();
    assert!(error.contains("hashes to"), "{error}");
}

#[test]
fn an_untraceable_type_keeps_its_fallback_fingerprint() {
    #[derive(Serialize, Deserialize)]
    #[serde(tag = "kind")]
    enum Tagged {
        A { x: u8 },
    }
    let schema = Schema::trace::<Tagged>("t", 1, &[], Fingerprint::from_u64(5));
    assert!(!schema.is_traced());
    assert_eq!(schema.fingerprint(), Fingerprint::from_u64(5));
    assert!(
        schema
            .untraced_reason()
            .is_some_and(|r| r.contains("cannot be traced"))
    );
}

#[test]
fn json_schema_marks_required_fields() {
    let schema = schema::<v1::Order>(&[]).to_json_schema();
    assert_eq!(
        schema["$defs"]["Order"]["required"],
        serde_json::json!(["id", "qty", "lines", "status"])
    );
    assert_eq!(
        schema["$defs"]["Line"]["properties"]["cents"]["type"],
        "integer"
    );
}
