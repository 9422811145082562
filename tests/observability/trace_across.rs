//! One trace across two processes (`examples/traced.rs`): the handler's
//! span in the listener is the child of the publish span in the publisher,
//! which is the child of the publisher's own span.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use tidings::ExchangeKind;

use super::common;

/// Kills the process if the test fails before it exits.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A span as the example prints it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
}

fn spans(output: &str) -> Vec<Span> {
    output
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("span ")?.split(' ');
            Some(Span {
                name: words.next()?.to_owned(),
                trace: words.next()?.to_owned(),
                id: words.next()?.to_owned(),
                parent: words.next()?.to_owned(),
            })
        })
        .collect()
}

#[test]
fn the_handler_span_is_the_child_of_the_publish_span_in_another_process() {
    const EVENTS: u64 = 3;
    let props = common::props(ExchangeKind::Fanout);
    common::require_broker(&props);
    let _cleanup = common::Cleanup::new(&props);
    let url = format!(
        "amqp://guest:guest@{}:{}/%2f?exchange={}",
        props.host(),
        props.port(),
        props.exchange()
    );
    let count = EVENTS.to_string();
    let mut listener = Process(
        Command::new(common::example("traced"))
            .args(["listen", &url, &count])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(listener.0.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("ready"),
        "the listener did not start"
    );
    let published = Command::new(common::example("traced"))
        .args(["publish", &url, &count])
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "the publisher failed: {}",
        String::from_utf8_lossy(&published.stderr)
    );
    let mut rest = String::new();
    for line in lines {
        rest.push_str(&line.unwrap());
        rest.push('\n');
    }
    let status = listener.0.wait().unwrap();
    let mut stderr = String::new();
    if let Some(mut err) = listener.0.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    assert!(status.success(), "the listener failed: {stderr}");

    let theirs = spans(&String::from_utf8_lossy(&published.stdout));
    let ours = spans(&rest);
    let by_id: HashMap<&str, &Span> = theirs.iter().map(|s| (s.id.as_str(), s)).collect();
    let publishes: Vec<&Span> = theirs.iter().filter(|s| s.name == "publish").collect();
    let handles: Vec<&Span> = ours.iter().filter(|s| s.name == "handle").collect();
    assert_eq!(
        publishes.len() as u64,
        EVENTS,
        "publisher spans: {theirs:#?}"
    );
    assert_eq!(handles.len() as u64, EVENTS, "listener spans: {ours:#?}");
    for handle in &handles {
        let publish = by_id.get(handle.parent.as_str()).unwrap_or_else(|| {
            panic!(
                "the handle span's parent {} is no publisher span: {theirs:#?}",
                handle.parent
            )
        });
        assert_eq!(publish.name, "publish");
        assert_eq!(
            handle.trace, publish.trace,
            "one trace across both processes"
        );
        let checkout = by_id
            .get(publish.parent.as_str())
            .expect("the publish span is the child of the application's span");
        assert_eq!(checkout.name, "checkout");
        assert_eq!(checkout.trace, publish.trace);
    }
    let traces: std::collections::HashSet<&str> =
        handles.iter().map(|h| h.trace.as_str()).collect();
    assert_eq!(
        traces.len() as u64,
        EVENTS,
        "each checkout is a trace of its own"
    );
    // The handler's own log ran inside the handle span: it saw its trace.
    for line in rest.lines().filter(|l| l.starts_with("handled ")) {
        let trace = line.rsplit(' ').next().unwrap();
        assert!(traces.contains(trace), "{line} is in none of {traces:?}");
    }
}
