//! Group: one member of the group handles each event (nameko SERVICE_POOL,
//! competing consumers). Events published while no member runs wait in the
//! group's durable queue.
//!
//! Run: `cargo run --example group` (reads `AMQP_URL`, default
//! `amqp://127.0.0.1:5672/%2f`).
//!
//! On a cluster, give every node and make the group's queue a quorum queue
//! (replicated on them):
//! `AMQP_URL='amqp://guest:guest@rabbit-1:5672,rabbit-2:5672,rabbit-3:5672/%2f?queue_type=quorum'`.
//! A local one to try: `AMQP_URL="$(scripts/rabbitmq-cluster start target/c)?queue_type=quorum"
//! cargo run --example group`, then `scripts/rabbitmq-cluster stop target/c`.

#[path = "logging/mod.rs"]
mod logging;
#[path = "topology/mod.rs"]
mod topology;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Event, ExchangeKind, Listen, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "invoices.due")]
struct InvoiceDue {
    number: u32,
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
    let props = AmqpProps::from_env()?.with_exchange("tidings.example.group", ExchangeKind::Fanout);
    let shown = demo(&props).await;
    topology::delete(&props, &["tidings.example.group.invoicing"]).await?;
    shown
}

async fn demo(props: &AmqpProps) -> Result<(), Box<dyn std::error::Error>> {
    let billing = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await?;
    let handled = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let subscribers = Subscribers::new();
        let mine = Arc::new(AtomicUsize::new(0));
        let (m, h) = (mine.clone(), handled.clone());
        subscribers
            .subscribe(move |_: &InvoiceDue| {
                m.fetch_add(1, Ordering::Relaxed);
                h.fetch_add(1, Ordering::Relaxed);
            })
            .forget();
        let worker = Bus::with_props(props.clone())
            .subscribers(subscribers)
            .listen(Listen::group("invoicing"))
            .connect()
            .await?;
        workers.push(worker);
        counts.push(mine);
    }
    for number in 0..300 {
        billing.publish(&InvoiceDue { number }).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while handled.load(Ordering::Relaxed) < 300 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shares: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!("300 invoices handled once each, shared by 3 workers: {shares:?}");
    billing.close().await?;
    for worker in workers {
        worker.close().await?;
    }
    Ok(())
}
