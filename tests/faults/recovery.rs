//! Recovery: buses ride out broker restarts, cut TCP connections and a
//! deleted queue, losing nothing and handling nothing twice.
//!
//! The fault test runs a private broker node (never the shared one) behind
//! an in-test TCP proxy, so it can both restart the broker and cut the
//! TCP path.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{PrivateNode, Seen, describe};
use serde::{Deserialize, Serialize};
use tidings::{
    AmqpProps, Bus, Connection, ConnectionEvent, Event, ExchangeKind, Listen, Subscribers,
};
use tokio_stream::StreamExt;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "recovery.tick")]
struct Tick {
    seq: u32,
}

const EVENTS: u32 = 20_000;
/// Offered publish rate, events per second.
const RATE: u64 = 500;

/// Subscribers that record each tick in `seen`.
fn subscribers(seen: &Arc<Seen>) -> Subscribers {
    let subscribers = Subscribers::new();
    let seen = seen.clone();
    subscribers
        .subscribe(move |tick: &Tick| seen.record(tick.seq))
        .forget();
    subscribers
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until every bus has recovered `reconnects` times in all.
async fn recovered(buses: &[&Bus], reconnects: u64, limit: Duration) -> bool {
    common::eventually(limit, || {
        buses.iter().all(|b| b.stats().reconnects >= reconnects)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_survive_three_restarts_and_three_cuts() {
    if std::env::var_os("TIDINGS_TEST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .init();
    }
    let node = tokio::task::spawn_blocking(PrivateNode::start)
        .await
        .unwrap();
    let proxy = Proxy::start(([127, 0, 0, 1], node.port()).into());
    let props = AmqpProps::default()
        .with_host("127.0.0.1")
        .with_port(proxy.port())
        .with_exchange(common::unique("ex"), ExchangeKind::Fanout)
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_secs(1));
    let rss_before = rss_kib();

    let worked = Arc::new(Seen::default());
    let watched = Arc::new(Seen::default());
    let worker = Bus::with_props(props.clone())
        .subscribers(subscribers(&worked))
        .listen(Listen::group("workers"))
        .connect()
        .await
        .unwrap();
    let watcher = Bus::with_props(props.clone())
        .subscribers(subscribers(&watched))
        .connect()
        .await
        .unwrap();
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();

    // The publisher's view of each outage.
    let downtimes = Arc::new(Mutex::new(Vec::new()));
    let mut events = publisher.connection_events();
    let log = downtimes.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let ConnectionEvent::Recovered { downtime, .. } = event {
                log.lock().unwrap().push(downtime);
            }
        }
    });

    // Publish at a steady rate, whatever the broker is doing.
    let published = Arc::new(AtomicU64::new(0));
    let max_buffered = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (publisher, published, max_buffered) =
            (publisher.clone(), published.clone(), max_buffered.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / RATE));
            for seq in 0..EVENTS {
                ticker.tick().await;
                publisher.publish(&Tick { seq }).await.unwrap();
                published.store(u64::from(seq) + 1, Ordering::Relaxed);
                max_buffered.fetch_max(publisher.stats().buffered, Ordering::Relaxed);
            }
        })
    };

    // Six faults, one after another: restart the node, cut the TCP path.
    let mut node = node;
    let mut recoveries = Vec::new();
    let buses = [&worker, &watcher, &publisher];
    for fault in 1..=6u64 {
        // Events flow between faults: the worker handles 500 more first.
        let mark = worked.handled.load(Ordering::Relaxed);
        assert!(
            common::eventually(Duration::from_secs(60), || {
                worked.handled.load(Ordering::Relaxed) >= mark + 500
                    || published.load(Ordering::Relaxed) >= u64::from(EVENTS)
            })
            .await,
            "fault {fault}: the worker handled nothing new since the last fault"
        );
        let started = Instant::now();
        eprintln!(
            "fault {fault}: injecting at {} events published",
            published.load(Ordering::Relaxed)
        );
        let kind = if fault % 2 == 1 {
            node = tokio::task::spawn_blocking(move || {
                node.restart();
                node
            })
            .await
            .unwrap();
            "node restart"
        } else {
            proxy.cut();
            "tcp cut"
        };
        assert!(
            recovered(&buses, fault, Duration::from_secs(60)).await,
            "fault {fault} ({kind}): not every bus recovered within 60 s: {:?}",
            buses.map(|b| b.stats().reconnects)
        );
        let recovery = started.elapsed();
        eprintln!("fault {fault} ({kind}): recovered in {recovery:.2?}");
        // The broadcast listener receives again: an event published after
        // its recovery arrives.
        let mark = published.load(Ordering::Relaxed);
        assert!(
            common::eventually(Duration::from_secs(30), || {
                watched.highest.load(Ordering::Relaxed) > mark
                    || published.load(Ordering::Relaxed) >= u64::from(EVENTS)
            })
            .await,
            "fault {fault} ({kind}): the broadcast listener received nothing published after its recovery"
        );
        recoveries.push((kind, recovery));
    }
    publishing.await.unwrap();
    eprintln!(
        "all published; closing the publisher: {:?}",
        publisher.stats()
    );
    publisher.close().await.unwrap();

    assert!(
        common::eventually(Duration::from_secs(60), || {
            worked
                .counts
                .lock()
                .unwrap()
                .iter()
                .filter(|c| **c > 0)
                .count()
                == EVENTS as usize
        })
        .await,
        "the group did not handle every event: {} of {EVENTS}",
        worked
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|c| **c > 0)
            .count()
    );
    let counts = worked.counts.lock().unwrap().clone();
    let twice: Vec<usize> = (0..counts.len()).filter(|&s| counts[s] > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");

    let sent = publisher.stats();
    let work = worker.stats();
    let watch = watcher.stats();
    worker.close().await.unwrap();
    watcher.close().await.unwrap();
    let rss_after = rss_kib();

    println!("fault test: {EVENTS} events at {RATE}/s, 3 node restarts and 3 TCP cuts");
    for (i, (kind, recovery)) in recoveries.iter().enumerate() {
        println!(
            "  fault {}: {kind:<12} all three buses recovered in {recovery:.2?}",
            i + 1
        );
    }
    println!(
        "  publisher downtimes seen: {:.2?}",
        downtimes.lock().unwrap()
    );
    println!("  publisher: {}", describe(&sent));
    println!("  group worker: {}", describe(&work));
    println!(
        "  broadcast watcher: {} (events missed while its queue did not exist: {})",
        describe(&watch),
        u64::from(EVENTS) - watched.handled.load(Ordering::Relaxed)
    );
    println!(
        "  buffered at most {} events; RSS {} MiB before, {} MiB after",
        max_buffered.load(Ordering::Relaxed),
        rss_before / 1024,
        rss_after / 1024
    );

    // The counters add up.
    let events = u64::from(EVENTS);
    assert_eq!(
        (
            sent.published,
            sent.confirmed,
            sent.publish_failed,
            sent.buffered
        ),
        (events, events, 0, 0),
        "publisher: {sent:?}"
    );
    assert_eq!(sent.reconnects, 6, "publisher: {sent:?}");
    assert_eq!(work.handled, events, "worker: {work:?}");
    assert_eq!(
        work.delivered,
        work.handled + work.deduplicated,
        "every delivery is handled once or dropped as a duplicate: {work:?}"
    );
    assert_eq!(
        (work.handler_failures, work.dead_lettered),
        (0, 0),
        "worker: {work:?}"
    );
    assert_eq!(work.reconnects, 6, "worker: {work:?}");
    assert!(
        max_buffered.load(Ordering::Relaxed) <= props.publish_buffer().0 as u64,
        "the publish buffer stays within its bound"
    );
    let _ = (proxy, tokio::task::spawn_blocking(move || drop(node)).await);
}

