//! Regression tests for the poison, size and shutdown defects: no message
//! can stall a listener, a refused publish fails alone, and close() means
//! stop. Each goes through a real broker: the shared one, or a private node
//! where the broker must be configured.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable};
use serde::{Deserialize, Serialize};
use tidings::{
    Bus, Connection, ErrorKind, Event, EventType, ExchangeKind, Listen, Publish, RejectReason,
    Subscribers, UnknownEvents,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "defects.order")]
struct Order {
    id: u64,
    note: String,
}

fn order(id: u64) -> Order {
    Order {
        id,
        note: String::new(),
    }
}

/// Every order id handled, in order, by the subscribers it returns.
fn recorder() -> (Subscribers, Arc<Mutex<Vec<u64>>>) {
    let subscribers = Subscribers::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    subscribers
        .subscribe(move |o: &Order| s.lock().unwrap().push(o.id))
        .forget();
    (subscribers, seen)
}

/// Connects `builder` with subscribers that record every order id handled.
async fn recording(builder: tidings::BusBuilder) -> (Bus, Arc<Mutex<Vec<u64>>>) {
    let (subscribers, seen) = recorder();
    let bus = builder.subscribers(subscribers).connect().await.unwrap();
    (bus, seen)
}

async fn wait_until(what: &str, limit: Duration, condition: impl FnMut() -> bool) {
    assert!(
        common::eventually(limit, condition).await,
        "timed out waiting until {what}"
    );
}

/// A connection and a confirming channel to publish from as a foreign
/// client would.
async fn foreign_publisher(props: &tidings::AmqpProps) -> (Connection, lapin::Channel) {
    let raw = Connection::connect(props).await.unwrap();
    let channel = raw.channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    (raw, channel)
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn table(headers: Vec<(String, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(name.as_str().into(), value);
    }
    table
}

/// Properties of a foreign message with these headers.
fn foreign(content_type: &str, headers: Vec<(String, AMQPValue)>) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(content_type.into())
        .with_message_id(common::unique("foreign").into())
        .with_headers(table(headers))
}

fn tagged(headers: Vec<(String, AMQPValue)>) -> Vec<(String, AMQPValue)> {
    let mut all = vec![
        ("x-tidings-tag".to_owned(), text(Order::TAG)),
        (
            "x-tidings-fingerprint".to_owned(),
            text(&Order::schema().fingerprint().to_string()),
        ),
    ];
    all.extend(headers);
    all
}

/// A private node whose broker limits the tests need: RabbitMQ 4's
/// `max_message_size` and a frame limit large enough for a 1 MiB header
/// table. Started once for the binary.
fn limited_node() -> &'static common::PrivateNode {
    static NODE: OnceLock<common::PrivateNode> = OnceLock::new();
    NODE.get_or_init(|| {
        common::PrivateNode::start_with("max_message_size = 16777216\nframe_max = 2097152\n")
    })
}

/// A refused publish fails alone, with its error to its caller; what was
/// queued after it goes through, and the connection stays up.
#[tokio::test]
async fn a_publish_the_broker_refuses_fails_alone() {
    let node = limited_node();
    // Larger than the broker's limit, so that the broker refuses it.
    let props = node
        .props(ExchangeKind::Fanout)
        .with_max_message_size(32 << 20);
    let (bus, seen) = recording(Bus::with_props(props)).await;
    let huge = Order {
        id: 0,
        note: "x".repeat(20 << 20),
    };
    let (refused, after) = tokio::join!(bus.publish_confirmed(&huge), async {
        // Queued behind the huge one.
        tokio::task::yield_now().await;
        bus.publish_confirmed(&order(1)).await
    });
    let refused = refused.expect_err("the broker refuses 20 MiB");
    assert_eq!(refused.kind(), ErrorKind::Refused, "{refused}");
    assert!(refused.to_string().contains("max size"), "{refused}");
    after.expect("the small event queued after it is confirmed");
    wait_until("the small event arrives", Duration::from_secs(10), || {
        seen.lock().unwrap().contains(&1)
    })
    .await;
    let stats = bus.stats();
    assert_eq!(stats.publish_failed, 1, "{stats:?}");
    assert_eq!(stats.reconnects, 0, "{stats:?}");
    bus.close().await.unwrap();
}

