//! Typed events crossing processes.
//!
//! Run: `cargo run --example notify` (reads `AMQP_URL`, default
//! `amqp://127.0.0.1:5672/%2f`). With no arguments it starts a listener in a
//! child process and publishes to it, so one command shows events crossing
//! processes. When no broker answers there, it starts a private RabbitMQ node
//! under `target/` with `scripts/rabbitmq-node` (or says how to install
//! RabbitMQ) and stops it when it ends; on a broker that was already there it
//! deletes the exchanges and queue it declared. Or use two terminals:
//!
//! ```text
//! cargo run --example notify -- listen          # prints every event it receives
//! cargo run --example notify -- publish 10      # publishes 10 events of three types
//! ```
//!
//! `listen --count N` exits after N events; `--exchange NAME` picks another
//! exchange (default `tidings.notify`).

#[path = "logging/mod.rs"]
mod logging;

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Connection, Context, Event, ExchangeKind, Subscribers};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::Notify;

/// A customer placed an order.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "notify.order_placed")]
struct OrderPlaced {
    seq: u64,
    item: String,
    quantity: u32,
}

/// An order left the warehouse.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "notify.order_shipped")]
struct OrderShipped {
    seq: u64,
    carrier: Option<String>,
}

/// Something happened to a user.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "notify.user")]
enum UserEvent {
    Joined { seq: u64, name: String },
    Left { seq: u64 },
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Prints a failure as `error: ...` (what went wrong and what to do), never
/// as a Debug dump, and exits 1.
fn main() -> ExitCode {
    logging::init();
    let result = tokio::runtime::Runtime::new()
        .map_err(Error::from)
        .and_then(|runtime| runtime.block_on(run()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text = format!("{text}: {cause_text}");
                }
                source = cause.source();
            }
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exchange = flag(&args, "--exchange")
        .unwrap_or("tidings.notify")
        .to_owned();
    let props = AmqpProps::from_env()?.with_exchange(exchange.clone(), ExchangeKind::Fanout);
    match args.first().map(String::as_str) {
        Some("listen") => {
            let count = flag(&args, "--count")
                .map(|n| {
                    n.parse()
                        .map_err(|_| format!("--count {n:?} is not a number"))
                })
                .transpose()?;
            listen(props, count).await
        }
        Some("publish") => {
            let count = match args.get(1).filter(|a| !a.starts_with("--")) {
                Some(n) => n
                    .parse()
                    .map_err(|_| format!("publish {n:?}: not a number"))?,
                None => 10,
            };
            publish(props, count).await
        }
        None => demo(props).await,
        Some(other) => Err(format!("unknown command {other:?}; use listen or publish").into()),
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The event of sequence number `seq`: the three types in turn.
fn event(seq: u64) -> Box<dyn Event> {
    match seq % 3 {
        0 => Box::new(OrderPlaced {
            seq,
            item: format!("item-{seq}"),
            quantity: 1 + (seq % 5) as u32,
        }),
        1 => Box::new(OrderShipped {
            seq,
            carrier: seq.is_multiple_of(2).then(|| "ups".to_owned()),
        }),
        _ if seq.is_multiple_of(2) => Box::new(UserEvent::Joined {
            seq,
            name: format!("user-{seq}"),
        }),
        _ => Box::new(UserEvent::Left { seq }),
    }
}

async fn publish(props: AmqpProps, count: u64) -> Result<(), Error> {
    let bus = Bus::with_props(props)
        .self_delivery(false)
        .connect()
        .await?;
    for seq in 0..count {
        bus.publish(&*event(seq)).await?;
    }
    bus.close().await?; // waits for every confirm
    let stats = bus.stats();
    println!(
        "published {} events, {} confirmed by the broker",
        stats.published, stats.confirmed
    );
    Ok(())
}

async fn listen(props: AmqpProps, count: Option<u64>) -> Result<(), Error> {
    let subscribers = Subscribers::new();
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let tick = {
        let (received, done) = (received.clone(), done.clone());
        move || {
            if Some(received.fetch_add(1, Ordering::SeqCst) + 1) == count {
                done.notify_one();
            }
        }
    };
    let (t1, t2, t3) = (tick.clone(), tick.clone(), tick);
    let _subscriptions = (
        subscribers.subscribe(move |e: &OrderPlaced| {
            println!("event {} OrderPlaced {} x{}", e.seq, e.item, e.quantity);
            t1();
        }),
        subscribers.subscribe_with(move |e: &OrderShipped, ctx: &Context| {
            println!(
                "event {} OrderShipped {:?} from {}",
                e.seq,
                e.carrier,
                ctx.origin().unwrap_or("?")
            );
            t2();
        }),
        subscribers.subscribe(move |e: &UserEvent| {
            match e {
                UserEvent::Joined { seq, name } => println!("event {seq} UserEvent joined {name}"),
                UserEvent::Left { seq } => println!("event {seq} UserEvent left"),
            }
            t3();
        }),
    );
    let exchange = props.exchange().to_owned();
    let bus = Bus::with_props(props)
        .subscribers(subscribers)
        .connect()
        .await?;
    println!("ready: listening on exchange {exchange:?}");
    std::io::Write::flush(&mut std::io::stdout())?;
    match count {
        Some(_) => done.notified().await,
        None => tokio::signal::ctrl_c().await?,
    }
    bus.close().await?;
    println!("received {} events", received.load(Ordering::SeqCst));
    Ok(())
}

/// One command, two processes: a listener child, and this process publishing.
/// With no broker at the configured address it starts a private node under
/// `target/` (`scripts/rabbitmq-node`) and stops it at the end, also after an
/// error or Ctrl-C. What it declared on the broker is deleted at the end.
async fn demo(props: AmqpProps) -> Result<(), Error> {
    let mut node: Option<PrivateNode> = None;
    let mut used: Option<AmqpProps> = None;
    let work = async {
        let (props, url) = if answers(&props).await {
            (props, None)
        } else {
            let n = node.insert(PrivateNode::new()?);
            let url = n.start(&props).await?;
            let private = AmqpProps::from_url(&url)?
                .with_exchange(props.exchange().to_owned(), ExchangeKind::Fanout);
            println!(
                "started a private RabbitMQ node on port {} (data in {})",
                private.port(),
                n.dir.display()
            );
            (private, Some(url))
        };
        used = Some(props.clone());
        two_processes(props, url.as_deref()).await
    };
    let result = tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err("interrupted (Ctrl-C)".into()),
    };
    // The exchanges and queue the two processes declared (the listener's own
    // queue is exclusive and went with its connection). A private node's
    // data goes with the node.
    if let (Some(props), None) = (&used, &node)
        && let Err(e) = delete_declared(props).await
    {
        let exchange = props.exchange();
        eprintln!("warning: could not delete {exchange:?} from the broker: {e}");
    }
    if let Some(node) = node {
        let was_running = node.running;
        let stopped = node.stop().await;
        if was_running && stopped.is_ok() {
            println!("stopped the private RabbitMQ node");
        }
        result.and(stopped)
    } else {
        result
    }
}

/// A listener child process, then publishing from this one.
async fn two_processes(props: AmqpProps, url: Option<&str>) -> Result<(), Error> {
    const COUNT: u64 = 9;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["listen", "--count", &COUNT.to_string()])
        .args(["--exchange", props.exchange()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true); // when this demo fails or is interrupted
    if let Some(url) = url {
        command.env("AMQP_URL", url);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the listener process: {e}"))?;
    let pid = child.id().unwrap_or_default();
    let mut stderr = child.stderr.take().ok_or("no listener stderr")?;
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().ok_or("no listener stdout")?).lines();
    let ready = lines.next_line().await?.unwrap_or_default();
    if !ready.starts_with("ready") {
        let status = child.wait().await?;
        let why = stderr.await.unwrap_or_default();
        return Err(format!("the listener did not start ({status}): {}", why.trim()).into());
    }
    println!("[listener pid {pid}] {ready}");
    publish(props, COUNT).await?;
    while let Some(line) = lines.next_line().await? {
        println!("[listener pid {pid}] {line}");
    }
    let status = child.wait().await?;
    let why = stderr.await.unwrap_or_default();
    if !status.success() {
        return Err(format!("the listener failed ({status}): {}", why.trim()).into());
    }
    eprint!("{why}");
    Ok(())
}

/// Whether anything accepts a TCP connection at the broker's address.
async fn answers(props: &AmqpProps) -> bool {
    let connect = tokio::net::TcpStream::connect((props.host(), props.port()));
    matches!(
        tokio::time::timeout(Duration::from_secs(2), connect).await,
        Ok(Ok(_))
    )
}

/// Deletes the exchange of `props` and what a bus declares next to it: the
/// dead-letter exchange and queue, and the schema stream.
async fn delete_declared(props: &AmqpProps) -> Result<(), Error> {
    let delete = async {
        let conn = Connection::connect(props).await?;
        let dead_letters = format!("{}.dead-letter", props.exchange());
        conn.delete_queue(&dead_letters).await?;
        conn.delete_exchange(&dead_letters).await?;
        conn.delete_queue(&tidings::schema_stream(props.exchange()))
            .await?;
        conn.delete_exchange(props.exchange()).await?;
        conn.close().await
    };
    tokio::time::timeout(Duration::from_secs(10), delete)
        .await
        .map_err(|_| "no answer within 10 s")??;
    Ok(())
}

/// The helper that starts and stops private nodes, shared with `scripts/test`.
const NODE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-node");

/// A private RabbitMQ node of this demo: started by `scripts/rabbitmq-node`,
/// its data under the target directory, stopped by [`PrivateNode::stop`] or,
/// failing that, when dropped.
struct PrivateNode {
    dir: PathBuf,
    running: bool,
}

impl PrivateNode {
    /// A node of its own in `target/<profile>/rmq-notify-<pid>`, next to
    /// this example's binary.
    fn new() -> Result<Self, Error> {
        let exe = std::env::current_exe()?;
        let profile_dir = exe
            .parent()
            .and_then(|examples| examples.parent())
            .ok_or("cannot tell the target directory from this program's path")?;
        Ok(Self {
            dir: profile_dir.join(format!("rmq-notify-{}", std::process::id())),
            running: false,
        })
    }

    /// Starts the node and returns its URL; says how to install RabbitMQ
    /// when it is not installed.
    async fn start(&mut self, wanted: &AmqpProps) -> Result<String, Error> {
        let check = script(&["check"]).output().await;
        let check = check.map_err(|e| format!("cannot run {NODE_SCRIPT}: {e}"))?;
        if !check.status.success() {
            return Err(format!(
                "no RabbitMQ broker answers at {}:{} and none can be started here: {}; \
                 then run this again, or set AMQP_URL to a broker's URL",
                wanted.host(),
                wanted.port(),
                String::from_utf8_lossy(&check.stderr).trim()
            )
            .into());
        }
        println!(
            "no RabbitMQ broker answers at {}:{}; starting a private node under target/ \
             (stopped when this demo ends)",
            wanted.host(),
            wanted.port()
        );
        self.running = true; // from here on, stop() cleans up even a half start
        let dir = self.dir.to_string_lossy().into_owned();
        let out = script(&["start", &dir]).output().await;
        let out = out.map_err(|e| format!("cannot run {NODE_SCRIPT}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "starting a private RabbitMQ node failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Stops the node and waits until it has exited.
    async fn stop(mut self) -> Result<(), Error> {
        if !std::mem::replace(&mut self.running, false) {
            return Ok(());
        }
        let dir = self.dir.to_string_lossy().into_owned();
        let out = script(&["stop", &dir]).process_group(0).output().await;
        let out = out.map_err(|e| format!("cannot run {NODE_SCRIPT}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "stopping the private RabbitMQ node failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(())
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        if self.running {
            let _ = std::process::Command::new(NODE_SCRIPT)
                .arg("stop")
                .arg(&self.dir)
                .status();
        }
    }
}

/// `scripts/rabbitmq-node` with `args`, killed if dropped.
fn script(args: &[&str]) -> Command {
    let mut command = Command::new(NODE_SCRIPT);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    command
}