/// A queue deleted under a running listener (the broker cancels its
/// consumer) is declared again and consumed again.
#[tokio::test]
async fn a_consumer_cancelled_by_the_broker_resumes() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let seen = Arc::new(Seen::default());
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers(&seen))
        .listen(Listen::group("resumers"))
        .connect()
        .await
        .unwrap();
    let queue = format!("{}.resumers", props.exchange());
    cleanup.queue(&queue);
    bus.publish_confirmed(&Tick { seq: 1 }).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || seen
            .highest
            .load(Ordering::Relaxed)
            == 1)
        .await
    );

    let admin = Connection::connect(&props).await.unwrap();
    admin.delete_queue(&queue).await.unwrap();
    admin.close().await.unwrap();

    // Published until one arrives: the queue is back once the consumer
    // resumed, and events published before that had nowhere to go.
    let mut seq = 2;
    let arrived = loop {
        bus.publish_confirmed(&Tick { seq }).await.unwrap();
        if common::eventually(Duration::from_millis(200), || {
            seen.highest.load(Ordering::Relaxed) >= 2
        })
        .await
        {
            break true;
        }
        seq += 1;
        if seq > 100 {
            break false;
        }
    };
    assert!(
        arrived,
        "the listener did not resume after its queue was deleted"
    );
    bus.close().await.unwrap();
}

