//! A bus riding out broker outages: it publishes a tick every 100 ms to
//! itself and prints what happens to the connection and what arrives.
//!
//! Run: `cargo run --example outage` (reads `AMQP_URL`, default
//! `amqp://127.0.0.1:5672/%2f`), then restart or stop the broker and watch
//! it reconnect; ticks published meanwhile wait and arrive after it is back.
//! Press Enter (or close stdin) to close the bus and exit; with `-- drop` it
//! exits without closing, as a process that is killed mid-outage would.

#[path = "logging/mod.rs"]
mod logging;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Event, ExchangeKind, Subscribers};
use tokio::io::AsyncBufReadExt;
use tokio_stream::StreamExt;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "example.outage.tick")]
struct Tick {
    seq: u64,
}

/// Runs the example; a failure prints as `error: ...` (what went wrong, not a
/// Debug dump) and exits 1.
fn main() -> std::process::ExitCode {
    logging::init();
    let result: Result<(), Box<dyn std::error::Error>> = tokio::runtime::Runtime::new()
        .map_err(Into::into)
        .and_then(|runtime| runtime.block_on(run()).map_err(Into::into));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> tidings::Result<()> {
    let props = AmqpProps::from_env()?;
    let props = if std::env::var("AMQP_URL").is_ok_and(|u| u.contains("exchange=")) {
        props
    } else {
        props.with_exchange("tidings.example.outage", ExchangeKind::Fanout)
    };
    let subscribers = Subscribers::new();
    let _ticks = subscribers.subscribe(|tick: &Tick| println!("received tick {}", tick.seq));
    let bus = Bus::with_props(props)
        .subscribers(subscribers)
        .close_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let mut events = bus.connection_events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            println!("connection: {event}");
        }
    });

    let publisher = bus.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        for seq in 0.. {
            ticker.tick().await;
            if publisher.publish(&Tick { seq }).await.is_err() {
                break;
            }
        }
    });

    // Enter, or end of input, ends the example.
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let _ = stdin.next_line().await;
    if std::env::args().any(|a| a == "drop") {
        println!("exiting without closing; {:?}", bus.stats());
        return Ok(());
    }
    match bus.close().await {
        Ok(()) => println!("closed: every tick confirmed"),
        Err(e) => println!("closed: {e}"),
    }
    let stats = bus.stats();
    println!(
        "published {}, confirmed {}, failed {}, reconnects {}",
        stats.published, stats.confirmed, stats.publish_failed, stats.reconnects
    );
    Ok(())
}