/// A body over the props' own limit is refused before it is sent.
#[tokio::test]
async fn an_event_over_the_maximum_message_size_is_refused_before_sending() {
    let props = common::props(ExchangeKind::Fanout).with_max_message_size(1 << 20);
    let _cleanup = common::Cleanup::new(&props);
    let bus = Bus::with_props(props)
        .publish_only()
        .connect()
        .await
        .unwrap();
    let big = Order {
        id: 1,
        note: "x".repeat(2 << 20),
    };
    let err = bus.publish_confirmed(&big).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MessageTooLarge, "{err}");
    assert!(err.to_string().contains("with_max_message_size"), "{err}");
    bus.publish_confirmed(&order(2)).await.unwrap();
    assert_eq!(bus.stats().published, 1);
    bus.close().await.unwrap();
}

/// Headers larger than a frame are refused before they could make the
/// broker close the connection.
#[tokio::test]
async fn headers_over_the_frame_limit_are_refused_before_sending() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let producer = conn.producer().await.unwrap();
    let publish = Publish::new().header("big", "x".repeat(200_000));
    let err = match producer.publish_with(&order(1), &publish).await {
        Ok(confirm) => confirm.await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::MessageTooLarge, "{err}");
    producer.publish_confirmed(&order(2)).await.unwrap();
    assert_eq!(conn.reconnects(), 0);
    conn.close().await.unwrap();
}

/// The two messages of the report, on the shared broker's 128 KiB frames:
/// a 70,000-byte tag and a 130,900-byte header. Each ends in one dead
/// letter with its headers trimmed; the events after them are handled and
/// the connection is never closed.
#[tokio::test]
async fn large_headers_end_in_one_trimmed_dead_letter() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let group = common::unique("group");
    cleanup.queue(&format!("{}.{group}", props.exchange()));
    let (bus, seen) = recording(Bus::with_props(props.clone()).listen(Listen::group(&group))).await;
    let (raw, channel) = foreign_publisher(&props).await;
    let ex = props.exchange();
    let long_tag = vec![("x-tidings-tag".to_owned(), text(&"t".repeat(70_000)))];
    common::raw_publish(
        &channel,
        ex,
        "",
        b"{}",
        foreign("application/json", long_tag),
    )
    .await;
    let near_frame = vec![("filler".to_owned(), text(&"h".repeat(130_900)))];
    common::raw_publish(
        &channel,
        ex,
        "",
        b"{}",
        foreign("application/json", near_frame),
    )
    .await;
    for id in 1..=5 {
        bus.publish(&order(id)).await.unwrap();
    }
    wait_until("the 5 events are handled", Duration::from_secs(20), || {
        seen.lock().unwrap().len() >= 5
    })
    .await;
    let dead_letters = bus.dead_letter_queue().unwrap().to_owned();
    let mut trimmed = Vec::new();
    for _ in 0..2 {
        let letter = next_letter(&raw, &dead_letters).await;
        assert!(common::header_text(&letter, "x-tidings-reason").is_some());
        assert!(
            common::header_text(&letter, "x-tidings-error")
                .unwrap()
                .len()
                < 2048
        );
        trimmed.extend(common::header_text(&letter, "x-tidings-trimmed"));
    }
    // The long tag fits with the reason headers; the near-frame header
    // does not, and is dropped.
    assert_eq!(trimmed, ["filler"]);
    let stats = bus.stats();
    assert_eq!(stats.dead_lettered, 2, "{stats:?}");
    assert_eq!(stats.reconnects, 0, "{stats:?}");
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 4, 5]);
    bus.close().await.unwrap();
    raw.close().await.unwrap();
}

/// Every AMQP field type RabbitMQ accepts in a header.
fn every_field_type() -> Vec<(String, AMQPValue)> {
    let values = [
        AMQPValue::Boolean(true),
        AMQPValue::ShortShortInt(-1),
        AMQPValue::LongInt(-70_000),
        AMQPValue::LongLongInt(1 << 40),
        AMQPValue::Float(1.5),
        AMQPValue::Double(2.5),
        AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 1 }),
        AMQPValue::LongString("text".into()),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(false)])),
        AMQPValue::Timestamp(1),
        AMQPValue::FieldTable(table(vec![("inner".into(), text("x"))])),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2])),
        AMQPValue::Void,
    ];
    let mut headers: Vec<(String, AMQPValue)> = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("h{i}"), v))
        .collect();
    // The tag of another type than a string.
    headers.push(("x-tidings-tag".to_owned(), AMQPValue::LongInt(7)));
    headers
}

