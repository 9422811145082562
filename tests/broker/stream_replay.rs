//! Stream listeners (`Listen::stream`): every reader reads the whole
//! stream, a restarted one resumes after the last event it handled, a new
//! one starts at the beginning, a time or now, and retention reaches the
//! broker.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tidings::{
    Bus, Connection, ErrorKind, Event, ExchangeKind, Listen, Retention, StreamStart, Subscribers,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "stream_replay.tick")]
struct Tick {
    n: u64,
}

/// A bus reading `listen`, and the `n` of each tick it handled, in order.
async fn reader(
    props: &tidings::AmqpProps,
    listen: Listen,
) -> (Bus, Arc<Mutex<Vec<u64>>>, tidings::Subscription) {
    reader_with(props, listen, 1).await
}

/// The same, handling up to `concurrency` events at once.
async fn reader_with(
    props: &tidings::AmqpProps,
    listen: Listen,
    concurrency: usize,
) -> (Bus, Arc<Mutex<Vec<u64>>>, tidings::Subscription) {
    let subscribers = Subscribers::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let guard = subscribers.subscribe(move |t: &Tick| s.lock().unwrap().push(t.n));
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .listen(listen)
        // No dedup window: what is handled twice shows.
        .dedup_window(0)
        .concurrency(concurrency)
        .connect()
        .await
        .unwrap();
    (bus, seen, guard)
}

async fn publish(bus: &Bus, range: std::ops::Range<u64>) {
    for n in range {
        bus.publish(&Tick { n }).await.unwrap();
    }
    // Every one confirmed before the test goes on.
    bus.publish_confirmed(&Tick { n: u64::MAX }).await.unwrap();
}

fn ticks(seen: &Mutex<Vec<u64>>) -> Vec<u64> {
    seen.lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|n| *n != u64::MAX)
        .collect()
}

async fn has(seen: &Mutex<Vec<u64>>, count: usize) -> bool {
    common::eventually(Duration::from_secs(30), || ticks(seen).len() >= count).await
}

fn stream_of(props: &tidings::AmqpProps, name: &str) -> String {
    format!("{}.{name}", props.exchange())
}

#[tokio::test]
async fn a_stopped_reader_handles_what_it_missed_in_order_once() {
    stopped_reader_catches_up(1).await;
}

/// Handlers that finish out of order: the offset saved is still the last
/// one with every event before it handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_concurrent_reader_handles_what_it_missed_once() {
    stopped_reader_catches_up(8).await;
}

async fn stopped_reader_catches_up(concurrency: usize) {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let stream = stream_of(&props, "audit");
    cleanup.queue(&stream);
    cleanup.queue(&format!("{stream}.offset.reader-1"));
    let listen = || {
        Listen::stream("audit")
            .consumer("reader-1")
            .start(StreamStart::Beginning)
    };
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();

    let in_order = |mut seen: Vec<u64>| {
        if concurrency > 1 {
            seen.sort_unstable();
        }
        seen
    };
    let (bus, seen, _g) = reader_with(&props, listen(), concurrency).await;
    publish(&publisher, 0..10).await;
    assert!(has(&seen, 10).await, "handled {:?}", ticks(&seen));
    bus.close().await.unwrap();
    assert_eq!(in_order(ticks(&seen)), (0..10).collect::<Vec<_>>());

    // Published while the reader is away.
    publish(&publisher, 10..1010).await;

    let (bus, seen, _g) = reader_with(&props, listen(), concurrency).await;
    assert!(has(&seen, 1000).await, "handled {}", ticks(&seen).len());
    // A marker published after: once it is in, nothing else is coming.
    publisher
        .publish_confirmed(&Tick { n: 5000 })
        .await
        .unwrap();
    assert!(has(&seen, 1001).await);
    bus.close().await.unwrap();
    publisher.close().await.unwrap();
    let mut expected: Vec<u64> = (10..1010).collect();
    expected.push(5000);
    assert_eq!(
        in_order(ticks(&seen)),
        expected,
        "all 1,000 missed events, in order, once, and none handled before"
    );
}

