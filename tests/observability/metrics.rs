//! The metrics a bus records through the `metrics` facade, read back from
//! an in-memory recorder after 100 events of which 10 fail for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use serde::{Deserialize, Serialize};
use tidings::{Bus, Event, ExchangeKind, HandlerError, Subscribers};

use super::common;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "observability.metered")]
struct Metered {
    id: u64,
}

const TAG: &str = "observability.metered";

/// The process-wide recorder, installed once.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        snapshotter
    })
}

/// The metrics recorded, as `(kind, name, labels) -> value`.
struct Recorded(Vec<(CompositeKey, DebugValue)>);

impl Recorded {
    fn take() -> Self {
        Self(
            snapshotter()
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| (key, value))
                .collect(),
        )
    }

    fn find(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0.iter().find_map(|(key, value)| {
            let matches = key.kind() == kind
                && key.key().name() == name
                && labels.iter().all(|(l, v)| {
                    key.key()
                        .labels()
                        .any(|label| label.key() == *l && label.value() == *v)
                })
                && key.key().labels().count() == labels.len();
            matches.then_some(value)
        })
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(MetricKind::Counter, name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!(
                "counter {name} {labels:?}: {other:?}; recorded: {:#?}",
                self.names()
            ),
        }
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.find(MetricKind::Histogram, name, labels) {
            Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
            other => panic!(
                "histogram {name} {labels:?}: {other:?}; recorded: {:#?}",
                self.names()
            ),
        }
    }

    fn gauge(&self, name: &str) -> f64 {
        match self.find(MetricKind::Gauge, name, &[]) {
            Some(DebugValue::Gauge(value)) => value.into_inner(),
            other => panic!("gauge {name}: {other:?}"),
        }
    }

    fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(key, _)| format!("{:?}", key.key()))
            .collect()
    }
}

#[tokio::test]
async fn a_hundred_events_with_failures_are_counted_timed_and_labelled() {
    snapshotter();
    let props = common::props(ExchangeKind::Topic);
    common::require_broker(&props);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = Subscribers::new();
    let attempts = Arc::new(AtomicU64::new(0));
    let a = attempts.clone();
    // Every tenth event fails on both of its attempts.
    let _guard = subscribers.subscribe(move |m: &Metered| {
        a.fetch_add(1, Ordering::SeqCst);
        if m.id.is_multiple_of(10) {
            return Err(HandlerError::from(format!("event {} is cursed", m.id)));
        }
        Ok(())
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .max_attempts(2)
        .retry_delay(Duration::from_millis(20))
        .connect()
        .await
        .unwrap();
    for id in 0..100 {
        bus.publish(&Metered { id }).await.unwrap();
    }
    let settled = common::eventually(Duration::from_secs(30), || {
        let stats = bus.stats();
        stats.handled == 90 && stats.dead_lettered == 10
    })
    .await;
    assert!(settled, "{:#?}", bus.stats());
    let stats = bus.stats();
    bus.close().await.unwrap();

    let recorded = Recorded::take();
    let tag = [("tag", TAG)];
    let failed = [("tag", TAG), ("reason", "handler_failed")];
    assert_eq!(recorded.counter("tidings_published_total", &tag), 100);
    assert_eq!(recorded.counter("tidings_handled_total", &tag), 90);
    assert_eq!(recorded.counter("tidings_handler_failures_total", &tag), 20);
    assert_eq!(recorded.counter("tidings_retried_total", &failed), 10);
    assert_eq!(recorded.counter("tidings_dead_lettered_total", &failed), 10);
    assert!(recorded.counter("tidings_confirmed_total", &[]) >= 100);
    assert!(recorded.counter("tidings_delivered_total", &[]) >= 110);
    // Every dispatch timed: 100 first attempts and 10 retries.
    let handler = recorded.samples("tidings_handler_seconds", &tag);
    assert_eq!(handler.len(), 110);
    let end_to_end = recorded.samples("tidings_end_to_end_seconds", &tag);
    assert_eq!(end_to_end.len(), 110);
    assert!(
        end_to_end.iter().all(|s| (0.0..30.0).contains(s)),
        "end-to-end latencies in seconds: {end_to_end:?}"
    );
    assert!(
        recorded
            .samples("tidings_publish_confirm_seconds", &[])
            .len()
            >= 100
    );
    // Everything settled: nothing buffered, nothing unacked.
    assert_eq!(recorded.gauge("tidings_buffered_events"), 0.0);
    assert_eq!(recorded.gauge("tidings_unacked_deliveries"), 0.0);
    assert_eq!(attempts.load(Ordering::SeqCst), 110);

    // The same counts in the stats, by tag, and as JSON.
    let counts = stats.by_tag[TAG];
    assert_eq!(
        (
            counts.published,
            counts.handled,
            counts.handler_failures,
            counts.retried,
            counts.dead_lettered
        ),
        (100, 90, 20, 10, 10)
    );
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["by_tag"][TAG]["handled"], 90);
    assert_eq!(json["rejected"]["decode"], 0);
    assert_eq!(json["published"], 100);
}
