//! Queue types: group and named queues are quorum queues with
//! `queue_type=quorum` (classic by default, or per listener), a classic
//! queue of the same name fails with what to do, and a quorum queue's
//! delivery limit sends a looping message to the dead letters.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use tidings::{
    AmqpProps, Bus, Connection, ErrorKind, Event, ExchangeKind, Listen, Queue, QueueType,
    Subscribers,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "queue_types.job")]
struct Job {
    n: u32,
}

/// Declares `name` on a fresh channel as a queue of `queue_type` and says
/// whether the broker accepted it: an existing queue of another type is
/// refused.
async fn declares_as(conn: &Connection, name: &str, queue_type: &str) -> bool {
    let channel = conn.channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.into()),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(name.into(), options, arguments)
        .await
        .is_ok();
    let _ = channel.close(200, "checked".into()).await;
    declared
}

fn counting(handled: &Arc<AtomicU32>) -> Subscribers {
    let subscribers = Subscribers::new();
    let handled = handled.clone();
    subscribers
        .subscribe(move |_: &Job| {
            handled.fetch_add(1, Ordering::Relaxed);
        })
        .forget();
    subscribers
}

#[tokio::test]
async fn group_and_retry_queues_are_quorum_when_asked_and_classic_per_listener() {
    assert_eq!(AmqpProps::default().queue_type(), QueueType::Classic);
    let props = common::props(ExchangeKind::Fanout).with_queue_type(QueueType::Quorum);
    let cleanup = common::Cleanup::new(&props);
    let quorum = format!("{}.quorum-workers", props.exchange());
    let classic = format!("{}.classic-workers", props.exchange());
    cleanup.queue(&quorum);
    cleanup.queue(&classic);
    // A bus per queue, each handler failing its first delivery: each
    // queue gets a retry queue.
    let mut buses = Vec::new();
    let mut counts = Vec::new();
    for listen in [
        Listen::group("quorum-workers"),
        Listen::group("classic-workers").queue_type(QueueType::Classic),
    ] {
        let handled = Arc::new(AtomicU32::new(0));
        let subscribers = Subscribers::new();
        let h = handled.clone();
        subscribers
            .subscribe(move |_: &Job| {
                if h.fetch_add(1, Ordering::Relaxed) == 0 {
                    return Err("not yet".to_owned());
                }
                Ok(())
            })
            .forget();
        let bus = Bus::with_props(props.clone())
            .subscribers(subscribers)
            .listen(listen)
            .retry_delay(Duration::from_millis(100))
            .connect()
            .await
            .unwrap();
        buses.push(bus);
        counts.push(handled);
    }
    buses[0].publish_confirmed(&Job { n: 1 }).await.unwrap();
    // Each queue's bus handles it, after a retry.
    assert!(
        common::eventually(Duration::from_secs(15), || counts
            .iter()
            .all(|c| c.load(Ordering::Relaxed) == 2))
        .await,
        "handled {counts:?} times"
    );

    let types = common::queue_types();
    let type_of = |name: &str| types.get(name).map(String::as_str);
    assert_eq!(type_of(&quorum), Some("quorum"), "{types:?}");
    assert_eq!(type_of(&classic), Some("classic"), "{types:?}");
    // Retry queues are of their queue's type.
    assert_eq!(
        type_of(&format!("{quorum}.retry.100")),
        Some("quorum"),
        "{types:?}"
    );
    assert_eq!(
        type_of(&format!("{classic}.retry.100")),
        Some("classic"),
        "{types:?}"
    );
    // The dead-letter queue is classic, whatever the queues' type.
    let dead_letters = format!("{}.dead-letter", props.exchange());
    assert_eq!(type_of(&dead_letters), Some("classic"), "{types:?}");
    // And a quorum queue is one: it cannot be declared classic.
    let admin = Connection::connect(&props).await.unwrap();
    assert!(!declares_as(&admin, &quorum, "classic").await);
    for bus in buses {
        bus.close().await.unwrap();
    }
    admin.close().await.unwrap();
}

