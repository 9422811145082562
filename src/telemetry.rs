//! **Metrics** through the [`metrics`](https://docs.rs/metrics) facade, with
//! the `metrics` cargo feature: any exporter the application installs
//! (Prometheus, StatsD, OpenTelemetry) receives them. Without the feature
//! every function here is empty and compiles away.
//!
//! Counters `tidings_<what>_total` for everything [`Stats`](crate::Stats)
//! counts, labelled `tag` (the event type) and `reason` where they have
//! one; histograms in seconds `tidings_publish_confirm_seconds`,
//! `tidings_handler_seconds` and `tidings_end_to_end_seconds`; gauges
//! `tidings_buffered_events` and `tidings_unacked_deliveries`, summed over
//! the buses of the process.

use std::time::Duration;

/// Whether metrics are compiled in: callers skip the work of measuring
/// (reading clocks) when they are not.
pub(crate) const ENABLED: bool = cfg!(feature = "metrics");

/// The histograms, counters and gauges with a description, for exporters
/// that show one (Prometheus' `# HELP`). Described once per process.
#[cfg(feature = "metrics")]
const DESCRIPTIONS: [(&str, &str); 8] = [
    (
        "tidings_publish_confirm_seconds",
        "time from an event being accepted for publishing to the broker's confirm",
    ),
    (
        "tidings_handler_seconds",
        "time the handlers of one event took, by tag",
    ),
    (
        "tidings_end_to_end_seconds",
        "time from publish (the x-tidings-sent-at header) to the handlers finishing, by tag",
    ),
    (
        "tidings_buffered_events",
        "events accepted for publishing and not yet confirmed",
    ),
    (
        "tidings_unacked_deliveries",
        "deliveries received and not yet settled",
    ),
    (
        "tidings_rejected_total",
        "messages that could not be decoded, by reason",
    ),
    ("tidings_confirmed_total", "events the broker confirmed"),
    (
        "tidings_publish_failed_total",
        "events the broker refused or that were given up, by reason",
    ),
];

/// Describes the metrics to the installed recorder, once per process.
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        static DESCRIBED: std::sync::Once = std::sync::Once::new();
        DESCRIBED.call_once(|| {
            for (name, help) in DESCRIPTIONS {
                if name.ends_with("_seconds") {
                    metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
                } else if name.ends_with("_total") {
                    metrics::describe_counter!(name, help);
                } else {
                    metrics::describe_gauge!(name, help);
                }
            }
        });
    }
}

/// Adds one to the counter `name`, labelled with `tag` and `reason` where
/// they are not empty.
#[inline]
pub(crate) fn count(name: &'static str, tag: &str, reason: &str) {
    #[cfg(feature = "metrics")]
    match (tag.is_empty(), reason.is_empty()) {
        (true, true) => metrics::counter!(name).increment(1),
        (false, true) => metrics::counter!(name, "tag" => tag.to_owned()).increment(1),
        (true, false) => metrics::counter!(name, "reason" => reason.to_owned()).increment(1),
        (false, false) => metrics::counter!(
            name,
            "tag" => tag.to_owned(),
            "reason" => reason.to_owned()
        )
        .increment(1),
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (name, tag, reason);
}

/// Records a time in the histogram `name`, labelled with `tag` if any.
#[inline]
pub(crate) fn time(name: &'static str, tag: &str, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    if tag.is_empty() {
        metrics::histogram!(name).record(elapsed.as_secs_f64());
    } else {
        metrics::histogram!(name, "tag" => tag.to_owned()).record(elapsed.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (name, tag, elapsed);
}

/// Moves the gauge `name` by `delta`.
#[inline]
pub(crate) fn gauge(name: &'static str, delta: f64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(name).increment(delta);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, delta);
}
