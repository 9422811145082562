//! The private-node helper the fault tests stand on: a broker of the test's
//! own that can be stopped and restarted without touching the shared one.

use crate::common;

use std::time::Duration;

use tidings::{Connection, ErrorKind, ExchangeKind, Publish, Queue};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_node_restarts_and_keeps_persistent_messages() {
    let mut node = tokio::task::spawn_blocking(common::PrivateNode::start)
        .await
        .unwrap();
    let props = node.props(ExchangeKind::Fanout);
    let queue = Queue::durable("survivors");

    let conn = Connection::connect(&props).await.unwrap();
    conn.declare_queue(&queue).await.unwrap();
    let producer = conn.producer().await.unwrap();
    producer
        .publish_with(&"kept", &Publish::new().persistent(true))
        .await
        .unwrap()
        .await
        .unwrap();

    let mut node = tokio::task::spawn_blocking(move || {
        node.stop();
        node
    })
    .await
    .unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || !conn.is_connected()).await,
        "the connection did not notice the node stopped"
    );
    let err = Connection::connect(&props).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");

    let node = tokio::task::spawn_blocking(move || {
        node.start_again();
        node
    })
    .await
    .unwrap();
    let conn = Connection::connect(&props).await.unwrap();
    let mut consumer = conn.consumer(&queue).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the persistent message did not survive the restart")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.decode::<String>().unwrap(), "kept");
    delivery.ack().await.unwrap();
    conn.close().await.unwrap();
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
}
