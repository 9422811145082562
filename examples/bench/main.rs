//! Throughput, consumer memory and CPU, and latency of tidings against raw
//! lapin, in the same run, on the same broker, with the same message size,
//! prefetch and confirm mode.
//!
//! Run: `cargo run --release --example bench` (reads `AMQP_URL`, default
//! `amqp://127.0.0.1:5672/%2f`). Options: `--events N` events per row
//! (default 20,000); `--confirmed` runs only the confirmed 100 B fanout-1
//! scenario, `--forget` only the fire-and-forget one (`--size BYTES` for
//! another size than 100 B); `TIDINGS_BENCH_SIGNING=1` signs the tidings rows' events and
//! makes their consumers require signatures; `--no-python` skips the pika
//! row; `--soak N` runs only the soak instead (e.g. `--soak 1000000`: a
//! slow tidings consumer over N events, its RSS printed every 100,000);
//! `--groups` runs only the group-of-2 rows (classic and quorum queues);
//! `--cluster` starts a local 3-node cluster (`scripts/rabbitmq-cluster`,
//! under `target/`) and runs only the group-of-2 rows on classic and quorum
//! queues there, the publisher and each consumer on another node;
//! `--compression` runs only the compression rows (10 KB JSON-ish events,
//! confirmed, fanout 1: raw lapin tuned uncompressed, then tidings with
//! no compression, gzip, and zstd and lz4 when built with their features:
//! `cargo run --release --example bench --features zstd,lz4 -- --compression`);
//! `--only naive|tuned|tidings` runs only that row of each scenario (no
//! ratios, no compression, pika or latency rows), and
//! `TIDINGS_BENCH_CONSUMER_WRAPPER` (e.g. `valgrind --tool=callgrind`)
//! starts each consumer process under that command: together they profile
//! one row's publisher and consumer (`docs/perf/FINDINGS.md`);
//! `TIDINGS_BENCH_RAW_PROPERTIES=tidings` (or `properties`, `headers`)
//! makes the raw rows carry a tidings event's properties and headers.
//!
//! Rows of each scenario: raw lapin "naive" (one publish at a time, each
//! confirm awaited before the next in a confirmed scenario; ack every
//! delivery), raw lapin "tuned" (`WINDOW` publishes in flight, confirms
//! awaited in order; acks with `multiple` every `ACK_EVERY` deliveries),
//! and tidings (`publish`, or `publish_confirmed` with `WINDOW` in flight;
//! a listening bus decoding to a typed subscriber, ack after the handler).
//! Consumers run in their own processes (this binary with `--consumer`),
//! which report their peak RSS and CPU time. Each row checks that every
//! event arrived exactly once (count and sum of sequence numbers per
//! consumer) and, for tidings, that the broker confirmed every event; it
//! fails otherwise.

mod cluster;
mod consumer;
mod latency;
mod pika;
mod procfs;
mod publish;
mod soak;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::ExchangeKind as LapinKind;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Codec, Compression, Event, ExchangeKind, QueueType};

use consumer::{ConsumerProcess, Report};

/// Unacknowledged deliveries a consumer may hold, in every row.
const PREFETCH: u16 = 1000;
/// Publishes in flight in the raw tuned rows and the tidings confirmed rows.
const WINDOW: usize = 64;
/// Deliveries per `multiple` ack in the raw tuned rows.
const ACK_EVERY: u64 = 100;
/// How long a row may go without a new delivery before it fails.
const STALL: Duration = Duration::from_secs(30);

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "bench.payload")]
struct Payload {
    seq: u64,
    // A String, not a Vec<u8>: serde writes a Vec<u8> byte by byte, and
    // through typetag's erased serializer each byte is a virtual call.
    data: String,
}

/// The `data` of a tidings event of about `size` bytes on the wire (the
/// encoded event adds about 60 bytes of tag and fields to it).
fn payload_data(size: usize) -> String {
    "x".repeat(size.saturating_sub(60))
}

