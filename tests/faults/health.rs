//! `Bus::health` across a broker outage on a private node: ready while
//! connected, not ready (but live) while the broker is down, with the
//! reason and the events waiting in the buffer, and ready again after
//! recovery.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tidings::{Bus, Event, ExchangeKind, Health};

use crate::common::{self, PrivateNode};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "health.ping")]
struct Ping {
    n: u32,
}

/// Waits until `bus.health()` satisfies `condition`; fails the test with
/// the last health after `limit`.
async fn health_until(bus: &Bus, limit: Duration, condition: impl Fn(&Health) -> bool) -> Health {
    let reached = common::eventually(limit, || condition(&bus.health())).await;
    let health = bus.health();
    assert!(
        reached,
        "health never got there within {limit:?}: {health:#?}"
    );
    health
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_a_broker_outage_and_the_recovery() {
    let mut node = PrivateNode::start();
    let props = node
        .props(ExchangeKind::Fanout)
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(500));
    let bus = Bus::with_props(props).connect().await.unwrap();
    let up = bus.health();
    assert!(up.is_ready() && up.is_live(), "{up:#?}");
    assert_eq!(up.buffer_capacity, Some(8192));
    assert_eq!(up.buffer_fill(), Some(0.0));

    let before = SystemTime::now();
    node.stop();
    let down = health_until(&bus, Duration::from_secs(20), |h| !h.connected).await;
    assert!(!down.is_ready(), "not ready while the broker is gone");
    assert!(down.is_live(), "still live: it reconnects by itself");
    assert!(down.since >= before, "{down:#?}");
    assert!(down.last_error.is_some(), "the reason is kept: {down:#?}");
    assert!(down.listeners.iter().all(|l| !l.consuming), "{down:#?}");
    for n in 0..3 {
        bus.publish(&Ping { n }).await.unwrap();
    }
    let waiting = bus.health();
    assert_eq!(waiting.buffered, 3, "{waiting:#?}");
    assert!(waiting.buffer_fill().is_some_and(|fill| fill > 0.0));

    node.start_again();
    let back = health_until(&bus, Duration::from_secs(30), Health::is_ready).await;
    assert!(back.since > down.since, "{back:#?}");
    assert_eq!(back.last_error, None);
    health_until(&bus, Duration::from_secs(20), |h| h.buffered == 0).await;
    bus.close().await.unwrap();
    let closed = bus.health();
    assert!(closed.closed && !closed.is_live(), "{closed:#?}");
}