#[tokio::test]
async fn new_readers_start_at_the_beginning_a_time_or_now() {
    let props = common::props(ExchangeKind::Topic);
    let cleanup = common::Cleanup::new(&props);
    cleanup.queue(&stream_of(&props, "history"));
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    // The stream must exist before the first events, so one reader is there.
    let (first, _, _g0) = reader(&props, Listen::stream("history")).await;
    publish(&publisher, 0..5).await;
    let time = SystemTime::now();
    publish(&publisher, 5..10).await;

    let (beginning, from_beginning, _g1) = reader(
        &props,
        Listen::stream("history").start(StreamStart::Beginning),
    )
    .await;
    let (at_time, from_time, _g2) = reader(
        &props,
        Listen::stream("history").start(StreamStart::Time(time)),
    )
    .await;
    let (now, from_now, _g3) =
        reader(&props, Listen::stream("history").start(StreamStart::Now)).await;
    publish(&publisher, 10..15).await;

    assert!(has(&from_beginning, 15).await);
    assert!(has(&from_time, 10).await);
    assert!(has(&from_now, 5).await);
    // A marker: once each has it, nothing else is coming.
    publisher.publish_confirmed(&Tick { n: 99 }).await.unwrap();
    assert!(has(&from_beginning, 16).await);
    assert!(has(&from_time, 11).await);
    assert!(has(&from_now, 6).await);
    for bus in [first, beginning, at_time, now, publisher] {
        bus.close().await.unwrap();
    }
    let with_marker = |range: std::ops::Range<u64>| range.chain([99]).collect::<Vec<_>>();
    assert_eq!(ticks(&from_beginning), with_marker(0..15));
    assert_eq!(ticks(&from_time), with_marker(5..15));
    assert_eq!(ticks(&from_now), with_marker(10..15));
}

#[tokio::test]
async fn a_failing_handler_is_retried_in_the_process_then_dead_lettered() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let stream = stream_of(&props, "flaky");
    cleanup.queue(&stream);
    cleanup.queue(&format!("{stream}.offset.r"));
    let subscribers = Subscribers::new();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = attempts.clone();
    // Event 1 fails twice then passes; event 2 always fails.
    let _g = subscribers.subscribe_with(move |t: &Tick, ctx: &tidings::Context| {
        a.lock().unwrap().push((t.n, ctx.attempt()));
        match (t.n, ctx.attempt()) {
            (1, attempt) if attempt < 3 => Err("not yet"),
            (2, _) => Err("never"),
            _ => Ok(()),
        }
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .listen(Listen::stream("flaky").consumer("r"))
        .max_attempts(3)
        .retry_delay(Duration::from_millis(20))
        .self_delivery(false)
        .connect()
        .await
        .unwrap();
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    for n in 1..=3 {
        publisher.publish_confirmed(&Tick { n }).await.unwrap();
    }
    let done = common::eventually(Duration::from_secs(20), || {
        let stats = bus.stats();
        stats.dead_lettered == 1 && stats.handled >= 2
    })
    .await;
    assert!(done, "{:?} {:?}", bus.stats(), attempts.lock().unwrap());
    let conn = Connection::connect(&props).await.unwrap();
    let dead = common::raw_get(&conn, bus.dead_letter_queue().unwrap())
        .await
        .expect("a dead letter");
    assert_eq!(
        common::header_text(&dead, "x-tidings-queue").as_deref(),
        Some(stream.as_str())
    );
    assert_eq!(
        common::header_text(&dead, "x-tidings-attempt").as_deref(),
        Some("3")
    );
    bus.close().await.unwrap();
    publisher.close().await.unwrap();
    conn.close().await.unwrap();
    let mut attempts = attempts.lock().unwrap().clone();
    attempts.sort_unstable();
    assert_eq!(
        attempts,
        [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 1)]
    );
}

