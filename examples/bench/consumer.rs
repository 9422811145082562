//! Consumers in their own OS processes, so their memory and CPU can be
//! measured: the bench re-executes itself with `--consumer MODE EXCHANGE
//! QUEUE SHAPE [SOAK_EVENTS]` (reading `AMQP_URL` like the parent).
//!
//! Protocol, one line each way: the child prints `ready` once it consumes;
//! on `report` it prints `report COUNT SEQ_SUM LAST_NS RSS_KB HWM_KB TICKS`
//! (events handled, the sum of their sequence numbers, the wall-clock time
//! of the last handler call in Unix nanoseconds, resident set now and at
//! its peak, CPU clock ticks since `ready`); on `exit` (or when stdin
//! closes) it settles what it holds, closes its connection and exits. A
//! soak consumer also prints `rss COUNT RSS_KB HWM_KB` as it goes.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::Acker;
use lapin::options::BasicAckOptions;
use tidings::{AmqpProps, Bus, ExchangeKind, Listen, QueueType, Subscribers};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_stream::StreamExt;

use crate::procfs::{cpu_ticks, status_kb};
use crate::{ACK_EVERY, Error, PREFETCH, Payload, now_nanos, raw_consumer};

/// How long a child may stay silent when an answer is due.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// What one consumer process reports.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Report {
    pub(crate) count: u64,
    pub(crate) seq_sum: u64,
    pub(crate) last_ns: u64,
    pub(crate) rss_kb: u64,
    pub(crate) hwm_kb: u64,
    pub(crate) ticks: u64,
}

impl Report {
    fn parse(line: &str) -> Result<Self, Error> {
        let numbers: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        match numbers[..] {
            [count, seq_sum, last_ns, rss_kb, hwm_kb, ticks] => Ok(Self {
                count,
                seq_sum,
                last_ns,
                rss_kb,
                hwm_kb,
                ticks,
            }),
            _ => Err(format!("bad report from a consumer: {line:?}").into()),
        }
    }
}

/// The parent's handle on a consumer process.
pub(crate) struct ConsumerProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ConsumerProcess {
    /// Starts `current_exe --consumer ARGS..` and waits for its `ready`.
    /// Under `TIDINGS_BENCH_CONSUMER_WRAPPER` (a command and its arguments,
    /// split at whitespace, such as `valgrind --tool=callgrind`), the
    /// consumer runs as `WRAPPER.. current_exe --consumer ARGS..`: how
    /// `docs/perf/FINDINGS.md` profiles a consumer process alone.
    pub(crate) async fn start(url: &str, args: &[&str]) -> Result<Self, Error> {
        let exe = std::env::current_exe()?;
        let wrapper = std::env::var("TIDINGS_BENCH_CONSUMER_WRAPPER").unwrap_or_default();
        let mut wrapper = wrapper.split_whitespace();
        let mut command = match wrapper.next() {
            Some(program) => {
                let mut command = tokio::process::Command::new(program);
                command.args(wrapper).arg(exe);
                command
            }
            None => tokio::process::Command::new(exe),
        };
        let mut child = command
            .env("AMQP_URL", url)
            .arg("--consumer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin pipe")?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let mut process = Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        process.line("ready").await?;
        Ok(process)
    }

    /// The next line starting with `word`; `rss` lines on the way are
    /// printed (a soak consumer's samples).
    async fn line(&mut self, word: &str) -> Result<String, Error> {
        loop {
            let line = tokio::time::timeout(ANSWER_TIMEOUT, self.lines.next_line())
                .await
                .map_err(|_| format!("consumer process silent for {ANSWER_TIMEOUT:?}"))??
                .ok_or("consumer process exited early (see its stderr above)")?;
            if line.split_whitespace().next() == Some(word) {
                return Ok(line);
            }
            if let Some(sample) = line.strip_prefix("rss ") {
                print_rss_sample(sample);
            } else {
                return Err(format!("unexpected line from a consumer: {line:?}").into());
            }
        }
    }

