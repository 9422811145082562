//! Consumers in their own OS processes, so their memory and CPU can be
//! measured: the bench re-executes itself with `--consumer MODE EXCHANGE
//! QUEUE SHAPE [KEY=VALUE..]` (reading `AMQP_URL` like the parent); the
//! keys are a growth row's `Load` (`types`, `subscribers`, `listeners`,
//! `concurrency`, `sleep_us`) and a soak's `soak` (events) and `spin_us`.
//!
//! Protocol, one line each way: the child prints `ready` once it consumes;
//! on `report` it prints `report COUNT SEQ_SUM LAST_NS RSS_KB HWM_KB TICKS
//! CPU_NS` (events handled, the sum of their sequence numbers, the
//! wall-clock time of the last handler call in Unix nanoseconds, resident
//! set now and at its peak, CPU clock ticks since `ready`, and the CPU
//! nanoseconds of its threads since `ready`); on `exit` (or when stdin
//! closes) it settles what it holds, closes its connection and exits. A
//! soak consumer also prints `rss COUNT RSS_KB HWM_KB` as it goes.

use std::collections::HashMap;
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

use crate::procfs::{cpu_nanos_since, cpu_ticks, status_kb, thread_cpu_nanos};
use crate::{ACK_EVERY, Error, Load, PREFETCH, Payload, now_nanos, raw_consumer};

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
    /// CPU nanoseconds of the process's threads since `ready`.
    pub(crate) cpu_ns: u64,
}

impl Report {
    fn parse(line: &str) -> Result<Self, Error> {
        let numbers: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        match numbers[..] {
            [count, seq_sum, last_ns, rss_kb, hwm_kb, ticks, cpu_ns] => Ok(Self {
                count,
                seq_sum,
                last_ns,
                rss_kb,
                hwm_kb,
                ticks,
                cpu_ns,
            }),
            _ => Err(format!("bad report from a consumer: {line:?}").into()),
        }
    }
}

/// The parent's handle on a consumer process.
pub(crate) struct ConsumerProcess {
    /// Its arguments, to say which consumer an error is about.
    what: String,
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
            what: args.join(" "),
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
        let what = &self.what;
        let silent =
            |_| format!("consumer process ({what}) still running {ANSWER_TIMEOUT:?} after `exit`");
        while let Some(line) = tokio::time::timeout(ANSWER_TIMEOUT, self.lines.next_line())
            .await
            .map_err(silent)??
        {
            match line.strip_prefix("rss ") {
                Some(sample) => print_rss_sample(sample),
                None => return Err(format!("unexpected line from a consumer: {line:?}").into()),
            }
        }
        let status = tokio::time::timeout(ANSWER_TIMEOUT, self.child.wait())
            .await
            .map_err(silent)??;
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

    fn report(&self, ticks_at_ready: u64, cpu_at_ready: &HashMap<u64, u64>) -> String {
        let count = self.count.load(Ordering::Acquire);
        format!(
            "report {count} {} {} {} {} {} {}",
            self.seq_sum.load(Ordering::Relaxed),
            self.last_ns.load(Ordering::Relaxed),
            status_kb("VmRSS"),
            status_kb("VmHWM"),
            cpu_ticks().saturating_sub(ticks_at_ready),
            cpu_nanos_since(cpu_at_ready),
        )
    }
}

/// A soak consumer's settings (`soak=N spin_us=N`).
#[derive(Clone, Copy)]
pub(crate) struct Soak {
    /// Events of the soak, for the sample interval.
    events: u64,
    /// How long the handler spins per event.
    spin: Duration,
}

/// The value of `KEY=VALUE` among `args`, if there.
fn key_value(args: &[String], key: &str) -> Result<Option<u64>, Error> {
    args.iter()
        .filter_map(|arg| arg.strip_prefix(key)?.strip_prefix('='))
        .map(|value| {
            value
                .parse()
                .map_err(|e| Error::from(format!("{key}={value}: {e}")))
        })
        .next()
        .transpose()
}

