//! Settling deliveries: ack, nack with requeue, reject.

use crate::common;

use std::time::Duration;

use tidings::{Connection, ExchangeKind, Queue};
use tokio_stream::StreamExt;

#[tokio::test]
async fn nack_with_requeue_comes_back_redelivered_and_reject_does_not() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let mut consumer = conn.consumer(&Queue::exclusive()).await.unwrap();
    let producer = conn.producer().await.unwrap();

    producer.publish_confirmed(&"requeue me").await.unwrap();
    let first = common::next_delivery(&mut consumer).await;
    assert!(!first.redelivered());
    let id = first.message_id().unwrap().to_owned();
    first.nack(true).await.unwrap();

    let again = common::next_delivery(&mut consumer).await;
    assert_eq!(again.message_id(), Some(id.as_str()));
    assert!(again.redelivered());
    assert_eq!(again.decode::<String>().unwrap(), "requeue me");
    again.reject().await.unwrap();

    // The rejected message is gone: the next delivery is the marker.
    producer.publish_confirmed(&"marker").await.unwrap();
    let marker = common::next_delivery(&mut consumer).await;
    assert_eq!(marker.decode::<String>().unwrap(), "marker");
    assert!(!marker.redelivered());
    marker.ack().await.unwrap();

    // And nothing else is waiting.
    let idle = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(idle.is_err(), "unexpected delivery: {idle:?}");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn nack_without_requeue_drops_and_unsettled_come_back_after_cancel() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let queue = Queue::durable(common::unique("unsettled"));
    cleanup.queue(queue.name().unwrap());
    let mut consumer = conn.consumer(&queue).await.unwrap();
    let producer = conn.producer().await.unwrap();
    for i in 0..3u8 {
        producer.publish_confirmed(&i).await.unwrap();
    }
    let zero = common::next_delivery(&mut consumer).await;
    zero.nack(false).await.unwrap();
    let one = common::next_delivery(&mut consumer).await;
    let two = common::next_delivery(&mut consumer).await;
    one.ack().await.unwrap();
    assert_eq!(two.decode::<u8>().unwrap(), 2);
    drop(two); // unsettled
    consumer.cancel().await.unwrap();

    let mut again = conn.consumer(&queue).await.unwrap();
    let back = common::next_delivery(&mut again).await;
    assert_eq!(back.decode::<u8>().unwrap(), 2);
    assert!(back.redelivered());
    back.ack().await.unwrap();
    conn.close().await.unwrap();
}