#[tokio::test]
async fn a_classic_queue_of_the_same_name_fails_with_what_to_do() {
    let props = common::props(ExchangeKind::Fanout).with_queue_type(QueueType::Quorum);
    let cleanup = common::Cleanup::new(&props);
    let queue = format!("{}.legacy", props.exchange());
    cleanup.queue(&queue);
    // A queue from before quorum queues were the default.
    let admin = Connection::connect(&props).await.unwrap();
    assert!(declares_as(&admin, &queue, "classic").await);

    let err = Bus::with_props(props.clone())
        .listen(Listen::group("legacy"))
        .connect()
        .await
        .expect_err("a classic queue cannot be declared as a quorum queue");
    let text = err.to_string();
    eprintln!("{text}");
    assert_eq!(err.kind(), ErrorKind::Broker, "{text}");
    assert!(
        text.contains(&format!("queue {queue:?} exists as a classic queue")),
        "{text}"
    );
    assert!(text.contains("queue_type=classic"), "{text}");
    assert!(text.contains("delete it"), "{text}");

    // As it says: either the listener or the whole bus keeps it classic.
    let handled = Arc::new(AtomicU32::new(0));
    let url = common::broker_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let by_url = AmqpProps::from_url(&format!(
        "{url}{sep}exchange={}&kind={}&queue_type=classic",
        props.exchange(),
        props.exchange_kind().as_str()
    ))
    .unwrap();
    assert_eq!(by_url.queue_type(), QueueType::Classic);
    for props in [props.clone().with_queue_type(QueueType::Classic), by_url] {
        let bus = Bus::with_props(props)
            .subscribers(counting(&handled))
            .listen(Listen::group("legacy"))
            .connect()
            .await
            .unwrap();
        bus.close().await.unwrap();
    }
    let bus = Bus::with_props(props.clone())
        .subscribers(counting(&handled))
        .listen(Listen::group("legacy").queue_type(QueueType::Classic))
        .connect()
        .await
        .unwrap();
    bus.publish_confirmed(&Job { n: 2 }).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || handled.load(Ordering::Relaxed)
            == 1)
        .await
    );
    bus.close().await.unwrap();
    admin.close().await.unwrap();
}

#[tokio::test]
async fn a_message_past_the_delivery_limit_goes_to_the_dead_letters() {
    let props = common::props(ExchangeKind::Fanout)
        .with_queue_type(QueueType::Quorum)
        .with_delivery_limit(2);
    let cleanup = common::Cleanup::new(&props);
    let name = common::unique("looping");
    cleanup.queue(&name);
    let conn = Connection::connect(&props).await.unwrap();
    let dead_letters = conn.declare_dead_letters().await.unwrap();
    let mut consumer = conn.consumer(&Queue::durable(&name)).await.unwrap();
    let producer = conn.producer().await.unwrap();
    producer.publish_confirmed(&"poison").await.unwrap();
    // A consumer that gives it back each time (as a process that dies
    // holding it would): delivered three times, then dead-lettered.
    for delivery in 0..3 {
        let got = common::next_delivery(&mut consumer).await;
        assert_eq!(
            got.decode::<String>().unwrap(),
            "poison",
            "delivery {delivery}"
        );
        got.nack(true).await.unwrap();
    }
    let parked = async {
        loop {
            if let Some(message) = common::raw_get(&conn, &dead_letters).await {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let message = tokio::time::timeout(Duration::from_secs(10), parked)
        .await
        .expect("the looping message did not reach the dead letters");
    assert_eq!(
        common::header_text(&message, "x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            tokio_stream::StreamExt::next(&mut consumer)
        )
        .await
        .is_err(),
        "the message is not delivered again"
    );
    conn.close().await.unwrap();
}