/// The child side: `ARGS` are `MODE EXCHANGE QUEUE SHAPE [KEY=VALUE..]`,
/// MODE one of `naive`, `tuned` (raw lapin), `tidings`, `soak`; SHAPE
/// `broadcast` or `group` (QUEUE is the raw queue or the tidings group).
pub(crate) async fn run_child(args: &[String]) -> Result<(), Error> {
    let [mode, exchange, queue, shape, rest @ ..] = args else {
        return Err(format!("--consumer wants MODE EXCHANGE QUEUE SHAPE, got {args:?}").into());
    };
    let url = crate::broker_url();
    let tally = Arc::new(Tally::default());
    let load = Load::parse(rest)?;
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
                    load,
                    tally.clone(),
                )
                .await?,
            ))
        }
        "tidings" | "soak" => {
            let soak = match key_value(rest, "soak")? {
                Some(events) => Some(Soak {
                    events,
                    spin: Duration::from_micros(
                        key_value(rest, "spin_us")?
                            .unwrap_or(crate::soak::SOAK_HANDLER.as_micros() as u64),
                    ),
                }),
                None => None,
            };
            let listen = match shape.as_str() {
                "group" => Listen::group(queue.clone()).queue_type(QueueType::Classic),
                "group-quorum" => Listen::group(queue.clone()).queue_type(QueueType::Quorum),
                _ => Listen::broadcast(),
            };
            Running::Bus(bus_consumer(&url, exchange, listen, load, tally.clone(), soak).await?)
        }
        other => return Err(format!("unknown consumer mode {other:?}").into()),
    };
    let ticks_at_ready = cpu_ticks();
    let cpu_at_ready = thread_cpu_nanos();
    println!("ready");
    let mut commands = stdin_lines();
    while let Some(command) = commands.recv().await {
        match command.trim() {
            "report" => println!("{}", tally.report(ticks_at_ready, &cpu_at_ready)),
            "exit" => break,
            other => return Err(format!("unknown command {other:?}").into()),
        }
    }
    let kind = match running {
        Running::Raw(_) => "raw lapin",
        Running::Bus(_) => "tidings",
    };
    let stopping = async {
        match running {
            Running::Raw(raw) => raw.stop().await,
            Running::Bus(bus) => Ok(bus.close().await?),
        }
    };
    tokio::pin!(stopping);
    // A stop that hangs is a finding, not only a timeout in the parent: say
    // which consumer it is (on stderr, which the parent shows).
    match tokio::time::timeout(SLOW_STOP, &mut stopping).await {
        Ok(stopped) => stopped,
        Err(_) => {
            eprintln!("{kind} consumer still stopping {SLOW_STOP:?} after `exit`");
            stopping.await
        }
    }
}

/// How long a consumer may take to stop before it says so on stderr.
const SLOW_STOP: Duration = Duration::from_secs(20);

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
/// With `load.listeners` above 1: that many queues (`QUEUE.0`, ..), each on
/// a channel of its own, in this one process. With `load.concurrency`
/// above 1 or a `load.sleep_us`: a task per delivery, at most
/// `concurrency` at once (a semaphore), each acking its own delivery after
/// its handler.
struct RawConsumer {
    connection: lapin::Connection,
    stop: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), Error>>>,
}

impl RawConsumer {
    #[allow(clippy::too_many_arguments)]
    async fn start(
        url: &str,
        exchange: &str,
        queue: &str,
        durable: bool,
        quorum: bool,
        tuned: bool,
        load: Load,
        tally: Arc<Tally>,
    ) -> Result<Self, Error> {
        let connection =
            lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for i in 0..load.listeners {
            let channel = connection.create_channel().await?;
            let queue = match load.listeners {
                1 => queue.to_owned(),
                _ => format!("{queue}.{i}"),
            };
            let consumer =
                raw_consumer(&channel, exchange, &queue, durable, quorum, "bench").await?;
            let (stopping, tally) = (stop.clone(), tally.clone());
            tasks.push(if load.concurrency > 1 || load.sleep_us > 0 {
                tokio::spawn(consume_spawning(consumer, stopping, load, tally))
            } else {
                tokio::spawn(consume(consumer, stopping, tuned, tally))
            });
        }
        Ok(Self {
            connection,
            stop,
            tasks,
        })
    }

    async fn stop(self) -> Result<(), Error> {
        self.stop.notify_waiters();
        for task in self.tasks {
            task.await??;
        }
        match self.connection.close(200, "bench done".into()).await {
            // lapin tears the connection down with this error when a channel
            // was still closing (as tidings' own close allows): it is closed.
            Err(e) if matches!(e.kind(), lapin::ErrorKind::InvalidChannelState(..)) => Ok(()),
            closed => Ok(closed?),
        }
    }
}

