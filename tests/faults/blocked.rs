//! A broker that blocks publishing (a memory alarm): publishes fail at once
//! under `WhenFull::Fail`, the application sees blocked and unblocked, and
//! what was accepted before is confirmed once the alarm clears.

use crate::common;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{Bus, ConnectionEvent, ErrorKind, Event, ExchangeKind, WhenFull};
use tokio_stream::StreamExt;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "blocked.note")]
struct Note {
    n: u32,
}

async fn next_event(events: &mut tidings::ConnectionEvents) -> ConnectionEvent {
    tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("no connection event within 20 s")
        .expect("connection events ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_fails_publishes_by_setting_then_confirms_the_rest() {
    let node = tokio::task::spawn_blocking(common::PrivateNode::start)
        .await
        .unwrap();
    let props = node
        .props(ExchangeKind::Fanout)
        .with_when_full(WhenFull::Fail);
    let bus = Bus::with_props(props)
        .publish_only()
        .connect()
        .await
        .unwrap();
    let mut events = bus.connection_events();
    assert_eq!(
        next_event(&mut events).await,
        ConnectionEvent::Connected {
            address: format!("127.0.0.1:{}", node.port())
        }
    );
    bus.publish_confirmed(&Note { n: 1 }).await.unwrap();

    let node = tokio::task::spawn_blocking(move || {
        node.ctl(&["set_vm_memory_high_watermark", "0.000001"]);
        node
    })
    .await
    .unwrap();
    // The broker blocks a connection when it next publishes.
    bus.publish(&Note { n: 2 }).await.unwrap();
    let blocked = next_event(&mut events).await;
    assert!(
        matches!(blocked, ConnectionEvent::Blocked { .. }),
        "expected blocked, got {blocked:?}"
    );
    let err = bus.publish(&Note { n: 3 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Blocked, "{err}");
    assert_eq!(bus.stats().buffered, 1, "the event accepted before waits");

    let node = tokio::task::spawn_blocking(move || {
        node.ctl(&["set_vm_memory_high_watermark", "0.4"]);
        node
    })
    .await
    .unwrap();
    assert_eq!(next_event(&mut events).await, ConnectionEvent::Unblocked);
    bus.publish_confirmed(&Note { n: 4 }).await.unwrap();
    bus.close().await.unwrap();
    let stats = bus.stats();
    assert_eq!(
        (
            stats.published,
            stats.confirmed,
            stats.publish_failed,
            stats.buffered
        ),
        (3, 3, 0, 0),
        "{stats:?}"
    );
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
}
