//! Two versions of one event in one process: a version-1 event is upcast
//! to version 2 for the subscribers, over memory and over RabbitMQ; a
//! version newer than any this process knows is refused as `newer_version`.

use crate::common;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::lapin::types::{AMQPValue, FieldTable};
use tidings::{Bus, Event, EventType, ExchangeKind, RejectReason, Subscribers};
use tokio_stream::StreamExt;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "versions.refunded")]
struct RefundedV1 {
    id: u64,
    cents: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Money {
    cents: u64,
    currency: String,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "versions.refunded", version = 2, upcast_from = RefundedV1)]
struct Refunded {
    id: u64,
    amount: Money,
}

impl From<RefundedV1> for Refunded {
    fn from(old: RefundedV1) -> Self {
        Self {
            id: old.id,
            amount: Money {
                cents: old.cents,
                currency: "EUR".into(),
            },
        }
    }
}

async fn version_one_is_upcast(bus_url: &str) {
    let subscribers = Subscribers::new();
    let mut refunds = subscribers.stream::<Refunded>(16);
    let mut old = subscribers.stream::<RefundedV1>(16);
    let bus = Bus::builder(bus_url)
        .unwrap()
        .subscribers(subscribers)
        .connect()
        .await
        .unwrap();
    bus.publish_confirmed(&RefundedV1 { id: 1, cents: 250 })
        .await
        .unwrap();
    let newer = Refunded {
        id: 2,
        amount: Money {
            cents: 300,
            currency: "CHF".into(),
        },
    };
    bus.publish_confirmed(&newer).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let next = tokio::time::timeout(Duration::from_secs(10), refunds.next()).await;
        got.push(
            next.expect("no refund within 10 s")
                .expect("stream ended")
                .unwrap(),
        );
    }
    got.sort_by_key(|r| r.id);
    assert_eq!(
        got.iter().map(|r| (**r).clone()).collect::<Vec<_>>(),
        [
            Refunded {
                id: 1,
                amount: Money {
                    cents: 250,
                    currency: "EUR".into()
                }
            },
            newer
        ]
    );
    let stats = bus.stats();
    assert_eq!(
        (stats.upcasts, stats.handled, stats.dead_lettered),
        (1, 2, 0),
        "{stats:?}"
    );
    bus.close().await.unwrap();
    // Subscribers of the old version saw nothing: events go to the newest.
    // Their stream ends with the bus, holding whatever it was given.
    let rest = tokio::time::timeout(Duration::from_secs(10), old.next()).await;
    assert!(
        matches!(rest, Ok(None)),
        "the old version's stream: {rest:?}"
    );
}

#[tokio::test]
async fn version_one_is_upcast_in_memory() {
    version_one_is_upcast("memory://versions").await;
}

#[tokio::test]
async fn version_one_is_upcast_over_rabbitmq() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let base = common::broker_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    version_one_is_upcast(&format!("{base}{sep}exchange={}", props.exchange())).await;
}

#[tokio::test]
async fn a_newer_version_is_refused_not_misread() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let bus = Bus::with_props(props.clone()).connect().await.unwrap();
    let conn = tidings::Connection::connect(&props).await.unwrap();
    let channel = common::confirming_channel(&conn).await;
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers.insert(tidings::TAG_HEADER.into(), text("versions.refunded"));
    headers.insert(tidings::VERSION_HEADER.into(), text("3"));
    headers.insert(
        tidings::FINGERPRINT_HEADER.into(),
        text(&Refunded::schema().fingerprint().to_string()),
    );
    // Never read: the version is refused before the body.
    let body = b"version three, whatever it holds";
    let properties = tidings::lapin::BasicProperties::default()
        .with_content_type(tidings::BINCODE_CONTENT_TYPE.into())
        .with_headers(headers);
    common::raw_publish(
        &channel,
        props.exchange(),
        "versions.refunded",
        body,
        properties,
    )
    .await;
    assert!(
        common::eventually(Duration::from_secs(10), || bus
            .stats()
            .rejected(RejectReason::NewerVersion)
            == 1)
        .await,
        "{:?}",
        bus.stats()
    );
    assert_eq!(bus.stats().handled, 0);
    conn.close().await.unwrap();
    bus.close().await.unwrap();
}
