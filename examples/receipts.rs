//! Broadcast receipts across processes: which instances handled an event.
//!
//! ```text
//! cargo run --example receipts -- listen <amqp-url>        # prints `ready <instance-id>`, handles until stdin closes
//! cargo run --example receipts -- publish <amqp-url> <ms>  # prints `handled_by <instance-id>` per receipt
//! ```
//!
//! `tests/processes/receipts.rs` runs three listeners, stops one, and checks
//! that a publish's receipts name exactly the two that are up.

#[path = "logging/mod.rs"]
mod logging;

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{Bus, Event, Subscribers};

/// Every instance drops its cache.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "receipts.flush_cache")]
struct FlushCache {
    region: String,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = tokio::runtime::Runtime::new()
        .map_err(Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                match (args.first().map(String::as_str), args.get(1), args.get(2)) {
                    (Some("listen"), Some(url), None) => listen(url).await,
                    (Some("publish"), Some(url), Some(ms)) => publish(url, ms.parse()?).await,
                    _ => Err("usage: receipts listen <amqp-url> | publish <amqp-url> <ms>".into()),
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Handles flushes until stdin closes.
async fn listen(url: &str) -> Result<(), Error> {
    let subscribers = Subscribers::new();
    let _guard = subscribers.subscribe(|f: &FlushCache| println!("flushed {}", f.region));
    let bus = Bus::builder(url)?
        .subscribers(subscribers)
        .connect()
        .await?;
    println!("ready {}", bus.instance_id());
    tokio::task::spawn_blocking(|| for _ in std::io::stdin().lock().lines() {}).await?;
    bus.close().await?;
    Ok(())
}

/// Publishes one flush and prints who handled it within `ms`.
async fn publish(url: &str, ms: u64) -> Result<(), Error> {
    let bus = Bus::builder(url)?.publish_only().connect().await?;
    let event = FlushCache {
        region: "eu".into(),
    };
    let receipts = bus
        .publish_with_receipts(&event, Duration::from_millis(ms))
        .await?;
    for instance in receipts.handled_by() {
        println!("handled_by {instance}");
    }
    bus.close().await?;
    Ok(())
}
