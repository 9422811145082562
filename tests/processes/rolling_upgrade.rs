//! A rolling upgrade across processes: two builds of a service
//! (`examples/upgrade_v1.rs`, `examples/upgrade_v2.rs`) consume and publish
//! side by side, as broadcast listeners and as members of one group, under
//! bincode and under JSON. The new build adds an optional field, removes an
//! optional one and renames one with `#[serde(alias)]`: every event reaches
//! every consumer, none is dead-lettered. It also bumps another event to
//! version 2 with an upcast: the new build reads version 1, the old one
//! refuses version 2 as `newer_version`. A third build
//! (`examples/upgrade_retyped.rs`) changes a field's type: its events are
//! refused with the field named, counted, and none is misread.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tidings::{ExchangeKind, REASON_HEADER};

/// Events of each type each publisher build sends.
const EACH: u64 = 10;
/// Events the retyped build sends.
const RETYPED: u64 = 5;

/// A consumer process: its stdin (closing it ends the process) and the
/// lines it printed, as they come.
struct Consumer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Consumer {
    fn spawn(build: &str, how: &str, url: &str) -> Self {
        let mut child = Command::new(common::example(build))
            .args(["consume", how])
            .env("AMQP_URL", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let consumer = Self {
            name: format!("{build} {how}"),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        };
        let ready = consumer.lines.recv_timeout(Duration::from_secs(30));
        assert_eq!(
            ready.as_deref(),
            Ok("ready"),
            "{} did not start",
            consumer.name
        );
        consumer
    }

    /// Takes the lines printed so far.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    fn count(&self, prefix: &str) -> usize {
        self.seen.iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// Closes stdin and returns the counts the process printed last.
    fn finish(mut self) -> (Vec<String>, BTreeMap<String, u64>) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        assert!(status.success(), "{} failed: {:?}", self.name, self.seen);
        let stats = self
            .seen
            .iter()
            .find_map(|l| l.strip_prefix("stats "))
            .unwrap_or_else(|| panic!("{} printed no stats: {:?}", self.name, self.seen))
            .split(' ')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
            .collect();
        (std::mem::take(&mut self.seen), stats)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(build: &str, first: u64, count: u64, url: &str) {
    let mut child = Command::new(common::example(build))
        .args(["publish", &first.to_string(), &count.to_string()])
        .env("AMQP_URL", url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "{build} publish failed: {out}"
    );
    assert_eq!(out.trim(), format!("published {count}"));
}

/// Waits until `done` holds for the consumers' lines so far.
fn wait_for(consumers: &mut [Consumer], what: &str, done: impl Fn(&[Consumer]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        consumers.iter_mut().for_each(Consumer::drain);
        if done(consumers) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 60 s: {:?}",
            consumers
                .iter()
                .map(|c| (&c.name, &c.seen))
                .collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn rolling_upgrade(codec: &str) {
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    cleanup.queue(&format!("{}.upgrade", props.exchange()));
    let base = common::broker_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}exchange={}&codec={codec}", props.exchange());

    // Old and new builds side by side: broadcast listeners, and one group.
    let mut consumers = vec![
        Consumer::spawn("upgrade_v1", "broadcast", &url),
        Consumer::spawn("upgrade_v2", "broadcast", &url),
        Consumer::spawn("upgrade_v1", "group", &url),
        Consumer::spawn("upgrade_v2", "group", &url),
    ];
    publish("upgrade_v1", 0, EACH, &url);
    publish("upgrade_v2", 100, EACH, &url);

    let placed = 2 * EACH as usize;
    wait_for(&mut consumers, "every OrderPlaced handled", |c| {
        c[0].count("placed ") == placed
            && c[1].count("placed ") == placed
            && c[2].count("placed ") + c[3].count("placed ") == placed
            // The new build reads both versions of OrderRefunded, the old
            // one only version 1.
            && c[1].count("refunded ") == placed
            && c[0].count("refunded ") == EACH as usize
    });
    for consumer in &consumers {
        for line in consumer.seen.iter().filter(|l| l.starts_with("placed ")) {
            assert!(line.ends_with("qty=3"), "{}: {line}", consumer.name);
        }
    }
    assert!(
        consumers[1]
            .seen
            .iter()
            .filter(|l| l.starts_with("refunded "))
            .all(|l| l.ends_with("cents=250 v2"))
    );

    // A build that changed a field's type: refused everywhere, nothing read.
    publish("upgrade_retyped", 200, RETYPED, &url);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dead_letters = format!("{}.dead-letter", props.exchange());
    let depth = || {
        runtime.block_on(async {
            let c = tidings::Connection::connect(&props).await.unwrap();
            let depth = common::queue_depth(&c, &dead_letters).await;
            c.close().await.unwrap();
            u64::from(depth)
        })
    };
    // In the end the dead letters are: version 2 at the old broadcast
    // listener, version 2 at the old group member (what of the group's
    // OrderRefunded neither member handled), and the retyped events at both
    // broadcast listeners and in the group. Both sides only grow towards
    // that, so the first time they meet is the end.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        consumers.iter_mut().for_each(Consumer::drain);
        let group_refused =
            placed - consumers[2].count("refunded ") - consumers[3].count("refunded ");
        let expected = EACH + group_refused as u64 + 3 * RETYPED;
        let found = depth();
        if found == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{found} dead letters, not {expected}, after 60 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let stats: Vec<BTreeMap<String, u64>> = consumers
        .into_iter()
        .map(|consumer| {
            let (seen, counts) = consumer.finish();
            let misread = seen.iter().any(|l| {
                let id = l
                    .strip_prefix("placed ")
                    .and_then(|rest| rest.split(' ').next());
                id.and_then(|id| id.parse::<u64>().ok())
                    .is_some_and(|id| id >= 200)
            });
            assert!(!misread, "a retyped event was misread: {seen:?}");
            counts
        })
        .collect();
    let [v1b, v2b, v1g, v2g] = &stats[..] else {
        unreachable!()
    };

    // Compatible changes: resolved, never dead-lettered.
    // Each reads the other build's OrderPlaced by its writer's schema.
    assert_eq!(v1b["resolved"], EACH, "{v1b:?}");
    assert_eq!(v2b["resolved"], EACH, "{v2b:?}");
    assert_eq!(v2b["upcasts"], EACH, "{v2b:?}");
    // Version 2 at a version-1 reader: refused, counted.
    assert_eq!(v1b["newer"], EACH, "{v1b:?}");
    // The changed type: refused by each, counted, with the field named.
    for (name, s) in [("v1 broadcast", v1b), ("v2 broadcast", v2b)] {
        assert_eq!(s["incompatible"], RETYPED, "{name}: {s:?}");
    }
    assert_eq!(
        v1g["incompatible"] + v2g["incompatible"],
        RETYPED,
        "{v1g:?} {v2g:?}"
    );
    assert_eq!(v2b["newer"] + v2g["newer"], 0);
    let dead =
        v1b["dead_lettered"] + v2b["dead_lettered"] + v1g["dead_lettered"] + v2g["dead_lettered"];
    assert_eq!(
        dead,
        v1b["newer"] + v1g["newer"] + 3 * RETYPED,
        "only refused events are dead-lettered: {stats:?}"
    );
    assert_eq!(depth(), dead, "the dead-letter queue holds them all");

    let reasons = runtime.block_on(async {
        let c = tidings::Connection::connect(&props).await.unwrap();
        let mut reasons = BTreeMap::<String, u32>::new();
        while let Some(message) = common::raw_get(&c, &dead_letters).await {
            let reason = common::header_text(&message, REASON_HEADER).unwrap_or_default();
            if reason == "incompatible_schema" {
                let error =
                    common::header_text(&message, tidings::ERROR_HEADER).unwrap_or_default();
                assert!(
                    error.contains("field `qty`: invalid type: string \"three\""),
                    "{error}"
                );
            }
            *reasons.entry(reason).or_default() += 1;
        }
        c.close().await.unwrap();
        reasons
    });
    assert_eq!(
        reasons.get("incompatible_schema"),
        Some(&(3 * RETYPED as u32)),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.get("newer_version").copied().unwrap_or(0),
        (v1b["newer"] + v1g["newer"]) as u32,
        "{reasons:?}"
    );
}

#[test]
fn a_rolling_upgrade_under_bincode_loses_nothing() {
    rolling_upgrade("bincode");
}

#[test]
fn a_rolling_upgrade_under_json_loses_nothing() {
    rolling_upgrade("json");
}
