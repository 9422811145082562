//! Broadcast: every process gets every event (nameko BROADCAST).
//!
//! Run: `cargo run --example broadcast` (reads `AMQP_URL`, default
//! `amqp://127.0.0.1:5672/%2f`). Three "processes" (buses with their own
//! connections) listen; each receives all three announcements.

#[path = "logging/mod.rs"]
mod logging;
#[path = "topology/mod.rs"]
mod topology;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Event, ExchangeKind, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "config.changed")]
struct ConfigChanged {
    key: String,
    value: String,
}

/// Runs the example; a failure prints as `error: ...` (what went wrong, not a
/// Debug dump) and exits 1.
fn main() -> std::process::ExitCode {
    logging::init();
    let result: Result<(), Box<dyn std::error::Error>> = tokio::runtime::Runtime::new()
        .map_err(Into::into)
        .and_then(|runtime| runtime.block_on(run()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the demo, then deletes what its buses declared, also when it failed.
async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let props =
        AmqpProps::from_env()?.with_exchange("tidings.example.broadcast", ExchangeKind::Fanout);
    let shown = demo(&props).await;
    topology::delete(&props, &[]).await?;
    shown
}

async fn demo(props: &AmqpProps) -> Result<(), Box<dyn std::error::Error>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut listeners = Vec::new();
    for name in ["api", "worker", "cron"] {
        let subscribers = Subscribers::new();
        let tx = tx.clone();
        subscribers
            .subscribe(move |e: &ConfigChanged| {
                let _ = tx.send(format!("{name} sees {} = {}", e.key, e.value));
            })
            .forget();
        // The default listener is Listen::broadcast(): a queue of its own.
        listeners.push(
            Bus::with_props(props.clone())
                .subscribers(subscribers)
                .connect()
                .await?,
        );
    }
    let admin = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await?;
    for (key, value) in [
        ("log_level", "debug"),
        ("feature_x", "on"),
        ("timeout", "5s"),
    ] {
        admin
            .publish(&ConfigChanged {
                key: key.into(),
                value: value.into(),
            })
            .await?;
    }
    for _ in 0..9 {
        let line = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await?
            .ok_or("closed")?;
        println!("{line}");
    }
    admin.close().await?;
    for bus in listeners {
        bus.close().await?;
    }
    println!("3 events x 3 listeners = 9 deliveries");
    Ok(())
}
