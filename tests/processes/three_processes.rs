//! Events cross OS processes: A publishes 1,000 events of three derived
//! types; B and C each receive all of them, typed, in publish order.
//!
//! The processes are `examples/notify.rs`, which `cargo test` builds. Its
//! demo (the README's first command) is tested here too, with no broker at
//! its address: it starts a private node and leaves nothing running.

use crate::common;

use std::io::{BufRead, BufReader, Lines};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use tidings::ExchangeKind;

const EVENTS: u64 = 1000;

/// Kills the child if the test fails before it exits.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> (Process, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(common::example("notify"))
        .args(args)
        .env("AMQP_URL", common::broker_url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (Process(child), lines)
}

/// The type the publisher sends at `seq` (see `event()` in the example).
fn expected_type(seq: u64) -> &'static str {
    match seq % 3 {
        0 => "OrderPlaced",
        1 => "OrderShipped",
        _ => "UserEvent",
    }
}

#[test]
fn a_publishes_and_b_and_c_receive_everything_typed_in_order() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let exchange = props.exchange();
    let count = EVENTS.to_string();
    let listen = ["listen", "--count", &count, "--exchange", exchange];
    let (mut b, mut b_out) = spawn(&listen);
    let (mut c, mut c_out) = spawn(&listen);
    for out in [&mut b_out, &mut c_out] {
        let ready = out.next().expect("listener exited").unwrap();
        assert!(ready.starts_with("ready"), "{ready}");
    }

    let (mut a, a_out) = spawn(&["publish", &count, "--exchange", exchange]);
    let published: Vec<String> = a_out.map(Result::unwrap).collect();
    assert!(
        a.0.wait().unwrap().success(),
        "publisher failed: {published:?}"
    );
    assert_eq!(
        published.last().unwrap(),
        &format!("published {EVENTS} events, {EVENTS} confirmed by the broker")
    );

    for (name, child, out) in [("B", &mut b, b_out), ("C", &mut c, c_out)] {
        let lines: Vec<String> = out.map(Result::unwrap).collect();
        assert!(child.0.wait().unwrap().success(), "{name} failed");
        let events: Vec<(u64, String)> = lines
            .iter()
            .filter_map(|line| {
                let mut words = line.strip_prefix("event ")?.split(' ');
                Some((words.next()?.parse().ok()?, words.next()?.to_owned()))
            })
            .collect();
        let expected: Vec<(u64, String)> = (0..EVENTS)
            .map(|seq| (seq, expected_type(seq).to_owned()))
            .collect();
        assert_eq!(
            events.len(),
            expected.len(),
            "{name} received {} events",
            events.len()
        );
        assert!(
            events == expected,
            "{name} received events out of order or of the wrong type"
        );
        assert_eq!(
            lines.last().unwrap(),
            &format!("received {EVENTS} events"),
            "{name}"
        );
    }
}

/// The README's first command on a machine where no broker answers: the demo
/// starts a private node, events cross from it to its listener process, and
/// the node is gone when the demo ends.
#[test]
fn the_demo_starts_and_stops_a_private_node_when_no_broker_answers() {
    assert!(
        Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/rabbitmq-node"
        ))
        .arg("check")
        .status()
        .is_ok_and(|s| s.success()),
        "this test needs rabbitmq-server installed (it starts a private node)"
    );
    // A port nothing listens on.
    let dead_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let output = Command::new(common::example("notify"))
        .env(
            "AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:{dead_port}/%2f"),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");

    let lines: Vec<&str> = stdout.lines().collect();
    let started = lines
        .iter()
        .find_map(|l| l.strip_prefix("started a private RabbitMQ node on port "))
        .unwrap_or_else(|| panic!("no node started:\n{stdout}"));
    let port: u16 = started.split(' ').next().unwrap().parse().unwrap();
    // The listener process printed every event this process published.
    let received: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once("] event ").map(|(_, event)| event))
        .collect();
    assert_eq!(received.len(), 9, "{stdout}");
    for (seq, event) in received.iter().enumerate() {
        assert!(
            event.starts_with(&format!("{seq} {}", expected_type(seq as u64))),
            "{event}"
        );
    }
    assert!(stdout.contains("] received 9 events"), "{stdout}");
    assert_eq!(lines.last(), Some(&"stopped the private RabbitMQ node"));

    // Nothing is left: the port is closed, epmd knows no node on its
    // distribution port, the data directory is gone.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the private node still answers on port {port}"
    );
    let names = Command::new("epmd").arg("-names").output().unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    let dist = format!("at port {}", u32::from(port) + 20000);
    assert!(
        !names.lines().any(|l| l.ends_with(&dist)),
        "a node is still registered: {names}"
    );
    let dir = started
        .split("(data in ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    assert!(!std::path::Path::new(dir).exists(), "{dir} is left behind");
}
