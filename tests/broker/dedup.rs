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

/// Two deliveries of one message id handled at the same time
/// (`concurrency(4)`): the second waits for the first. When the first
/// succeeds, the second is a duplicate; when it fails, the second handles
/// the event, and the first's retry, coming later, is the duplicate.
async fn duplicates_at_once(first_fails: bool) -> (Vec<u64>, u32, tidings::Stats) {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = Subscribers::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let listening: Arc<std::sync::OnceLock<Bus>> = Arc::default();
    let (s, c, l) = (seen.clone(), calls.clone(), listening.clone());
    let _g = subscribers.subscribe_async(move |t: Arc<Transfer>, _: tidings::Context| {
        let (s, c, l) = (s.clone(), c.clone(), l.clone());
        async move {
            let call = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // The first handling lasts until the duplicate was delivered
            // too: it arrives while this runs.
            if call == 0 {
                let both = common::eventually(Duration::from_secs(10), || {
                    l.get().is_some_and(|bus| bus.stats().delivered >= 2)
                })
                .await;
                assert!(both, "the duplicate was not delivered");
            }
            if first_fails && call == 0 {
                return Err("the first attempt fails");
            }
            s.lock().unwrap().push(t.amount);
            Ok(())
        }
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .concurrency(4)
        .retry_delay(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let _ = listening.set(bus.clone());
    let conn = Connection::connect(&props).await.unwrap();
    for _ in 0..2 {
        publish_as(
            &conn,
            props.exchange(),
            &Transfer { amount: 10 },
            "transfer-at-once",
        )
        .await;
    }
    let settled = common::eventually(Duration::from_secs(10), || {
        bus.stats().deduplicated == 1 && !seen.lock().unwrap().is_empty()
    })
    .await;
    assert!(settled, "{:?}", bus.stats());
    bus.close().await.unwrap();
    conn.close().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
    (seen, calls, bus.stats())
}

#[tokio::test]
async fn a_duplicate_in_flight_waits_and_is_acknowledged_once_the_first_succeeded() {
    let (seen, calls, stats) = duplicates_at_once(false).await;
    assert_eq!(seen, [10]);
    assert_eq!(calls, 1, "the duplicate never reached the handler");
    assert_eq!((stats.handled, stats.deduplicated), (1, 1), "{stats:?}");
}

#[tokio::test]
async fn a_duplicate_in_flight_is_handled_when_the_first_failed() {
    let (seen, calls, stats) = duplicates_at_once(true).await;
    assert_eq!(seen, [10], "handled once, by the duplicate");
    assert_eq!(calls, 2, "the failed first, then the duplicate");
    assert_eq!(
        (stats.handled, stats.retried, stats.deduplicated),
        (1, 1, 1),
        "the retry of the first came back as a duplicate: {stats:?}"
    );
}
