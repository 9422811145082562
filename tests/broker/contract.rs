//! The event contract: a lock file of this binary's events, checked in a
//! test, which fails naming the field when a nested type changes; and a
//! check between two services' contracts. (No broker needed.)

use serde::{Deserialize, Serialize};
use tidings::{Contract, Event, EventType, Fingerprint, Schema};

/// What `contract.order` looked like when the lock file was written.
mod deployed {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub(super) struct Line {
        sku: String,
        cents: u64,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct Order {
        id: u64,
        lines: Vec<Line>,
    }
}

/// What it is now: the nested `cents` became a string.
#[derive(Serialize, Deserialize, Debug)]
struct Line {
    sku: String,
    cents: String,
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "contract.order")]
struct Order {
    id: u64,
    lines: Vec<Line>,
}

fn lock_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tidings-{name}-{}.lock", std::process::id()))
}

fn deployed() -> Schema {
    Schema::trace::<deployed::Order>("contract.order", 1, &[], Fingerprint::from_u64(0))
}

#[test]
fn a_changed_nested_type_fails_the_lock_file_check_naming_the_field() {
    let path = lock_path("nested");
    Contract::new([deployed()]).write(&path).unwrap();
    let error = Contract::check_lock_file(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let message = error.to_string();
    // What a user sees (printed for `cargo test -- --nocapture`).
    println!("{message}");
    assert!(
        message.contains(r#"event "contract.order" version 1 changed incompatibly"#),
        "{message}"
    );
    assert!(
        message.contains("new readers cannot read old events: field `lines[].cents`: the writer sends u64 and the reader expects string"),
        "{message}"
    );
    assert!(
        message.contains("old readers cannot read new events: field `lines[].cents`: the writer sends string and the reader expects u64"),
        "{message}"
    );
    assert!(message.contains("version = N"), "{message}");
}

#[test]
fn the_lock_file_is_written_then_holds() {
    let path = lock_path("fresh");
    let _ = std::fs::remove_file(&path);
    Contract::check_lock_file(&path).unwrap();
    let written = Contract::read(&path).unwrap();
    assert!(
        written.events().iter().any(
            |s| s.tag() == "contract.order" && s.fingerprint() == Order::schema().fingerprint()
        )
    );
    Contract::check_lock_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn one_service_can_or_cannot_read_another() {
    let ours = Contract::of_this_binary().unwrap();
    let theirs = Contract::new([deployed()]);
    let problems = ours.can_read(&theirs).unwrap_err();
    assert_eq!(problems.len(), 1);
    let (tag, version, what) = &problems[0];
    assert_eq!((tag.as_str(), *version), ("contract.order", 1));
    assert_eq!(what.path(), "lines[].cents");
    // A service that only added an optional field reads and is read.
    #[derive(Serialize, Deserialize)]
    struct Wider {
        id: u64,
        lines: Vec<Line>,
        coupon: Option<String>,
    }
    let wider = Contract::new([Schema::trace::<Wider>(
        "contract.order",
        1,
        &[],
        Fingerprint::from_u64(0),
    )]);
    assert_eq!(ours.can_read(&wider), Ok(()));
    assert_eq!(wider.can_read(&ours), Ok(()));
}

#[test]
fn the_contract_exports_json_schema_and_asyncapi() {
    let contract = Contract::new([Order::schema().clone()]);
    let schema = contract.to_json_schema();
    let order = &schema["$defs"]["contract.order"];
    assert_eq!(
        order["$defs"]["Line"]["properties"]["cents"]["type"],
        "string"
    );
    let asyncapi = contract.to_asyncapi("shop");
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    let message = &asyncapi["components"]["messages"]["contract.order"];
    assert_eq!(
        message["headers"]["properties"]["x-tidings-tag"]["const"],
        "contract.order"
    );
    assert_eq!(message["payload"]["required"][0], "contract.order");
}
