//! The benchmark counts what it measures: every row checks that each
//! published event was received (and, for tidings, confirmed), and fails
//! otherwise. Run small here; `cargo run --release --example bench` for
//! figures.

mod common;

use std::process::Command;

use tidings::ExchangeKind;

#[test]
fn every_benchmark_row_receives_every_event() {
    let _broker = common::props(ExchangeKind::Fanout);
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
    let output = Command::new(bench)
        .args(["--events", "300", "--no-python"])
        .env("AMQP_URL", common::broker_url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains(" B ")).collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    assert!(
        rows.iter().all(|row| row.trim_end().ends_with('x')),
        "{stdout}"
    );
}
