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
//! `--only naive|tuned|meta|tidings` runs only that row of each scenario (no
//! ratios, no compression, pika or latency rows), and
//! `TIDINGS_BENCH_CONSUMER_WRAPPER` (e.g. `valgrind --tool=callgrind`)
//! starts each consumer process under that command: together they profile
//! one row's publisher and consumer (`docs/perf/FINDINGS.md`);
//! `TIDINGS_BENCH_RAW_PROPERTIES=tidings` (or `properties`, `headers`)
//! makes the raw rows carry a tidings event's properties and headers;
//! `--with-meta` adds to each scenario a fourth row, "raw lapin tuned +
//! meta", the tuned row carrying them (so one run shows both comparisons).
//!
//! `--reps N` (default 1) runs each scenario's rows N times, interleaved
//! (naive, tuned, tidings, then again), and prints per row the medians of
//! events/s, publish/s, RSS and both CPU columns, the median of the
//! per-repetition ratios, and each repetition's events/s
//! (`26.7k/27.0k/26.7k`); the pika row also runs N times and its median
//! makes the tidings / pika ratio. `--growth` runs only the "how cost
//! grows" table instead (`growth.rs`: body size, subscribed event types,
//! subscribers per type, listeners per process, handler concurrency; each
//! against raw lapin where raw lapin can do the same work; one run per
//! row, `--events` per row, fewer for bodies over 10 KB). `--soak-spin-us
//! N` (default 50) sets how long the soak handler spins per event: `--soak
//! 10000000 --soak-spin-us 0` is a 10M-event soak that takes minutes, its
//! RSS printed every 1,000,000 events.
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
//! fails otherwise. The publisher's CPU is this process's (the sum over
//! its threads of `/proc/self/task/*/schedstat`, in nanoseconds) from the
//! first publish until the consumers have every event: for fire-and-forget
//! tidings that includes the bus writing out its buffer, for every row a
//! poll of the consumers every 20 ms. Both CPU columns are seconds per 100k
//! events (deliveries for the consumers); the consumers' at the clock
//! tick's resolution (10 ms, `/proc/self/stat`).
//!
//! Latency rows (`--latency` runs only them, `--reps N` times each, and
//! prints medians): publish -> handler at 2,000/s and at 10,000/s offered
//! (tokio's timer paces at 1 ms, so 10,000/s goes out in bursts of about
//! ten), raw lapin naive against tidings, and the ratio of their p99.

mod cluster;
mod consumer;
mod growth;
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
        let spin =
            flag_value(&args, "--soak-spin-us")?.map_or(soak::SOAK_HANDLER, Duration::from_micros);
        return soak::run(&url, events, spin).await;
    }
    let events = flag_value(&args, "--events")?.unwrap_or(20_000);
    if events == 0 {
        return Err("--events must be at least 1".into());
    }
    if args.iter().any(|a| a == "--cluster") {
        return cluster::run(events).await;
    }
    let reps = usize::try_from(flag_value(&args, "--reps")?.unwrap_or(1))?;
    if reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    let rows = RowSet {
        reps,
        with_meta: args.iter().any(|a| a == "--with-meta"),
    };
    let urls = Urls(vec![url.clone()]);
    if args.iter().any(|a| a == "--growth") {
        return growth::run(&urls, events).await;
    }
    if args.iter().any(|a| a == "--latency") {
        return latency_table(&url, events, reps).await;
    }
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
                row_columns(
                    scenario,
                    kind,
                    &[figures],
                    events,
                    procfs::ticks_per_second()
                )
            );
            continue;
        }
        if only_groups && !matches!(scenario.shape, Shape::Group(..)) {
            continue;
        }
        let ours = scenario_rows(&urls, events, scenario, rows).await?;
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
    let mut pika_rates = Vec::with_capacity(reps);
    let mut pika_failed = None;
    for _ in 0..reps {
        match pika::pika(&url, events) {
            Ok(rate) => pika_rates.push(rate),
            Err(why) => {
                pika_failed = Some(why);
                break;
            }
        }
    }
    match pika_failed {
        None => {
            let rate = median(&pika_rates);
            println!(
                "pika naive, 100 B, fanout 1, fire-and-forget: {} events/s{} (Python pika \
                 BlockingConnection, the raw naive row's work, consumer in-process)",
                thousands(rate),
                each_rep(&pika_rates),
            );
            if let Some(ours) = tidings_plain {
                println!(
                    "tidings / pika (100 B, fanout 1, fire-and-forget): {:.2}x",
                    ours / rate
                );
            }
        }
        Some(why) => println!("pika row skipped: {why}"),
    }
    println!();
    latency_table(&url, events, reps).await
}

