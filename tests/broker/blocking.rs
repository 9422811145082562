//! The consumer thread and the blocking facades, used from plain
//! (non-async) test code.

use crate::common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use tidings::{ConsumerThread, ErrorKind, ExchangeKind, Queue, blocking};

#[test]
fn consumer_thread_receives_from_a_blocking_producer() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let (tx, rx) = mpsc::channel();
    let thread = ConsumerThread::spawn(&props, Queue::exclusive(), move |delivery| {
        let n: u32 = delivery.decode()?;
        if n == 13 {
            return Err("unlucky".into());
        }
        if n == 14 {
            panic!("callback panics on 14");
        }
        tx.send(n)?;
        Ok(())
    })
    .unwrap();
    assert!(thread.queue().starts_with(props.exchange()));

    let producer = blocking::Producer::connect(&props).unwrap();
    for n in 10..20u32 {
        producer.publish(&n).unwrap();
    }
    let got: Vec<u32> = (0..8)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("callback not called")
        })
        .collect();
    // 13 failed and 14 panicked; the thread went on with the rest, in order.
    assert_eq!(got, [10, 11, 12, 15, 16, 17, 18, 19]);
    assert!(!thread.is_finished());
    producer.close().unwrap();
    thread.stop().unwrap();
}

#[test]
fn stop_returns_promptly_while_idle() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let thread = ConsumerThread::spawn(&props, Queue::exclusive(), |_| Ok(())).unwrap();
    let started = Instant::now();
    thread.stop().unwrap();
    // Not a benchmark: a hang detector. Stopping an idle thread takes a few
    // milliseconds; without the stop signal it would wait forever.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
}

#[test]
fn stop_lets_the_running_callback_finish() {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let queue = Queue::durable(common::unique("slow"));
    cleanup.queue(queue.name().unwrap());
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let thread = ConsumerThread::spawn(&props, queue.clone(), move |_| {
        entered_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        Ok(())
    })
    .unwrap();
    let producer = blocking::Producer::connect(&props).unwrap();
    producer.publish(&1u8).unwrap();
    producer.publish(&2u8).unwrap();
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    thread.request_stop();
    release_tx.send(()).unwrap();
    thread.join().unwrap();

    // The first was acked when its callback finished; the second was never
    // handed to the callback and is back in the queue.
    let mut consumer = blocking::Consumer::connect(&props, &queue).unwrap();
    let left = consumer
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("second message lost");
    assert_eq!(left.decode::<u8>().unwrap(), 2);
    left.ack().unwrap();
    assert!(
        consumer
            .recv_timeout(Duration::from_millis(300))
            .unwrap()
            .is_none()
    );
}

#[test]
fn spawn_reports_setup_errors() {
    let props = common::props(ExchangeKind::Direct);
    let _cleanup = common::Cleanup::new(&props);
    // A direct exchange needs explicit binding keys.
    let err = ConsumerThread::spawn(&props, Queue::exclusive(), |_| Ok(())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
}

#[test]
fn recv_timeout_returns_none_when_idle_then_the_next_delivery() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let mut consumer =
        blocking::Consumer::connect(&props, &Queue::exclusive().bind("a.*")).unwrap();
    assert!(
        consumer
            .recv_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none()
    );
    let producer = blocking::Producer::connect(&props).unwrap();
    producer
        .publish_with(&"hi", &tidings::Publish::new().routing_key("a.b"))
        .unwrap();
    let d = consumer
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(d.routing_key(), "a.b");
    assert_eq!(d.decode::<String>().unwrap(), "hi");
    d.ack().unwrap();
    consumer.close().unwrap();
}

#[tokio::test]
async fn blocking_calls_inside_a_runtime_are_refused() {
    let props = common::props(ExchangeKind::Fanout);
    let err = blocking::Producer::connect(&props).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Usage);
    assert!(err.to_string().contains("async"), "{err}");
}

#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug, Clone)]
#[event(name = "blocking.noted")]
struct Noted {
    id: u64,
}

/// The blocking bus publishes with options (headers, message id, routing
/// key, compression) and reports its health.
#[test]
fn a_blocking_bus_publishes_with_headers_and_is_healthy() {
    let props = common::props(ExchangeKind::Fanout);
    common::require_broker(&props);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = tidings::Subscribers::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let _guard = subscribers.subscribe_with(move |n: &Noted, ctx: &tidings::Context| {
        let _ = tx.send((
            n.id,
            ctx.header("source").map(str::to_owned),
            ctx.message_id().map(str::to_owned),
            ctx.routing_key().to_owned(),
        ));
    });
    let bus =
        tidings::blocking::Bus::connect(tidings::Bus::with_props(props).subscribers(subscribers))
            .unwrap();
    assert!(bus.health().is_ready(), "{:?}", bus.health());
    // One options value: a header, an id and a routing key of the
    // caller's, compressed, confirmed.
    let options = tidings::PublishOptions::new()
        .header("source", "cron")
        .message_id("noted-3")
        .routing_key("blocking.cron")
        .compression_above(tidings::Compression::Gzip, 0)
        .confirm(true);
    bus.publish_with(&Noted { id: 3 }, &options).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        got,
        (
            3,
            Some("cron".to_owned()),
            Some("noted-3".to_owned()),
            "blocking.cron".to_owned()
        )
    );
    bus.close().unwrap();
}

#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
#[event(name = "blocking.rpc.double")]
struct Double(u64);

#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
#[event(name = "blocking.rpc.doubled")]
struct Doubled(u64);

impl tidings::Request for Double {
    type Reply = Doubled;
}

/// Plain code calls a server (served by an async bus on its own runtime).
#[test]
fn a_blocking_bus_calls_a_server() {
    let props = common::props(ExchangeKind::Topic);
    common::require_broker(&props);
    let _cleanup = common::Cleanup::new(&props);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server_bus = runtime.block_on(async {
        let bus = tidings::Bus::with_props(props.clone())
            .publish_only()
            .connect()
            .await
            .unwrap();
        bus.serve(
            |d: std::sync::Arc<Double>| async move { Ok::<_, std::io::Error>(Doubled(d.0 * 2)) },
        )
        .await
        .unwrap();
        bus
    });
    let caller = blocking::Bus::connect(tidings::Bus::with_props(props).publish_only()).unwrap();
    assert_eq!(caller.call(&Double(21)).unwrap(), Doubled(42));
    let nobody = tidings::CallOptions::new().server("nobody");
    let err = caller.call_with(&Double(1), &nobody).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoResponder, "{err}");
    caller.close().unwrap();
    runtime.block_on(server_bus.close()).unwrap();
}
