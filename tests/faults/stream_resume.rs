//! A stream listener across faults (through a proxy to the shared broker):
//! after a lost connection it consumes again from its offset and misses
//! nothing; after a crash (no last offset write) a new process resumes
//! from the last periodic write, without gaps.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::Proxy;
use lapin::options::BasicGetOptions;
use serde::{Deserialize, Serialize};
use tidings::{
    AmqpProps, Bus, Connection, ConnectionEvent, Event, ExchangeKind, Listen, StreamStart,
    Subscribers,
};
use tokio_stream::StreamExt;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "stream_resume.tick")]
struct Tick {
    n: u64,
}

const MARKER: u64 = 5000;

/// A bus reading the stream `resume` as consumer `r`, and what it handled.
async fn reader(props: AmqpProps) -> (Bus, Arc<Mutex<Vec<u64>>>, tidings::Subscription) {
    let subscribers = Subscribers::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let guard = subscribers.subscribe(move |t: &Tick| s.lock().unwrap().push(t.n));
    let bus = Bus::with_props(props)
        .subscribers(subscribers)
        .listen(
            Listen::stream("resume")
                .consumer("r")
                .start(StreamStart::Beginning),
        )
        // No dedup window: what is handled twice shows.
        .dedup_window(0)
        .connect()
        .await
        .unwrap();
    (bus, seen, guard)
}

/// Publishes the ticks of `range`, the last one confirmed (and so every
/// one before it).
async fn publish(bus: &Bus, range: std::ops::Range<u64>) {
    let last = range.end - 1;
    for n in range.start..last {
        bus.publish(&Tick { n }).await.unwrap();
    }
    bus.publish_confirmed(&Tick { n: last }).await.unwrap();
}

async fn has(seen: &Mutex<Vec<u64>>, n: u64) -> bool {
    common::eventually(Duration::from_secs(30), || {
        seen.lock().unwrap().contains(&n)
    })
    .await
}

/// The offset saved for consumer `r`, read as the listener reads it.
async fn saved_offset(conn: &Connection, queue: &str) -> Option<u64> {
    let channel = conn.channel().await.unwrap();
    let got = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap();
    let _ = channel.close(200, "read".into()).await;
    String::from_utf8(got?.delivery.data).ok()?.parse().ok()
}

struct Setup {
    shared: AmqpProps,
    proxy: Proxy,
    through: AmqpProps,
    publisher: Bus,
    offsets: String,
    _cleanup: common::Cleanup,
}