#[tokio::test]
async fn retention_settings_reach_the_broker() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let stream = stream_of(&props, "kept");
    cleanup.queue(&stream);
    let retention = Retention::default()
        .max_age(Duration::from_secs(2 * 3600))
        .max_bytes(5_000_000)
        .segment_bytes(1_000_000);
    let listen = |retention| Listen::stream("kept").retention(retention);
    let bus = Bus::with_props(props.clone())
        .listen(listen(retention))
        .connect()
        .await
        .unwrap();
    // The broker compares a declaration with what exists: the same
    // retention is accepted, another is refused.
    bus.listen(&listen(retention))
        .await
        .unwrap()
        .cancel()
        .await
        .unwrap();
    let other = bus
        .listen(&listen(retention.max_bytes(6_000_000)))
        .await
        .unwrap_err();
    assert_eq!(other.kind(), ErrorKind::Broker, "{other}");
    assert!(other.to_string().contains("x-max-length-bytes"), "{other}");
    let arguments = common::queue_column("arguments");
    let line = arguments
        .get(&stream)
        .unwrap_or_else(|| panic!("{stream} not listed in {arguments:?}"));
    for argument in [
        "x-queue-type",
        "stream",
        "x-max-age",
        "7200s",
        "x-max-length-bytes",
        "5000000",
        "x-stream-max-segment-size-bytes",
        "1000000",
    ] {
        assert!(line.contains(argument), "{argument} not in {line}");
    }
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_stream_listener_without_a_prefetch_is_refused() {
    let props = common::props(ExchangeKind::Fanout).with_prefetch(0);
    let _cleanup = common::Cleanup::new(&props);
    let refused = Bus::with_props(props.clone())
        .listen(Listen::stream("unlimited"))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidConfig, "{refused}");
    assert!(refused.to_string().contains("prefetch"), "{refused}");
}

/// A reader starting at a time skips, one by one, the events the broker
/// sends from before it: many more than its prefetch, without stalling.
#[tokio::test]
async fn a_reader_starting_at_a_time_skips_far_more_than_its_prefetch() {
    let props = common::props(ExchangeKind::Fanout).with_prefetch(20);
    let cleanup = common::Cleanup::new(&props);
    cleanup.queue(&stream_of(&props, "skips"));
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    let (first, _, _g0) = reader(&props, Listen::stream("skips")).await;
    publish(&publisher, 0..2000).await;
    let time = SystemTime::now();
    publish(&publisher, 2000..2010).await;
    let (at_time, from_time, _g1) = reader(
        &props,
        Listen::stream("skips").start(StreamStart::Time(time)),
    )
    .await;
    assert!(has(&from_time, 10).await, "{:?}", ticks(&from_time));
    publisher
        .publish_confirmed(&Tick { n: 99_999 })
        .await
        .unwrap();
    assert!(has(&from_time, 11).await);
    for bus in [first, at_time, publisher] {
        bus.close().await.unwrap();
    }
    assert_eq!(
        ticks(&from_time),
        (2000..2010).chain([99_999]).collect::<Vec<_>>()
    );
}

/// A stream reader decompresses what was published compressed (the
/// stream's deliveries carry their `content-encoding` through).
#[tokio::test]
async fn a_stream_reader_reads_compressed_events() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    cleanup.queue(&stream_of(&props, "packed"));
    let (bus, seen, _g) = reader(&props, Listen::stream("packed")).await;
    let publisher = Bus::with_props(props.clone())
        .compression(tidings::Compression::Gzip)
        .compression_threshold(0)
        .publish_only()
        .connect()
        .await
        .unwrap();
    publish(&publisher, 0..5).await;
    assert!(has(&seen, 5).await, "{:?}", ticks(&seen));
    assert_eq!(ticks(&seen), (0..5).collect::<Vec<_>>());
    assert_eq!(bus.stats().rejected_total(), 0, "{:?}", bus.stats());
    publisher.close().await.unwrap();
    bus.close().await.unwrap();
}
