//! The benchmark counts what it measures: every row checks that each
//! published event was received exactly once (and, for tidings, confirmed),
//! and fails otherwise; so does the soak. Run small here; `cargo run
//! --release --example bench` for figures.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use tidings::ExchangeKind;

fn bench_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bench = dir
        .join("examples")
        .join(format!("bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bench.exists(),
        "{} is missing; run through `cargo test`",
        bench.display()
    );
    bench
}

/// Runs the bench with `args`; its stdout, or a failure with its output.
fn bench(args: &[&str]) -> String {
    let _broker = common::props(ExchangeKind::Fanout);
    let output = Command::new(bench_binary())
        .args(args)
        .env("AMQP_URL", common::broker_url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn every_benchmark_row_receives_every_event() {
    let stdout = bench(&["--events", "300", "--no-python"]);
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(", fanout ") || l.contains(", group of "))
        .filter(|l| !l.starts_with("10 KB JSON-ish"))
        .collect();
    // Raw lapin tuned, then tidings with no compression and each built one.
    let compressed = stdout
        .lines()
        .filter(|l| l.starts_with("10 KB JSON-ish"))
        .count();
    let built = [
        tidings::Compression::Gzip,
        tidings::Compression::Zstd,
        tidings::Compression::Lz4,
    ]
    .into_iter()
    .filter(|c| c.is_built())
    .count();
    assert_eq!(compressed, 2 + built, "{stdout}");
    // 9 scenarios (the group ones on classic and on quorum queues), each
    // with raw lapin naive, raw lapin tuned and tidings.
    assert_eq!(rows.len(), 27, "{stdout}");
    assert!(
        rows.iter().all(|row| row.trim_end().ends_with('x')),
        "{stdout}"
    );
    assert_eq!(
        rows.iter().filter(|row| row.contains(" tidings ")).count(),
        9,
        "{stdout}"
    );
    assert!(
        stdout.contains("pika row skipped: --no-python given"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("tidings ")),
        "{stdout}"
    );
    // Latency at 2,000/s and at 10,000/s offered, each with its p99 ratio.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("tidings / raw lapin p99 at "))
            .count(),
        2,
        "{stdout}"
    );
}

#[test]
fn repetitions_print_medians_and_each_value() {
    let stdout = bench(&[
        "--forget",
        "--events",
        "200",
        "--reps",
        "2",
        "--with-meta",
        "--no-python",
    ]);
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("100 B, fanout 1"))
        .collect();
    // Raw lapin naive, tuned, tuned + meta, and tidings; each with its two
    // repetitions' events/s after the ratios.
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(
        rows.iter()
            .any(|row| row.contains(" raw lapin tuned + meta ")),
        "{stdout}"
    );
    assert!(
        rows.iter().all(|row| row
            .rsplit_once("x  ")
            .is_some_and(|(_, each)| each.split('/').count() == 2)),
        "{stdout}"
    );
}

#[test]
fn latency_repetitions_print_medians_and_each_p99() {
    let stdout = bench(&["--latency", "--events", "100", "--reps", "2"]);
    for rate in ["2,000", "10,000"] {
        assert!(
            stdout.contains(&format!("tidings / raw lapin p99 at {rate} events/s: ")),
            "{stdout}"
        );
    }
    // Each row, at each rate, with its two repetitions' p99.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("raw lapin naive ") || l.starts_with("tidings    "))
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(
        rows.iter().all(|row| row
            .split_once("  p99 ")
            .is_some_and(|(_, each)| each.split('/').count() == 2)),
        "{stdout}"
    );
}

#[test]
fn every_growth_row_receives_every_event() {
    let stdout = bench(&["--growth", "--events", "20"]);
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with('x') && !l.starts_with("factor"))
        .collect();
    // Four body sizes, three values of each other factor.
    assert_eq!(rows.len(), 4 + 3 * 4, "{stdout}");
    for factor in [
        "body size",
        "types subscribed",
        "subscribers per type",
        "listeners per process",
        "concurrency, 1 ms",
    ] {
        assert!(
            rows.iter().any(|row| row.starts_with(factor)),
            "{factor}: {stdout}"
        );
    }
}

#[test]
fn the_soak_handles_every_event_and_samples_memory() {
    let stdout = bench(&["--soak", "500", "--soak-spin-us", "0"]);
    let samples = stdout
        .lines()
        .filter(|l| l.contains(" events handled   RSS "))
        .count();
    // A baseline and one sample per tenth of the run.
    assert_eq!(samples, 11, "{stdout}");
    assert!(
        stdout.contains("done: 500 events handled and confirmed"),
        "{stdout}"
    );
}