    pub(crate) async fn report(&mut self) -> Result<Report, Error> {
        self.stdin.write_all(b"report\n").await?;
        Report::parse(&self.line("report").await?)
    }

    /// Asks the child to settle, close and exit; fails if it did not exit
    /// cleanly.
    pub(crate) async fn finish(mut self) -> Result<(), Error> {
        self.stdin.write_all(b"exit\n").await?;
        // Samples a soak consumer printed after the last report.
        while let Some(line) =
            tokio::time::timeout(ANSWER_TIMEOUT, self.lines.next_line()).await??
        {
            match line.strip_prefix("rss ") {
                Some(sample) => print_rss_sample(sample),
                None => return Err(format!("unexpected line from a consumer: {line:?}").into()),
            }
        }
        let status = tokio::time::timeout(ANSWER_TIMEOUT, self.child.wait()).await??;
        if !status.success() {
            return Err(format!("consumer process failed: {status}").into());
        }
        Ok(())
    }
}

fn print_rss_sample(sample: &str) {
    let numbers: Vec<u64> = sample
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    if let [count, rss_kb, hwm_kb] = numbers[..] {
        println!(
            "{:>12} events handled   RSS {:>7.1} MB   peak {:>7.1} MB",
            count,
            rss_kb as f64 / 1024.0,
            hwm_kb as f64 / 1024.0
        );
    }
}

/// What the handler of a consumer process counts.
#[derive(Default)]
struct Tally {
    count: AtomicU64,
    seq_sum: AtomicU64,
    last_ns: AtomicU64,
}

impl Tally {
    /// Records one handled event; returns how many so far.
    fn record(&self, seq: u64) -> u64 {
        self.seq_sum.fetch_add(seq, Ordering::Relaxed);
        self.last_ns.store(now_nanos(), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Release) + 1
    }

    fn report(&self, ticks_at_ready: u64) -> String {
        let count = self.count.load(Ordering::Acquire);
        format!(
            "report {count} {} {} {} {} {}",
            self.seq_sum.load(Ordering::Relaxed),
            self.last_ns.load(Ordering::Relaxed),
            status_kb("VmRSS"),
            status_kb("VmHWM"),
            cpu_ticks().saturating_sub(ticks_at_ready)
        )
    }
}

/// The child side: `ARGS` are `MODE EXCHANGE QUEUE SHAPE [SOAK_EVENTS]`,
/// MODE one of `naive`, `tuned` (raw lapin), `tidings`, `soak`; SHAPE
/// `broadcast` or `group` (QUEUE is the raw queue or the tidings group).
pub(crate) async fn run_child(args: &[String]) -> Result<(), Error> {
    let [mode, exchange, queue, shape, rest @ ..] = args else {
        return Err(format!("--consumer wants MODE EXCHANGE QUEUE SHAPE, got {args:?}").into());
    };
    let url = crate::broker_url();
    let tally = Arc::new(Tally::default());
    let running = match mode.as_str() {
        "naive" | "tuned" => {
            let durable = shape.starts_with("group");
            let quorum = shape == "group-quorum";
            Running::Raw(Box::new(
                RawConsumer::start(
                    &url,
                    exchange,
                    queue,
                    durable,
                    quorum,
                    mode == "tuned",
                    tally.clone(),
                )
                .await?,
            ))
        }
        "tidings" | "soak" => {
            let soak_events = match rest {
                [n] => Some(n.parse::<u64>()?),
                _ => None,
            };
            let listen = match shape.as_str() {
                "group" => Listen::group(queue.clone()).queue_type(QueueType::Classic),
                "group-quorum" => Listen::group(queue.clone()).queue_type(QueueType::Quorum),
                _ => Listen::broadcast(),
            };
            Running::Bus(bus_consumer(&url, exchange, listen, tally.clone(), soak_events).await?)
        }
        other => return Err(format!("unknown consumer mode {other:?}").into()),
    };
    let ticks_at_ready = cpu_ticks();
    println!("ready");
    let mut commands = stdin_lines();
    while let Some(command) = commands.recv().await {
        match command.trim() {
            "report" => println!("{}", tally.report(ticks_at_ready)),
            "exit" => break,
            other => return Err(format!("unknown command {other:?}").into()),
        }
    }
    match running {
        Running::Raw(raw) => raw.stop().await,
        Running::Bus(bus) => Ok(bus.close().await?),
    }
}

