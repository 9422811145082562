//! One trace across two processes: the publisher's span is the parent of
//! the handler's span in the receiving process, through the W3C
//! `traceparent` header (the `opentelemetry` feature).
//!
//! ```text
//! cargo run --features opentelemetry --example traced -- listen <amqp-url> <count>
//! cargo run --features opentelemetry --example traced -- publish <amqp-url> <count>
//! ```
//!
//! Each process exports its spans to memory (a real service would export
//! them to an OpenTelemetry collector with `opentelemetry-otlp`) and prints
//! them as lines `span <name> <trace id> <span id> <parent span id>`,
//! which `tests/observability/trace_across.rs` reads. The listener prints
//! `ready` once it consumes, and `handled <id> <trace id>` per event.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tidings::{Bus, Context, Event, Subscribers};
use tokio::sync::Notify;
use tracing::{info, info_span};
use tracing_subscriber::prelude::*;

/// Something to trace.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "traced.order_placed")]
struct OrderPlaced {
    id: u64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(url), Some(count)) = (
        args.first(),
        args.get(1),
        args.get(2).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: traced listen|publish <amqp-url> <count>");
        return ExitCode::from(2);
    };
    // Spans go to memory; tidings' per-message spans are at DEBUG.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("tidings", tracing::Level::DEBUG)
        .with_target("traced", tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("traced")))
        .with(filter)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match mode.as_str() {
            "listen" => listen(url, count).await,
            "publish" => publish(url, count).await,
            other => Err(format!("unknown mode {other:?}; use listen or publish").into()),
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let _ = provider.force_flush();
    for span in exporter.get_finished_spans().unwrap_or_default() {
        let parent = if span.parent_span_id == SpanId::INVALID {
            "-".to_owned()
        } else {
            span.parent_span_id.to_string()
        };
        println!(
            "span {} {} {} {parent}",
            span.name,
            span.span_context.trace_id(),
            span.span_context.span_id()
        );
    }
    ExitCode::SUCCESS
}

/// Handles `count` events, printing each with the trace it is in.
async fn listen(url: &str, count: u64) -> Result<(), Error> {
    let subscribers = Subscribers::new();
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (h, d) = (handled.clone(), done.clone());
    let _guard = subscribers.subscribe_with(move |order: &OrderPlaced, ctx: &Context| {
        // Inside tidings' `handle` span: this log and any span the handler
        // opens belong to the publisher's trace.
        info!(id = order.id, attempt = ctx.attempt(), "handling an order");
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let trace_id = {
            use opentelemetry::trace::TraceContextExt;
            tracing::Span::current()
                .context()
                .span()
                .span_context()
                .trace_id()
        };
        println!("handled {} {trace_id}", order.id);
        if h.fetch_add(1, Ordering::SeqCst) + 1 == count {
            d.notify_one();
        }
    });
    let bus = Bus::builder(url)?
        .subscribers(subscribers)
        .connect()
        .await?;
    println!("ready");
    done.notified().await;
    bus.close().await?;
    Ok(())
}

/// Publishes `count` events inside a span of the application's own.
async fn publish(url: &str, count: u64) -> Result<(), Error> {
    let bus = Bus::builder(url)?.publish_only().connect().await?;
    for id in 0..count {
        let checkout = info_span!("checkout", id);
        let order = OrderPlaced { id };
        tracing::Instrument::instrument(bus.publish_confirmed(&order), checkout).await?;
    }
    bus.close().await?;
    Ok(())
}
