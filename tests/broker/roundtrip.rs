//! Values of several shapes cross the broker in both codecs, with their
//! metadata, and the receiver decodes by content-type.

use crate::common;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Connection, ExchangeKind, Json, Publish, Queue};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Priority {
    Low,
    High { escalated_by: String },
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Address {
    street: String,
    zip: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
    priority: Priority,
    ship_to: Address,
    tags: BTreeMap<String, i64>,
}

fn order(id: u64) -> Order {
    Order {
        id,
        customer: "Zoë «quoted»".into(),
        lines: vec![("tea".into(), 2), ("cake".into(), 1)],
        note: id.is_multiple_of(2).then(|| "ring twice".into()),
        priority: if id.is_multiple_of(2) {
            Priority::Low
        } else {
            Priority::High {
                escalated_by: "ops".into(),
            }
        },
        ship_to: Address {
            street: "1 Main St".into(),
            zip: Some(12345),
        },
        tags: [("vip".to_owned(), -1)].into(),
    }
}

async fn round_trip(props: AmqpProps, content_type: &str) {
    let _cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let mut consumer = conn.consumer(&Queue::exclusive()).await.unwrap();
    let producer = conn.producer().await.unwrap();

    producer.publish_confirmed(&order(1)).await.unwrap();
    producer.publish_confirmed(&order(2)).await.unwrap();
    producer
        .publish_confirmed(&vec![Some(1.5f64), None])
        .await
        .unwrap();
    producer.publish_confirmed(&"plain text").await.unwrap();
    producer.publish_confirmed(&Priority::Low).await.unwrap();

    for id in [1, 2] {
        let d = common::next_delivery(&mut consumer).await;
        assert_eq!(d.content_type(), Some(content_type));
        assert_eq!(d.decode::<Order>().unwrap(), order(id));
        d.ack().await.unwrap();
    }
    let d = common::next_delivery(&mut consumer).await;
    assert_eq!(
        d.decode::<Vec<Option<f64>>>().unwrap(),
        vec![Some(1.5), None]
    );
    d.ack().await.unwrap();
    let d = common::next_delivery(&mut consumer).await;
    assert_eq!(d.decode::<String>().unwrap(), "plain text");
    d.ack().await.unwrap();
    let d = common::next_delivery(&mut consumer).await;
    assert_eq!(d.decode::<Priority>().unwrap(), Priority::Low);
    d.ack().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn round_trip_bincode() {
    round_trip(common::props(ExchangeKind::Fanout), "application/x-bincode").await;
}

#[tokio::test]
async fn round_trip_json() {
    round_trip(
        common::props(ExchangeKind::Fanout).with_codec(Json),
        "application/json",
    )
    .await;
}

#[tokio::test]
async fn headers_and_properties_arrive() {
    let props = common::props(ExchangeKind::Topic).with_connection_name("roundtrip-test");
    let _cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let mut consumer = conn
        .consumer(&Queue::exclusive().bind("orders.*"))
        .await
        .unwrap();
    let producer = conn.producer().await.unwrap();
    let publish = Publish::new()
        .routing_key("orders.placed")
        .header("tenant", "acme")
        .message_id("order-42")
        .persistent(true);
    producer
        .publish_with(&order(42), &publish)
        .await
        .unwrap()
        .await
        .unwrap();
    producer.publish_confirmed(&order(43)).await.unwrap(); // empty key: not bound, never arrives
    producer
        .publish_with(&order(44), &Publish::new().routing_key("orders.shipped"))
        .await
        .unwrap()
        .await
        .unwrap();

    let d = common::next_delivery(&mut consumer).await;
    assert_eq!(d.routing_key(), "orders.placed");
    assert_eq!(d.exchange(), props.exchange());
    assert_eq!(d.header_str("tenant"), Some("acme"));
    assert_eq!(d.message_id(), Some("order-42"));
    assert_eq!(d.app_id(), Some("roundtrip-test"));
    assert_eq!(d.origin(), Some(conn.instance_id()));
    assert_eq!(d.properties().delivery_mode(), &Some(2));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamp = d.timestamp().expect("no timestamp");
    assert!(
        stamp <= now && now - stamp < 60,
        "timestamp {stamp} vs now {now}"
    );
    assert!(!d.redelivered());
    d.ack().await.unwrap();

    let d = common::next_delivery(&mut consumer).await;
    assert_eq!(d.routing_key(), "orders.shipped");
    assert_eq!(d.decode::<Order>().unwrap().id, 44);
    let generated = d.message_id().expect("no generated message id");
    assert!(generated.starts_with(conn.instance_id()), "{generated}");
    d.ack().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn content_type_decides_the_decoder() {
    // The receiver's props say bincode; a JSON sender's messages still decode.
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let receiver = Connection::connect(&props).await.unwrap();
    let mut consumer = receiver.consumer(&Queue::exclusive()).await.unwrap();
    let json_sender = Connection::connect(&props.clone().with_codec(Json))
        .await
        .unwrap();
    let bincode_sender = Connection::connect(&props).await.unwrap();
    json_sender
        .producer()
        .await
        .unwrap()
        .publish_confirmed(&order(1))
        .await
        .unwrap();
    bincode_sender
        .producer()
        .await
        .unwrap()
        .publish_confirmed(&order(2))
        .await
        .unwrap();

    let d = common::next_delivery(&mut consumer).await;
    assert_eq!(d.content_type(), Some("application/json"));
    assert!(d.body().starts_with(b"{\"id\":1"));
    assert_eq!(d.decode::<Order>().unwrap(), order(1));
    d.ack().await.unwrap();
    let d = common::next_delivery(&mut consumer).await;
    assert_eq!(d.content_type(), Some("application/x-bincode"));
    assert_eq!(d.decode::<Order>().unwrap(), order(2));
    d.ack().await.unwrap();
    for conn in [receiver, json_sender, bincode_sender] {
        conn.close().await.unwrap();
    }
}
