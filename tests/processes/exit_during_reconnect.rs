//! A process that exits while its bus is reconnecting exits cleanly: no
//! panic output, no hang, whether it closes the bus or just returns.
//!
//! The child is `examples/outage.rs`, talking to the shared broker through
//! an in-test TCP proxy that the test cuts and then keeps refusing.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use tidings::AmqpProps;

/// Runs the example until it is mid-outage, ends its input, and returns
/// its exit status, stdout and stderr.
fn exit_mid_outage(mode: &str) -> (std::process::ExitStatus, String, String) {
    let props = AmqpProps::from_url(&common::broker_url()).unwrap();
    let proxy = Proxy::start(common::broker_addr(&props));
    let exchange = common::unique("outage");
    // What the example declared goes, also when this test fails.
    let _cleanup = common::Cleanup::new(
        &props
            .clone()
            .with_exchange(exchange.clone(), tidings::ExchangeKind::Fanout),
    );
    let url = format!(
        "amqp://{}:{}@127.0.0.1:{}/%2f?exchange={exchange}&reconnect_min=50&reconnect_max=200&connection_timeout=1000",
        props.user(),
        "guest",
        proxy.port()
    );
    let mut child = Command::new(common::example("outage"))
        .arg(mode)
        .env("AMQP_URL", &url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, read) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines.send(line);
        }
        all
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match read.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("the child never printed {needle:?}");
    };
    wait_for("received tick");
    proxy.set_refusing(true);
    proxy.cut();
    wait_for("connection: disconnected");
    // Four failed attempts take at least 275 ms (delays from 25-50 ms up to
    // 100-200 ms): ticks, one each 100 ms, are waiting by then.
    wait_for("reconnect attempt 4 failed");

    drop(child.stdin.take()); // end of input: the example exits
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let stdout = reader.join().unwrap();
            panic!(
                "the child did not exit within 20 s of being told to, mid-outage; its output:\n{stdout}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stdout, stderr)
}

#[test]
fn closing_mid_outage_reports_unconfirmed_events_and_exits_cleanly() {
    let (status, stdout, stderr) = exit_mid_outage("close");
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic output:\n{stderr}");
    assert!(
        stdout.contains("closed: ") && stdout.contains("were not confirmed"),
        "close should report the ticks published during the outage:\n{stdout}"
    );
}

#[test]
fn returning_mid_outage_without_closing_exits_cleanly() {
    let (status, stdout, stderr) = exit_mid_outage("drop");
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic output:\n{stderr}");
    assert!(stdout.contains("exiting without closing"), "{stdout}");
}
