//! A local 3-node RabbitMQ cluster of the test's own (`scripts/rabbitmq-cluster`):
//! own node names, ports, data directories and Erlang cookie under the
//! target directory, never the shared broker. Stopped and deleted on drop,
//! also when the test fails.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use tidings::{AmqpProps, ExchangeKind};

/// A running local cluster; node numbers are 1, 2, 3.
pub struct Cluster {
    dir: PathBuf,
    ports: Vec<u16>,
}

impl Cluster {
    /// Starts three nodes and joins them (about 20 s); panics with the
    /// script's output when it cannot.
    pub fn start() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "rmq-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let url = script(&["start", &dir.to_string_lossy()]);
        // Stopped on drop from here on.
        let mut cluster = Self {
            dir,
            ports: Vec::new(),
        };
        cluster.ports = script(&["ports", &cluster.dir.to_string_lossy()])
            .lines()
            .map(|p| p.trim().parse().expect("a port"))
            .collect();
        eprintln!("cluster started: {url}");
        cluster
    }

    /// The AMQP port of node `n`.
    pub fn port(&self, n: usize) -> u16 {
        self.ports[n - 1]
    }

    /// The address of node `n`, `127.0.0.1:<port>`, as connection events say it.
    pub fn address(&self, n: usize) -> String {
        format!("127.0.0.1:{}", self.port(n))
    }

    /// The node whose address is `address`.
    pub fn node_at(&self, address: &str) -> Option<usize> {
        (1..=self.ports.len()).find(|&n| self.address(n) == address)
    }

    /// Props with every node, tried in this order of nodes (not shuffled),
    /// and a fresh exchange of `kind`.
    pub fn props(&self, order: &[usize], exchange: &str, kind: ExchangeKind) -> AmqpProps {
        AmqpProps::default()
            .with_hosts(order.iter().map(|&n| self.address(n)))
            .with_shuffled_hosts(false)
            .with_exchange(exchange, kind)
    }

    /// kill -9 of node `n`.
    pub fn kill(&self, n: usize) {
        script(&["kill", &self.dir.to_string_lossy(), &n.to_string()]);
    }

    /// Starts node `n` again; returns once it runs in the cluster.
    pub fn revive(&self, n: usize) {
        script(&["revive", &self.dir.to_string_lossy(), &n.to_string()]);
    }

    /// The node that leads the quorum queue `queue`.
    pub fn leader(&self, queue: &str) -> usize {
        script(&["leader", &self.dir.to_string_lossy(), queue])
            .trim()
            .parse()
            .expect("a node number")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script_path())
            .args(["stop", &self.dir.to_string_lossy()])
            .status();
    }
}

fn script_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-cluster")
}

/// Runs the cluster script; its stdout, or a panic with its stderr.
fn script(args: &[&str]) -> String {
    let out = Command::new(script_path())
        .args(args)
        .output()
        .expect("cannot run scripts/rabbitmq-cluster");
    assert!(
        out.status.success(),
        "scripts/rabbitmq-cluster {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
