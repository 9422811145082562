//! Stream listeners against broadcast listeners and raw lapin, in one run:
//! events per second from the first publish to the last handler call, for
//! live events (published while the listener runs) and for a replay of
//! the stream's history from the beginning.
//!
//! - **tidings broadcast**: `Listen::broadcast()`, the exclusive queue.
//! - **tidings stream**: `Listen::stream(..).consumer(..)`, offsets saved.
//! - **raw lapin stream**: the same stream arguments, consumed with a
//!   prefetch of 1,000 and `multiple` acks every 100, counting deliveries
//!   (no decoding, no offsets kept).
//!
//! Every row publishes the same events (about 100 B) with a publish-only
//! bus, fire and forget, and checks that each arrived.
//!
//! ```text
//! cargo bench --bench stream                 # 20,000 events; AMQP_URL, default amqp://127.0.0.1:5672/%2f
//! cargo bench --bench stream -- --events 100000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::ConnectionProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Connection, Event, ExchangeKind, Listen, StreamStart, Subscribers};
use tokio_stream::StreamExt;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "bench.stream.tick")]
struct Tick {
    n: u64,
    text: String,
}

const PREFETCH: u16 = 1_000;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Waits until `count` reaches `events`; the time since `started`.
async fn until(count: &AtomicU64, events: u64, started: Instant) -> Result<Duration, Error> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while count.load(Ordering::Relaxed) < events {
        if Instant::now() > deadline {
            return Err(
                format!("only {} of {events} arrived", count.load(Ordering::Relaxed)).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(started.elapsed())
}

async fn publish(props: &AmqpProps, events: u64) -> Result<(Bus, Instant), Error> {
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await?;
    let started = Instant::now();
    let text = "x".repeat(80);
    for n in 0..events {
        publisher
            .publish(&Tick {
                n,
                text: text.clone(),
            })
            .await?;
    }
    Ok((publisher, started))
}

/// A bus listening with `listen`, counting the ticks it handles.
async fn listener(props: &AmqpProps, listen: Listen) -> Result<(Bus, Arc<AtomicU64>), Error> {
    let subscribers = Subscribers::new();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    subscribers
        .subscribe(move |_: &Tick| {
            c.fetch_add(1, Ordering::Relaxed);
        })
        .forget();
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .listen(listen)
        .dedup_window(0)
        .connect()
        .await?;
    Ok((bus, count))
}

/// tidings: live events through `listen`.
async fn tidings_live(props: &AmqpProps, listen: Listen, events: u64) -> Result<Duration, Error> {
    let (bus, count) = listener(props, listen).await?;
    let (publisher, started) = publish(props, events).await?;
    let took = until(&count, events, started).await?;
    publisher.close().await?;
    bus.close().await?;
    Ok(took)
}

/// tidings: the stream's history, by a new reader from the beginning.
async fn tidings_replay(props: &AmqpProps, events: u64) -> Result<Duration, Error> {
    let started = Instant::now();
    let listen = Listen::stream("bench")
        .consumer("replay")
        .start(StreamStart::Beginning);
    let (bus, count) = listener(props, listen).await?;
    let took = until(&count, events, started).await?;
    bus.close().await?;
    Ok(took)
}

/// Raw lapin: consumes the stream `<exchange>.bench` from `offset`,
/// counting deliveries, acking every 100 with `multiple`.
async fn raw_consumer(
    url: &str,
    stream: &str,
    offset: &str,
    count: Arc<AtomicU64>,
) -> Result<lapin::Connection, Error> {
    let conn = lapin::Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString(offset.into()),
    );
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await?;
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(Ok(delivery)) = consumer.next().await {
            n += 1;
            if n.is_multiple_of(100) {
                let _ = delivery.acker.ack(BasicAckOptions { multiple: true }).await;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(conn)
}

async fn raw_live(url: &str, props: &AmqpProps, events: u64) -> Result<Duration, Error> {
    // A tidings listener declares the stream (same arguments), then leaves.
    let (bus, _) = listener(props, Listen::stream("bench")).await?;
    bus.close().await?;
    let stream = format!("{}.bench", props.exchange());
    let count = Arc::new(AtomicU64::new(0));
    let conn = raw_consumer(url, &stream, "next", count.clone()).await?;
    let (publisher, started) = publish(props, events).await?;
    let took = until(&count, events, started).await?;
    publisher.close().await?;
    conn.close(200, "done".into()).await?;
    Ok(took)
}

async fn raw_replay(url: &str, props: &AmqpProps, events: u64) -> Result<Duration, Error> {
    let stream = format!("{}.bench", props.exchange());
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let conn = raw_consumer(url, &stream, "first", count.clone()).await?;
    let took = until(&count, events, started).await?;
    conn.close(200, "done".into()).await?;
    Ok(took)
}

/// Deletes what the buses of `props` declared.
async fn clean(props: &AmqpProps) -> Result<(), Error> {
    let conn = Connection::connect(props).await?;
    let exchange = props.exchange();
    let dead_letters = format!("{exchange}.dead-letter");
    for queue in [
        format!("{exchange}.bench"),
        format!("{exchange}.bench.offset.live"),
        format!("{exchange}.bench.offset.replay"),
        dead_letters.clone(),
        tidings::schema_stream(exchange),
    ] {
        let _ = conn.delete_queue(&queue).await;
    }
    let _ = conn.delete_exchange(&dead_letters).await;
    let _ = conn.delete_exchange(exchange).await;
    conn.close().await?;
    Ok(())
}

async fn rows(url: &str, base: &AmqpProps, events: u64) -> Result<(), Error> {
    let on = |name: &str| base.clone().with_exchange(name, ExchangeKind::Fanout);
    let unique = std::process::id();
    let broadcast = on(&format!("tidings-test.bench-stream-{unique}.broadcast"));
    let stream = on(&format!("tidings-test.bench-stream-{unique}.stream"));
    let raw = on(&format!("tidings-test.bench-stream-{unique}.raw"));
    let result = async {
        let rate = |took: Duration| events as f64 / took.as_secs_f64();
        let b = tidings_live(&broadcast, Listen::broadcast(), events).await?;
        let listen = Listen::stream("bench").consumer("live");
        let s = tidings_live(&stream, listen, events).await?;
        let r = raw_live(url, &raw, events).await?;
        let sr = tidings_replay(&stream, events).await?;
        let rr = raw_replay(url, &raw, events).await?;
        println!("{events} events of about 100 B, prefetch {PREFETCH}, publish fire and forget\n");
        println!("| listener | live events/s | replay events/s |");
        println!("|---|---|---|");
        println!("| tidings broadcast | {:.0} | - |", rate(b));
        println!("| tidings stream | {:.0} | {:.0} |", rate(s), rate(sr));
        println!("| raw lapin stream | {:.0} | {:.0} |", rate(r), rate(rr));
        println!(
            "\nstream / broadcast (live): {:.2}x; tidings / raw lapin stream: live {:.2}x, replay {:.2}x",
            b.as_secs_f64() / s.as_secs_f64(),
            r.as_secs_f64() / s.as_secs_f64(),
            rr.as_secs_f64() / sr.as_secs_f64()
        );
        Ok::<(), Error>(())
    }
    .await;
    for props in [&broadcast, &stream, &raw] {
        clean(props).await?;
    }
    result
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mut events = 20_000;
    while let Some(arg) = args.next() {
        if arg == "--events" {
            events = args.next().ok_or("--events needs a number")?.parse()?;
        }
    }
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let base = AmqpProps::from_url(&url)?.with_prefetch(PREFETCH);
    rows(&url, &base, events).await
}
