//! The test proxy (`common::proxy`) between raw lapin and the shared broker:
//! it forwards a working AMQP connection, `cut()` breaks the connections it
//! carries as a network failure would, and `set_refusing` makes the broker
//! look unreachable until it is turned off again.

use crate::common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tidings::AmqpProps;
use tokio_stream::StreamExt;

/// A proxy to the shared broker, and the broker URL rewritten to go through
/// it. Fails the test with instructions when no broker answers.
fn proxied() -> (Proxy, String) {
    let url = common::broker_url();
    let props = AmqpProps::from_url(&url).expect("AMQP_URL is not a valid AMQP URL");
    let proxy = Proxy::start(common::broker_addr(&props));
    let mut through = url::Url::parse(&url).unwrap();
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(proxy.port())).unwrap();
    (proxy, through.to_string())
}

/// What lapin says about a connection, for failure messages.
fn state(conn: &Connection) -> String {
    let s = conn.status();
    format!(
        "connected={} connecting={} closing={} closed={} errored={}",
        s.connected(),
        s.connecting(),
        s.closing(),
        s.closed(),
        s.errored()
    )
}

async fn connect(url: &str) -> lapin::Result<Connection> {
    tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("lapin's connect neither succeeded nor failed within 5 s")
}

/// Publishes one message to a fresh exclusive queue on `conn` and consumes
/// it back: the connection carries traffic both ways.
async fn round_trip(conn: &Connection, body: &[u8]) {
    let channel = conn.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "proxy-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.name().clone(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("no delivery through the proxy within 5 s")
        .expect("consumer ended")
        .expect("delivery error");
    assert_eq!(delivery.data, body);
    delivery.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_through_the_proxy_publishes_and_consumes() {
    let (proxy, url) = proxied();
    let conn = connect(&url).await.expect("connect through the proxy");
    assert_eq!((proxy.connections(), proxy.accepted()), (1, 1));
    round_trip(&conn, b"through the proxy").await;
    conn.close(200, "done".into()).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(5), || proxy.connections() == 0).await,
        "a connection closed by the client is gone from the proxy too"
    );
}

#[tokio::test]
async fn cut_breaks_the_open_connections_and_new_ones_still_work() {
    let (proxy, url) = proxied();
    let conn = connect(&url).await.expect("connect through the proxy");
    let channel = conn.create_channel().await.unwrap();
    round_trip(&conn, b"before the cut").await;

    proxy.cut();
    assert_eq!(proxy.connections(), 0, "cut() returns once they are closed");
    let started = Instant::now();
    assert!(
        common::eventually(Duration::from_secs(5), || !conn.status().connected()).await,
        "lapin still believes it is connected 5 s after the cut: {:?}",
        state(&conn)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "lapin noticed the cut only after {:?}: it should be a reset, not a silent path",
        started.elapsed()
    );
    assert!(conn.status().errored(), "{:?}", state(&conn));
    let publish = channel
        .basic_publish(
            "".into(),
            "nowhere".into(),
            BasicPublishOptions::default(),
            b"after the cut",
            BasicProperties::default(),
        )
        .await;
    assert!(
        publish.is_err(),
        "a channel of a cut connection still works"
    );

    let again = connect(&url).await.expect("a new connection after the cut");
    round_trip(&again, b"after the cut").await;
    assert_eq!((proxy.connections(), proxy.accepted()), (1, 2));
    again.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn while_refusing_the_broker_is_unreachable_until_it_is_turned_off() {
    let (proxy, url) = proxied();
    let conn = connect(&url).await.expect("connect through the proxy");
    // An outage: the open connection is cut and new ones are refused.
    proxy.set_refusing(true);
    proxy.cut();
    assert!(
        common::eventually(Duration::from_secs(5), || !conn.status().connected()).await,
        "{:?}",
        state(&conn)
    );
    for attempt in 1..=2 {
        let refused = connect(&url).await;
        assert!(
            refused.is_err(),
            "attempt {attempt}: connect succeeded while the proxy refuses"
        );
    }
    assert_eq!(proxy.connections(), 0);
    assert_eq!(
        proxy.accepted(),
        3,
        "refused connections are accepted first"
    );

    proxy.set_refusing(false);
    let back = connect(&url)
        .await
        .expect("connect once the outage is over");
    round_trip(&back, b"after the outage").await;
    back.close(200, "done".into()).await.unwrap();
}

#[test]
fn a_sync_test_can_use_the_proxy_and_dropping_it_closes_everything() {
    let (proxy, url) = proxied();
    // The proxy runs on its own thread: a runtime of the test's own, on
    // another thread, talks through it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn = runtime.block_on(async {
        let conn = connect(&url).await.expect("connect through the proxy");
        round_trip(&conn, b"from a sync test").await;
        conn
    });
    assert_eq!(proxy.connections(), 1);
    drop(proxy);
    let closed = runtime.block_on(common::eventually(Duration::from_secs(5), || {
        !conn.status().connected()
    }));
    assert!(
        closed,
        "dropping the proxy closes the connections it carried"
    );
    // The port no longer listens.
    let refused = runtime.block_on(connect(&url));
    assert!(refused.is_err(), "the dropped proxy still accepts");
}