/// JSON-ish `data` of about `size` bytes: order lines whose ids, amounts
/// and words vary (a fixed pseudo-random sequence), so that it compresses
/// as business events do, not as a run of one byte.
fn json_ish_data(size: usize) -> String {
    const WORDS: [&str; 12] = [
        "tea",
        "cake",
        "green",
        "loose leaf",
        "oolong",
        "scone",
        "large",
        "gift box",
        "sencha",
        "honey",
        "lemon",
        "express",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = String::from("[");
    while out.len() + 120 < size.saturating_sub(60) {
        let r = next();
        out.push_str(&format!(
            "{{\"sku\":\"{}-{}\",\"qty\":{},\"cents\":{},\"note\":\"{} {}\"}},",
            WORDS[(r % 12) as usize],
            r % 10_000,
            r % 7 + 1,
            (r >> 16) % 100_000,
            WORDS[((r >> 8) % 12) as usize],
            WORDS[((r >> 24) % 12) as usize],
        ));
    }
    out.push(']');
    out
}

/// The body of a tidings event of these rows on the wire: encoded by the
/// default codec, then compressed.
fn wire_bytes(data: &str, compression: Compression) -> Result<usize, Error> {
    let event: Box<dyn Event> = Box::new(Payload {
        seq: 12_345,
        data: data.to_owned(),
    });
    let body = (&tidings::Bincode as &dyn Codec).encode(&event)?;
    Ok(match compression {
        Compression::None => body.len(),
        other => other.compress(&body)?.len(),
    })
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn broker_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".to_owned())
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A fresh exchange name for one row.
fn exchange_name(kind: &str) -> String {
    static ROW: AtomicU64 = AtomicU64::new(0);
    let row = ROW.fetch_add(1, Ordering::Relaxed);
    format!("tidings.bench.{kind}.{}.{row}", std::process::id())
}

fn flag_value(args: &[String], flag: &str) -> Result<Option<u64>, Error> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => {
            let value = args
                .get(i + 1)
                .ok_or_else(|| format!("{flag} wants a number"))?;
            Ok(Some(
                value.parse().map_err(|e| format!("{flag} {value}: {e}"))?,
            ))
        }
    }
}

