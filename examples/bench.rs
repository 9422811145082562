//! Throughput of tidings against raw lapin, in the same run, same broker,
//! same message size and prefetch.
//!
//! Run: `cargo run --release --example bench` (reads `AMQP_URL`, default
//! `amqp://127.0.0.1:5672/%2f`); `-- --events N` changes the count (default
//! 20,000 per row).
//!
//! Rows: raw lapin "naive" (publish without confirms, ack every delivery),
//! raw lapin "tuned" (confirms awaited per 1,000, acks with `multiple`
//! every 100), and tidings (typed events through a bus: publish with
//! confirms tracked in the background, ack after the handler). Each row
//! counts every delivery and fails if one is missing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind as LapinKind};
use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Event, ExchangeKind, Listen, Subscribers};
use tokio_stream::StreamExt;

const PREFETCH: u16 = 1000;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "bench.payload")]
struct Payload {
    seq: u64,
    // A String, not a Vec<u8>: serde writes a Vec<u8> byte by byte, and
    // through typetag's erased serializer each byte is a virtual call.
    data: String,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(20_000), |n| n.parse())?;
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".to_owned());
    println!(
        "tidings bench: {events} events per row, prefetch {PREFETCH}, broker {}",
        AmqpProps::from_url(&url)?.redacted_url()
    );
    println!(
        "{:<40} {:>12} {:>10} {:>10}",
        "scenario", "deliveries/s", "vs naive", "vs tuned"
    );
    let rows = [
        (100usize, Shape::Fanout(1)),
        (10_000, Shape::Fanout(1)),
        (100, Shape::Fanout(4)),
        (100, Shape::Group(2)),
    ];
    for (size, shape) in rows {
        let naive = raw(&url, events, size, false, shape).await?;
        let tuned = raw(&url, events, size, true, shape).await?;
        let ours = bus(&url, events, size, shape).await?;
        for (name, rate) in [
            ("raw lapin naive", naive),
            ("raw lapin tuned", tuned),
            ("tidings bus", ours),
        ] {
            println!(
                "{:<40} {:>12.0} {:>9.2}x {:>9.2}x",
                format!("{name}, {size} B{}", shape.label()),
                rate,
                rate / naive,
                rate / tuned
            );
        }
    }
    match pika(&url, events) {
        Ok(rate) => println!(
            "{:<40} {:>12.0}   (Python pika BlockingConnection, the naive row's work)",
            "pika naive, 100 B", rate
        ),
        Err(why) => println!("pika row skipped: {why}"),
    }
    println!();
    let latency_events = events.min(6_000);
    println!(
        "latency publish -> handler at {RATE} events/s offered, {latency_events} events, 100 B:"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "scenario", "p50 ms", "p99 ms", "max ms"
    );
    for (name, mut samples) in [
        ("raw lapin naive", raw_latency(&url, latency_events).await?),
        ("tidings bus", bus_latency(&url, latency_events).await?),
    ] {
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64 / 1e6;
        println!(
            "{name:<28} {:>10.2} {:>10.2} {:>10.2}",
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    Ok(())
}

/// The Python peer: `scripts/pika_bench.py` in a venv under `target/`,
/// made (and pika installed into it from PyPI) on first use. `--no-python`
/// skips it.
fn pika(url: &str, events: u64) -> Result<f64, String> {
    use std::process::Command;
    if std::env::args().any(|a| a == "--no-python") {
        return Err("--no-python given".to_owned());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("bench-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            return Err("python3 -m venv failed or python3 is missing".to_owned());
        }
    }
    let has_pika = Command::new(&python)
        .args(["-c", "import pika"])
        .stderr(std::process::Stdio::null())
        .status();
    if !has_pika.is_ok_and(|s| s.success()) {
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "pika"])
            .status();
        if !installed.is_ok_and(|s| s.success()) {
            return Err("pip could not install pika".to_owned());
        }
    }
    let output = Command::new(&python)
        .arg(root.join("scripts").join("pika_bench.py"))
        .args([url, &events.to_string(), "100"])
        .output()
        .map_err(|e| format!("running pika_bench.py: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "pika_bench.py failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("pika_bench.py printed no rate: {stdout}"))
}

/// Deletes what a bus run declared on the broker: the exchange, its
/// dead-letter exchange and queue, and the named group queues (with their
/// retry queues).
async fn remove_topology(props: &AmqpProps, groups: &[&str]) -> Result<(), Error> {
    let conn = tidings::Connection::connect(props).await?;
    let exchange = props.exchange();
    for group in groups {
        conn.delete_queue(&format!("{exchange}.{group}.retry"))
            .await?;
        conn.delete_queue(&format!("{exchange}.{group}")).await?;
    }
    conn.delete_queue(&format!("{exchange}.dead-letter"))
        .await?;
    conn.delete_exchange(&format!("{exchange}.dead-letter"))
        .await?;
    conn.delete_exchange(exchange).await?;
    conn.close().await?;
    Ok(())
}

