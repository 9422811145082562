//! What cannot be handled ends in the dead-letter queue with why, and the
//! bus keeps handling other events meanwhile. (RabbitMQ only: the memory
//! transport counts dead letters but keeps none.)

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use tidings::{Bus, Connection, Context, Event, ExchangeKind, Queue, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "dead_letters.payment", routing_key = "payments.card")]
struct Payment {
    id: u64,
    poison: bool,
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_after_the_cap_without_blocking_others() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = Subscribers::new();
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let t = timeline.clone();
    let _g = subscribers.subscribe_with(move |p: &Payment, ctx: &Context| {
        t.lock().unwrap().push((p.id, ctx.attempt()));
        if p.poison {
            Err(format!("card {} declined", p.id))
        } else {
            Ok(())
        }
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .max_attempts(3)
        .retry_delay(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    bus.publish(&Payment {
        id: 0,
        poison: true,
    })
    .await
    .unwrap();
    for id in 1..=20 {
        bus.publish(&Payment { id, poison: false }).await.unwrap();
    }

    let dlq = bus
        .dead_letter_queue()
        .expect("amqp bus has a dead-letter queue")
        .to_owned();
    assert_eq!(dlq, format!("{}.dead-letter", props.exchange()));
    let conn = Connection::connect(&props).await.unwrap();
    let mut dead = conn.consumer(&Queue::existing(&dlq)).await.unwrap();
    let letter = common::next_delivery(&mut dead).await;
    assert_eq!(
        letter
            .decode::<Box<dyn Event>>()
            .unwrap()
            .as_any()
            .downcast_ref::<Payment>(),
        Some(&Payment {
            id: 0,
            poison: true
        })
    );
    assert_eq!(
        letter.header_str("x-tidings-reason"),
        Some("handler_failed")
    );
    assert_eq!(letter.header_str("x-tidings-attempt"), Some("3"));
    assert_eq!(
        letter.header_str("x-tidings-routing-key"),
        Some("payments.card")
    );
    assert!(
        letter
            .header_str("x-tidings-error")
            .unwrap()
            .contains("card 0 declined")
    );
    assert!(
        letter
            .header_str("x-tidings-queue")
            .unwrap()
            .starts_with(props.exchange())
    );
    assert_eq!(
        letter.header_str("x-tidings-tag"),
        Some("dead_letters.payment")
    );
    letter.ack().await.unwrap();

    let timeline = timeline.lock().unwrap().clone();
    let first_retry = timeline
        .iter()
        .position(|&entry| entry == (0, 2))
        .expect("the poison was retried");
    assert!(
        timeline[..first_retry]
            .iter()
            .filter(|(id, _)| *id > 0)
            .count()
            == 20,
        "all 20 good payments were handled before the first retry: {timeline:?}"
    );
    assert_eq!(
        timeline.iter().filter(|(id, _)| *id == 0).count(),
        3,
        "{timeline:?}"
    );
    bus.close().await.unwrap();
    let stats = bus.stats();
    assert_eq!((stats.retried, stats.dead_lettered), (2, 1));
    conn.close().await.unwrap();
}

#[tokio::test]
async fn an_undecodable_message_goes_straight_to_the_dead_letters() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let bus = Bus::with_props(props.clone())
        .subscribers(Subscribers::new())
        .unknown_events(tidings::UnknownEvents::DeadLetter)
        .connect()
        .await
        .unwrap();
    let conn = Connection::connect(&props).await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-tidings-tag".into(),
        AMQPValue::LongString("nobody.knows".into()),
    );
    let channel = conn.channel().await.unwrap();
    channel
        .basic_publish(
            props.exchange().into(),
            "some.key".into(),
            BasicPublishOptions::default(),
            b"\x01\x02",
            BasicProperties::default()
                .with_content_type("application/x-bincode".into())
                .with_headers(headers),
        )
        .await
        .unwrap();
    let mut dead = conn
        .consumer(&Queue::existing(bus.dead_letter_queue().unwrap()))
        .await
        .unwrap();
    let letter = common::next_delivery(&mut dead).await;
    assert_eq!(letter.header_str("x-tidings-reason"), Some("unknown_tag"));
    assert_eq!(letter.header_str("x-tidings-attempt"), Some("1"));
    assert_eq!(letter.header_str("x-tidings-routing-key"), Some("some.key"));
    assert!(
        letter
            .header_str("x-tidings-error")
            .unwrap()
            .contains("nobody.knows")
    );
    assert_eq!(letter.body(), b"\x01\x02");
    letter.ack().await.unwrap();
    bus.close().await.unwrap();
    assert_eq!(bus.stats().dead_lettered, 1);
    conn.close().await.unwrap();
}
