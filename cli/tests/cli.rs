//! The `tidings` binary against the shared broker (127.0.0.1:5672, or
//! AMQP_URL): tail, publish, dead letters, events, and its errors.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidings::{
    AmqpProps, Bus, Connection, Context, Contract, DeadLetters, Event, EventType, ExchangeKind,
    Listen, Subscribers,
};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "cli.order")]
struct Order {
    id: u64,
    item: String,
}

const LIMIT: Duration = Duration::from_secs(30);

/// The binary, run with the broker and exchange of `props`.
fn tidings(props: &AmqpProps, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .arg("--url")
        .arg(common::broker_url())
        .arg("--exchange")
        .arg(props.exchange())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs it to the end (30 s at most); its output.
async fn run(props: &AmqpProps, args: &[&str]) -> Output {
    tokio::time::timeout(LIMIT, tidings(props, args).output())
        .await
        .unwrap_or_else(|_| panic!("tidings {args:?} did not finish within {LIMIT:?}"))
        .expect("cannot run the tidings binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs it and expects success; its standard output.
async fn ok(props: &AmqpProps, args: &[&str]) -> String {
    let output = run(props, args).await;
    assert!(
        output.status.success(),
        "tidings {args:?} failed: {}{}",
        text(&output.stderr),
        text(&output.stdout)
    );
    text(&output.stdout)
}

/// Waits for `condition`, checking every 20 ms; fails the test after 10 s.
async fn until<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a bus has stored the schema of `tag` in the stream.
async fn until_stored(props: &AmqpProps, tag: &str) {
    until(&format!("storing the schema of {tag}"), || async {
        Contract::from_broker(props)
            .await
            .unwrap()
            .events()
            .iter()
            .any(|s| s.tag() == tag)
    })
    .await;
}

#[tokio::test]
async fn tail_prints_what_crosses_the_exchange() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let bus = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();

    let mut tail = tidings(&props, &["tail", "--count", "2", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says when its queue is bound.
    let mut stderr = BufReader::new(tail.stderr.take().unwrap()).lines();
    let ready = tokio::time::timeout(LIMIT, stderr.next_line())
        .await
        .expect("tail said nothing within 30 s")
        .unwrap()
        .unwrap_or_default();
    assert!(ready.contains("tailing exchange"), "{ready}");

    bus.publish_confirmed(&Order {
        id: 1,
        item: "tea".into(),
    })
    .await
    .unwrap();
    let conn = Connection::connect(&props).await.unwrap();
    let channel = common::confirming_channel(&conn).await;
    let mut headers = tidings::lapin::types::FieldTable::default();
    headers.insert(
        "x-tidings-tag".into(),
        tidings::lapin::types::AMQPValue::LongString("cli.order".into()),
    );
    common::raw_publish(
        &channel,
        props.exchange(),
        "orders.json",
        br#"{"cli.order":{"id":2,"item":"cake"}}"#,
        tidings::lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("json-2".into())
            .with_headers(headers),
    )
    .await;

    let output = tokio::time::timeout(LIMIT, tail.wait_with_output())
        .await
        .expect("tail --count 2 did not stop within 30 s")
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let bincode = &lines[0];
    assert_eq!(bincode["tag"], "cli.order");
    assert_eq!(bincode["routing_key"], "cli.order");
    assert_eq!(bincode["origin"], bus.instance_id());
    assert_eq!(bincode["content_type"], "application/x-bincode");
    assert!(bincode["size"].as_u64().unwrap() > 0);
    assert!(bincode["message_id"].is_string());
    assert!(bincode["headers"]["x-tidings-fingerprint"].is_string());
    assert_eq!(bincode["body"], serde_json::Value::Null);
    let json = &lines[1];
    assert_eq!(json["routing_key"], "orders.json");
    assert_eq!(json["message_id"], "json-2");
    assert_eq!(
        json["body"],
        serde_json::json!({"cli.order": {"id": 2, "item": "cake"}})
    );
    bus.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_published_event_reaches_a_bus_subscriber_typed() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let got = Arc::new(Mutex::new(Vec::new()));
    let subscribers = Subscribers::new();
    let g = got.clone();
    let _s = subscribers.subscribe_with(move |order: &Order, ctx: &Context| {
        g.lock().unwrap().push((
            order.clone(),
            ctx.message_id().map(str::to_owned),
            ctx.origin().map(str::to_owned),
        ));
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .connect()
        .await
        .unwrap();

    // No schema stored yet: sent without a fingerprint, read by name.
    let id = ok(
        &props,
        &[
            "publish",
            "--tag",
            "cli.order",
            r#"{"id": 7, "item": "tea"}"#,
        ],
    )
    .await;
    let id = id.trim().to_owned();
    assert!(id.starts_with("tidings-cli-"), "{id}");
    until("the subscriber getting it", || async {
        got.lock().unwrap().len() == 1
    })
    .await;
    let (order, message_id, origin) = got.lock().unwrap()[0].clone();
    assert_eq!(
        order,
        Order {
            id: 7,
            item: "tea".into()
        }
    );
    assert_eq!(message_id.as_deref(), Some(id.as_str()));
    assert!(origin.unwrap().starts_with("tidings-cli-"));
    assert_eq!(bus.stats().fingerprint_mismatches, 1);

    // Once a bus stored the schema, the CLI sends its fingerprint: the
    // receiver takes the fast path.
    bus.publish_confirmed(&Order {
        id: 8,
        item: "cake".into(),
    })
    .await
    .unwrap();
    until_stored(&props, "cli.order").await;
    let events = ok(&props, &["events"]).await;
    let fingerprint = Order::schema().fingerprint().to_string();
    assert!(
        events.contains("cli.order") && events.contains(&fingerprint),
        "{events}"
    );
    ok(
        &props,
        &[
            "publish",
            "--tag",
            "cli.order",
            r#"{"id": 9, "item": "jam"}"#,
        ],
    )
    .await;
    until("the subscriber getting 3", || async {
        got.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(
        got.lock().unwrap()[2].0,
        Order {
            id: 9,
            item: "jam".into()
        }
    );
    assert_eq!(
        bus.stats().fingerprint_mismatches,
        1,
        "the fingerprint was sent"
    );

    bus.close().await.unwrap();

    // Nobody bound to the key: said, not silently dropped.
    let empty = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&empty);
    Connection::connect(&empty)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let output = run(
        &empty,
        &[
            "publish",
            "--tag",
            "cli.order",
            "--routing-key",
            "nobody.here",
            "{}",
        ],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("no queue is bound"),
        "{}",
        text(&output.stderr)
    );
    let output = run(&props, &["publish", "--tag", "cli.order", "{not json"]).await;
    assert!(
        text(&output.stderr).contains("not valid JSON"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_and_purged() {
    let props = common::props(ExchangeKind::Topic);
    let cleanup = common::Cleanup::new(&props);
    cleanup.queue(&format!("{}.kitchen", props.exchange()));
    let fixed = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let subscribers = Subscribers::new();
    let (f, h) = (fixed.clone(), handled.clone());
    let _s = subscribers.subscribe(move |order: &Order| {
        if !f.load(Ordering::SeqCst) {
            return Err(format!("oven cold for order {}", order.id));
        }
        h.lock().unwrap().push(order.id);
        Ok(())
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .listen(Listen::group("kitchen"))
        .max_attempts(1)
        .connect()
        .await
        .unwrap();
    for id in 0..3 {
        bus.publish_confirmed(&Order {
            id,
            item: format!("pie {id}"),
        })
        .await
        .unwrap();
    }
    let dead_letters = DeadLetters::open(&props).await.unwrap();
    until("3 dead letters", || async {
        dead_letters.count().await.unwrap() == 3
    })
    .await;
    until_stored(&props, "cli.order").await;

    let list = ok(&props, &["dead-letters", "list"]).await;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    for line in &lines {
        assert!(
            line.contains("handler_failed") && line.contains("cli.order"),
            "{line}"
        );
        assert!(line.contains("oven cold"), "{line}");
    }
    let json = ok(&props, &["dead-letters", "list", "--json", "--limit", "1"]).await;
    let first: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(first["reason"], "handler_failed");
    assert_eq!(first["origin"], bus.instance_id());
    // bincode, read by the writer's schema from the stream: the CLI does
    // not know the type.
    assert_eq!(
        first["body"],
        serde_json::json!({"cli.order": {"id": 0, "item": "pie 0"}})
    );
    let id = first["message_id"].as_str().unwrap().to_owned();
    let show = ok(&props, &["dead-letters", "show", &id]).await;
    assert!(show.contains("reason:       handler_failed"), "{show}");
    assert!(show.contains(r#""item": "pie 0""#), "{show}");
    assert!(show.contains(&format!("message id:   {id}")), "{show}");
    let missing = run(&props, &["dead-letters", "show", "no-such-id"]).await;
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("no dead letter with message id"));

    // Purge asks first.
    let asked = run(&props, &["dead-letters", "purge"]).await;
    assert!(!asked.status.success());
    assert!(
        text(&asked.stderr).contains("would remove 3"),
        "{}",
        text(&asked.stderr)
    );
    let none = run(
        &props,
        &["dead-letters", "purge", "--reason", "unknown_tag", "--yes"],
    )
    .await;
    assert!(
        text(&none.stderr).contains("purged 0"),
        "{}",
        text(&none.stderr)
    );
    assert_eq!(dead_letters.count().await.unwrap(), 3);

    // Fixed: replay the first by id (and time), then the rest through the exchange.
    fixed.store(true, Ordering::SeqCst);
    let replayed = run(
        &props,
        &[
            "dead-letters",
            "replay",
            "--message-id",
            &id,
            "--since",
            "0",
        ],
    )
    .await;
    assert!(replayed.status.success(), "{}", text(&replayed.stderr));
    assert!(
        text(&replayed.stderr).contains("replayed 1, left 2 not matching, 0 failed"),
        "{}",
        text(&replayed.stderr)
    );
    until("order 0 handled", || async {
        *handled.lock().unwrap() == [0]
    })
    .await;
    let replayed = run(
        &props,
        &[
            "dead-letters",
            "replay",
            "--to",
            "exchange",
            "--tag",
            "cli.order",
        ],
    )
    .await;
    assert!(
        text(&replayed.stderr).contains("replayed 2"),
        "{}",
        text(&replayed.stderr)
    );
    until("orders 1 and 2 handled", || async {
        handled.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(dead_letters.count().await.unwrap(), 0);

    // And purged for good.
    fixed.store(false, Ordering::SeqCst);
    bus.publish_confirmed(&Order {
        id: 3,
        item: "bun".into(),
    })
    .await
    .unwrap();
    until("another dead letter", || async {
        dead_letters.count().await.unwrap() == 1
    })
    .await;
    let purged = run(&props, &["dead-letters", "purge", "--yes"]).await;
    assert!(
        text(&purged.stderr).contains("purged 1"),
        "{}",
        text(&purged.stderr)
    );
    assert_eq!(dead_letters.count().await.unwrap(), 0);
    dead_letters.close().await.unwrap();
    bus.close().await.unwrap();
}

#[tokio::test]
async fn events_lists_a_lock_file() {
    let lock = std::env::temp_dir().join(format!("tidings-cli-{}.lock", std::process::id()));
    Contract::of_this_binary().unwrap().write(&lock).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["events", "--lock"])
        .arg(&lock)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&lock);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("cli.order "))
        .unwrap_or_else(|| panic!("no cli.order in {stdout}"));
    assert!(
        line.contains(&Order::schema().fingerprint().to_string()),
        "{line}"
    );
    assert!(line.contains("id, item"), "{line}");
    assert!(
        line.split_whitespace().nth(1) == Some("1"),
        "version 1: {line}"
    );
}

#[tokio::test]
async fn errors_say_what_is_wrong_and_what_to_do() {
    let bad_url = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["--url", "http://localhost", "tail"])
        .output()
        .await
        .unwrap();
    assert!(!bad_url.status.success());
    assert!(
        text(&bad_url.stderr).contains("the broker URL is not valid"),
        "{}",
        text(&bad_url.stderr)
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let no_broker = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args([
            "--url",
            &format!("amqp://127.0.0.1:{port}/%2f"),
            "dead-letters",
            "list",
        ])
        .output()
        .await
        .unwrap();
    assert!(!no_broker.status.success());
    assert!(
        text(&no_broker.stderr).contains("rabbitmq-server"),
        "{}",
        text(&no_broker.stderr)
    );

    let props = common::props(ExchangeKind::Topic);
    let missing = run(&props, &["tail"]).await;
    assert!(!missing.status.success());
    let stderr = text(&missing.stderr);
    assert!(
        stderr.contains("there is no exchange") && stderr.contains(props.exchange()),
        "{stderr}"
    );
    let missing = run(&props, &["dead-letters", "list"]).await;
    assert!(
        text(&missing.stderr).contains("no dead-letter queue"),
        "{}",
        text(&missing.stderr)
    );
}
