//! Per-publish options through the real broker: what reaches the wire
//! (priority, expiration, persistence, message id, compression), what the
//! broker does with it (a priority queue orders by it, an expired event is
//! dropped, a delayed event waits in its delay queue and keeps its routing
//! key), and why an event from the raw `Producer` with its own routing key
//! was refused (it lacks the tag header), not the key.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use tidings::{
    Bus, Codec, Compression, Connection, Context, Event, EventType, ExchangeKind,
    FINGERPRINT_HEADER, Json, Listen, Publish, PublishOptions, RejectReason, SENT_AT_HEADER,
    Subscribers, Subscription, TAG_HEADER,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "publish_options.parcel")]
struct Parcel {
    id: u64,
    label: String,
}

fn parcel(id: u64) -> Parcel {
    Parcel {
        id,
        label: "fragile".repeat(300),
    }
}

/// A durable queue bound to the exchange of `props` with `#`, with these
/// arguments, declared by a raw channel.
async fn raw_queue(conn: &Connection, exchange: &str, arguments: FieldTable) -> String {
    let name = common::unique("options-queue");
    let channel = conn.channel().await.unwrap();
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    name
}

/// A bus that only publishes, on the exchange of `props`.
async fn publisher(props: &tidings::AmqpProps) -> Bus {
    Bus::with_props(props.clone())
        .subscribers(Subscribers::new())
        .publish_only()
        .connect()
        .await
        .unwrap()
}

/// What a receiver saw: parcel ids and the routing keys they came with.
type Seen = Arc<Mutex<Vec<(u64, String)>>>;