/// The latency rows at every offered rate, on at most 6,000 events.
async fn latency_table(url: &str, events: u64, reps: usize) -> Result<(), Error> {
    for rate in latency::RATES {
        latency_rows(url, events.min(6_000), rate, reps).await?;
    }
    Ok(())
}

/// Latency publish -> handler at `rate` events/s offered: raw lapin
/// naive, then tidings, `reps` times; prints each row's median p50, p99
/// and max over the repetitions with each repetition's p99, then the
/// median of the per-repetition p99 ratios.
async fn latency_rows(url: &str, events: u64, rate: u64, reps: usize) -> Result<(), Error> {
    println!(
        "latency publish -> handler at {} events/s offered, {events} events, 100 B, \
         fire-and-forget{}:",
        thousands(rate as f64),
        if reps > 1 { ", medians" } else { "" }
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "row", "p50 ms", "p99 ms", "max ms"
    );
    // Per row, per repetition: p50, p99, max in ms.
    let mut figures: [Vec<[f64; 3]>; 2] = [Vec::with_capacity(reps), Vec::with_capacity(reps)];
    for _ in 0..reps {
        let raw = latency::raw_latency(url, events, rate).await?;
        let ours = latency::bus_latency(url, events, rate).await?;
        for (row, mut samples) in [raw, ours].into_iter().enumerate() {
            samples.sort_unstable();
            let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64 / 1e6;
            figures[row].push([at(0.5), at(0.99), at(1.0)]);
        }
    }
    for (name, row) in ["raw lapin naive", "tidings"].iter().zip(&figures) {
        let column = |i: usize| median(&row.iter().map(|f| f[i]).collect::<Vec<_>>());
        let each = if reps > 1 {
            let p99s: Vec<String> = row.iter().map(|f| format!("{:.2}", f[1])).collect();
            format!("  p99 {}", p99s.join("/"))
        } else {
            String::new()
        };
        println!(
            "{name:<28} {:>10.2} {:>10.2} {:>10.2}{each}",
            column(0),
            column(1),
            column(2)
        );
    }
    let ratios: Vec<f64> = figures[0]
        .iter()
        .zip(&figures[1])
        .map(|(raw, ours)| ours[1] / raw[1])
        .collect();
    println!(
        "tidings / raw lapin p99 at {} events/s: {:.2}x",
        thousands(rate as f64),
        median(&ratios)
    );
    println!();
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
         publish returned;\nRSS: peak (VmHWM) of the largest consumer process; cons CPU: \
         seconds of all consumer processes per 100k deliveries;\npub CPU: seconds of the \
         publishing process per 100k events, first publish -> every event handled; with \
         --reps: medians, each repetition's events/s last"
    );
    println!();
    println!(
        "{:<36} {:<23} {:>9} {:>10} {:>7} {:>8} {:>7} {:>9} {:>9}",
        "scenario",
        "row",
        "events/s",
        "publish/s",
        "RSS MB",
        "cons CPU",
        "pub CPU",
        "vs naive",
        "vs tuned"
    );
}

/// Which rows a scenario runs, and how often.
#[derive(Clone, Copy)]
pub(crate) struct RowSet {
    /// Repetitions of the scenario's rows, interleaved.
    pub(crate) reps: usize,
    /// Adds the row "raw lapin tuned + meta".
    pub(crate) with_meta: bool,
}

impl Default for RowSet {
    fn default() -> Self {
        Self {
            reps: 1,
            with_meta: false,
        }
    }
}

