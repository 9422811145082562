//! Within the dedup window a message id reaches the handlers once, however
//! often it is delivered (re-published after a failure, redelivered).

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use tidings::{Bincode, Bus, Codec, Connection, Event, EventType, ExchangeKind, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "dedup.transfer")]
struct Transfer {
    amount: u64,
}

/// Publishes `event` under `message_id` as a bus would.
async fn publish_as(conn: &Connection, exchange: &str, event: &Transfer, message_id: &str) {
    let body = (&Bincode as &dyn Codec)
        .encode(&(Box::new(event.clone()) as Box<dyn Event>))
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-tidings-tag".into(),
        AMQPValue::LongString(Transfer::TAG.into()),
    );
    headers.insert(
        "x-tidings-fingerprint".into(),
        AMQPValue::LongString(Transfer::schema().fingerprint().to_string().into()),
    );
    let properties = BasicProperties::default()
        .with_content_type("application/x-bincode".into())
        .with_message_id(message_id.into())
        .with_headers(headers);
    let channel = conn.channel().await.unwrap();
    common::raw_publish(&channel, exchange, "", &body, properties).await;
}

async fn handled_with_window(window: usize) -> (Vec<u64>, tidings::Stats) {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = Subscribers::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _g = subscribers.subscribe(move |t: &Transfer| s.lock().unwrap().push(t.amount));
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .dedup_window(window)
        .connect()
        .await
        .unwrap();
    let conn = Connection::connect(&props).await.unwrap();
    publish_as(
        &conn,
        props.exchange(),
        &Transfer { amount: 10 },
        "transfer-1",
    )
    .await;
    publish_as(
        &conn,
        props.exchange(),
        &Transfer { amount: 10 },
        "transfer-1",
    )
    .await;
    publish_as(
        &conn,
        props.exchange(),
        &Transfer { amount: 20 },
        "transfer-2",
    )
    .await;
    let all_in = common::eventually(Duration::from_secs(10), || bus.stats().delivered == 3).await;
    assert!(all_in, "delivered {}", bus.stats().delivered);
    bus.close().await.unwrap();
    conn.close().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    (seen, bus.stats())
}

#[tokio::test]
async fn a_repeated_message_id_reaches_the_handlers_once() {
    let (seen, stats) = handled_with_window(100).await;
    assert_eq!(seen, [10, 20]);
    assert_eq!(stats.deduplicated, 1);
}

#[tokio::test]
async fn a_zero_window_turns_dedup_off() {
    let (seen, stats) = handled_with_window(0).await;
    assert_eq!(seen, [10, 10, 20]);
    assert_eq!(stats.deduplicated, 0);
}