/// The offered rate of the latency rows.
const RATE: u64 = 2_000;

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Publishes `events` at `RATE`, calling `send(seq, stamp)`.
async fn paced<F, Fut>(events: u64, mut send: F) -> Result<(), Error>
where
    F: FnMut(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / RATE));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..events {
        ticker.tick().await;
        send(seq, now_nanos()).await?;
    }
    Ok(())
}

/// Declares the fanout exchange (auto-delete) on `channel`.
async fn raw_exchange(channel: &lapin::Channel, exchange: &str) -> Result<(), Error> {
    let declare = ExchangeDeclareOptions {
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            LapinKind::Fanout,
            declare,
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares `queue` (auto-delete), binds it to `exchange`, sets the
/// prefetch and consumes it.
async fn raw_consumer(
    channel: &lapin::Channel,
    exchange: &str,
    queue: &str,
    tag: &str,
) -> Result<lapin::Consumer, Error> {
    let queue_options = QueueDeclareOptions {
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), queue_options, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(consumer)
}

async fn raw_latency(url: &str, events: u64) -> Result<Vec<u64>, Error> {
    let exchange = exchange_name("latency");
    let options = lapin::ConnectionProperties::default();
    let consumer_conn = lapin::Connection::connect(url, options.clone()).await?;
    let publisher_conn = lapin::Connection::connect(url, options).await?;
    let channel = consumer_conn.create_channel().await?;
    raw_exchange(&channel, &exchange).await?;
    let mut consumer =
        raw_consumer(&channel, &exchange, &format!("{exchange}.q"), "latency").await?;
    let receiving = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(usize::try_from(events).unwrap_or(0));
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            let stamp = u64::from_le_bytes(delivery.data[..8].try_into().unwrap_or_default());
            samples.push(now_nanos().saturating_sub(stamp));
            delivery.ack(BasicAckOptions::default()).await?;
            if samples.len() as u64 == events {
                break;
            }
        }
        Ok::<_, lapin::Error>(samples)
    });
    let publisher = publisher_conn.create_channel().await?;
    let exchange_ref = exchange.as_str();
    paced(events, |_, stamp| {
        let publisher = &publisher;
        async move {
            let mut body = stamp.to_le_bytes().to_vec();
            body.resize(100, 7);
            publisher
                .basic_publish(
                    exchange_ref.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    let samples = tokio::time::timeout(Duration::from_secs(60), receiving).await???;
    if samples.len() as u64 != events {
        return Err(format!("raw lapin lost events: {} of {events}", samples.len()).into());
    }
    consumer_conn.close(200, "bench done".into()).await?;
    publisher_conn.close(200, "bench done".into()).await?;
    Ok(samples)
}

async fn bus_latency(url: &str, events: u64) -> Result<Vec<u64>, Error> {
    let props = AmqpProps::from_url(url)?
        .with_exchange(exchange_name("tidings-latency"), ExchangeKind::Fanout)
        .with_prefetch(PREFETCH);
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(tokio::sync::Notify::new());
    let subscribers = Subscribers::new();
    let (s, d) = (samples.clone(), done.clone());
    subscribers
        .subscribe(move |p: &Payload| {
            let mut samples = s.lock().unwrap_or_else(|e| e.into_inner());
            samples.push(now_nanos().saturating_sub(p.seq));
            if samples.len() as u64 == events {
                d.notify_one();
            }
        })
        .forget();
    let listener = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .connect()
        .await?;
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await?;
    let data = "x".repeat(40);
    // `seq` carries the publish timestamp here.
    paced(events, |_, stamp| {
        let (publisher, data) = (&publisher, data.clone());
        async move { Ok(publisher.publish(&Payload { seq: stamp, data }).await?) }
    })
    .await?;
    tokio::time::timeout(Duration::from_secs(60), done.notified()).await?;
    publisher.close().await?;
    listener.close().await?;
    remove_topology(&props, &[]).await?;
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(samples)
}

fn exchange_name(kind: &str) -> String {
    format!("tidings.bench.{kind}.{}", std::process::id())
}

/// Raw lapin: two connections, one fanout exchange, one exclusive queue.
/// How the consumers of a row share the events.
#[derive(Clone, Copy)]
enum Shape {
    /// Every consumer gets every event (a queue each).
    Fanout(usize),
    /// The consumers share one queue; each event is handled once.
    Group(usize),
}

impl Shape {
    fn consumers(self) -> usize {
        match self {
            Self::Fanout(n) | Self::Group(n) => n,
        }
    }

    /// Deliveries in all for `events` published.
    fn deliveries(self, events: u64) -> u64 {
        match self {
            Self::Fanout(n) => events * n as u64,
            Self::Group(_) => events,
        }
    }

    fn label(self) -> String {
        match self {
            Self::Fanout(1) => String::new(),
            Self::Fanout(n) => format!(", fanout to {n}"),
            Self::Group(n) => format!(", group of {n}"),
        }
    }
}

/// Raw lapin: a publisher connection and a connection per consumer on one
/// fanout exchange. Returns deliveries per second.
async fn raw(url: &str, events: u64, size: usize, tuned: bool, shape: Shape) -> Result<f64, Error> {
    let exchange = exchange_name(if tuned { "tuned" } else { "naive" });
    let options = lapin::ConnectionProperties::default();
    let publisher_conn = lapin::Connection::connect(url, options.clone()).await?;
    let publisher = publisher_conn.create_channel().await?;
    raw_exchange(&publisher, &exchange).await?;
    let total = shape.deliveries(events);
    let received = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for i in 0..shape.consumers() {
        let conn = lapin::Connection::connect(url, options.clone()).await?;
        let channel = conn.create_channel().await?;
        let queue = match shape {
            Shape::Fanout(_) => format!("{exchange}.q{i}"),
            Shape::Group(_) => format!("{exchange}.group"),
        };
        let mut consumer = raw_consumer(&channel, &exchange, &queue, &format!("bench{i}")).await?;
        let received = received.clone();
        consumers.push(conn);
        tokio::spawn(async move {
            let mut mine = 0u64;
            while let Some(Ok(delivery)) = consumer.next().await {
                mine += 1;
                let all = received.fetch_add(1, Ordering::Relaxed) + 1;
                let result = if !tuned {
                    delivery.ack(BasicAckOptions::default()).await
                } else if mine.is_multiple_of(100) || all >= total {
                    delivery.ack(BasicAckOptions { multiple: true }).await
                } else {
                    Ok(true)
                };
                if result.is_err() {
                    break;
                }
            }
        });
    }
    if tuned {
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    let body = vec![7u8; size];
    let started = Instant::now();
    for seq in 0..events {
        publisher
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?;
        if tuned && (seq + 1).is_multiple_of(1000) {
            publisher.wait_for_confirms().await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let got = received.load(Ordering::Relaxed);
    if got != total {
        return Err(format!("raw lapin lost deliveries: {got} of {total}").into());
    }
    for conn in consumers {
        conn.close(200, "bench done".into()).await?;
    }
    publisher_conn.close(200, "bench done".into()).await?;
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// tidings: a publishing bus and a bus per consumer, each with its
/// connection. Returns deliveries per second.
async fn bus(url: &str, events: u64, size: usize, shape: Shape) -> Result<f64, Error> {
    let props = AmqpProps::from_url(url)?
        .with_exchange(exchange_name("tidings"), ExchangeKind::Fanout)
        .with_prefetch(PREFETCH);
    let total = shape.deliveries(events);
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut listeners = Vec::new();
    for _ in 0..shape.consumers() {
        let subscribers = Subscribers::new();
        let (r, d) = (received.clone(), done.clone());
        subscribers
            .subscribe(move |_: &Payload| {
                if r.fetch_add(1, Ordering::Relaxed) + 1 == total {
                    d.notify_one();
                }
            })
            .forget();
        let listen = match shape {
            Shape::Fanout(_) => Listen::broadcast(),
            Shape::Group(_) => Listen::group("bench"),
        };
        listeners.push(
            Bus::with_props(props.clone())
                .subscribers(subscribers)
                .listen(listen)
                .connect()
                .await?,
        );
    }
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await?;
    let data = "x".repeat(size.saturating_sub(60));
    let started = Instant::now();
    for seq in 0..events {
        publisher
            .publish(&Payload {
                seq,
                data: data.clone(),
            })
            .await?;
    }
    tokio::time::timeout(Duration::from_secs(120), done.notified()).await?;
    let elapsed = started.elapsed();
    publisher.close().await?;
    for listener in listeners {
        listener.close().await?;
    }
    let stats = publisher.stats();
    if received.load(Ordering::Relaxed) != total || stats.confirmed != events {
        return Err(format!(
            "tidings lost events: received {} of {total}, confirmed {} of {events}",
            received.load(Ordering::Relaxed),
            stats.confirmed
        )
        .into());
    }
    let queues: &[&str] = match shape {
        Shape::Group(_) => &["bench"],
        Shape::Fanout(_) => &[],
    };
    remove_topology(&props, queues).await?;
    Ok(total as f64 / elapsed.as_secs_f64())
}