/// A group bus on the shared broker reached through a proxy, what its
/// handlers saw, and its connection events (past `Connected`).
struct Proxied {
    proxy: Proxy,
    bus: Bus,
    seen: Arc<Seen>,
    events: tidings::ConnectionEvents,
    _cleanup: common::Cleanup,
}

async fn proxied_group_bus(group: &str, settings: impl FnOnce(AmqpProps) -> AmqpProps) -> Proxied {
    let shared = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&shared);
    cleanup.queue(&format!("{}.{group}", shared.exchange()));
    let proxy = Proxy::start(common::broker_addr(&shared));
    let props = settings(shared.with_host("127.0.0.1").with_port(proxy.port()));
    let seen = Arc::new(Seen::default());
    let bus = Bus::with_props(props)
        .subscribers(subscribers(&seen))
        .listen(Listen::group(group))
        .connect()
        .await
        .unwrap();
    let mut events = bus.connection_events();
    assert_eq!(
        events.next().await,
        Some(ConnectionEvent::Connected {
            address: format!("127.0.0.1:{}", proxy.port())
        })
    );
    Proxied {
        proxy,
        bus,
        seen,
        events,
        _cleanup: cleanup,
    }
}

/// The next connection event; fails the test after `limit`.
async fn next_event(events: &mut tidings::ConnectionEvents, limit: Duration) -> ConnectionEvent {
    tokio::time::timeout(limit, events.next())
        .await
        .unwrap_or_else(|_| panic!("no connection event within {limit:?}"))
        .expect("connection events ended")
}

/// During an outage events wait in the publish buffer up to its bound;
/// under `WhenFull::Fail` the next publish fails at once, and what was
/// accepted is confirmed after recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_fails_publishes_by_setting_and_keeps_what_it_holds() {
    let Proxied {
        proxy,
        bus,
        seen,
        mut events,
        _cleanup,
    } = proxied_group_bus("buffered", |props| {
        props
            .with_publish_buffer(5, 1024 * 1024)
            .with_when_full(tidings::WhenFull::Fail)
            .with_reconnect_delay(Duration::from_millis(20), Duration::from_millis(100))
    })
    .await;

    proxy.set_refusing(true);
    proxy.cut();
    let disconnected = next_event(&mut events, Duration::from_secs(10)).await;
    assert!(
        matches!(disconnected, ConnectionEvent::Disconnected { .. }),
        "{disconnected:?}"
    );
    for seq in 0..5 {
        bus.publish(&Tick { seq }).await.unwrap();
    }
    let full = bus.publish(&Tick { seq: 5 }).await.unwrap_err();
    assert_eq!(full.kind(), tidings::ErrorKind::BufferFull, "{full}");
    assert_eq!(bus.stats().buffered, 5);

    proxy.set_refusing(false);
    assert!(
        common::eventually(Duration::from_secs(20), || seen
            .handled
            .load(Ordering::Relaxed)
            == 5)
        .await,
        "the buffered events were not delivered after recovery: {:?}",
        bus.stats()
    );
    bus.close().await.unwrap();
    let stats = bus.stats();
    assert_eq!(
        (
            stats.published,
            stats.confirmed,
            stats.buffered,
            stats.reconnects
        ),
        (5, 5, 0, 1),
        "{stats:?}"
    );
}

/// A network path that dies silently (nothing passes, nothing closes) is
/// noticed by the missed heartbeats, and the bus recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_connection_is_noticed_by_heartbeats_and_recovered() {
    let Proxied {
        proxy,
        bus,
        seen,
        mut events,
        _cleanup,
    } = proxied_group_bus("heartbeats", |props| {
        props
            .with_heartbeat(Some(Duration::from_secs(1)))
            .with_reconnect_delay(Duration::from_millis(20), Duration::from_millis(200))
    })
    .await;
    bus.publish_confirmed(&Tick { seq: 1 }).await.unwrap();

    let stalled = Instant::now();
    proxy.stall();
    let lost = next_event(&mut events, Duration::from_secs(15)).await;
    let ConnectionEvent::Disconnected { reason } = lost else {
        panic!("expected disconnected, got {lost:?}");
    };
    println!("noticed after {:.2?}: {reason}", stalled.elapsed());
    assert!(reason.to_lowercase().contains("heartbeat"), "{reason}");
    let recovered = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.next().await {
                Some(ConnectionEvent::Recovered { .. }) => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(recovered, Ok(true), "the bus did not recover");
    bus.publish_confirmed(&Tick { seq: 2 }).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || seen
            .highest
            .load(Ordering::Relaxed)
            == 2)
        .await,
        "the event after recovery was not handled: {:?}",
        bus.stats()
    );
    bus.close().await.unwrap();
    proxy.cut();
}
