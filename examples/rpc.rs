//! Request and reply: a pricing server answers typed calls; a missing
//! server and a failing handler are told at once; a broadcast collects
//! receipts from the buses that handled it.
//!
//! Run: `cargo run --example rpc` (reads `AMQP_URL`, default
//! `amqp://127.0.0.1:5672/%2f`).

#[path = "logging/mod.rs"]
mod logging;
#[path = "topology/mod.rs"]
mod topology;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, CallOptions, ErrorKind, Event, ExchangeKind, Request, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pricing.get_price")]
struct GetPrice {
    sku: String,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pricing.price")]
struct Price {
    cents: u64,
}

impl Request for GetPrice {
    type Reply = Price;
    const IDEMPOTENT: bool = true;
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pricing.reload")]
struct Reload;

#[derive(Debug)]
struct UnknownSku(String);

impl std::fmt::Display for UnknownSku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown sku {:?}", self.0)
    }
}

/// Runs the example; a failure prints as `error: ...` and exits 1.
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

/// Runs the calls, then deletes what they declared, also when they failed.
async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let props =
        AmqpProps::from_url(&url)?.with_exchange("tidings.example.rpc", ExchangeKind::Topic);
    let called = calls(&props).await;
    topology::delete(&props, &[]).await?;
    called
}

async fn calls(props: &AmqpProps) -> Result<(), Box<dyn std::error::Error>> {
    // The server: prices by sku; an unknown one is an error the caller sees.
    let reloads = Subscribers::new();
    let _reloaded = reloads.subscribe(|_: &Reload| println!("server: prices reloaded"));
    let server = Bus::with_props(props.clone())
        .subscribers(reloads)
        .connect()
        .await?;
    server
        .serve(|ask: Arc<GetPrice>| async move {
            match ask.sku.as_str() {
                "tea" => Ok(Price { cents: 450 }),
                other => Err(UnknownSku(other.to_owned())),
            }
        })
        .await?;

    let caller = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await?;
    let price = caller.call(&GetPrice { sku: "tea".into() }).await?;
    println!("caller: tea costs {} cents", price.cents);

    let err = caller
        .call(&GetPrice { sku: "gold".into() })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote);
    println!("caller: {err} ({})", err.remote_type().unwrap_or("?"));

    let nobody = CallOptions::new().server("pricing-eu");
    let err = caller
        .call_with(&GetPrice { sku: "tea".into() }, &nobody)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoResponder);
    println!("caller: {err}");

    let receipts = caller
        .publish_with_receipts(&Reload, Duration::from_millis(500))
        .await?;
    println!("caller: reload handled by {:?}", receipts.handled_by());

    caller.close().await?;
    server.close().await?;
    Ok(())
}
