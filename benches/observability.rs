//! What the `metrics` and `opentelemetry` features cost per event: events
//! published by one bus and handled by another on a `memory://` hub (no
//! broker, so the bus's own work is what is measured), with nothing
//! installed, with a Prometheus recorder, with an OpenTelemetry tracing
//! layer taking tidings' per-message spans, and with both, in one run.
//!
//! ```text
//! cargo bench --bench observability                                  # features compiled out
//! cargo bench --bench observability --features metrics,opentelemetry # every row
//! ```
//!
//! Prints microseconds per event (publish to handled), the median of 5
//! rounds of 20,000 events, and each row's cost over the first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tidings::{Bus, Event, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "observability.bench")]
struct Measured {
    seq: u64,
    data: String,
}

const EVENTS: u64 = 20_000;
const ROUNDS: usize = 5;

/// Microseconds per event over one round: publish `EVENTS`, wait until the
/// other bus handled them all.
async fn round(hub: &str) -> f64 {
    let subscribers = Subscribers::new();
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let _guard = subscribers.subscribe(move |_: &Measured| {
        h.fetch_add(1, Ordering::Relaxed);
    });
    let receiver = Bus::builder(hub)
        .unwrap()
        .subscribers(subscribers)
        .connect()
        .await
        .unwrap();
    let sender = Bus::builder(hub)
        .unwrap()
        .subscribers(Subscribers::new())
        .publish_only()
        .connect()
        .await
        .unwrap();
    let data = "x".repeat(100);
    let start = Instant::now();
    for seq in 0..EVENTS {
        let event = Measured {
            seq,
            data: data.clone(),
        };
        sender.publish(&event).await.unwrap();
    }
    while handled.load(Ordering::Relaxed) < EVENTS {
        tokio::task::yield_now().await;
    }
    let micros = start.elapsed().as_secs_f64() * 1e6 / EVENTS as f64;
    sender.close().await.unwrap();
    receiver.close().await.unwrap();
    micros
}

/// A span exporter that counts what it is given.
#[cfg(feature = "opentelemetry")]
#[derive(Debug, Clone, Default)]
struct Counting(Arc<AtomicU64>);

#[cfg(feature = "opentelemetry")]
impl opentelemetry_sdk::trace::SpanExporter for Counting {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        std::future::ready(Ok(()))
    }
}

/// The median of `ROUNDS` rounds.
async fn median(hub: &str) -> f64 {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        rounds.push(round(hub).await);
    }
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn print(label: &str, micros: f64, baseline: f64) {
    println!(
        "{label:<58} {micros:>7.2} µs/event  {:>+6.2} µs over the first row",
        micros - baseline
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let hub = "memory://observability-bench";
    // Warm up: the registry, the schema trace, the allocator.
    round(hub).await;
    let baseline = median(hub).await;
    let features = if cfg!(any(feature = "metrics", feature = "opentelemetry")) {
        "features compiled in, nothing installed"
    } else {
        "features compiled out (the default build)"
    };
    print(features, baseline, baseline);

    #[cfg(feature = "opentelemetry")]
    {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::prelude::*;
        // Every span exported as it ends, to an exporter that only counts
        // (what a collector costs is not tidings'); tidings' spans are at
        // DEBUG.
        let exporter = Counting::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")))
            .with(
                tracing_subscriber::filter::Targets::new()
                    .with_target("tidings", tracing::Level::DEBUG),
            );
        let _default = tracing::subscriber::set_default(subscriber);
        let traced = median(hub).await;
        print(
            "opentelemetry: a span per publish and per handling",
            traced,
            baseline,
        );
        // A publish and a handle span per event, every round.
        let exported = exporter.0.load(Ordering::Relaxed);
        assert!(
            exported >= 2 * EVENTS * ROUNDS as u64,
            "{exported} spans exported"
        );
    }
    #[cfg(feature = "metrics")]
    {
        // Installed for the rest of the process: rows after this have it.
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap();
        let metered = median(hub).await;
        print("metrics: a Prometheus recorder", metered, baseline);
        assert!(prometheus.render().contains("tidings_handled_total"));
    }
}
