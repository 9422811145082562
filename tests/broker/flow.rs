//! Flow: a slow handler holds at most the prefetch, the rest waits in the
//! broker; code that polls gets a bounded, blocking poller.

use crate::common;

use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use tidings::{Bus, Connection, Event, ExchangeKind, Lagged, Listen, Subscribers, blocking};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "flow.tick")]
struct Tick {
    n: u32,
}

async fn queued(conn: &Connection, queue: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    conn.channel()
        .await
        .unwrap()
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_holds_at_most_the_prefetch() {
    let props = common::props(ExchangeKind::Topic).with_prefetch(5);
    let cleanup = common::Cleanup::new(&props);
    let queue = format!("{}.slow", props.exchange());
    cleanup.queue(&queue);
    let (entered_tx, entered) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let (entered_tx, released) = (Mutex::new(entered_tx), Mutex::new(released));
    let subscribers = Subscribers::new();
    let _g = subscribers.subscribe(move |_: &Tick| {
        let _ = entered_tx.lock().unwrap().send(());
        // Blocks until the test lets go (the multi-threaded runtime goes on).
        let _ = released.lock().unwrap().recv();
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .listen(Listen::group("slow"))
        .connect()
        .await
        .unwrap();
    for n in 0..100 {
        bus.publish(&Tick { n }).await.unwrap();
    }
    bus.publish_confirmed(&Tick { n: 100 }).await.unwrap();
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(10)).unwrap())
        .await
        .unwrap();
    let conn = Connection::connect(&props).await.unwrap();
    let waiting = queued(&conn, &queue).await;
    // 101 published; one in the handler and at most 5 unacknowledged in
    // this process: the rest waits in the broker, not in memory.
    assert!(waiting >= 101 - 5, "{waiting} messages left in the queue");
    drop(release);
    let done = common::eventually(Duration::from_secs(20), || bus.stats().dispatched == 101).await;
    assert!(done, "dispatched {}", bus.stats().dispatched);
    bus.close().await.unwrap();
    conn.close().await.unwrap();
}

#[test]
fn a_poller_receives_with_a_timeout_and_reports_lag() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = Subscribers::new();
    let poller = subscribers.poller::<Tick>(4);
    let bus = blocking::Bus::connect(Bus::with_props(props).subscribers(subscribers)).unwrap();
    assert_eq!(poller.recv_timeout(Duration::from_millis(50)), Ok(None));
    bus.publish_confirmed(&Tick { n: 1 }).unwrap();
    let first = poller
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("nothing arrived");
    assert_eq!(*first, Tick { n: 1 });
    for n in 2..12 {
        bus.publish(&Tick { n }).unwrap();
    }
    bus.publish_confirmed(&Tick { n: 12 }).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bus.stats().dispatched < 12 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        bus.stats().dispatched,
        12,
        "not every tick was dispatched within 10 s"
    );
    assert_eq!(poller.recv_timeout(Duration::from_secs(1)), Err(Lagged(7)));
    let kept: Vec<u32> = (0..4)
        .map(|_| {
            poller
                .recv_timeout(Duration::from_secs(1))
                .unwrap()
                .unwrap()
                .n
        })
        .collect();
    assert_eq!(
        kept,
        [2, 3, 4, 5],
        "the oldest are kept, the newest dropped"
    );
    bus.close().unwrap();
}
