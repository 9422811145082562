//! Host lists: a first connect goes through the hosts in turn, within the
//! connect timeout, and says which one it reached.

use crate::common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use tidings::{Bus, Connection, ConnectionEvent, ErrorKind, ExchangeKind};
use tokio_stream::StreamExt;

/// The shared broker's address, `host:port`.
fn broker(props: &tidings::AmqpProps) -> String {
    format!("{}:{}", props.host(), props.port())
}

#[tokio::test]
async fn a_first_connect_with_the_first_host_down_goes_through_the_next() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    // Nothing listens on a port just freed.
    let closed = format!("127.0.0.1:{}", common::free_port());
    let listed = props
        .clone()
        .with_hosts([closed.as_str(), broker(&props).as_str()])
        .with_shuffled_hosts(false)
        .with_connect_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let conn = Connection::connect(&listed).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(conn.address(), broker(&props));
    let mut events = conn.events();
    assert_eq!(
        events.next().await,
        Some(ConnectionEvent::Connected {
            address: broker(&props)
        })
    );
    conn.close().await.unwrap();

    // Shuffled, whichever comes first, the bus connects, and a bus says it
    // as its connection does.
    for _ in 0..4 {
        let bus = Bus::with_props(listed.clone().with_shuffled_hosts(true))
            .publish_only()
            .connect()
            .await
            .unwrap();
        let mut events = bus.connection_events();
        assert_eq!(
            events.next().await,
            Some(ConnectionEvent::Connected {
                address: broker(&props)
            })
        );
        bus.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_host_that_never_answers_leaves_the_next_its_share_of_the_connect_timeout() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    // Accepts TCP connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let timeout = Duration::from_secs(3);
    let listed = props
        .clone()
        .with_hosts([silent_addr.as_str(), broker(&props).as_str()])
        .with_shuffled_hosts(false)
        .with_connect_timeout(timeout);
    let started = Instant::now();
    let conn = Connection::connect(&listed).await.unwrap();
    let took = started.elapsed();
    eprintln!("connected through the second host after {took:?}");
    assert!(took < timeout, "took {took:?}, over the connect timeout");
    assert!(
        took >= timeout / 2 - Duration::from_millis(100),
        "the silent host had its share: {took:?}"
    );
    assert_eq!(conn.address(), broker(&props));
    conn.close().await.unwrap();

    // When none answers, the error comes within the timeout and names each.
    let closed = format!("127.0.0.1:{}", common::free_port());
    let none = props
        .clone()
        .with_hosts([silent_addr.as_str(), closed.as_str()])
        .with_connect_timeout(timeout);
    let started = Instant::now();
    let err = Connection::connect(&none).await.unwrap_err();
    let took = started.elapsed();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(took < timeout + Duration::from_millis(500), "took {took:?}");
    assert_eq!(err.kind(), ErrorKind::Connect, "{text}");
    assert!(
        text.contains(&silent_addr) && text.contains(&closed),
        "{text}"
    );
    assert!(text.contains("no host of"), "{text}");
    assert!(!text.contains("guest@"), "{text}");
    drop(silent);
}