/// The sequence number at the start of a raw body.
fn raw_seq(data: &[u8]) -> u64 {
    data.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(u64::MAX, u64::from_le_bytes)
}

/// Handles the deliveries of one raw consumer in turn until `stop`.
async fn consume(
    mut consumer: lapin::Consumer,
    stop: Arc<tokio::sync::Notify>,
    tuned: bool,
    tally: Arc<Tally>,
) -> Result<(), Error> {
    let mut unacked: Option<Acker> = None;
    let mut since_ack = 0u64;
    let stopping = stop.notified();
    tokio::pin!(stopping);
    loop {
        let next = tokio::select! {
            biased;
            next = consumer.next() => next,
            () = &mut stopping => break,
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        tally.record(raw_seq(&delivery.data));
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
}

/// Handles each delivery of one raw consumer in a task of its own, at most
/// `load.concurrency` at once; each awaits `load.sleep_us`, counts, and
/// acks its delivery. Waits for those running when stopped.
async fn consume_spawning(
    mut consumer: lapin::Consumer,
    stop: Arc<tokio::sync::Notify>,
    load: Load,
    tally: Arc<Tally>,
) -> Result<(), Error> {
    let permits = load.concurrency.max(1);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(permits as usize));
    let sleep = Duration::from_micros(u64::from(load.sleep_us));
    let stopping = stop.notified();
    tokio::pin!(stopping);
    let mut running = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            biased;
            next = consumer.next() => next,
            () = &mut stopping => break,
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        let tally = tally.clone();
        running.spawn(async move {
            if !sleep.is_zero() {
                tokio::time::sleep(sleep).await;
            }
            tally.record(raw_seq(&delivery.data));
            let acked = delivery.ack(BasicAckOptions::default()).await;
            drop(permit);
            acked
        });
        // Reap what finished, so the set stays as small as the semaphore.
        while let Some(done) = running.try_join_next() {
            done??;
        }
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    Ok(())
}

/// A listening tidings bus whose handler counts; a soak consumer's handler
/// also spins for its `spin` and prints an `rss` sample every
/// `sample_interval` events. A growth row's `load`: `subscribers` handlers
/// of `Payload`, `types - 1` other event types subscribed to (never
/// published), `listeners` broadcast listens (dedup off, so each handles
/// every event), `concurrency`, and async handlers that sleep `sleep_us`.
async fn bus_consumer(
    url: &str,
    exchange: &str,
    listen: Listen,
    load: Load,
    tally: Arc<Tally>,
    soak: Option<Soak>,
) -> Result<Bus, Error> {
    let props = AmqpProps::from_url(url)?
        .with_exchange(exchange, ExchangeKind::Fanout)
        .with_prefetch(PREFETCH);
    let subscribers = Subscribers::new();
    let sleep = Duration::from_micros(u64::from(load.sleep_us));
    for _ in 0..load.subscribers {
        let tally = tally.clone();
        if sleep.is_zero() {
            subscribers
                .subscribe(move |event: &Payload| handle(event.seq, &tally, soak))
                .forget();
        } else {
            subscribers
                .subscribe_async(move |event: Arc<Payload>, _| {
                    let tally = tally.clone();
                    async move {
                        tokio::time::sleep(sleep).await;
                        tally.record(event.seq);
                    }
                })
                .forget();
        }
    }
    crate::growth::subscribe_other_types(&subscribers, load.types.saturating_sub(1));
    let mut builder = Bus::with_props(props)
        .subscribers(subscribers)
        .concurrency(load.concurrency as usize)
        .listen(listen.clone());
    if load.listeners > 1 {
        for _ in 1..load.listeners {
            builder = builder.listen(listen.clone());
        }
        builder = builder.dedup_window(0);
    }
    Ok(crate::signed(builder)?.connect().await?)
}

/// A sync handler's work: count; in a soak also spin first and sample the
/// memory now and then.
fn handle(seq: u64, tally: &Tally, soak: Option<Soak>) {
    if let Some(soak) = soak
        && !soak.spin.is_zero()
    {
        let until = std::time::Instant::now() + soak.spin;
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    let count = tally.record(seq);
    if let Some(soak) = soak
        && count.is_multiple_of(crate::soak::sample_interval(soak.events))
    {
        println!("rss {count} {} {}", status_kb("VmRSS"), status_kb("VmHWM"));
    }
}