/// Twelve kinds of hostile message, then 100 valid events, into a group of
/// two members: every valid event is handled once, each hostile message is
/// dead-lettered once, and the broker never closes a connection.
#[tokio::test]
async fn poison_never_stalls_a_group() {
    let node = limited_node();
    let props = node.props(ExchangeKind::Fanout);
    let group = common::unique("poison");
    let (subscribers, seen) = recorder();
    let mut members = Vec::new();
    for _ in 0..2 {
        members.push(
            Bus::with_props(props.clone())
                .subscribers(subscribers.clone())
                .listen(Listen::group(&group))
                .connect()
                .await
                .unwrap(),
        );
    }
    let (raw, channel) = foreign_publisher(&props).await;
    let frame_max = 2_097_152;
    let bomb: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
    let hostile: Vec<(&str, Vec<u8>, BasicProperties)> = vec![
        (
            "a 70,000-byte tag",
            b"{}".to_vec(),
            foreign(
                "application/json",
                vec![("x-tidings-tag".into(), text(&"t".repeat(70_000)))],
            ),
        ),
        (
            "a 130,900-byte header without a tag",
            b"{}".to_vec(),
            foreign(
                "application/json",
                vec![("filler".into(), text(&"h".repeat(130_900)))],
            ),
        ),
        (
            "a 1 MiB header table",
            b"{}".to_vec(),
            foreign(
                "application/json",
                (0..1024)
                    .map(|i| (format!("k{i}"), text(&"v".repeat(1024))))
                    .collect(),
            ),
        ),
        (
            "10,000 small headers",
            b"{}".to_vec(),
            foreign(
                "application/json",
                (0..10_000).map(|i| (format!("s{i}"), text("v"))).collect(),
            ),
        ),
        (
            "a header of every field type",
            b"{}".to_vec(),
            foreign("application/json", every_field_type()),
        ),
        (
            "a header that fills the frame",
            b"{}".to_vec(),
            foreign(
                "application/json",
                tagged(vec![("filler".into(), text(&"f".repeat(frame_max - 400)))]),
            ),
        ),
        (
            "a body over the maximum message size",
            vec![0u8; 5 << 20],
            foreign("application/x-bincode", tagged(vec![])),
        ),
        (
            "an unknown content type",
            b"{}".to_vec(),
            foreign("text/x-unknown", tagged(vec![])),
        ),
        (
            "no content type",
            b"{}".to_vec(),
            BasicProperties::default()
                .with_message_id(common::unique("foreign").into())
                .with_headers(table(tagged(vec![]))),
        ),
        (
            "a bincode length bomb",
            bomb.to_vec(),
            foreign("application/x-bincode", tagged(vec![])),
        ),
        (
            "JSON without the tag wrapper",
            br#"{"id": 1, "note": ""}"#.to_vec(),
            foreign("application/json", tagged(vec![])),
        ),
        (
            "another event's body under this tag",
            br#"{"defects.other": {"id": 1}}"#.to_vec(),
            foreign("application/json", tagged(vec![])),
        ),
    ];
    assert_eq!(hostile.len(), 12);
    let ex = props.exchange();
    for (_, body, properties) in &hostile {
        common::raw_publish(&channel, ex, "", body, properties.clone()).await;
    }
    for id in 1..=100 {
        members[0].publish(&order(id)).await.unwrap();
    }
    wait_until("100 events are handled", Duration::from_secs(60), || {
        seen.lock().unwrap().len() >= 100
    })
    .await;
    let dead_letters = format!("{ex}.dead-letter");
    let depth = depth_reaches(&raw, &dead_letters, 12).await;
    let mut handled = seen.lock().unwrap().clone();
    handled.sort_unstable();
    assert_eq!(handled, (1..=100).collect::<Vec<_>>(), "each once");
    let stats: Vec<_> = members.iter().map(Bus::stats).collect();
    let dead_lettered: u64 = stats.iter().map(|s| s.dead_lettered).sum();
    let rejected: u64 = stats.iter().map(|s| s.rejected_total()).sum();
    assert_eq!(dead_lettered, 12, "{stats:?}");
    assert_eq!(rejected, 12, "{stats:?}");
    assert_eq!(depth, 12);
    for s in &stats {
        assert_eq!(s.reconnects, 0, "the broker closed a connection: {s:?}");
    }
    for member in members {
        member.close().await.unwrap();
    }
    raw.close().await.unwrap();
}

