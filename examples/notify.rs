//! Typed events crossing processes.
//!
//! Run: `cargo run --example notify` (reads `AMQP_URL`, default
//! `amqp://127.0.0.1:5672/%2f`). With no arguments it starts a listener in a
//! child process and publishes to it, so one command shows events crossing
//! processes. Or use two terminals:
//!
//! ```text
//! cargo run --example notify -- listen          # prints every event it receives
//! cargo run --example notify -- publish 10      # publishes 10 events of three types
//! ```
//!
//! `listen --count N` exits after N events; `--exchange NAME` picks another
//! exchange (default `tidings.notify`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Context, Event, ExchangeKind, Subscribers};
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

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exchange = flag(&args, "--exchange")
        .unwrap_or("tidings.notify")
        .to_owned();
    let props = AmqpProps::from_env()?.with_exchange(exchange.clone(), ExchangeKind::Fanout);
    match args.first().map(String::as_str) {
        Some("listen") => {
            let count = flag(&args, "--count").map(str::parse).transpose()?;
            listen(props, count).await
        }
        Some("publish") => {
            let count = args
                .get(1)
                .filter(|a| !a.starts_with("--"))
                .map_or(Ok(10), |n| n.parse())?;
            publish(props, count).await
        }
        None => demo(&exchange).await,
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
    std::io::stdout().flush()?;
    match count {
        Some(_) => done.notified().await,
        None => tokio::signal::ctrl_c().await?,
    }
    bus.close().await?;
    println!("received {} events", received.load(Ordering::SeqCst));
    Ok(())
}

/// One command, two processes: a listener child, and this process publishing.
async fn demo(exchange: &str) -> Result<(), Error> {
    const COUNT: u64 = 9;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "listen",
            "--count",
            &COUNT.to_string(),
            "--exchange",
            exchange,
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no child stdout")?).lines();
    let ready = lines.next().transpose()?.unwrap_or_default();
    if !ready.starts_with("ready") {
        return Err(format!("the listener did not start: {ready:?}").into());
    }
    println!("[listener pid {}] {ready}", child.id());
    let props = AmqpProps::from_env()?.with_exchange(exchange, ExchangeKind::Fanout);
    publish(props, COUNT).await?;
    for line in lines {
        println!("[listener pid {}] {}", child.id(), line?);
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the listener failed: {status}").into());
    }
    Ok(())
}