async fn setup() -> Setup {
    let shared = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&shared);
    let stream = format!("{}.resume", shared.exchange());
    let offsets = format!("{stream}.offset.r");
    cleanup.queue(&stream);
    cleanup.queue(&offsets);
    let proxy = Proxy::start(common::broker_addr(&shared));
    let through = shared
        .clone()
        .with_host("127.0.0.1")
        .with_port(proxy.port())
        .with_reconnect_delay(Duration::from_millis(20), Duration::from_millis(200));
    let publisher = Bus::with_props(shared.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    Setup {
        shared,
        proxy,
        through,
        publisher,
        offsets,
        _cleanup: cleanup,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_connection_a_stream_listener_misses_nothing() {
    let s = setup().await;
    let (bus, seen, _g) = reader(s.through.clone()).await;
    let mut events = bus.connection_events();
    assert!(
        matches!(events.next().await, Some(ConnectionEvent::Connected { .. })),
        "the bus did not report its connection"
    );
    publish(&s.publisher, 0..50).await;
    assert!(has(&seen, 49).await, "{:?}", seen.lock().unwrap());

    s.proxy.set_refusing(true);
    s.proxy.cut();
    let lost = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
    assert!(
        matches!(lost, Ok(Some(ConnectionEvent::Disconnected { .. }))),
        "{lost:?}"
    );
    publish(&s.publisher, 50..300).await;
    s.proxy.set_refusing(false);
    assert!(has(&seen, 299).await, "{}", seen.lock().unwrap().len());
    s.publisher
        .publish_confirmed(&Tick { n: MARKER })
        .await
        .unwrap();
    assert!(has(&seen, MARKER).await);
    bus.close().await.unwrap();
    s.publisher.close().await.unwrap();
    let expected: Vec<u64> = (0..300).chain([MARKER]).collect();
    assert_eq!(
        *seen.lock().unwrap(),
        expected,
        "in order, once, none missed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_a_stream_listener_resumes_from_its_last_write_without_gaps() {
    let s = setup().await;
    let conn = Connection::connect(&s.shared).await.unwrap();
    let (bus, seen, _g) = reader(s.through.clone()).await;
    publish(&s.publisher, 0..50).await;
    assert!(has(&seen, 49).await);
    // The offset is written while the listener runs, not only at its end.
    assert!(
        common::eventually_async(Duration::from_secs(10), || async {
            saved_offset(&conn, &s.offsets).await.is_some()
        })
        .await,
        "no offset written while running"
    );
    publish(&s.publisher, 50..100).await;
    assert!(has(&seen, 99).await);
    // The process dies: its connection goes, and nothing more is written.
    s.proxy.set_refusing(true);
    s.proxy.cut();
    drop(bus);

    let (again, seen_again, _g2) = reader(s.shared.clone()).await;
    s.publisher
        .publish_confirmed(&Tick { n: MARKER })
        .await
        .unwrap();
    assert!(has(&seen_again, MARKER).await);
    again.close().await.unwrap();
    s.publisher.close().await.unwrap();
    conn.close().await.unwrap();
    let seen_again = seen_again.lock().unwrap().clone();
    let resumed_at = seen_again.first().copied().unwrap_or(MARKER);
    assert!(
        resumed_at > 0,
        "resumed from the start: nothing was saved; {seen_again:?}"
    );
    let expected: Vec<u64> = (resumed_at.min(100)..100).chain([MARKER]).collect();
    assert_eq!(
        seen_again, expected,
        "after the last saved offset, in order, once"
    );
}

/// On a private node restarted under it: the stream keeps its events, the
/// listener consumes again from its offset, and the offset queue keeps
/// the offset for the next process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_listener_and_its_offset_survive_a_broker_restart() {
    let mut node = tokio::task::spawn_blocking(common::PrivateNode::start)
        .await
        .unwrap();
    let props = node
        .props(ExchangeKind::Fanout)
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_secs(1));
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    let (bus, seen, _g) = reader(props.clone()).await;
    publish(&publisher, 0..100).await;
    assert!(has(&seen, 99).await);

    let node = tokio::task::spawn_blocking(move || {
        node.restart();
        node
    })
    .await
    .unwrap();
    // A reader from the beginning: the stream is readable again.
    let probe_subscribers = Subscribers::new();
    let probe = Arc::new(Mutex::new(Vec::new()));
    let p = probe.clone();
    probe_subscribers
        .subscribe(move |t: &Tick| p.lock().unwrap().push(t.n))
        .forget();
    // For some seconds after its node restarts a stream is down ("home
    // node ... is down or inaccessible"), and the broker drops, yet
    // confirms, what is routed to it: wait until a reader can declare it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let probe_bus = loop {
        let probe = Bus::with_props(props.clone())
            .subscribers(probe_subscribers.clone())
            .listen(Listen::stream("resume").start(StreamStart::Beginning))
            .connect()
            .await;
        match probe {
            Ok(bus) => break bus,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(has(&probe, 99).await, "the stream kept its events");
    publish(&publisher, 100..200).await;
    assert!(has(&seen, 199).await, "{}", seen.lock().unwrap().len());
    probe_bus.close().await.unwrap();
    bus.close().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), (0..200).collect::<Vec<_>>());

    let (again, seen_again, _g2) = reader(props.clone()).await;
    publisher
        .publish_confirmed(&Tick { n: MARKER })
        .await
        .unwrap();
    assert!(has(&seen_again, MARKER).await);
    again.close().await.unwrap();
    publisher.close().await.unwrap();
    assert_eq!(*seen_again.lock().unwrap(), [MARKER]);
    drop(node);
}