/// Runs and prints the rows of a scenario (raw naive, raw tuned, with
/// `with_meta` raw tuned + meta, tidings), `reps` times interleaved;
/// returns tidings' median events per second.
pub(crate) async fn scenario_rows(
    urls: &Urls,
    events: u64,
    scenario: Scenario,
    rows: RowSet,
) -> Result<f64, Error> {
    let ticks_per_second = procfs::ticks_per_second();
    let mut kinds = vec![Kind::Naive, Kind::Tuned];
    if rows.with_meta {
        kinds.push(Kind::Meta);
    }
    kinds.push(Kind::Tidings);
    let mut runs: Vec<Vec<Figures>> = vec![Vec::with_capacity(rows.reps); kinds.len()];
    for _ in 0..rows.reps {
        for (kind, figures) in kinds.iter().zip(runs.iter_mut()) {
            figures.push(row(urls, events, scenario, *kind).await?);
        }
    }
    let (naive, tuned) = (&runs[0], &runs[1]);
    for (kind, figures) in kinds.iter().zip(&runs) {
        let ratios = |base: &[Figures]| -> Vec<f64> {
            figures
                .iter()
                .zip(base)
                .map(|(f, b)| f.events_per_second / b.events_per_second)
                .collect()
        };
        let each: Vec<f64> = figures.iter().map(|f| f.events_per_second).collect();
        println!(
            "{} {:>8.2}x {:>8.2}x{}",
            row_columns(scenario, *kind, figures, events, ticks_per_second),
            median(&ratios(naive)),
            median(&ratios(tuned)),
            each_rep(&each),
        );
    }
    let ours: Vec<f64> = runs[kinds.len() - 1]
        .iter()
        .map(|f| f.events_per_second)
        .collect();
    Ok(median(&ours))
}

/// The median of `values` (the mean of the middle two for an even count; 0
/// for none).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Each repetition's value, compactly (`  26.7k/27.0k/26.7k`); nothing for
/// a single one.
pub(crate) fn each_rep(values: &[f64]) -> String {
    if values.len() < 2 {
        return String::new();
    }
    let each: Vec<String> = values
        .iter()
        .map(|v| {
            if *v >= 1000.0 {
                format!("{:.1}k", v / 1000.0)
            } else {
                format!("{v:.0}")
            }
        })
        .collect();
    format!("  {}", each.join("/"))
}