/// Waits until `queue` holds at least `count` messages; how many it holds.
async fn depth_reaches(conn: &Connection, queue: &str, count: u32) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let depth = common::queue_depth(conn, queue).await;
        if depth >= count || std::time::Instant::now() > deadline {
            return depth;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next dead letter in `queue`, waiting for it.
async fn next_letter(conn: &Connection, queue: &str) -> lapin::message::BasicGetMessage {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(letter) = common::raw_get(conn, queue).await {
            return letter;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter in {queue}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// close() lets the running handler finish, starts nothing new, and puts
/// the prefetched deliveries back for the other members.
#[tokio::test]
async fn close_stops_and_gives_back_the_prefetched_deliveries() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let group = common::unique("close");
    cleanup.queue(&format!("{}.{group}", props.exchange()));
    let slow = Subscribers::new();
    let handled_by_slow = Arc::new(Mutex::new(Vec::new()));
    let h = handled_by_slow.clone();
    slow.subscribe_async(move |o: Arc<Order>, _| {
        let h = h.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            h.lock().unwrap().push(o.id);
            Ok::<_, std::convert::Infallible>(())
        }
    })
    .forget();
    let first = Bus::with_props(props.clone())
        .subscribers(slow)
        .listen(Listen::group(&group))
        .connect()
        .await
        .unwrap();
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    for id in 1..=400 {
        publisher.publish(&order(id)).await.unwrap();
    }
    wait_until(
        "the slow member handles one",
        Duration::from_secs(10),
        || !handled_by_slow.lock().unwrap().is_empty(),
    )
    .await;
    first.close().await.unwrap();
    let by_first = handled_by_slow.lock().unwrap().clone();
    assert!(
        by_first.len() < 50,
        "close() handled {} of the 400 queued events instead of stopping",
        by_first.len()
    );
    let (second, seen) =
        recording(Bus::with_props(props.clone()).listen(Listen::group(&group))).await;
    wait_until("the rest are handled", Duration::from_secs(30), || {
        seen.lock().unwrap().len() + by_first.len() >= 400
    })
    .await;
    let mut all: Vec<u64> = seen.lock().unwrap().clone();
    all.extend(&by_first);
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<_>>(), "none lost, none twice");
    second.close().await.unwrap();
    publisher.close().await.unwrap();
}

/// Listener::cancel stops the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_without_working_through_the_queue() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let group = common::unique("cancel");
    cleanup.queue(&format!("{}.{group}", props.exchange()));
    let slow = Subscribers::new();
    let count = Arc::new(Mutex::new(0u32));
    let c = count.clone();
    slow.subscribe(move |_: &Order| {
        std::thread::sleep(Duration::from_millis(20));
        *c.lock().unwrap() += 1;
    })
    .forget();
    let bus = Bus::with_props(props.clone())
        .subscribers(slow)
        .publish_only()
        .connect()
        .await
        .unwrap();
    let listener = bus.listen(&Listen::group(&group)).await.unwrap();
    for id in 1..=300 {
        bus.publish(&order(id)).await.unwrap();
    }
    wait_until("one is handled", Duration::from_secs(10), || {
        *count.lock().unwrap() > 0
    })
    .await;
    listener.cancel().await.unwrap();
    let handled = *count.lock().unwrap();
    assert!(handled < 50, "cancel handled {handled} of 300");
    let conn = Connection::connect(&props).await.unwrap();
    let left = common::queue_depth(&conn, listener.queue()).await;
    assert_eq!(
        u64::from(left) + u64::from(handled),
        300,
        "the rest wait in the queue"
    );
    conn.close().await.unwrap();
    bus.close().await.unwrap();
}

