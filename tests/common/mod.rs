//! Helpers shared by the integration tests: the broker's props, unique names,
//! cleanup of what a test declares, and private broker nodes for fault tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

pub mod cluster;
pub mod proxy;
pub mod python;

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidings::{AmqpProps, Connection, ExchangeKind};

/// The shared broker's URL: `AMQP_URL`, or the local default.
pub fn broker_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Props for the shared broker with a fresh exchange of `kind`, after
/// checking the broker answers. Fails the test with instructions otherwise.
pub fn props(kind: ExchangeKind) -> AmqpProps {
    let props = AmqpProps::from_url(&broker_url()).expect("AMQP_URL is not a valid AMQP URL");
    require_broker(&props);
    props.with_exchange(unique("ex"), kind)
}

/// The socket address of the broker of `props`, after checking it answers
/// (for a test proxy in front of it).
pub fn broker_addr(props: &AmqpProps) -> std::net::SocketAddr {
    require_broker(props);
    (props.host(), props.port())
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("the broker's address does not resolve")
}

/// Panics with a message saying how to start a broker when none answers.
pub fn require_broker(props: &AmqpProps) {
    let addr = format!("{}:{}", props.host(), props.port());
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "no RabbitMQ broker answers at {addr}: these tests need one. Start it with \
         `rabbitmq-server -detached`, point AMQP_URL at another, or run `scripts/test`, \
         which starts a private node when none answers"
    );
}

/// A name no other test (or test run) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "tidings-test.{prefix}.{}.{}.{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes the exchanges and queues a test declared when dropped, even when
/// the test fails.
pub struct Cleanup {
    props: AmqpProps,
    queues: Mutex<Vec<String>>,
}

impl Cleanup {
    /// Cleans up the exchange of `props` and whatever queues are added.
    pub fn new(props: &AmqpProps) -> Self {
        Self {
            props: props.clone(),
            queues: Mutex::new(Vec::new()),
        }
    }

    /// Adds a queue to delete.
    pub fn queue(&self, name: &str) {
        self.queues.lock().unwrap().push(name.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let props = self.props.clone();
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        // A thread of its own: Drop may run inside a test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let Ok(conn) = Connection::connect(&props).await else {
                    return;
                };
                let listed = listed_queues();
                for queue in queues {
                    // Retry queues, one per delay: <queue>.retry.<ms>.
                    let prefix = format!("{queue}.retry.");
                    for retry in listed.iter().filter(|name| name.starts_with(&prefix)) {
                        let _ = conn.delete_queue(retry).await;
                    }
                    let _ = conn.delete_queue(&queue).await;
                }
                // Delay queues, one per delay, each with its exchange:
                // <exchange>.delay.<ms>.
                let delays = format!("{}.delay.", props.exchange());
                for delay in listed.iter().filter(|name| name.starts_with(&delays)) {
                    let _ = conn.delete_queue(delay).await;
                    let _ = conn.delete_exchange(delay).await;
                }
                // What a bus on this exchange declares: the dead letters
                // and the schema stream.
                let dead_letters = format!("{}.dead-letter", props.exchange());
                let _ = conn.delete_queue(&dead_letters).await;
                let _ = conn
                    .delete_queue(&tidings::schema_stream(props.exchange()))
                    .await;
                let _ = conn.delete_exchange(&dead_letters).await;
                let _ = conn.delete_exchange(props.exchange()).await;
                let _ = conn.close().await;
            });
        })
        .join();
    }
}

