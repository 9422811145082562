//! The schema stream on RabbitMQ: an event that arrives before its writer's
//! schema is stored is retried, and read by that schema once it is there.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::lapin::types::{AMQPValue, FieldTable};
use tidings::{Bus, Codec, Event, Fingerprint, Schema, Subscribers};

/// This process's type.
#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "schema_store.reading")]
struct Reading {
    sensor: String,
    value: u32,
    unit: Option<String>,
}

/// Another build's type under the same tag: one more field, no unit.
#[derive(Serialize, Deserialize)]
struct TheirReading {
    sensor: String,
    value: u32,
    calibrated: bool,
}

#[tokio::test]
async fn an_event_that_arrives_before_its_schema_is_retried_then_read() {
    let props = common::props(tidings::ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = Subscribers::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _guard = subscribers.subscribe(move |r: &Reading| s.lock().unwrap().push(r.clone()));
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .retry_delay(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();

    let theirs =
        Schema::trace::<TheirReading>("schema_store.reading", 1, &[], Fingerprint::from_u64(0));
    let conn = tidings::Connection::connect(&props).await.unwrap();
    let channel = common::confirming_channel(&conn).await;
    let text = |s: &str| AMQPValue::LongString(s.into());
    let mut headers = FieldTable::default();
    headers.insert(tidings::TAG_HEADER.into(), text("schema_store.reading"));
    headers.insert(
        tidings::FINGERPRINT_HEADER.into(),
        text(&theirs.fingerprint().to_string()),
    );
    let event = std::collections::BTreeMap::from([(
        "schema_store.reading",
        TheirReading {
            sensor: "t1".into(),
            value: 21,
            calibrated: true,
        },
    )]);
    let body = (&tidings::Bincode as &dyn Codec).encode(&event).unwrap();
    let properties = tidings::lapin::BasicProperties::default()
        .with_content_type(tidings::BINCODE_CONTENT_TYPE.into())
        .with_headers(headers.clone());
    common::raw_publish(
        &channel,
        props.exchange(),
        "schema_store.reading",
        &body,
        properties,
    )
    .await;
    assert!(
        common::eventually(Duration::from_secs(10), || bus.stats().retried >= 1).await,
        "the event was not retried: {:?}",
        bus.stats()
    );
    assert!(seen.lock().unwrap().is_empty());

    // Now the other build stores its schema, as its bus would.
    let stream = tidings::schema_stream(props.exchange());
    let schema = serde_json::to_vec(&theirs).unwrap();
    let properties = tidings::lapin::BasicProperties::default().with_headers(headers);
    common::raw_publish(&channel, "", &stream, &schema, properties).await;
    assert!(
        common::eventually(Duration::from_secs(20), || !seen.lock().unwrap().is_empty()).await,
        "the event was not read once its schema was stored: {:?}",
        bus.stats()
    );
    assert_eq!(
        seen.lock().unwrap()[..],
        [Reading {
            sensor: "t1".into(),
            value: 21,
            unit: None
        }]
    );
    let stats = bus.stats();
    assert_eq!(
        (stats.schemas_resolved, stats.dead_lettered),
        (1, 0),
        "{stats:?}"
    );
    conn.close().await.unwrap();
    bus.close().await.unwrap();
}
