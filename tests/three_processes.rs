//! Events cross OS processes: A publishes 1,000 events of three derived
//! types; B and C each receive all of them, typed, in publish order.
//!
//! The processes are `examples/notify.rs`, which `cargo test` builds.

mod common;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

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