/// The names of the queues on the shared broker, by `rabbitmqctl` (empty
/// where it cannot be run; retry queues then expire on their own).
pub fn listed_queues() -> Vec<String> {
    Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|line| line.trim().to_owned())
                .filter(|line| !line.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The type (`classic`, `quorum`, `stream`) of each queue on the shared
/// broker, by `rabbitmqctl`; fails the test where it cannot be run.
pub fn queue_types() -> std::collections::HashMap<String, String> {
    queue_column("type")
}

/// One column of `rabbitmqctl list_queues` (`type`, `arguments`, ..) for
/// each queue on the shared broker, by name; fails the test where
/// `rabbitmqctl` cannot be run.
pub fn queue_column(column: &str) -> std::collections::HashMap<String, String> {
    let out = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", column])
        .output()
        .expect("these tests read queues with rabbitmqctl, which cannot be run");
    assert!(
        out.status.success(),
        "rabbitmqctl list_queues failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once('\t')?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// Publishes as a foreign client would: any body, any properties, through
/// `exchange` with `routing_key`; waits for the broker's confirm.
pub async fn raw_publish(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("raw publish failed")
        .await
        .expect("raw publish was not confirmed");
}

/// A channel of `conn` with publisher confirms on, for [`raw_publish`].
pub async fn confirming_channel(conn: &Connection) -> lapin::Channel {
    let channel = conn.channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

/// Takes the next message of `queue` without declaring it (basic.get,
/// acknowledged); `None` when it is empty.
pub async fn raw_get(conn: &Connection, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    let channel = conn.channel().await.unwrap();
    let message = channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap_or_else(|e| panic!("getting from {queue}: {e}"));
    let _ = channel.close(200, "done".into()).await;
    message
}

/// A string header of a message got with [`raw_get`].
pub fn header_text(message: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    match message
        .delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)?
    {
        lapin::types::AMQPValue::LongString(text) => Some(text.to_string()),
        _ => None,
    }
}

/// How many messages `queue` holds now (a passive declare).
pub async fn queue_depth(conn: &Connection, queue: &str) -> u32 {
    let channel = conn.channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {queue} is not there: {e}"));
    let _ = channel.close(200, "done".into()).await;
    declared.message_count()
}

/// The binary of an example, which `cargo test` builds next to the tests.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing; run this test through `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// The next delivery of a consumer; fails the test after 10 s.
pub async fn next_delivery(consumer: &mut tidings::Consumer) -> tidings::Delivery {
    use tokio_stream::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("no delivery within 10 s")
        .expect("consumer closed")
        .expect("delivery error")
}

/// What the handlers of one bus saw in a fault test: how often each
/// sequence number came, the highest, and how many in all.
#[derive(Default)]
pub struct Seen {
    pub counts: std::sync::Mutex<Vec<u8>>,
    pub highest: std::sync::atomic::AtomicU64,
    pub handled: std::sync::atomic::AtomicU64,
}

impl Seen {
    /// Records the event with sequence number `seq`.
    pub fn record(&self, seq: u32) {
        let mut counts = self.counts.lock().unwrap();
        if counts.len() <= seq as usize {
            counts.resize(seq as usize + 1, 0);
        }
        counts[seq as usize] += 1;
        self.highest.fetch_max(u64::from(seq), Ordering::Relaxed);
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// How often each sequence number came.
    pub fn counts(&self) -> Vec<u8> {
        self.counts.lock().unwrap().clone()
    }
}

/// A bus's stats in one line, for a fault test's report.
pub fn describe(stats: &tidings::Stats) -> String {
    format!(
        "published {}, confirmed {}, re-published {}, failed {}, delivered {}, handled {}, deduplicated {}, reconnects {}",
        stats.published,
        stats.confirmed,
        stats.republished,
        stats.publish_failed,
        stats.delivered,
        stats.handled,
        stats.deduplicated,
        stats.reconnects
    )
}

/// Waits until `condition` holds, polling, for at most `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Waits until the async `condition` holds, polling, for at most `limit`
/// (the `eventually` of a condition that asks the broker).
pub async fn eventually_async<F: Future<Output = bool>>(
    limit: Duration,
    mut condition: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition().await
}

/// A RabbitMQ node of the test's own: own name, ports and data directory
/// under the target directory, so it can be stopped and restarted without
/// touching the shared broker.
pub struct PrivateNode {
    name: String,
    dir: PathBuf,
    port: u16,
    dist_port: u16,
    server: Option<Child>,
}

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

impl PrivateNode {
    /// Starts a fresh node on free ports and waits until it accepts AMQP.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts a fresh node with this `rabbitmq.conf` (for example
    /// `max_message_size = 16777216`).
    pub fn start_with(conf: &str) -> Self {
        Self::start_with_plugins(conf, &[])
    }

    /// Starts a fresh node with this `rabbitmq.conf` and these plugins
    /// enabled (for example `rabbitmq_auth_mechanism_ssl`).
    pub fn start_with_plugins(conf: &str, plugins: &[&str]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("tidings-{id}@localhost");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rmq-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(
            dir.join("enabled_plugins"),
            format!("[{}].", plugins.join(",")),
        )
        .unwrap();
        std::fs::write(dir.join("rabbitmq.conf"), conf).unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        let mut node = Self {
            name,
            dir,
            port: free_port(),
            dist_port: free_port(),
            server: None,
        };
        node.start_again();
        node
    }

    /// The node's AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Props for this node with a fresh exchange of `kind`.
    pub fn props(&self, kind: ExchangeKind) -> AmqpProps {
        AmqpProps::default()
            .with_host("127.0.0.1")
            .with_port(self.port)
            .with_exchange(unique("ex"), kind)
    }

    fn command(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut cmd = Command::new(format!("{RABBITMQ_BIN}/{program}"));
        cmd.env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("node.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"));
        cmd
    }

    /// Starts the node again after [`stop`](Self::stop) (same data, same
    /// port) and waits until it accepts AMQP.
    pub fn start_again(&mut self) {
        assert!(
            self.server.is_none(),
            "node {} is already running",
            self.name
        );
        assert!(
            std::path::Path::new(RABBITMQ_BIN)
                .join("rabbitmq-server")
                .exists(),
            "rabbitmq-server is not installed at {RABBITMQ_BIN}; install Debian's rabbitmq-server"
        );
        let log = std::fs::File::create(self.dir.join("stdout.log")).unwrap();
        let server = self
            .command("rabbitmq-server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start rabbitmq-server");
        self.server = Some(server);
        self.stop_with_this_process();
        // The node listens for AMQP once it has booted.
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = self
                .server
                .as_mut()
                .and_then(|s| s.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "private node {} did not start; see {}",
                self.name,
                self.dir.join("stdout.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the node when this test process ends without dropping it (a
    /// node kept in a static for the whole binary, a process killed by a
    /// timeout): a shell waits for this process to exit, then stops the
    /// node. Stopping a node already stopped does nothing.
    fn stop_with_this_process(&self) {
        let ctl = self.command("rabbitmqctl");
        let mut watcher = Command::new("sh");
        for (key, value) in ctl.get_envs() {
            if let Some(value) = value {
                watcher.env(key, value);
            }
        }
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; exec {RABBITMQ_BIN}/rabbitmqctl -n {name} stop",
            pid = std::process::id(),
            name = self.name,
        );
        let _ = watcher
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// Stops the node and waits for its process to exit.
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let _ = self
            .command("rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if server.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = server.kill();
        let _ = server.wait();
    }

    /// Runs `rabbitmqctl` against this node; panics if it fails.
    pub fn ctl(&self, args: &[&str]) {
        let output = self
            .command("rabbitmqctl")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("cannot run rabbitmqctl");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops and starts the node.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

// ---------------------------------------------------------------------------
// Broker-side counts for the concurrency tests (tests/concurrency.rs).
// ---------------------------------------------------------------------------

/// The connections on the shared broker whose client-provided name contains
/// `name`, and how many channels they have open together, by `rabbitmqctl
/// list_connections`; `None` where `rabbitmqctl` cannot be run (another
/// broker than the local one, or no `rabbitmqctl`).
pub fn broker_connections(name: &str) -> Option<(usize, usize)> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "client_properties",
            "channels",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = (0, 0);
    for line in text.lines().filter(|line| line.contains(name)) {
        found.0 += 1;
        found.1 += line
            .rsplit(['\t', ' '])
            .next()
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no channel count at the end of {line:?}"));
    }
    Some(found)
}

/// Whether `rabbitmqctl` talks to the broker the tests use (the local
/// default one), so that its counts mean something.
pub fn rabbitmqctl_sees_the_broker() -> bool {
    broker_url().contains("@127.0.0.1:5672/") && broker_connections("").is_some()
}