/// A retry comes back at its own delay, not behind a longer one parked
/// before it.
#[tokio::test]
async fn a_short_retry_does_not_wait_behind_a_long_one() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let group = common::unique("retry");
    cleanup.queue(&format!("{}.{group}", props.exchange()));
    let subscribers = Subscribers::new();
    // (id, attempt) in the order they are tried.
    let tries = Arc::new(Mutex::new(Vec::new()));
    let t = tries.clone();
    subscribers
        .subscribe_with(move |o: &Order, ctx: &tidings::Context| {
            t.lock().unwrap().push((o.id, ctx.attempt()));
            // Order 1 fails until its 4th attempt; order 2 fails once.
            let fail = (o.id == 1 && ctx.attempt() < 4) || (o.id == 2 && ctx.attempt() < 2);
            if fail {
                Err(std::io::Error::other("not yet"))
            } else {
                Ok(())
            }
        })
        .forget();
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .listen(Listen::group(&group))
        .retry_delay(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    bus.publish(&order(1)).await.unwrap();
    // Order 1's third attempt fails and parks it for 1.2 s.
    wait_until("order 1's third attempt", Duration::from_secs(10), || {
        tries.lock().unwrap().contains(&(1, 3))
    })
    .await;
    bus.publish(&order(2)).await.unwrap();
    wait_until("both are handled", Duration::from_secs(20), || {
        let tries = tries.lock().unwrap();
        tries.contains(&(1, 4)) && tries.contains(&(2, 2))
    })
    .await;
    let tries = tries.lock().unwrap().clone();
    let at = |t| tries.iter().position(|x| *x == t).unwrap();
    assert!(
        at((2, 2)) < at((1, 4)),
        "order 2's retry (300 ms) came back behind order 1's (1.2 s): {tries:?}"
    );
    bus.close().await.unwrap();
}

/// An event of a type this process does not know is acknowledged and
/// counted by tag, not dead-lettered; the policy can make it poison.
#[tokio::test]
async fn unknown_event_types_are_acknowledged_and_counted() {
    for policy in [UnknownEvents::Acknowledge, UnknownEvents::DeadLetter] {
        let props = common::props(ExchangeKind::Fanout);
        let _cleanup = common::Cleanup::new(&props);
        let (bus, seen) = recording(Bus::with_props(props.clone()).unknown_events(policy)).await;
        let (raw, channel) = foreign_publisher(&props).await;
        for tag in ["newer.type", "newer.type", "newest.type"] {
            let headers = vec![("x-tidings-tag".to_owned(), text(tag))];
            let body = format!("{{\"{tag}\": {{}}}}");
            common::raw_publish(
                &channel,
                props.exchange(),
                "",
                body.as_bytes(),
                foreign("application/json", headers),
            )
            .await;
        }
        bus.publish(&order(1)).await.unwrap();
        wait_until("the known event", Duration::from_secs(10), || {
            !seen.lock().unwrap().is_empty()
        })
        .await;
        let stats = bus.stats();
        match policy {
            UnknownEvents::Acknowledge => {
                assert_eq!(stats.unknown_events, 3, "{stats:?}");
                assert_eq!(stats.dead_lettered, 0, "{stats:?}");
                assert_eq!(
                    bus.unknown_events(),
                    BTreeMap::from([("newer.type".to_owned(), 2), ("newest.type".to_owned(), 1)])
                );
            }
            _ => {
                assert_eq!(stats.unknown_events, 0, "{stats:?}");
                assert_eq!(stats.rejected(RejectReason::UnknownTag), 3, "{stats:?}");
                assert_eq!(stats.dead_lettered, 3, "{stats:?}");
            }
        }
        bus.close().await.unwrap();
        raw.close().await.unwrap();
    }
}