/// The columns of a row up to the publisher's CPU time (the ratios
/// follow): medians of `figures`, one per repetition.
fn row_columns(
    scenario: Scenario,
    kind: Kind,
    figures: &[Figures],
    events: u64,
    ticks_per_second: f64,
) -> String {
    let of = |field: fn(&Figures) -> f64| -> f64 {
        median(&figures.iter().map(field).collect::<Vec<_>>())
    };
    format!(
        "{:<36} {:<23} {:>9} {:>10} {:>7.1} {:>8.2} {:>7.2}",
        scenario.label(),
        kind.label(),
        thousands(of(|f| f.events_per_second)),
        thousands(of(|f| f.publishes_per_second)),
        of(|f| f.rss_kb as f64) / 1024.0,
        of(|f| f.cpu_ticks as f64) / ticks_per_second / scenario.shape.deliveries(events) as f64
            * 100_000.0,
        of(|f| f.publisher_ns as f64) / 1e9 / events as f64 * 100_000.0,
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
        Some("meta") => Ok(Some(Kind::Meta)),
        Some("tidings") => Ok(Some(Kind::Tidings)),
        Some(other) => {
            Err(format!("--only wants naive, tuned, meta or tidings, got {other:?}").into())
        }
        None => Err("--only wants naive, tuned, meta or tidings".into()),
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
    /// What the consumer process does beyond one handler (`--growth`).
    pub(crate) load: Load,
}

impl Scenario {
    pub(crate) const fn new(size: usize, shape: Shape, confirmed: bool) -> Self {
        Self {
            size,
            shape,
            confirmed,
            compression: None,
            load: Load::PLAIN,
        }
    }

    pub(crate) fn label(self) -> String {
        let size = if self.size >= 1_000_000 {
            format!("{} MB", self.size / 1_000_000)
        } else if self.size >= 1000 {
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

/// What a consumer process does beyond the plain rows' one handler on one
/// listener (the growth rows vary one of these; see `growth.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Load {
    /// Event types subscribed to in the consuming bus (one is published).
    pub(crate) types: u32,
    /// Handlers of the published type in the consuming bus.
    pub(crate) subscribers: u32,
    /// Queues bound to the exchange, consumed in one process (tidings: one
    /// bus with as many broadcast `Listen`s, its dedup window off).
    pub(crate) listeners: u32,
    /// Deliveries handled at once (tidings `concurrency`; raw lapin: a
    /// task per delivery under a semaphore, each acked after its handler).
    pub(crate) concurrency: u32,
    /// How long each handler awaits (`tokio::time::sleep`), in µs.
    pub(crate) sleep_us: u32,
}

impl Load {
    /// One handler of one type on one listener, not sleeping.
    pub(crate) const PLAIN: Self = Self {
        types: 1,
        subscribers: 1,
        listeners: 1,
        concurrency: 1,
        sleep_us: 0,
    };

    /// Handler calls per event published, in one consumer process.
    fn copies(self, kind: Kind) -> u64 {
        match kind {
            Kind::Tidings => u64::from(self.subscribers) * u64::from(self.listeners),
            _ => u64::from(self.listeners),
        }
    }

    /// The consumer process's `KEY=VALUE` arguments (none for the plain
    /// load).
    pub(crate) fn args(self) -> Vec<String> {
        let plain = Self::PLAIN;
        [
            ("types", self.types, plain.types),
            ("subscribers", self.subscribers, plain.subscribers),
            ("listeners", self.listeners, plain.listeners),
            ("concurrency", self.concurrency, plain.concurrency),
            ("sleep_us", self.sleep_us, plain.sleep_us),
        ]
        .into_iter()
        .filter(|(_, value, default)| value != default)
        .map(|(key, value, _)| format!("{key}={value}"))
        .collect()
    }

    /// Reads the `KEY=VALUE` arguments `args` made (others are left to the
    /// caller).
    pub(crate) fn parse(args: &[String]) -> Result<Self, Error> {
        let mut load = Self::PLAIN;
        for arg in args {
            let Some((key, value)) = arg.split_once('=') else {
                return Err(format!("consumer argument {arg:?} is not KEY=VALUE").into());
            };
            let slot = match key {
                "types" => &mut load.types,
                "subscribers" => &mut load.subscribers,
                "listeners" => &mut load.listeners,
                "concurrency" => &mut load.concurrency,
                "sleep_us" => &mut load.sleep_us,
                _ => continue,
            };
            *slot = value.parse().map_err(|e| format!("{arg}: {e}"))?;
        }
        Ok(load)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Naive,
    Tuned,
    /// Tuned, carrying a tidings event's properties and headers.
    Meta,
    Tidings,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Naive => "raw lapin naive",
            Self::Tuned => "raw lapin tuned",
            Self::Meta => "raw lapin tuned + meta",
            Self::Tidings => "tidings",
        }
    }

    /// The consumer process's mode.
    fn mode(self) -> &'static str {
        match self {
            Self::Naive => "naive",
            Self::Tuned | Self::Meta => "tuned",
            Self::Tidings => "tidings",
        }
    }
}

/// The figures of one row.
#[derive(Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) events_per_second: f64,
    pub(crate) publishes_per_second: f64,
    /// Peak RSS of the largest consumer process.
    pub(crate) rss_kb: u64,
    /// CPU clock ticks of all consumer processes, from ready to done.
    pub(crate) cpu_ticks: u64,
    /// CPU nanoseconds of all consumer processes' threads, from ready to
    /// done (finer than `cpu_ticks`, but blind to a thread that ended).
    pub(crate) consumer_ns: u64,
    /// CPU nanoseconds of this (the publishing) process's threads, from
    /// the first publish until the consumers had every event.
    pub(crate) publisher_ns: u64,
}

/// One row: consumer processes, a publisher here, every event checked.
/// What the row declared on the broker is deleted afterwards, also when it
/// failed.
pub(crate) async fn row(
    urls: &Urls,
    events: u64,
    scenario: Scenario,
    kind: Kind,
) -> Result<Figures, Error> {
    let exchange = exchange_name(match kind {
        Kind::Naive => "naive",
        Kind::Tuned => "tuned",
        Kind::Meta => "meta",
        Kind::Tidings => "tidings",
    });
    let props = AmqpProps::from_url(urls.publisher())?
        .with_exchange(exchange.clone(), ExchangeKind::Fanout)
        .with_prefetch(PREFETCH)
        .with_compression(
            scenario.compression.unwrap_or_default(),
            tidings::DEFAULT_COMPRESSION_THRESHOLD,
        )?;
    let result = row_on(urls, events, scenario, kind, &props).await;
    let cleaned = match (kind, scenario.shape) {
        (Kind::Tidings, Shape::Group(..)) => remove_topology(&props, &["bench"]).await,
        (Kind::Tidings, Shape::Fanout(_)) => remove_topology(&props, &[]).await,
        // A raw row's queues and exchange are auto-delete, but a quorum
        // queue cannot be, and a failed row may have bound no queue yet.
        (_, shape) => remove_raw_topology(urls.publisher(), props.exchange(), shape).await,
    };
    let figures = result?;
    cleaned?;
    Ok(figures)
}

