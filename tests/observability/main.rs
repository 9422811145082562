//! The `metrics` and `opentelemetry` features, against the real broker:
//! the metrics recorded after events with failures, and one trace across
//! two processes. Built only with both features (`scripts/test` passes
//! `--all-features`).

#[path = "../common/mod.rs"]
mod common;

mod metrics;
mod trace_across;

/// `examples/observe.rs` serves Prometheus text and a readiness probe.
#[test]
fn the_observe_example_serves_metrics_and_readiness() {
    let props = common::props(tidings::ExchangeKind::Fanout);
    common::require_broker(&props);
    let output = std::process::Command::new(common::example("observe"))
        .arg("--once")
        .env("AMQP_URL", common::broker_url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("tidings_handled_total{tag=\"observe.tick\"}"),
        "{stdout}"
    );
    assert!(stdout.contains("tidings_handler_seconds"), "{stdout}");
    let readiness = stdout.split("GET /readyz").nth(1).unwrap_or("");
    assert!(readiness.contains("HTTP/1.1 200 OK"), "{readiness}");
    assert!(readiness.contains("\"connected\": true"), "{readiness}");
}