/// Duplicates are recognised by publisher and id: a foreign publisher that
/// reuses an id does not suppress another publisher's event.
#[tokio::test]
async fn dedup_keys_on_the_publisher_and_the_id() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let (bus, seen) = recording(Bus::with_props(props.clone())).await;
    let (raw, channel) = foreign_publisher(&props).await;
    // (origin, id, order): the third repeats the first, the second reuses
    // its id from another publisher.
    for (origin, n) in [("alice", 1), ("mallory", 2), ("alice", 3)] {
        let body = serde_json::to_vec(&BTreeMap::from([(Order::TAG, order(n))])).unwrap();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("same-id".into())
            .with_headers(table(tagged(vec![("x-origin".into(), text(origin))])));
        common::raw_publish(&channel, props.exchange(), "", &body, properties).await;
    }
    bus.publish(&order(4)).await.unwrap();
    wait_until("the last event", Duration::from_secs(10), || {
        seen.lock().unwrap().contains(&4)
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 4]);
    assert_eq!(bus.stats().deduplicated, 1);
    bus.close().await.unwrap();
    raw.close().await.unwrap();
}

/// The dead-letter queue is bounded; what it refuses is counted, not lost
/// silently.
#[tokio::test]
async fn the_dead_letter_queue_is_bounded_and_drops_are_counted() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let (bus, seen) =
        recording(Bus::with_props(props.clone()).dead_letter_limits(2, 1 << 20)).await;
    let (raw, channel) = foreign_publisher(&props).await;
    for _ in 0..4 {
        common::raw_publish(
            &channel,
            props.exchange(),
            "",
            b"not json",
            foreign("application/json", tagged(vec![])),
        )
        .await;
    }
    bus.publish(&order(1)).await.unwrap();
    wait_until("the valid event", Duration::from_secs(10), || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let stats = bus.stats();
    assert_eq!(stats.dead_lettered, 4, "{stats:?}");
    assert_eq!(stats.dead_letters_dropped, 2, "{stats:?}");
    let depth = common::queue_depth(&raw, bus.dead_letter_queue().unwrap()).await;
    assert_eq!(depth, 2);
    bus.close().await.unwrap();
    raw.close().await.unwrap();
}

/// A bus that only publishes declares no dead-letter queue; a mandatory one
/// hears that nobody is bound.
#[tokio::test]
async fn a_publish_only_bus_declares_no_dead_letters_and_can_be_mandatory() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let bus = Bus::with_props(props.clone())
        .publish_only()
        .mandatory(true)
        .connect()
        .await
        .unwrap();
    assert_eq!(bus.dead_letter_queue(), None);
    let err = bus.publish_confirmed(&order(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unroutable, "{err}");
    assert_eq!(bus.stats().returned, 1);
    let conn = Connection::connect(&props).await.unwrap();
    let channel = conn.channel().await.unwrap();
    let passive = channel
        .queue_declare(
            format!("{}.dead-letter", props.exchange()).as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(passive.is_err(), "no dead-letter queue was declared");
    // Listening after all declares it: what cannot be handled has a place.
    let listener = bus.listen(&Listen::broadcast()).await.unwrap();
    assert_eq!(
        bus.dead_letter_queue(),
        Some(format!("{}.dead-letter", props.exchange()).as_str())
    );
    listener.cancel().await.unwrap();
    conn.close().await.unwrap();
    bus.close().await.unwrap();
}

/// A JSON body that is not wrapped in its tag is a decode error, not a
/// schema mismatch.
#[tokio::test]
async fn json_without_the_tag_wrapper_is_a_decode_error() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let (bus, seen) = recording(Bus::with_props(props.clone())).await;
    let (raw, channel) = foreign_publisher(&props).await;
    let headers = vec![
        ("x-tidings-tag".to_owned(), text(Order::TAG)),
        ("x-tidings-fingerprint".to_owned(), text("0123456789abcdef")),
    ];
    common::raw_publish(
        &channel,
        props.exchange(),
        "",
        br#"{"id": 1, "note": ""}"#,
        foreign("application/json", headers),
    )
    .await;
    bus.publish(&order(2)).await.unwrap();
    wait_until("the valid event", Duration::from_secs(10), || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let stats = bus.stats();
    assert_eq!(stats.rejected(RejectReason::Decode), 1, "{stats:?}");
    assert_eq!(stats.rejected(RejectReason::FingerprintMismatch), 0);
    bus.close().await.unwrap();
    raw.close().await.unwrap();
}