/// Runs the example; a failure prints as `error: ...` (what went wrong, not a
/// Debug dump) and exits 1.
fn main() -> std::process::ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(Error::from)
        .and_then(|runtime| runtime.block_on(run()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "--consumer") {
        return consumer::run_child(&args[2..]).await;
    }
    let url = broker_url();
    if let Some(events) = flag_value(&args, "--soak")? {
        return soak::run(&url, events).await;
    }
    let events = flag_value(&args, "--events")?.unwrap_or(20_000);
    if events == 0 {
        return Err("--events must be at least 1".into());
    }
    if args.iter().any(|a| a == "--cluster") {
        return cluster::run(events).await;
    }
    let urls = Urls(vec![url.clone()]);
    print_header(events, &AmqpProps::from_url(&url)?.redacted_url());
    if args.iter().any(|a| a == "--compression") {
        return compression_rows(&urls, events).await;
    }
    let scenarios = [
        Scenario::new(100, Shape::Fanout(1), false),
        Scenario::new(100, Shape::Fanout(1), true),
        Scenario::new(100, Shape::Fanout(4), false),
        Scenario::new(100, Shape::Fanout(4), true),
        Scenario::new(100, Shape::Group(2, QueueType::Classic), false),
        Scenario::new(100, Shape::Group(2, QueueType::Classic), true),
        Scenario::new(100, Shape::Group(2, QueueType::Quorum), false),
        Scenario::new(100, Shape::Group(2, QueueType::Quorum), true),
        Scenario::new(10_000, Shape::Fanout(1), true),
    ];
    let only_confirmed = args.iter().any(|a| a == "--confirmed");
    let only_groups = args.iter().any(|a| a == "--groups");
    let size = usize::try_from(flag_value(&args, "--size")?.unwrap_or(100))?;
    let only_forget = args.iter().any(|a| a == "--forget");
    let scenarios = match (only_confirmed, only_forget) {
        (true, _) => vec![Scenario::new(size, Shape::Fanout(1), true)],
        (false, true) => vec![Scenario::new(size, Shape::Fanout(1), false)],
        (false, false) => scenarios.to_vec(),
    };
    let only_row = only_row(&args)?;
    let mut tidings_plain = None;
    for scenario in scenarios {
        if let Some(kind) = only_row {
            let figures = row(&urls, events, scenario, kind).await?;
            println!(
                "{}",
                row_columns(scenario, kind, figures, events, procfs::ticks_per_second())
            );
            continue;
        }
        if only_groups && !matches!(scenario.shape, Shape::Group(..)) {
            continue;
        }
        let ours = scenario_rows(&urls, events, scenario).await?;
        if scenario == Scenario::new(100, Shape::Fanout(1), false) {
            tidings_plain = Some(ours);
        }
    }
    println!();
    if only_confirmed || only_groups || only_forget || only_row.is_some() {
        return Ok(());
    }
    compression_rows(&urls, events).await?;
    println!();
    match pika::pika(&url, events) {
        Ok(rate) => {
            println!(
                "pika naive, 100 B, fanout 1, fire-and-forget: {} events/s (Python pika \
                 BlockingConnection, the raw naive row's work, consumer in-process)",
                thousands(rate)
            );
            if let Some(ours) = tidings_plain {
                println!(
                    "tidings / pika (100 B, fanout 1, fire-and-forget): {:.2}x",
                    ours / rate
                );
            }
        }
        Err(why) => println!("pika row skipped: {why}"),
    }
    println!();
    let latency_events = events.min(6_000);
    println!(
        "latency publish -> handler at {} events/s offered, {latency_events} events, 100 B, \
         fire-and-forget:",
        latency::RATE
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "row", "p50 ms", "p99 ms", "max ms"
    );
    for (name, mut samples) in [
        (
            "raw lapin naive",
            latency::raw_latency(&url, latency_events).await?,
        ),
        ("tidings", latency::bus_latency(&url, latency_events).await?),
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

/// Prints what the rows measure and the table's head.
pub(crate) fn print_header(events: u64, broker: &str) {
    println!(
        "tidings bench: {events} events per row, prefetch {PREFETCH}, window {WINDOW}, \
         raw tuned acks every {ACK_EVERY}, broker {broker}"
    );
    println!(
        "events/s: publish start -> last handler call; publish/s: publish start -> last \
         publish returned;\nRSS: peak (VmHWM) of the largest consumer process; CPU: seconds \
         of all consumer processes per 100k deliveries"
    );
    println!();
    println!(
        "{:<36} {:<16} {:>9} {:>10} {:>7} {:>7} {:>9} {:>9}",
        "scenario", "row", "events/s", "publish/s", "RSS MB", "CPU s", "vs naive", "vs tuned"
    );
}

/// Runs and prints the three rows of a scenario (raw naive, raw tuned,
/// tidings); returns tidings' events per second.
pub(crate) async fn scenario_rows(
    urls: &Urls,
    events: u64,
    scenario: Scenario,
) -> Result<f64, Error> {
    let ticks_per_second = procfs::ticks_per_second();
    let naive = row(urls, events, scenario, Kind::Naive).await?;
    let tuned = row(urls, events, scenario, Kind::Tuned).await?;
    let ours = row(urls, events, scenario, Kind::Tidings).await?;
    for (kind, figures) in [
        (Kind::Naive, naive),
        (Kind::Tuned, tuned),
        (Kind::Tidings, ours),
    ] {
        println!(
            "{} {:>8.2}x {:>8.2}x",
            row_columns(scenario, kind, figures, events, ticks_per_second),
            figures.events_per_second / naive.events_per_second,
            figures.events_per_second / tuned.events_per_second,
        );
    }
    Ok(ours.events_per_second)
}

/// The columns of a row up to its CPU time (the ratios follow).
fn row_columns(
    scenario: Scenario,
    kind: Kind,
    figures: Figures,
    events: u64,
    ticks_per_second: f64,
) -> String {
    format!(
        "{:<36} {:<16} {:>9} {:>10} {:>7.1} {:>7.2}",
        scenario.label(),
        kind.label(),
        thousands(figures.events_per_second),
        thousands(figures.publishes_per_second),
        figures.rss_kb as f64 / 1024.0,
        figures.cpu_ticks as f64 / ticks_per_second / scenario.shape.deliveries(events) as f64
            * 100_000.0,
    )
}

/// `--only ROW` (`naive`, `tuned` or `tidings`): run only that row of each
/// scenario, without the ratio columns, the compression, pika and latency
/// rows (for profiling one publisher: `docs/perf/FINDINGS.md`).
fn only_row(args: &[String]) -> Result<Option<Kind>, Error> {
    let Some(i) = args.iter().position(|a| a == "--only") else {
        return Ok(None);
    };
    match args.get(i + 1).map(String::as_str) {
        Some("naive") => Ok(Some(Kind::Naive)),
        Some("tuned") => Ok(Some(Kind::Tuned)),
        Some("tidings") => Ok(Some(Kind::Tidings)),
        Some(other) => Err(format!("--only wants naive, tuned or tidings, got {other:?}").into()),
        None => Err("--only wants naive, tuned or tidings".into()),
    }
}

/// The compression rows: 10 KB JSON-ish events, fanout 1, confirmed; raw
/// lapin tuned (uncompressed), then tidings with each compression this
/// build has; events/s, CPU of the consumer, and bytes per event on the wire.
async fn compression_rows(urls: &Urls, events: u64) -> Result<(), Error> {
    let ticks_per_second = procfs::ticks_per_second();
    const SIZE: usize = 10_000;
    let data = json_ish_data(SIZE);
    println!(
        "{:<36} {:<16} {:>9} {:>10} {:>7} {:>7} {:>9} {:>11}",
        "compression (10 KB JSON-ish)",
        "row",
        "events/s",
        "publish/s",
        "RSS MB",
        "CPU s",
        "vs tuned",
        "wire B/evt"
    );
    let json_ish = |compression| Scenario {
        compression: Some(compression),
        ..Scenario::new(SIZE, Shape::Fanout(1), true)
    };
    let tuned = row(urls, events, json_ish(Compression::None), Kind::Tuned).await?;
    let mut rows = vec![("raw lapin tuned", Compression::None, tuned)];
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Lz4,
    ] {
        if !compression.is_built() {
            continue;
        }
        let figures = row(urls, events, json_ish(compression), Kind::Tidings).await?;
        rows.push(("tidings", compression, figures));
    }
    for (name, compression, figures) in rows {
        println!(
            "{:<36} {:<16} {:>9} {:>10} {:>7.1} {:>7.2} {:>8.2}x {:>11}",
            format!("10 KB JSON-ish, {compression}, fanout 1"),
            name,
            thousands(figures.events_per_second),
            thousands(figures.publishes_per_second),
            figures.rss_kb as f64 / 1024.0,
            figures.cpu_ticks as f64 / ticks_per_second / events as f64 * 100_000.0,
            figures.events_per_second / tuned.events_per_second,
            thousands(wire_bytes(&data, compression)? as f64),
        );
    }
    Ok(())
}

/// Where a row's clients connect: the publisher to the first URL, consumer
/// `i` to the next ones in turn (on a cluster, each to another node); the
/// same URL for all on one broker.
pub(crate) struct Urls(pub(crate) Vec<String>);

impl Urls {
    fn publisher(&self) -> &str {
        &self.0[0]
    }

    fn consumer(&self, i: usize) -> &str {
        &self.0[(i + 1) % self.0.len()]
    }
}

/// Under `TIDINGS_BENCH_SIGNING=1` (inherited by the consumer processes),
/// the tidings rows sign what they publish and require signatures.
pub(crate) fn signed(builder: tidings::BusBuilder) -> Result<tidings::BusBuilder, Error> {
    if std::env::var("TIDINGS_BENCH_SIGNING").is_ok_and(|v| v == "1") {
        let signing = tidings::Signing::new()
            .with_signing_key("bench", b"a bench secret of 32 bytes......")?
            .require_signed(true);
        return Ok(builder.signing(signing));
    }
    Ok(builder)
}

/// `12345.6` as `12,346`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// How the consumers of a row share the events.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Every consumer gets every event (a queue each).
    Fanout(usize),
    /// The consumers share one queue; each event is handled once. Its
    /// type: classic or quorum.
    Group(usize, QueueType),
}