enum Running {
    Raw(Box<RawConsumer>),
    Bus(Bus),
}

/// Lines of stdin, read on a thread (the bench's tokio has no `io-std`).
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (send, receive) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// A raw lapin consumer: naive acks every delivery, tuned acks with
/// `multiple` every `ACK_EVERY` deliveries (and what is left at the end).
struct RawConsumer {
    connection: lapin::Connection,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Result<(), lapin::Error>>,
}

impl RawConsumer {
    async fn start(
        url: &str,
        exchange: &str,
        queue: &str,
        durable: bool,
        quorum: bool,
        tuned: bool,
        tally: Arc<Tally>,
    ) -> Result<Self, Error> {
        let connection =
            lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let mut consumer =
            raw_consumer(&channel, exchange, queue, durable, quorum, "bench").await?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut unacked: Option<Acker> = None;
            let mut since_ack = 0u64;
            loop {
                let next = tokio::select! {
                    biased;
                    next = consumer.next() => next,
                    () = stopping.notified() => break,
                };
                let Some(delivery) = next else { break };
                let delivery = delivery?;
                let seq = delivery
                    .data
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(u64::MAX, u64::from_le_bytes);
                tally.record(seq);
                if !tuned {
                    delivery.ack(BasicAckOptions::default()).await?;
                    continue;
                }
                since_ack += 1;
                if since_ack == ACK_EVERY {
                    delivery.ack(BasicAckOptions { multiple: true }).await?;
                    since_ack = 0;
                    unacked = None;
                } else {
                    unacked = Some(delivery.acker);
                }
            }
            if let Some(acker) = unacked {
                acker.ack(BasicAckOptions { multiple: true }).await?;
            }
            Ok(())
        });
        Ok(Self {
            connection,
            stop,
            task,
        })
    }

    async fn stop(self) -> Result<(), Error> {
        self.stop.notify_one();
        self.task.await??;
        match self.connection.close(200, "bench done".into()).await {
            // lapin tears the connection down with this error when a channel
            // was still closing (as tidings' own close allows): it is closed.
            Err(e) if matches!(e.kind(), lapin::ErrorKind::InvalidChannelState(..)) => Ok(()),
            closed => Ok(closed?),
        }
    }
}

/// A listening tidings bus whose handler counts; a soak consumer's handler
/// also spins for `SOAK_HANDLER` and prints an `rss` sample every
/// `soak_interval` events.
async fn bus_consumer(
    url: &str,
    exchange: &str,
    listen: Listen,
    tally: Arc<Tally>,
    soak_events: Option<u64>,
) -> Result<Bus, Error> {
    let props = AmqpProps::from_url(url)?
        .with_exchange(exchange, ExchangeKind::Fanout)
        .with_prefetch(PREFETCH);
    let subscribers = Subscribers::new();
    let interval = soak_events.map(crate::soak::sample_interval);
    subscribers
        .subscribe(move |event: &Payload| {
            if interval.is_some() {
                let until = std::time::Instant::now() + crate::soak::SOAK_HANDLER;
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            let count = tally.record(event.seq);
            if interval.is_some_and(|every| count.is_multiple_of(every)) {
                println!("rss {count} {} {}", status_kb("VmRSS"), status_kb("VmHWM"));
            }
        })
        .forget();
    Ok(crate::signed(
        Bus::with_props(props)
            .subscribers(subscribers)
            .listen(listen),
    )?
    .connect()
    .await?)
}