/// The row on the exchange of `props`.
async fn row_on(
    urls: &Urls,
    events: u64,
    scenario: Scenario,
    kind: Kind,
    props: &AmqpProps,
) -> Result<Figures, Error> {
    let url = urls.publisher();
    let exchange = props.exchange().to_owned();
    let Scenario {
        size,
        shape,
        confirmed,
        compression,
        load,
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
    let shape_arg = match shape {
        Shape::Fanout(_) => "broadcast",
        Shape::Group(_, QueueType::Quorum) => "group-quorum",
        Shape::Group(..) => "group",
    };
    let consumer_mode = kind.mode();
    let load_args = load.args();
    let queue_for = |i: usize| match (kind, shape) {
        (Kind::Tidings, _) => "bench".to_owned(),
        (_, Shape::Fanout(_)) => format!("{exchange}.q{i}"),
        (_, Shape::Group(..)) => format!("{exchange}.group"),
    };

    // The raw publisher declares the (auto-delete) exchange before the
    // consumers bind to it; a listening bus declares it itself.
    let raw_publisher = match kind {
        Kind::Tidings => None,
        Kind::Naive | Kind::Tuned | Kind::Meta => {
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
        let mut args = vec![consumer_mode, &exchange, &queue, shape_arg];
        args.extend(load_args.iter().map(String::as_str));
        consumers.push(ConsumerProcess::start(urls.consumer(i), &args).await?);
    }
    let bus_publisher = match kind {
        Kind::Tidings => Some(
            signed(Bus::with_props(props.clone()).publish_only())?
                .connect()
                .await?,
        ),
        Kind::Naive | Kind::Tuned | Kind::Meta => None,
    };

    let cpu_at_start = procfs::thread_cpu_nanos();
    let started = now_nanos();
    let published = match (&raw_publisher, &bus_publisher) {
        (Some((_, channel)), _) => {
            publish::raw(
                channel,
                &exchange,
                events,
                &raw_data,
                confirmed,
                matches!(kind, Kind::Tuned | Kind::Meta),
                match kind {
                    Kind::Meta => publish::Like::TIDINGS,
                    _ => publish::Like::from_env(),
                },
            )
            .await?
        }
        (None, Some(bus)) => publish::bus(bus, events, &data, confirmed).await?,
        (None, None) => unreachable!("every row has a publisher"),
    };
    let copies = load.copies(kind);
    let reports = wait_for_all(&mut consumers, shape.deliveries(events) * copies).await?;
    let publisher_ns = procfs::cpu_nanos_since(&cpu_at_start);
    let last = reports.iter().map(|r| r.last_ns).max().unwrap_or(started);
    check(&reports, shape, events, kind, copies)?;
    for consumer in consumers {
        consumer.finish().await?;
    }
    if let Some((conn, _)) = raw_publisher {
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
    }
    let seconds = |end: u64| end.saturating_sub(started).max(1) as f64 / 1e9;
    Ok(Figures {
        events_per_second: events as f64 / seconds(last),
        publishes_per_second: events as f64 / seconds(published),
        rss_kb: reports.iter().map(|r| r.hwm_kb).max().unwrap_or(0),
        cpu_ticks: reports.iter().map(|r| r.ticks).sum(),
        consumer_ns: reports.iter().map(|r| r.cpu_ns).sum(),
        publisher_ns,
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
/// in a group (count and sum of sequence numbers); `copies` times where one
/// consumer process calls several handlers for each event (the growth
/// rows' subscribers and listeners: there the totals are checked, not
/// each handler's own).
fn check(
    reports: &[Report],
    shape: Shape,
    events: u64,
    kind: Kind,
    copies: u64,
) -> Result<(), Error> {
    let seq_sum = events * events.saturating_sub(1) / 2 * copies;
    let events = events * copies;
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

/// Deletes what a raw row declared: its group queue, if any, and its
/// exchange (gone already, unless a queue is still bound to it).
async fn remove_raw_topology(url: &str, exchange: &str, shape: Shape) -> Result<(), Error> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    if let Shape::Group(..) = shape {
        channel
            .queue_delete(
                format!("{exchange}.group").as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await?;
    }
    channel
        .exchange_delete(
            exchange.into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await?;
    conn.close(200, "bench done".into()).await?;
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
