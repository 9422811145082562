//! Publisher confirms: a confirmed publish returns after the broker's
//! answer, and that answer can be a refusal.

use crate::common;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use tidings::{Connection, ErrorKind, ExchangeKind, Publish, Queue};

/// Declares a queue that holds one message and refuses (nacks) the next.
async fn one_slot_queue(conn: &Connection, name: &str) {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let channel = conn.channel().await.unwrap();
    channel
        .queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
}

async fn queued(conn: &Connection, name: &str) -> u32 {
    let channel = conn.channel().await.unwrap();
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

#[tokio::test]
async fn confirmed_publish_waits_for_the_broker_and_reports_a_nack() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let queue = common::unique("one-slot");
    cleanup.queue(&queue);
    one_slot_queue(&conn, &queue).await;
    let producer = conn.producer().await.unwrap();

    producer
        .publish_with(&1u8, &Publish::to_queue(&queue))
        .await
        .unwrap()
        .await
        .unwrap();
    // The ack came from the broker after it enqueued the message.
    assert_eq!(queued(&conn, &queue).await, 1);

    let err = producer
        .publish_with(&2u8, &Publish::to_queue(&queue))
        .await
        .unwrap()
        .await
        .expect_err("a full reject-publish queue must nack");
    assert_eq!(err.kind(), ErrorKind::Nacked, "{err}");
    assert_eq!(queued(&conn, &queue).await, 1);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn pipelined_confirms_all_arrive() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let queue = conn
        .declare_queue(&Queue::durable(common::unique("pipelined")))
        .await
        .unwrap();
    cleanup.queue(&queue);
    let producer = conn.producer().await.unwrap();
    let mut confirms = Vec::new();
    for i in 0..500u32 {
        confirms.push(producer.publish(&i).await.unwrap());
    }
    for confirm in confirms {
        confirm.await.unwrap();
    }
    for i in 500..1000u32 {
        drop(producer.publish(&i).await.unwrap());
    }
    producer.wait_for_confirms().await.unwrap();
    assert_eq!(queued(&conn, &queue).await, 1000);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn mandatory_unroutable_publish_is_reported() {
    let props = common::props(ExchangeKind::Direct);
    let _cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let producer = conn.producer().await.unwrap();
    let err = producer
        .publish_with(
            &"lost",
            &Publish::new().routing_key("nobody.listens").mandatory(true),
        )
        .await
        .unwrap()
        .await
        .expect_err("unroutable mandatory publish must fail");
    assert_eq!(err.kind(), ErrorKind::Unroutable);
    assert!(err.to_string().contains("nobody.listens"), "{err}");
    conn.close().await.unwrap();
}
