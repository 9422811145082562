//! The wire contract of WIRE.md, checked from the other side: the Python
//! helper `python/tidings_pika.py` (pika only) reads events a Rust bus
//! publishes with the JSON codec, and publishes events, written as a Python
//! developer would write them from WIRE.md, that a Rust bus handles typed.
//! The fingerprints Python computes from a contract file equal Rust's, so
//! nothing is counted as a mismatch and tidings logs no warning; an event
//! with a wrong fingerprint is still read by its field names.

use crate::common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tidings::{
    AmqpProps, Bus, Contract, Event, EventType, ExchangeKind, RejectReason, Stats, Subscribers,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tracing_subscriber::layer::SubscriberExt as _;

/// How long the Python side may take for one step.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Status {
    Open,
    Held(String),
    Moved(u32, i32),
    Closed { reason: String, at: u64 },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Address {
    city: String,
    zip: Option<String>,
}

/// An event with an enum, an `Option` and a nested struct.
#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "python_wire.order")]
struct Order {
    id: u64,
    customer: String,
    status: Status,
    note: Option<String>,
    ship_to: Address,
    lines: Vec<(String, u32)>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Sku(String);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Marker;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Point(i32, i32);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Node {
    label: String,
    children: Vec<Node>,
}

/// The rest of serde's data model, at version 2: newtype, unit and tuple
/// structs, a type that contains itself, a map with integer keys, a fixed
/// array, u128, i8, f32, char and unit.
#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "python_wire.inventory", version = 2)]
struct Inventory {
    sku: Sku,
    marker: Marker,
    at: Point,
    tree: Node,
    counts: BTreeMap<u32, String>,
    digest: [u8; 4],
    total: u128,
    delta: i8,
    ratio: f32,
    initial: char,
    nothing: (),
}

/// The orders both directions send, and their JSON as WIRE.md spells it.
fn orders() -> Vec<(Order, Value)> {
    let order = |id, status, note: Option<&str>, zip: Option<&str>| Order {
        id,
        customer: "Zoë".into(),
        status,
        note: note.map(str::to_owned),
        ship_to: Address {
            city: "Basel".into(),
            zip: zip.map(str::to_owned),
        },
        lines: vec![("tea".into(), 2), ("cake".into(), 1)],
    };
    let lines = json!([["tea", 2], ["cake", 1]]);
    vec![
        (
            order(1, Status::Open, None, Some("4001")),
            json!({"id": 1, "customer": "Zoë", "status": "Open", "note": null,
                   "ship_to": {"city": "Basel", "zip": "4001"}, "lines": lines}),
        ),
        (
            order(2, Status::Held("stock".into()), Some("ring twice"), None),
            json!({"id": 2, "customer": "Zoë", "status": {"Held": "stock"}, "note": "ring twice",
                   "ship_to": {"city": "Basel", "zip": null}, "lines": lines}),
        ),
        (
            order(3, Status::Moved(7, -1), None, None),
            json!({"id": 3, "customer": "Zoë", "status": {"Moved": [7, -1]}, "note": null,
                   "ship_to": {"city": "Basel", "zip": null}, "lines": lines}),
        ),
        (
            order(
                u64::MAX,
                Status::Closed {
                    reason: "paid".into(),
                    at: 1_700_000_000,
                },
                None,
                None,
            ),
            json!({"id": u64::MAX, "customer": "Zoë",
                   "status": {"Closed": {"reason": "paid", "at": 1_700_000_000}}, "note": null,
                   "ship_to": {"city": "Basel", "zip": null}, "lines": lines}),
        ),
    ]
}

/// An inventory, and its JSON payload as text (`serde_json::Value` holds no
/// number beyond u64; Python's `json` writes any integer).
fn inventory() -> (Inventory, String) {
    let leaf = |label: &str| Node {
        label: label.into(),
        children: Vec::new(),
    };
    let event = Inventory {
        sku: Sku("A-1".into()),
        marker: Marker,
        at: Point(1, -2),
        tree: Node {
            label: "root".into(),
            children: vec![leaf("left"), leaf("right")],
        },
        counts: [(1, "one".to_owned()), (20, "twenty".to_owned())].into(),
        digest: [1, 2, 3, 255],
        total: u128::MAX,
        delta: -8,
        ratio: 0.5,
        initial: 'é',
        nothing: (),
    };
    let payload = json!({
        "sku": "A-1", "marker": null, "at": [1, -2],
        "tree": {"label": "root", "children": [
            {"label": "left", "children": []}, {"label": "right", "children": []}]},
        "counts": {"1": "one", "20": "twenty"},
        "digest": [1, 2, 3, 255],
        "delta": -8, "ratio": 0.5, "initial": "é", "nothing": null,
    });
    let payload = payload
        .to_string()
        .replacen('{', &format!(r#"{{"total":{},"#, u128::MAX), 1);
    (event, payload)
}

/// The helper under test.
fn helper() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tidings_pika.py");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The broker's URL for pika: without query keys, which are tidings' own.
fn plain_url() -> String {
    let mut url = url::Url::parse(&common::broker_url()).expect("AMQP_URL is not a URL");
    url.set_query(None);
    url.to_string()
}

/// The helper run with `args`, its stdin and stdout piped.
fn python(args: &[&str]) -> Child {
    Command::new(common::python::python_with_pika())
        .arg(helper())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start the Python helper")
}

/// The next line the helper prints.
async fn line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("the Python helper printed no {what} within {PATIENCE:?}"))
        .expect("reading the Python helper's output")
        .unwrap_or_else(|| panic!("the Python helper ended before printing {what}"))
}

/// Waits for the helper to exit, successfully.
async fn exits(mut child: Child) {
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the Python helper did not exit")
        .unwrap();
    assert!(status.success(), "the Python helper failed: {status}");
}

/// Publishes `events` (JSON lines for `tidings_pika.py publish`) with the
/// fingerprints the helper computes from `contract`; returns what it
/// printed for each: message id and fingerprint.
async fn python_publishes(props: &AmqpProps, contract: &Path, events: &[String]) -> Vec<Value> {
    let contract = contract.to_str().unwrap();
    let mut child = python(&[
        "publish",
        &plain_url(),
        props.exchange(),
        "--contract",
        contract,
    ]);
    let mut stdin = child.stdin.take().unwrap();
    let mut input = String::new();
    for event in events {
        writeln!(input, "{event}").unwrap();
    }
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut published = Vec::new();
    for _ in events {
        let printed = line(&mut lines, "a published event").await;
        published.push(serde_json::from_str(&printed).expect("the helper prints JSON"));
    }
    exits(child).await;
    published
}

/// The helper consuming `count` events of the exchange through `queue`,
/// ready, and the lines it prints.
async fn python_reader(
    props: &AmqpProps,
    queue: &str,
    count: usize,
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let count = count.to_string();
    let mut reader = python(&[
        "consume",
        &plain_url(),
        props.exchange(),
        "--count",
        &count,
        "--queue",
        queue,
    ]);
    let mut lines = BufReader::new(reader.stdout.take().unwrap()).lines();
    assert_eq!(line(&mut lines, "ready").await, "ready");
    (reader, lines)
}

/// The fingerprint the helper computes for `tag` at `version`.
async fn python_fingerprint(contract: &Path, tag: &str, version: u32) -> String {
    let child = python(&[
        "fingerprint",
        tag,
        "--contract",
        contract.to_str().unwrap(),
        "--version",
        &version.to_string(),
    ]);
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("the Python helper did not exit")
        .unwrap();
    assert!(out.status.success(), "the Python helper failed: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// This binary's contract, written where the helper reads it; removed when
/// dropped.
struct ContractFile(PathBuf);

impl ContractFile {
    fn write() -> Self {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{}.contract.json", common::unique("python_wire")));
        Contract::of_this_binary().unwrap().write(&path).unwrap();
        Self(path)
    }
}

impl Drop for ContractFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What tidings logs at WARN or above, seen by a tracing layer.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn taken(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN || !meta.target().starts_with("tidings") {
            return;
        }
        let mut text = format!("{} {}:", meta.level(), meta.target());
        event.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                let _ = write!(text, " {}={value:?}", field.name());
            },
        );
        self.0.lock().unwrap().push(text);
    }
}

/// Installs a `Warnings` layer for this thread: a `#[tokio::test]` runs the
/// bus's tasks on it too.
fn capture_warnings() -> (Warnings, tracing::subscriber::DefaultGuard) {
    let warnings = Warnings::default();
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    (warnings, tracing::subscriber::set_default(subscriber))
}

/// A bus that handles `Order` and `Inventory` typed, with the context of
/// each.
struct Receiver {
    bus: Bus,
    orders: Arc<Mutex<Vec<(Order, tidings::Context)>>>,
    inventories: Arc<Mutex<Vec<Inventory>>>,
    _guards: [tidings::Subscription; 2],
}

impl Receiver {
    async fn start(props: &AmqpProps) -> Self {
        let subscribers = Subscribers::new();
        let orders = Arc::new(Mutex::new(Vec::new()));
        let inventories = Arc::new(Mutex::new(Vec::new()));
        let (o, i) = (orders.clone(), inventories.clone());
        let guards = [
            subscribers.subscribe_with(move |order: &Order, context: &tidings::Context| {
                o.lock().unwrap().push((order.clone(), context.clone()));
            }),
            subscribers.subscribe(move |inventory: &Inventory| {
                i.lock().unwrap().push(inventory.clone());
            }),
        ];
        // The default codec, bincode: every bus reads JSON too.
        let bus = Bus::with_props(props.clone())
            .subscribers(subscribers)
            .max_attempts(1)
            .connect()
            .await
            .unwrap();
        Self {
            bus,
            orders,
            inventories,
            _guards: guards,
        }
    }

    async fn handled(&self, count: u64) -> Stats {
        let done = common::eventually(PATIENCE, || {
            self.bus.stats().handled + self.bus.stats().rejected_total() >= count
        })
        .await;
        let stats = self.bus.stats();
        assert!(done, "{count} events were not handled: {stats:?}");
        stats
    }
}

#[tokio::test]
async fn python_reads_the_json_events_a_rust_bus_publishes() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let queue = common::unique("python_wire.reader");
    _cleanup.queue(&queue);
    // The bus first: it declares the exchange the reader binds to.
    let url = format!("{}?exchange={}&codec=json", plain_url(), props.exchange());
    let bus = Bus::builder(&url)
        .unwrap()
        .publish_only()
        .connect()
        .await
        .unwrap();
    let orders = orders();
    let (reader, mut lines) = python_reader(&props, &queue, orders.len()).await;

    for (order, _) in &orders {
        bus.publish_confirmed(order).await.unwrap();
    }

    let mut ids = Vec::new();
    for (order, payload) in &orders {
        let printed: Value = serde_json::from_str(&line(&mut lines, "an event").await).unwrap();
        let field = |name: &str| printed[name].as_str().unwrap_or_default().to_owned();
        assert_eq!(printed["tag"], "python_wire.order", "{printed}");
        assert_eq!(printed["version"], 1, "{printed}");
        assert_eq!(
            &printed["payload"], payload,
            "order {}: {printed}",
            order.id
        );
        assert_eq!(field("origin"), bus.instance_id(), "{printed}");
        assert_eq!(
            field("fingerprint"),
            Order::schema().fingerprint().to_string()
        );
        assert_eq!(field("routing_key"), "python_wire.order");
        // The message id is `<instance id>-<sequence>`, unique.
        let id = field("message_id");
        let sequence = id
            .strip_prefix(&format!("{}-", bus.instance_id()))
            .unwrap_or_else(|| panic!("message id {id:?} is not the instance id and a number"));
        assert!(sequence.parse::<u64>().is_ok(), "{id}");
        // A message published outside any handler starts its conversation.
        assert_eq!(field("correlation_id"), id, "{printed}");
        assert_eq!(printed["causation_id"], Value::Null, "{printed}");
        assert!(printed["timestamp"].as_u64().is_some(), "{printed}");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), orders.len(), "message ids repeat");
    exits(reader).await;
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_rust_bus_handles_python_events_typed_with_equal_fingerprints_and_no_warning() {
    let (warnings, _log) = capture_warnings();
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let contract = ContractFile::write();
    let receiver = Receiver::start(&props).await;

    // The fingerprints Python computes from the contract are Rust's.
    let rust_order = Order::schema().fingerprint().to_string();
    let rust_inventory = Inventory::schema().fingerprint().to_string();
    assert_eq!(
        python_fingerprint(&contract.0, "python_wire.order", 1).await,
        rust_order
    );
    assert_eq!(
        python_fingerprint(&contract.0, "python_wire.inventory", 2).await,
        rust_inventory
    );

    let orders = orders();
    let (inventory, inventory_payload) = inventory();
    let mut lines: Vec<String> = orders
        .iter()
        .map(|(_, payload)| json!({"tag": "python_wire.order", "payload": payload}).to_string())
        .collect();
    // Python leaves out an optional field: read as None.
    let mut sparse = orders[0].1.clone();
    sparse.as_object_mut().unwrap().remove("note");
    lines.push(json!({"tag": "python_wire.order", "payload": sparse}).to_string());
    lines.push(format!(
        r#"{{"tag": "python_wire.inventory", "version": 2, "payload": {inventory_payload}}}"#
    ));
    let published = python_publishes(&props, &contract.0, &lines).await;
    for (sent, line) in published.iter().zip(&lines) {
        let expected = if line.contains("python_wire.inventory") {
            &rust_inventory
        } else {
            &rust_order
        };
        assert_eq!(
            sent["fingerprint"].as_str(),
            Some(expected.as_str()),
            "{line}"
        );
    }

    let stats = receiver.handled(lines.len() as u64).await;
    let handled: Vec<(Order, tidings::Context)> = receiver.orders.lock().unwrap().clone();
    let expected: Vec<Order> = orders
        .iter()
        .map(|(order, _)| order.clone())
        .chain([orders[0].0.clone()])
        .collect();
    assert_eq!(
        handled.iter().map(|(o, _)| o.clone()).collect::<Vec<_>>(),
        expected
    );
    for ((_, context), sent) in handled.iter().zip(&published) {
        assert_eq!(context.message_id(), sent["message_id"].as_str());
        let origin = context.origin().expect("Python sends x-origin");
        assert!(origin.starts_with("python-"), "{origin}");
        assert!(context.message_id().unwrap().starts_with(origin));
        assert_eq!(context.routing_key(), "python_wire.order");
    }
    assert_eq!(*receiver.inventories.lock().unwrap(), [inventory]);
    assert_eq!(stats.handled, lines.len() as u64, "{stats:?}");
    assert_eq!(stats.fingerprint_mismatches, 0, "{stats:?}");
    assert_eq!(stats.schemas_resolved, 0, "{stats:?}");
    assert_eq!(stats.rejected_total(), 0, "{stats:?}");
    assert_eq!(stats.deduplicated, 0, "{stats:?}");
    assert_eq!(
        warnings.taken(),
        Vec::<String>::new(),
        "tidings warned about correct Python events"
    );

    // The capture sees the bus's tasks: a version this process does not
    // know is refused with one WARN.
    let newer = json!({"tag": "python_wire.order", "version": 9, "payload": orders[0].1,
                       "fingerprint": rust_order})
    .to_string();
    python_publishes(&props, &contract.0, &[newer]).await;
    let stats = receiver.handled(lines.len() as u64 + 1).await;
    assert_eq!(stats.rejected(RejectReason::NewerVersion), 1, "{stats:?}");
    let warned = warnings.taken();
    assert!(
        warned.len() == 1 && warned[0].contains("newer_version"),
        "expected one WARN for the newer version: {warned:?}"
    );
    receiver.bus.close().await.unwrap();
}