/// A bus listening as `listen` says (one attempt per delivery), and what
/// it handled.
async fn receiver(props: &tidings::AmqpProps, listen: Listen) -> (Bus, Seen, Subscription) {
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let s = seen.clone();
    let guard = subscribers.subscribe_with(move |p: &Parcel, ctx: &Context| {
        s.lock().unwrap().push((p.id, ctx.routing_key().to_owned()))
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .listen(listen)
        .max_attempts(1)
        .connect()
        .await
        .unwrap();
    (bus, seen, guard)
}

#[tokio::test]
async fn the_options_of_one_publish_reach_the_wire() {
    let props = common::props(ExchangeKind::Topic);
    let cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let queue = raw_queue(&conn, props.exchange(), FieldTable::default()).await;
    cleanup.queue(&queue);
    let bus = publisher(&props).await;
    let options = PublishOptions::new()
        .priority(7)
        .expiration(Duration::from_secs(60))
        .persistent(false)
        .message_id("parcel-1-sent")
        .routing_key("parcels.eu")
        .compression_above(Compression::Gzip, 0)
        .codec(Json)
        .confirm(true);
    bus.publish_with(&parcel(1), &options).await.unwrap();
    bus.publish_confirmed(&parcel(2)).await.unwrap();

    let first = common::raw_get(&conn, &queue)
        .await
        .expect("the first event");
    let p = &first.delivery.properties;
    assert_eq!(*p.priority(), Some(7));
    assert_eq!(p.expiration().as_ref().map(|e| e.as_str()), Some("60000"));
    assert_eq!(*p.delivery_mode(), None, "not persistent");
    assert_eq!(
        p.message_id().as_ref().map(|m| m.as_str()),
        Some("parcel-1-sent")
    );
    assert_eq!(
        p.content_encoding().as_ref().map(|e| e.as_str()),
        Some("gzip")
    );
    assert_eq!(
        p.content_type().as_ref().map(|t| t.as_str()),
        Some("application/json")
    );
    assert_eq!(first.delivery.routing_key.as_str(), "parcels.eu");
    let json: &dyn Codec = &Json;
    let plain = json
        .encode(&(Box::new(parcel(1)) as Box<dyn Event>))
        .unwrap();
    assert!(
        first.delivery.data.len() < plain.len() / 4,
        "{} compressed bytes for {} plain",
        first.delivery.data.len(),
        plain.len()
    );

    let second = common::raw_get(&conn, &queue)
        .await
        .expect("the second event");
    let p = &second.delivery.properties;
    assert_eq!(*p.priority(), None);
    assert_eq!(*p.expiration(), None);
    assert_eq!(*p.delivery_mode(), Some(2), "persistent by default");
    assert_eq!(*p.content_encoding(), None, "the bus does not compress");
    assert_eq!(
        p.content_type().as_ref().map(|t| t.as_str()),
        Some("application/x-bincode")
    );
    assert_eq!(second.delivery.routing_key.as_str(), Parcel::ROUTING_KEY);
    bus.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn the_send_time_is_left_out_by_a_bus_built_without_it() {
    let props = common::props(ExchangeKind::Topic);
    let cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let queue = raw_queue(&conn, props.exchange(), FieldTable::default()).await;
    cleanup.queue(&queue);
    let with = publisher(&props).await;
    let without = Bus::with_props(props.clone())
        .subscribers(Subscribers::new())
        .publish_only()
        .sent_at(false)
        .connect()
        .await
        .unwrap();
    with.publish_confirmed(&parcel(1)).await.unwrap();
    without.publish_confirmed(&parcel(2)).await.unwrap();
    let sent_at = |delivery: &lapin::message::BasicGetMessage| {
        let headers = delivery
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        headers.inner().get(SENT_AT_HEADER).cloned()
    };
    let first = common::raw_get(&conn, &queue)
        .await
        .expect("the first event");
    match sent_at(&first) {
        Some(AMQPValue::LongString(at)) => {
            let micros: u64 = at.to_string().parse().expect("a decimal");
            assert!(micros > 1_700_000_000_000_000, "{micros} microseconds");
        }
        other => panic!("x-tidings-sent-at is sent by default, not {other:?}"),
    }
    let second = common::raw_get(&conn, &queue)
        .await
        .expect("the second event");
    assert_eq!(sent_at(&second), None, "left out with sent_at(false)");
    let headers = second
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    assert!(
        headers.inner().contains_key(TAG_HEADER),
        "the tag is still sent"
    );
    with.close().await.unwrap();
    without.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_priority_queue_delivers_higher_priorities_first() {
    let props = common::props(ExchangeKind::Topic);
    let cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(10));
    let queue = raw_queue(&conn, props.exchange(), arguments).await;
    cleanup.queue(&queue);
    let bus = publisher(&props).await;
    for (id, priority) in [(1, 1), (2, 9), (3, 5)] {
        let options = PublishOptions::new().priority(priority).confirm(true);
        bus.publish_with(&parcel(id), &options).await.unwrap();
    }
    let mut order = Vec::new();
    while let Some(message) = common::raw_get(&conn, &queue).await {
        order.push(message.delivery.properties.priority().unwrap_or(0));
    }
    assert_eq!(order, [9, 5, 1]);
    bus.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn an_expired_event_is_dropped_by_the_broker() {
    let props = common::props(ExchangeKind::Topic);
    let cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let queue = raw_queue(&conn, props.exchange(), FieldTable::default()).await;
    cleanup.queue(&queue);
    let bus = publisher(&props).await;
    let short = PublishOptions::new()
        .expiration(Duration::from_millis(50))
        .confirm(true);
    bus.publish_with(&parcel(1), &short).await.unwrap();
    bus.publish_confirmed(&parcel(2)).await.unwrap();
    // The broker drops an expired message at the queue's head.
    assert!(
        common::eventually_async(Duration::from_secs(10), || async {
            common::queue_depth(&conn, &queue).await == 1
        })
        .await,
        "the expired event is still in the queue after 10 s"
    );
    let kept = common::raw_get(&conn, &queue)
        .await
        .expect("the second event");
    assert_eq!(
        *kept.delivery.properties.expiration(),
        None,
        "only the event without expiration is left"
    );
    bus.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_delayed_event_waits_in_its_delay_queue_and_keeps_its_routing_key() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let (receiver, seen, _g) = receiver(&props, Listen::broadcast().pattern("later.#")).await;
    let bus = publisher(&props).await;
    let conn = Connection::connect(&props).await.unwrap();
    let delay = Duration::from_millis(1500);
    let options = PublishOptions::new()
        .delay(delay)
        .routing_key("later.eu")
        .confirm(true);
    let published = std::time::Instant::now();
    bus.publish_with(&parcel(1), &options).await.unwrap();
    let delay_queue = format!("{}.delay.1500", props.exchange());
    assert_eq!(
        common::queue_depth(&conn, &delay_queue).await,
        1,
        "confirmed once it waits in its delay queue"
    );
    let arrived =
        common::eventually(Duration::from_secs(10), || !seen.lock().unwrap().is_empty()).await;
    assert!(arrived, "the delayed event never arrived");
    // Seen within 10 ms of its arrival: it did not come before its delay.
    let after = published.elapsed();
    assert!(after >= delay, "arrived after {after:?}, before its delay");
    assert_eq!(*seen.lock().unwrap(), [(1, "later.eu".to_owned())]);
    assert_eq!(common::queue_depth(&conn, &delay_queue).await, 0);
    bus.close().await.unwrap();
    receiver.close().await.unwrap();
    conn.close().await.unwrap();
}

/// A bus never checked the routing key: what it refused from the raw
/// `Producer` was a message without the tag header. With the headers a
/// bus sends, another routing key is accepted; without them, refused.
#[tokio::test]
async fn a_raw_producer_needs_the_tag_header_not_the_types_routing_key() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let (receiver, seen, _g) = receiver(&props, Listen::broadcast()).await;
    let conn = Connection::connect(&props).await.unwrap();
    let producer = conn.producer().await.unwrap();
    let event: Box<dyn Event> = Box::new(parcel(1));
    producer
        .publish_with(&event, &Publish::new().routing_key("elsewhere.one"))
        .await
        .unwrap()
        .await
        .unwrap();
    let refused = common::eventually(Duration::from_secs(10), || {
        receiver.stats().rejected(RejectReason::MissingTag) == 1
    })
    .await;
    assert!(refused, "{:?}", receiver.stats());
    let event: Box<dyn Event> = Box::new(parcel(2));
    let with_headers = Publish::new()
        .routing_key("elsewhere.two")
        .header(TAG_HEADER, Parcel::TAG)
        .header(
            FINGERPRINT_HEADER,
            Parcel::schema().fingerprint().to_string(),
        );
    producer
        .publish_with(&event, &with_headers)
        .await
        .unwrap()
        .await
        .unwrap();
    let arrived =
        common::eventually(Duration::from_secs(10), || !seen.lock().unwrap().is_empty()).await;
    assert!(arrived, "{:?}", receiver.stats());
    assert_eq!(*seen.lock().unwrap(), [(2, "elsewhere.two".to_owned())]);
    receiver.close().await.unwrap();
    conn.close().await.unwrap();
}
