//! Topic routing: a process binds only the routing keys it wants, so the
//! broker filters (the driver package's `direct`/`topic` sectors).
//!
//! Run: `cargo run --example topic` (reads `AMQP_URL`, default
//! `amqp://127.0.0.1:5672/%2f`).

#[path = "logging/mod.rs"]
mod logging;
#[path = "topology/mod.rs"]
mod topology;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Context, Event, ExchangeKind, Listen, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "orders.placed", routing_key = "orders.eu.placed")]
struct OrderPlaced {
    id: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "users.joined", routing_key = "users.joined")]
struct UserJoined {
    name: String,
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
    let props = AmqpProps::from_env()?.with_exchange("tidings.example.topic", ExchangeKind::Topic);
    let shown = demo(&props).await;
    topology::delete(&props, &[]).await?;
    shown
}

async fn demo(props: &AmqpProps) -> Result<(), Box<dyn std::error::Error>> {
    let subscribers = Subscribers::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    subscribers
        .subscribe_all(move |event: &dyn Event, ctx: &Context| {
            let _ = tx.send(format!("{} on {}", event.tag(), ctx.routing_key()));
        })
        .forget();
    // Only orders, from any region: users.* never reaches this process.
    let orders = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .listen(Listen::broadcast().pattern("orders.*.placed"))
        .connect()
        .await?;
    let shop = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await?;
    for id in 0..3 {
        shop.publish(&OrderPlaced { id }).await?;
        shop.publish(&UserJoined {
            name: format!("user{id}"),
        })
        .await?;
    }
    shop.close().await?;
    for _ in 0..3 {
        let line = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await?
            .ok_or("closed")?;
        println!("{line}");
    }
    orders.close().await?;
    println!(
        "received from the broker: {} (3 of the 6 published)",
        orders.stats().delivered
    );
    Ok(())
}