#[tokio::test]
async fn a_python_event_with_a_wrong_fingerprint_is_read_by_field_names_under_json() {
    let (warnings, _log) = capture_warnings();
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let contract = ContractFile::write();
    let receiver = Receiver::start(&props).await;

    let (order, payload) = orders().swap_remove(1);
    let wrong = json!({"tag": "python_wire.order", "payload": payload,
                       "fingerprint": "0123456789abcdef"})
    .to_string();
    python_publishes(&props, &contract.0, &[wrong]).await;

    let stats = receiver.handled(1).await;
    // Not in any schema store, but JSON names its fields: read by the
    // reader's own schema, counted as a mismatch that was resolved.
    assert_eq!(stats.handled, 1, "{stats:?}");
    assert_eq!(stats.fingerprint_mismatches, 1, "{stats:?}");
    assert_eq!(stats.schemas_resolved, 1, "{stats:?}");
    assert_eq!(stats.rejected_total(), 0, "{stats:?}");
    let handled = receiver.orders.lock().unwrap().clone();
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].0, order);
    assert_eq!(warnings.taken(), Vec::<String>::new());
    receiver.bus.close().await.unwrap();
}

/// gzip both ways: a Rust bus that compresses (`compression=gzip`, every
/// body) is read by `tidings_pika.py`, and events it gzips
/// (`"compression": "gzip"`) are handled by a Rust bus.
#[tokio::test]
async fn gzip_events_cross_between_python_and_a_rust_bus() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let queue = common::unique("python_wire.gzip_reader");
    _cleanup.queue(&queue);
    let contract = ContractFile::write();
    let receiver = Receiver::start(&props).await;
    let url = format!(
        "{}?exchange={}&codec=json&compression=gzip&compression_threshold=0",
        plain_url(),
        props.exchange()
    );
    let bus = Bus::builder(&url)
        .unwrap()
        .publish_only()
        .connect()
        .await
        .unwrap();
    let orders = orders();
    let (reader, mut lines) = python_reader(&props, &queue, orders.len()).await;
    for (order, _) in &orders {
        bus.publish_confirmed(order).await.unwrap();
    }
    for (order, payload) in &orders {
        let printed: Value = serde_json::from_str(&line(&mut lines, "an event").await).unwrap();
        assert_eq!(
            &printed["payload"], payload,
            "order {}: {printed}",
            order.id
        );
    }
    exits(reader).await;

    let events: Vec<String> = orders
        .iter()
        .map(|(_, payload)| {
            json!({"tag": "python_wire.order", "payload": payload, "compression": "gzip"})
                .to_string()
        })
        .collect();
    python_publishes(&props, &contract.0, &events).await;
    // The bus's own gzip events and Python's: both decoded.
    let stats = receiver.handled(2 * orders.len() as u64).await;
    assert_eq!(stats.rejected_total(), 0, "{stats:?}");
    let handled: Vec<Order> = receiver
        .orders
        .lock()
        .unwrap()
        .iter()
        .map(|(o, _)| o.clone())
        .collect();
    let sent: Vec<Order> = orders.iter().map(|(o, _)| o.clone()).collect();
    assert_eq!(handled, [sent.clone(), sent].concat());
    bus.close().await.unwrap();
    receiver.bus.close().await.unwrap();
}