impl Shape {
    fn consumers(self) -> usize {
        match self {
            Self::Fanout(n) | Self::Group(n, _) => n,
        }
    }

    /// Deliveries in all for `events` published.
    fn deliveries(self, events: u64) -> u64 {
        match self {
            Self::Fanout(n) => events * n as u64,
            Self::Group(..) => events,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scenario {
    size: usize,
    shape: Shape,
    confirmed: bool,
    /// JSON-ish events, tidings compressing them so (the compression rows).
    compression: Option<Compression>,
}

impl Scenario {
    pub(crate) const fn new(size: usize, shape: Shape, confirmed: bool) -> Self {
        Self {
            size,
            shape,
            confirmed,
            compression: None,
        }
    }

    fn label(self) -> String {
        let size = if self.size >= 1000 {
            format!("{} KB", self.size / 1000)
        } else {
            format!("{} B", self.size)
        };
        let shape = match self.shape {
            Shape::Fanout(n) => format!("fanout {n}"),
            Shape::Group(n, QueueType::Classic) => format!("group of {n}"),
            Shape::Group(n, queue_type) => format!("group of {n}, {queue_type}"),
        };
        let mode = if self.confirmed {
            "confirmed"
        } else {
            "fire-and-forget"
        };
        format!("{size}, {shape}, {mode}")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Naive,
    Tuned,
    Tidings,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Naive => "raw lapin naive",
            Self::Tuned => "raw lapin tuned",
            Self::Tidings => "tidings",
        }
    }
}

/// The figures of one row.
#[derive(Clone, Copy)]
struct Figures {
    events_per_second: f64,
    publishes_per_second: f64,
    /// Peak RSS of the largest consumer process.
    rss_kb: u64,
    /// CPU clock ticks of all consumer processes, from ready to done.
    cpu_ticks: u64,
}

/// One row: consumer processes, a publisher here, every event checked.
async fn row(urls: &Urls, events: u64, scenario: Scenario, kind: Kind) -> Result<Figures, Error> {
    let url = urls.publisher();
    let Scenario {
        size,
        shape,
        confirmed,
        compression,
    } = scenario;
    // The same bytes for tidings and raw lapin: JSON-ish in the
    // compression rows; otherwise `x`s in an event, and a raw body of
    // `size` bytes starting with the sequence number.
    let (data, raw_data) = match compression {
        Some(_) => {
            let data = json_ish_data(size);
            let raw = data.clone().into_bytes();
            (data, raw)
        }
        None => (payload_data(size), vec![7u8; size.max(8) - 8]),
    };
    let exchange = exchange_name(match kind {
        Kind::Naive => "naive",
        Kind::Tuned => "tuned",
        Kind::Tidings => "tidings",
    });
    let shape_arg = match shape {
        Shape::Fanout(_) => "broadcast",
        Shape::Group(_, QueueType::Quorum) => "group-quorum",
        Shape::Group(..) => "group",
    };
    let consumer_mode = match kind {
        Kind::Naive => "naive",
        Kind::Tuned => "tuned",
        Kind::Tidings => "tidings",
    };
    let queue_for = |i: usize| match (kind, shape) {
        (Kind::Tidings, _) => "bench".to_owned(),
        (_, Shape::Fanout(_)) => format!("{exchange}.q{i}"),
        (_, Shape::Group(..)) => format!("{exchange}.group"),
    };
    let props = AmqpProps::from_url(url)?
        .with_exchange(exchange.clone(), ExchangeKind::Fanout)
        .with_prefetch(PREFETCH)
        .with_compression(
            compression.unwrap_or_default(),
            tidings::DEFAULT_COMPRESSION_THRESHOLD,
        )?;

    // The raw publisher declares the (auto-delete) exchange before the
    // consumers bind to it; a listening bus declares it itself.
    let raw_publisher = match kind {
        Kind::Tidings => None,
        Kind::Naive | Kind::Tuned => {
            let conn =
                lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
            let channel = conn.create_channel().await?;
            raw_exchange(&channel, &exchange).await?;
            Some((conn, channel))
        }
    };
    let mut consumers = Vec::new();
    for i in 0..shape.consumers() {
        let queue = queue_for(i);
        consumers.push(
            ConsumerProcess::start(
                urls.consumer(i),
                &[consumer_mode, &exchange, &queue, shape_arg],
            )
            .await?,
        );
    }
    let bus_publisher = match kind {
        Kind::Tidings => Some(
            signed(Bus::with_props(props.clone()).publish_only())?
                .connect()
                .await?,
        ),
        Kind::Naive | Kind::Tuned => None,
    };

    let started = now_nanos();
    let published = match (&raw_publisher, &bus_publisher) {
        (Some((_, channel)), _) => {
            publish::raw(
                channel,
                &exchange,
                events,
                &raw_data,
                confirmed,
                kind == Kind::Tuned,
            )
            .await?
        }
        (None, Some(bus)) => publish::bus(bus, events, &data, confirmed).await?,
        (None, None) => unreachable!("every row has a publisher"),
    };
    let reports = wait_for_all(&mut consumers, shape.deliveries(events)).await?;
    let last = reports.iter().map(|r| r.last_ns).max().unwrap_or(started);
    check(&reports, shape, events, kind)?;
    for consumer in consumers {
        consumer.finish().await?;
    }
    if let Some((conn, channel)) = raw_publisher {
        // A quorum queue cannot be auto-delete: delete it here.
        if let Shape::Group(_, QueueType::Quorum) = shape {
            channel
                .queue_delete(
                    format!("{exchange}.group").as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await?;
        }
        conn.close(200, "bench done".into()).await?;
    }
    if let Some(bus) = bus_publisher {
        bus.close().await?;
        let stats = bus.stats();
        if stats.confirmed != events || stats.published != events {
            return Err(format!(
                "tidings, {}: published {} and confirmed {} of {events} events",
                scenario.label(),
                stats.published,
                stats.confirmed
            )
            .into());
        }
        let groups: &[&str] = match shape {
            Shape::Group(..) => &["bench"],
            Shape::Fanout(_) => &[],
        };
        remove_topology(&props, groups).await?;
    }
    let seconds = |end: u64| end.saturating_sub(started).max(1) as f64 / 1e9;
    Ok(Figures {
        events_per_second: events as f64 / seconds(last),
        publishes_per_second: events as f64 / seconds(published),
        rss_kb: reports.iter().map(|r| r.hwm_kb).max().unwrap_or(0),
        cpu_ticks: reports.iter().map(|r| r.ticks).sum(),
    })
}

/// Polls the consumers until they handled `deliveries` in all; fails when
/// no new delivery arrives for `STALL`.
pub(crate) async fn wait_for_all(
    consumers: &mut [ConsumerProcess],
    deliveries: u64,
) -> Result<Vec<Report>, Error> {
    let mut seen = 0;
    let mut progress = Instant::now();
    loop {
        let mut reports = Vec::with_capacity(consumers.len());
        for consumer in consumers.iter_mut() {
            reports.push(consumer.report().await?);
        }
        let count: u64 = reports.iter().map(|r| r.count).sum();
        if count >= deliveries {
            // Let anything extra (a duplicate) show up before checking.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut last = Vec::with_capacity(consumers.len());
            for consumer in consumers.iter_mut() {
                last.push(consumer.report().await?);
            }
            return Ok(last);
        }
        if count > seen {
            seen = count;
            progress = Instant::now();
        } else if progress.elapsed() > STALL {
            return Err(
                format!("deliveries stalled at {count} of {deliveries} for {STALL:?}").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event exactly once: per consumer in a fanout, across the group
/// in a group (count and sum of sequence numbers).
fn check(reports: &[Report], shape: Shape, events: u64, kind: Kind) -> Result<(), Error> {
    let seq_sum = events * events.saturating_sub(1) / 2;
    let fail =
        |what: String| -> Result<(), Error> { Err(format!("{}: {what}", kind.label()).into()) };
    match shape {
        Shape::Fanout(_) => {
            for (i, report) in reports.iter().enumerate() {
                if report.count != events || report.seq_sum != seq_sum {
                    return fail(format!(
                        "consumer {i} handled {} of {events} events (sequence sum {}, \
                         expected {seq_sum})",
                        report.count, report.seq_sum
                    ));
                }
            }
        }
        Shape::Group(..) => {
            let count: u64 = reports.iter().map(|r| r.count).sum();
            let sum: u64 = reports.iter().map(|r| r.seq_sum).sum();
            if count != events || sum != seq_sum {
                return fail(format!(
                    "the group handled {count} of {events} events (sequence sum {sum}, \
                     expected {seq_sum})"
                ));
            }
        }
    }
    Ok(())
}

/// Deletes what a bus run declared on the broker: the exchange, its
/// dead-letter exchange and queue, its schema stream, and the named group
/// queues (with their retry queues).
async fn remove_topology(props: &AmqpProps, groups: &[&str]) -> Result<(), Error> {
    let conn = tidings::Connection::connect(props).await?;
    let exchange = props.exchange();
    for group in groups {
        conn.delete_queue(&format!("{exchange}.{group}")).await?;
    }
    conn.delete_queue(&format!("{exchange}.dead-letter"))
        .await?;
    conn.delete_exchange(&format!("{exchange}.dead-letter"))
        .await?;
    conn.delete_queue(&tidings::schema_stream(exchange)).await?;
    conn.delete_exchange(exchange).await?;
    conn.close().await?;
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

/// Declares `queue` (auto-delete; `durable` as a tidings group queue is),
/// binds it to `exchange`, sets the prefetch and consumes it.
async fn raw_consumer(
    channel: &lapin::Channel,
    exchange: &str,
    queue: &str,
    durable: bool,
    quorum: bool,
    tag: &str,
) -> Result<lapin::Consumer, Error> {
    // A quorum queue is durable and never auto-delete.
    let queue_options = QueueDeclareOptions {
        auto_delete: !quorum,
        durable: durable || quorum,
        ..QueueDeclareOptions::default()
    };
    let mut arguments = FieldTable::default();
    if quorum {
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(queue.into(), queue_options, arguments)
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
