//! Broadcast receipts across processes (`examples/receipts.rs`): three
//! listeners, one stopped; the receipt names exactly the two that handled
//! the event.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

use tidings::ExchangeKind;

use crate::common;

/// Kills the process if the test ends before it exits.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn listener(url: &str) -> (Process, Lines<BufReader<ChildStdout>>, String) {
    let mut child = Command::new(common::example("receipts"))
        .args(["listen", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let id = first
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("the listener did not start: {first:?}"))
        .to_owned();
    (Process(child), lines, id)
}

#[test]
fn the_receipts_name_exactly_the_instances_that_handled_the_broadcast() {
    let props = common::props(ExchangeKind::Fanout);
    common::require_broker(&props);
    let _cleanup = common::Cleanup::new(&props);
    let url = format!(
        "amqp://guest:guest@{}:{}/%2f?exchange={}",
        props.host(),
        props.port(),
        props.exchange()
    );
    let (a, _a_out, a_id) = listener(&url);
    let (b, _b_out, b_id) = listener(&url);
    let (mut c, _c_out, c_id) = listener(&url);
    // C stops: its stdin closes, it closes its bus and exits.
    drop(c.0.stdin.take());
    let status = c.0.wait().unwrap();
    assert!(status.success(), "listener C failed: {status}");

    let published = Command::new(common::example("receipts"))
        .args(["publish", &url, "2000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&published.stdout);
    assert!(
        published.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let mut handled: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("handled_by "))
        .collect();
    handled.sort_unstable();
    let mut expected = vec![a_id.as_str(), b_id.as_str()];
    expected.sort_unstable();
    assert_eq!(handled, expected, "C ({c_id}) was stopped");
    drop((a, b));
}
