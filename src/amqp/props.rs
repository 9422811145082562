//! `AmqpProps`: where the broker is, how to talk to it, and which exchange
//! carries the events.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::codec::{self, Codec};
use crate::compression::{Compression, DEFAULT_COMPRESSION_THRESHOLD};
use crate::error::{Error, ErrorKind, Result};

/// The longest name AMQP allows for an exchange, queue or routing key.
pub(crate) const MAX_NAME_LEN: usize = 255;

const DEFAULT_EXCHANGE: &str = "tidings";

/// **Everything tidings needs to reach a broker**: address, credentials,
/// virtual host, TLS, the exchange and its kind, and the knobs of a
/// connection (heartbeat, prefetch, timeouts, size limit, codec).
///
/// Build it with [`Default`] and the `with_*` methods, or parse it from a URL
/// with [`from_url`](AmqpProps::from_url) or [`from_env`](AmqpProps::from_env).
/// Nothing is checked until [`validate`](AmqpProps::validate) (which
/// connecting calls), so a builder chain never fails half-way.
///
/// The password is never printed: `Debug` and [`redacted_url`](AmqpProps::redacted_url)
/// show `***` in its place, and so does every log line of tidings.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tidings::{AmqpProps, ExchangeKind};
///
/// let props = AmqpProps::from_url(
///     "amqp://app:s3cret@rabbit.internal:5672/%2f?exchange=orders&kind=topic&heartbeat=30&prefetch=500",
/// )?;
/// assert_eq!(props.host(), "rabbit.internal");
/// assert_eq!(props.vhost(), "/");
/// assert_eq!(props.exchange(), "orders");
/// assert_eq!(props.exchange_kind(), ExchangeKind::Topic);
/// assert_eq!(props.heartbeat(), Some(Duration::from_secs(30)));
/// assert!(!format!("{props:?}").contains("s3cret"));
///
/// // The same with the builder:
/// let built = AmqpProps::default()
///     .with_host("rabbit.internal")
///     .with_credentials("app", "s3cret")
///     .with_exchange("orders", ExchangeKind::Topic)
///     .with_heartbeat(Some(Duration::from_secs(30)))
///     .with_prefetch(500);
/// assert_eq!(built.redacted_url(), props.redacted_url());
/// # Ok::<(), tidings::Error>(())
/// ```
#[derive(Clone)]
pub struct AmqpProps {
    /// The brokers to try, at least one; the first is [`host`](Self::host).
    hosts: Vec<Host>,
    /// What [`with_hosts`](Self::with_hosts) could not read, reported by
    /// [`validate`](Self::validate).
    hosts_error: Option<String>,
    /// The port of a host that names none.
    port: Option<u16>,
    /// Whether each connect tries the hosts in a random order.
    shuffle_hosts: bool,
    /// The type of the durable queues declared (groups, named queues,
    /// their retry queues, the dead letters).
    queue_type: QueueType,
    /// How often a quorum queue delivers a message before dead-lettering it.
    delivery_limit: u32,
    user: String,
    password: String,
    vhost: String,
    tls: bool,
    ca_file: Option<PathBuf>,
    /// The client's certificate chain and key (PEM), for mutual TLS.
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    /// Log in with the client certificate (SASL EXTERNAL) instead of a
    /// password.
    external_auth: bool,
    /// Declare nothing shared: check that it exists (least privilege).
    passive: bool,
    exchange: String,
    kind: ExchangeKind,
    heartbeat: Option<Duration>,
    prefetch: u16,
    connection_name: Option<String>,
    connect_timeout: Duration,
    max_message_size: usize,
    codec: Arc<dyn Codec>,
    /// How a bus compresses what it publishes, and from which size.
    compression: Compression,
    compression_threshold: usize,
    buffer_events: usize,
    buffer_bytes: usize,
    when_full: WhenFull,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

/// **What a publish does when the broker cannot take more**: the publish
/// buffer is full (the broker is slow or unreachable), or the broker has
/// blocked the connection (a memory or disk alarm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Wait for room in the buffer (the default). While the connection is
    /// blocked, publishes fill the buffer, then wait.
    #[default]
    Wait,
    /// Fail at once with [`ErrorKind::BufferFull`], or
    /// [`ErrorKind::Blocked`] while the broker blocks the connection.
    Fail,
}

impl FromStr for WhenFull {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "wait" => Ok(Self::Wait),
            "fail" => Ok(Self::Fail),
            other => Err(config_error(format!(
                "unknown when_full value {other:?}; use wait or fail"
            ))),
        }
    }
}

/// **How an exchange routes**: to every bound queue, by exact routing key, or
/// by routing-key pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// Every queue bound to the exchange gets every message (zamqp's default).
    #[default]
    Fanout,
    /// A queue gets the messages whose routing key equals its binding key.
    Direct,
    /// A queue gets the messages whose routing key matches its binding
    /// pattern (`orders.*`, `#.created`).
    Topic,
}

impl ExchangeKind {
    /// The name AMQP uses for this kind: `fanout`, `direct` or `topic`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fanout => "fanout",
            Self::Direct => "direct",
            Self::Topic => "topic",
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fanout" => Ok(Self::Fanout),
            "direct" => Ok(Self::Direct),
            "topic" => Ok(Self::Topic),
            other => Err(config_error(format!(
                "unknown exchange kind {other:?}; use fanout, direct or topic"
            ))),
        }
    }
}

/// One broker address of a host list: a name or IP address (IPv6 in
/// brackets), and its port when it names one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    name: String,
    port: Option<u16>,
}

impl Host {
    /// Reads `host`, `host:port` or `[ipv6]:port`.
    fn parse(text: &str) -> std::result::Result<Self, String> {
        if text.is_empty() {
            return Err("an empty host".to_owned());
        }
        if text.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!("host {text:?} is not a host name or host:port"));
        }
        let parsed = url::Url::parse(&format!("amqp://{text}")).map_err(|e| match e {
            url::ParseError::InvalidPort => format!("bad port in host {text:?}"),
            url::ParseError::InvalidIpv6Address => {
                format!("bad IPv6 address in host {text:?}")
            }
            other => format!("host {text:?} is not a host name or host:port ({other})"),
        })?;
        match parsed.host_str() {
            Some(name) if !name.is_empty() => Ok(Self {
                name: name.to_owned(),
                port: parsed.port(),
            }),
            _ => Err(format!("host {text:?} has no host name")),
        }
    }
}

/// **The type of the durable queues tidings declares**: group and named
/// queues, their retry queues and the dead-letter queue. Set it with
/// [`AmqpProps::with_queue_type`] or `queue_type=` in the URL.
///
/// A queue's type is fixed when the broker first declares it: declaring
/// one of the same name with another type fails with
/// [`ErrorKind::Broker`] saying so (move the queue, or set the type it
/// has). Broadcast queues are exclusive to their connection and always
/// classic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// **Quorum queues**, for a cluster: replicated by Raft over its nodes,
    /// so a queue and its messages survive the loss of a minority of
    /// nodes (they work on a single node too). A message delivered more
    /// than the [delivery limit](AmqpProps::with_delivery_limit) times
    /// goes to the dead letters.
    Quorum,
    /// **Classic queues** (the default): kept on one node. Cheaper per
    /// message, but while that node is down its queues cannot be used
    /// (and declaring them again fails), and when its disk is lost so are
    /// their messages.
    #[default]
    Classic,
}

impl QueueType {
    /// The name RabbitMQ uses: `quorum` or `classic`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            other => Err(config_error(format!(
                "unknown queue_type {other:?}; use quorum or classic"
            ))),
        }
    }
}

/// How often a quorum queue delivers a message by default before it goes
/// to the dead letters (RabbitMQ 4's own default).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

impl Default for AmqpProps {
    /// The broker on `localhost:5672`, user `guest`, virtual host `/`, a
    /// fanout exchange named `tidings`, the bincode codec, classic queues.
    fn default() -> Self {
        Self {
            hosts: vec![Host {
                name: "localhost".to_owned(),
                port: None,
            }],
            hosts_error: None,
            port: None,
            shuffle_hosts: true,
            queue_type: QueueType::Classic,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            user: "guest".to_owned(),
            password: "guest".to_owned(),
            vhost: "/".to_owned(),
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            external_auth: false,
            passive: false,
            exchange: DEFAULT_EXCHANGE.to_owned(),
            kind: ExchangeKind::Fanout,
            heartbeat: Some(Duration::from_secs(60)),
            prefetch: 256,
            connection_name: None,
            connect_timeout: Duration::from_secs(10),
            max_message_size: 4 * 1024 * 1024,
            codec: Arc::new(codec::Bincode),
            compression: Compression::None,
            compression_threshold: DEFAULT_COMPRESSION_THRESHOLD,
            buffer_events: 8192,
            buffer_bytes: 64 * 1024 * 1024,
            when_full: WhenFull::Wait,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
        }
    }
}

impl AmqpProps {
    /// **Parses an `amqp://` or `amqps://` URL.**
    ///
    /// `amqp[s]://user:password@host:port/vhost?key=value&..`, where user,
    /// password and vhost are percent-decoded (`%2f` is `/`; a missing or
    /// empty vhost means `/`). Query keys, all optional:
    ///
    /// | key | meaning | example |
    /// |---|---|---|
    /// | `exchange` | exchange name | `orders` |
    /// | `kind` | `fanout`, `direct` or `topic` | `topic` |
    /// | `heartbeat` | seconds, `0` turns heartbeats off | `30` |
    /// | `prefetch` | unacknowledged deliveries per consumer | `500` |
    /// | `connection_name` | shown in the broker's management UI | `billing` |
    /// | `connection_timeout` | milliseconds to connect | `5000` |
    /// | `max_message_size` | largest body sent or accepted, in bytes | `4194304` |
    /// | `codec` | `bincode` or `json` | `json` |
    /// | `compression` | `none`, `gzip`, `zstd` (feature `zstd`) or `lz4` (feature `lz4`): how a bus compresses what it publishes | `gzip` |
    /// | `compression_threshold` | bodies shorter than this many bytes are not compressed (default 1024) | `4096` |
    /// | `cacertfile` | PEM file of the CA that signed the broker's certificate | `/etc/ssl/ca.pem` |
    /// | `certfile` | PEM file of the client's certificate (chain), for mutual TLS | `/etc/ssl/app.pem` |
    /// | `keyfile` | PEM file of the client certificate's private key | `/etc/ssl/app.key` |
    /// | `auth_mechanism` | `plain` (user and password, the default) or `external` (the client certificate) | `external` |
    /// | `passive` | `true`: declare nothing, only check that the exchanges and queues exist | `true` |
    /// | `buffer_events` | events a producer holds until the broker confirms them | `8192` |
    /// | `buffer_bytes` | bytes a producer holds until the broker confirms them | `67108864` |
    /// | `when_full` | `wait` or `fail` when the buffer is full or the broker blocks | `fail` |
    /// | `reconnect_min` | milliseconds before the first reconnect attempt | `100` |
    /// | `reconnect_max` | the longest wait between reconnect attempts, ms | `10000` |
    /// | `queue_type` | `classic` (the default) or `quorum` (on a cluster): the type of the durable queues declared | `quorum` |
    /// | `delivery_limit` | deliveries of a message by a quorum queue before it is dead-lettered | `20` |
    /// | `shuffle_hosts` | `false`: try the hosts in the order written, not at random | `false` |
    ///
    /// **Several hosts**, the nodes of a cluster, are separated by commas:
    /// `amqp://user:password@rabbit-1:5672,rabbit-2:5673,rabbit-3/vhost`
    /// (a host without a port takes the scheme's). See
    /// [`with_hosts`](AmqpProps::with_hosts).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] naming the bad part: an unknown scheme, a
    /// bad port, an unknown kind or codec, an unknown query key, a value that
    /// is not a number, a name over 255 bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidings::AmqpProps;
    ///
    /// let props = AmqpProps::from_url("amqps://bob:p%40ss@broker:5671/prod?cacertfile=/etc/ca.pem")?;
    /// assert!(props.tls());
    /// assert_eq!(props.user(), "bob");
    /// assert_eq!(props.vhost(), "prod");
    ///
    /// let err = AmqpProps::from_url("amqp://localhost?colour=blue").unwrap_err();
    /// assert_eq!(err.to_string(), "unknown query key \"colour\" in AMQP URL; known keys: exchange, kind, heartbeat, prefetch, connection_name, connection_timeout, max_message_size, codec, compression, compression_threshold, cacertfile, certfile, keyfile, auth_mechanism, passive, buffer_events, buffer_bytes, when_full, reconnect_min, reconnect_max, queue_type, delivery_limit, shuffle_hosts");
    /// # Ok::<(), tidings::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self> {
        // Several hosts: the URL parser reads one, so it gets the first and
        // the rest are read one by one.
        let (first_only, more_hosts) = split_host_list(url);
        let url = first_only.as_str();
        let parsed = url::Url::parse(url).map_err(|e| {
            let part = match e {
                url::ParseError::InvalidPort => "bad port".to_owned(),
                url::ParseError::EmptyHost => "missing host".to_owned(),
                url::ParseError::RelativeUrlWithoutBase => {
                    "missing scheme; start with amqp:// or amqps://".to_owned()
                }
                other => other.to_string(),
            };
            config_error(format!(
                "invalid AMQP URL {:?}: {part}{}",
                redact_url_text(url),
                if has_raw_at(url) {
                    PERCENT_ENCODE_HINT
                } else {
                    ""
                }
            ))
        })?;
        // A password with a raw `/ ? #` in it can parse as something else: in
        // `amqp://app:12/S3cret@rabbit` the host is `app`, the port 12 and the
        // virtual host `S3cret@rabbit`. An `@` outside the user info means
        // the user info was not where it was meant to be.
        if parsed.username().is_empty() && parsed.password().is_none() && has_raw_at(url) {
            return Err(config_error(format!(
                "AMQP URL {:?} has an '@' after the host{PERCENT_ENCODE_HINT}, and an '@' in a virtual host or query value as %40",
                redact_url_text(url)
            )));
        }
        let tls = match parsed.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => {
                return Err(config_error(format!(
                    "unknown scheme {other:?} in AMQP URL; use amqp:// or amqps://"
                )));
            }
        };
        let host = match parsed.host_str() {
            Some(host) if !host.is_empty() => host.to_owned(),
            _ => return Err(config_error("missing host in AMQP URL")),
        };
        let mut props = Self {
            hosts: vec![Host {
                name: host,
                port: None,
            }],
            tls,
            ..Self::default()
        };
        props.port = parsed.port();
        if let Some(more) = more_hosts {
            // Each host of a list keeps its own port; one without takes the
            // scheme's.
            props.hosts[0].port = props.port.take();
            for (i, text) in more.iter().enumerate() {
                let host = Host::parse(text).map_err(|e| {
                    config_error(format!(
                        "{e} (host {} of the list in the AMQP URL); write hosts as host1:port1,host2:port2",
                        i + 2
                    ))
                })?;
                props.hosts.push(host);
            }
        }
        if !parsed.username().is_empty() {
            props.user = decode_part(parsed.username(), "user")?;
            props.password = decode_part(parsed.password().unwrap_or(""), "password")?;
        }
        let vhost = parsed.path().strip_prefix('/').unwrap_or(parsed.path());
        if vhost.contains('/') {
            return Err(config_error(format!(
                "virtual host {vhost:?} in AMQP URL contains '/'; write it as %2f"
            )));
        }
        props.vhost = match decode_part(vhost, "virtual host")? {
            v if v.is_empty() => "/".to_owned(),
            v => v,
        };
        for (key, value) in parsed.query_pairs() {
            props.set_query(&key, &value)?;
        }
        props.validate()?;
        Ok(props)
    }

    /// **Reads the URL in the `AMQP_URL` environment variable**, or returns
    /// the [defaults](AmqpProps::default) (`amqp://guest:guest@localhost:5672/%2f`)
    /// when it is not set.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] when `AMQP_URL` is set but not valid
    /// Unicode or not a valid URL (see [`from_url`](AmqpProps::from_url)).
    pub fn from_env() -> Result<Self> {
        match std::env::var("AMQP_URL") {
            Ok(url) => Self::from_url(&url),
            Err(std::env::VarError::NotPresent) => Ok(Self::default()),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(config_error("AMQP_URL is not valid unicode"))
            }
        }
    }

    fn set_query(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "exchange" => self.exchange = value.to_owned(),
            "kind" => self.kind = value.parse()?,
            "heartbeat" => {
                let secs: u16 = parse_number(key, value)?;
                self.heartbeat = (secs > 0).then(|| Duration::from_secs(secs.into()));
            }
            "prefetch" => self.prefetch = parse_number(key, value)?,
            "connection_name" => self.connection_name = Some(value.to_owned()),
            "connection_timeout" => {
                self.connect_timeout = Duration::from_millis(parse_number(key, value)?);
            }
            "max_message_size" => self.max_message_size = parse_number(key, value)?,
            "codec" => self.codec = codec::builtin(value)?,
            "compression" => self.compression = value.parse::<Compression>()?.check_built()?,
            "compression_threshold" => self.compression_threshold = parse_number(key, value)?,
            "cacertfile" => {
                self.ca_file = Some(PathBuf::from(value));
                self.tls = true;
            }
            "certfile" => {
                self.cert_file = Some(PathBuf::from(value));
                self.tls = true;
            }
            "keyfile" => {
                self.key_file = Some(PathBuf::from(value));
                self.tls = true;
            }
            "auth_mechanism" => {
                self.external_auth = match value.to_ascii_lowercase().as_str() {
                    "plain" => false,
                    "external" => true,
                    other => {
                        return Err(config_error(format!(
                            "unknown auth_mechanism {other:?}; use plain or external"
                        )));
                    }
                }
            }
            "passive" => self.passive = parse_bool(key, value)?,
            "buffer_events" => self.buffer_events = parse_number(key, value)?,
            "buffer_bytes" => self.buffer_bytes = parse_number(key, value)?,
            "queue_type" => self.queue_type = value.parse()?,
            "delivery_limit" => self.delivery_limit = parse_number(key, value)?,
            "shuffle_hosts" => self.shuffle_hosts = parse_bool(key, value)?,
            "when_full" => self.when_full = value.parse()?,
            "reconnect_min" => {
                self.reconnect_min = Duration::from_millis(parse_number(key, value)?)
            }
            "reconnect_max" => {
                self.reconnect_max = Duration::from_millis(parse_number(key, value)?)
            }
            other => {
                return Err(config_error(format!(
                    "unknown query key {other:?} in AMQP URL; known keys: exchange, kind, heartbeat, prefetch, connection_name, connection_timeout, max_message_size, codec, compression, compression_threshold, cacertfile, certfile, keyfile, auth_mechanism, passive, buffer_events, buffer_bytes, when_full, reconnect_min, reconnect_max, queue_type, delivery_limit, shuffle_hosts"
                )));
            }
        }
        Ok(())
    }

    /// **Checks the settings** and names the first bad one. Connecting calls
    /// this, so calling it yourself is only needed to fail early.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for an empty host or exchange name, an
    /// exchange name over 255 bytes, a zero connect timeout or maximum
    /// message size, or a CA file without TLS.
    pub fn validate(&self) -> Result<()> {
        if let Some(error) = &self.hosts_error {
            return Err(config_error(format!(
                "{error}; give hosts as \"host\", \"host:port\" or \"[ipv6]:port\""
            )));
        }
        if self.hosts.is_empty() || self.hosts.iter().any(|h| h.name.is_empty()) {
            return Err(config_error(
                "host is empty; set one with with_host or with_hosts",
            ));
        }
        if self.delivery_limit == 0 {
            return Err(config_error(
                "delivery limit is zero; allow at least one delivery",
            ));
        }
        check_name("exchange name", &self.exchange)?;
        if self.exchange.is_empty() {
            return Err(config_error(
                "exchange name is empty; tidings needs a named exchange to publish to",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(config_error(
                "connect timeout is zero; use a positive duration",
            ));
        }
        if self.max_message_size == 0 {
            return Err(config_error(
                "max message size is zero; use a positive size",
            ));
        }
        if self.buffer_events == 0 || self.buffer_bytes == 0 {
            return Err(config_error(
                "publish buffer is zero; allow at least one event and one byte",
            ));
        }
        if self.buffer_bytes > u32::MAX as usize {
            return Err(config_error(format!(
                "publish buffer of {} bytes is over the limit of {} bytes",
                self.buffer_bytes,
                u32::MAX
            )));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return Err(config_error(format!(
                "reconnect delays {:?}..{:?} are invalid; the first must be positive and at most the second",
                self.reconnect_min, self.reconnect_max
            )));
        }
        if self.ca_file.is_some() && !self.tls {
            return Err(config_error(
                "a CA file is set but TLS is off; use amqps:// or with_tls(true)",
            ));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(config_error(
                    "a client certificate file is set without its key file; set keyfile too",
                ));
            }
            (None, Some(_)) => {
                return Err(config_error(
                    "a client key file is set without its certificate file; set certfile too",
                ));
            }
            (Some(_), Some(_)) if !self.tls => {
                return Err(config_error(
                    "a client certificate is set but TLS is off; use amqps:// or with_tls(true)",
                ));
            }
            _ => {}
        }
        if self.external_auth && self.cert_file.is_none() {
            return Err(config_error(
                "auth_mechanism external logs in with the client certificate, and none is set; set certfile and keyfile",
            ));
        }
        Ok(())
    }

    /// Sets the broker's host name or IP address (default `localhost`),
    /// replacing a host list.
    #[must_use]
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.hosts = vec![Host {
            name: host.into(),
            port: None,
        }];
        self.hosts_error = None;
        self
    }

    /// **Sets several brokers**, the nodes of a cluster: each
    /// `"host"`, `"host:port"` or `"[ipv6]:port"`; a host without a port
    /// takes [`with_port`](Self::with_port)'s, else 5672 (5671 with TLS).
    /// Connecting, and every reconnect, tries them in turn until one
    /// answers, in a random order unless
    /// [`with_shuffled_hosts(false)`](Self::with_shuffled_hosts); credentials, virtual host and
    /// TLS settings apply to each, and with TLS each must present a
    /// certificate for its own name. A host that cannot be read is
    /// reported by [`validate`](Self::validate).
    ///
    /// # Examples
    ///
    /// ```
    /// let props = tidings::AmqpProps::default().with_hosts(["rabbit-1", "rabbit-2:5673", "[::1]:5674"]);
    /// assert_eq!(props.host(), "rabbit-1");
    /// assert_eq!(
    ///     props.addresses().collect::<Vec<_>>(),
    ///     [("rabbit-1", 5672), ("rabbit-2", 5673), ("[::1]", 5674)]
    /// );
    /// assert_eq!(props.redacted_url(), "amqp://guest:***@rabbit-1:5672,rabbit-2:5673,[::1]:5674/%2F?exchange=tidings&kind=fanout");
    /// assert!(tidings::AmqpProps::default().with_hosts(["a", "b:x"]).validate().is_err());
    /// ```
    #[must_use]
    pub fn with_hosts<S: AsRef<str>>(mut self, hosts: impl IntoIterator<Item = S>) -> Self {
        let parsed: std::result::Result<Vec<Host>, String> =
            hosts.into_iter().map(|h| Host::parse(h.as_ref())).collect();
        match parsed {
            Ok(hosts) if hosts.is_empty() => {
                self.hosts_error = Some("the host list is empty".to_owned());
            }
            Ok(hosts) => {
                self.hosts = hosts;
                self.hosts_error = None;
            }
            Err(e) => self.hosts_error = Some(e),
        }
        self
    }

    /// **Whether each connect tries the hosts in a random order** (default
    /// `true`, so that a fleet spreads over the nodes; `shuffle_hosts=` in
    /// the URL). With `false` they are tried in the order given, so the
    /// first that answers is preferred (the nearest node, say). Either
    /// way, a reconnect tries the host just lost last.
    #[must_use]
    pub fn with_shuffled_hosts(mut self, shuffle: bool) -> Self {
        self.shuffle_hosts = shuffle;
        self
    }

    /// Sets the broker's port (default 5672, or 5671 with TLS), for every
    /// host of the list.
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        for host in &mut self.hosts {
            host.port = None;
        }
        self
    }

    /// **Sets the type of the durable queues** declared: group and named
    /// queues and their retry queues (default [`QueueType::Classic`];
    /// `queue_type=` in the URL; on a cluster, [`QueueType::Quorum`]). A
    /// [`Listen`](crate::Listen) or [`Queue`](crate::Queue) can set its
    /// own. Broadcast queues are always exclusive classic queues.
    #[must_use]
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// **How often a quorum queue delivers a message** before it gives up
    /// on it (default [`DEFAULT_DELIVERY_LIMIT`], 20; `delivery_limit=` in
    /// the URL). A delivery handed back unsettled (its consumer's
    /// connection was lost or closed) counts; a failed handler does not,
    /// because tidings retries through its retry queues instead. Past the
    /// limit the broker moves the message to the dead-letter exchange
    /// (`x-death` says `delivery_limit`), so a message that kills every
    /// process that takes it cannot loop for ever. Classic queues have no
    /// such limit.
    #[must_use]
    pub fn with_delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = limit;
        self
    }

    /// The type of the durable queues declared.
    #[must_use]
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// How often a quorum queue delivers a message before dead-lettering it.
    #[must_use]
    pub fn delivery_limit(&self) -> u32 {
        self.delivery_limit
    }

    /// The dead-letter exchange and queue of this exchange:
    /// `<exchange>.dead-letter`.
    pub(crate) fn dead_letter_name(&self) -> String {
        format!("{}.dead-letter", self.exchange())
    }

    /// Whether each connect tries the hosts in a random order.
    #[must_use]
    pub fn shuffled_hosts(&self) -> bool {
        self.shuffle_hosts
    }

    /// **Every broker address**, `(host, port)`, in the order given; the
    /// first is [`host`](Self::host) and [`port`](Self::port).
    pub fn addresses(&self) -> impl Iterator<Item = (&str, u16)> + '_ {
        let default = self.default_port();
        self.hosts
            .iter()
            .map(move |h| (h.name.as_str(), h.port.unwrap_or(default)))
    }

    /// Sets the user name and password (default `guest` / `guest`).
    #[must_use]
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.user = user.into();
        self.password = password.into();
        self
    }

    /// Sets the virtual host (default `/`).
    #[must_use]
    pub fn with_vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = vhost.into();
        self
    }

    /// Turns TLS on or off (default off; `amqps://` turns it on).
    #[must_use]
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Verifies the broker's certificate against the CA in this PEM file
    /// instead of the system's roots, and turns TLS on.
    #[must_use]
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self.tls = true;
        self
    }

    /// **Presents this client certificate** (mutual TLS): `cert` is a PEM
    /// file with the certificate (and any intermediates), `key` a PEM file
    /// with its private key (PKCS#8, PKCS#1 or SEC1). Turns TLS on. The
    /// broker still takes the user and password, unless
    /// [`with_external_auth`](Self::with_external_auth) logs in with the
    /// certificate.
    #[must_use]
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self.tls = true;
        self
    }

    /// **Logs in with the client certificate** (SASL EXTERNAL, RabbitMQ's
    /// `rabbitmq_auth_mechanism_ssl` plugin) instead of a user and
    /// password: the broker takes the user name from the certificate (by
    /// default its subject's distinguished name, or its common name with
    /// `ssl_cert_login_from = common_name`). Needs
    /// [`with_client_cert`](Self::with_client_cert).
    #[must_use]
    pub fn with_external_auth(mut self, on: bool) -> Self {
        self.external_auth = on;
        self
    }

    /// **Declares nothing shared** (default `false`): the exchange, the
    /// dead-letter exchange and queue, group and named queues, their retry
    /// queues and the schema stream are only checked to exist (passive
    /// declares), so the user needs no `configure` permission on them. A
    /// missing one fails with its name. Queues of one connection alone (a
    /// broadcast listener's, and its retry queues) cannot exist beforehand
    /// and are still declared: grant `configure` on their names, or listen
    /// with groups. Bindings are still made (they need `write` on the
    /// queue and `read` on the exchange). See the README's "Least
    /// privilege".
    #[must_use]
    pub fn with_passive(mut self, on: bool) -> Self {
        self.passive = on;
        self
    }

    /// Sets the exchange that carries the events and its kind (default: a
    /// fanout exchange named `tidings`).
    #[must_use]
    pub fn with_exchange(mut self, name: impl Into<String>, kind: ExchangeKind) -> Self {
        self.exchange = name.into();
        self.kind = kind;
        self
    }

    /// Sets the heartbeat interval; `None` turns heartbeats off (default 60 s).
    /// A dead peer is noticed after about two intervals.
    #[must_use]
    pub fn with_heartbeat(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Sets how many unacknowledged deliveries a consumer may hold (default
    /// 256); this bounds a consumer's memory. `0` means no limit.
    #[must_use]
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Names the connection in the broker's management UI and in the
    /// `app-id` of published messages.
    #[must_use]
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// Sets how long connecting may take, TCP, TLS and AMQP handshake
    /// together (default 10 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the largest message body sent or decoded (default 4 MiB): a
    /// larger publish fails at once with [`ErrorKind::MessageTooLarge`],
    /// and a larger delivery is dead-lettered (without its body). Keep it
    /// at or under the broker's own `max_message_size` (RabbitMQ 4's
    /// default is 16 MiB), or the broker refuses such a publish
    /// ([`ErrorKind::Refused`]).
    #[must_use]
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the codec used to encode published messages (default
    /// [`Bincode`](crate::Bincode)). Receivers decode by each message's
    /// `content-type`, so they read both this codec and the built-in ones.
    #[must_use]
    pub fn with_codec(mut self, codec: impl Codec) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// **Compresses what a bus on these props publishes** (default
    /// [`Compression::None`]): each body of at least `threshold` bytes
    /// (default [`DEFAULT_COMPRESSION_THRESHOLD`], 1,024) is compressed
    /// and its `content-encoding` set. Receivers decompress whatever they
    /// send with. The raw [`Producer`](crate::Producer) does not compress.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for an algorithm this build lacks (its
    /// cargo feature is off).
    pub fn with_compression(mut self, compression: Compression, threshold: usize) -> Result<Self> {
        self.compression = compression.check_built()?;
        self.compression_threshold = threshold;
        Ok(self)
    }

    /// **Bounds what each producer holds until the broker confirms it**:
    /// at most `events` messages and `bytes` bytes (defaults 8192 and
    /// 64 MiB), counting those waiting to be sent during an outage and those
    /// sent but not yet confirmed. What happens when it is full is
    /// [`with_when_full`](AmqpProps::with_when_full).
    #[must_use]
    pub fn with_publish_buffer(mut self, events: usize, bytes: usize) -> Self {
        self.buffer_events = events;
        self.buffer_bytes = bytes;
        self
    }

    /// What a publish does when the buffer is full or the broker blocks the
    /// connection (default [`WhenFull::Wait`]).
    #[must_use]
    pub fn with_when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// **How a lost connection is retried**: the first attempt after about
    /// `min` (default 100 ms), each next one after twice as long, at most
    /// `max` (default 10 s), each delay with random jitter (between half
    /// and all of it), for as long as the application runs.
    #[must_use]
    pub fn with_reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// The publish buffer's bounds: `(events, bytes)`.
    #[must_use]
    pub fn publish_buffer(&self) -> (usize, usize) {
        (self.buffer_events, self.buffer_bytes)
    }

    /// What a publish does when the buffer is full or the broker blocks.
    #[must_use]
    pub fn when_full(&self) -> WhenFull {
        self.when_full
    }

    /// The reconnect delays: `(min, max)`.
    #[must_use]
    pub fn reconnect_delay(&self) -> (Duration, Duration) {
        (self.reconnect_min, self.reconnect_max)
    }

    /// The broker's host: the first of the list.
    #[must_use]
    pub fn host(&self) -> &str {
        self.hosts.first().map_or("", |h| h.name.as_str())
    }

    /// The broker's port: the first host's, else the one set, else 5672
    /// (5671 with TLS).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.hosts
            .first()
            .and_then(|h| h.port)
            .unwrap_or_else(|| self.default_port())
    }

    /// The port of a host given without one: [`with_port`](Self::with_port)'s,
    /// else the scheme's (5672, or 5671 with TLS).
    fn default_port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 5671 } else { 5672 })
    }

    /// The user name.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The virtual host.
    #[must_use]
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Whether TLS is on.
    #[must_use]
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The CA file that verifies the broker, if one is set.
    #[must_use]
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The client certificate and key files, if set.
    #[must_use]
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        self.cert_file.as_deref().zip(self.key_file.as_deref())
    }

    /// Whether the login is with the client certificate (SASL EXTERNAL).
    #[must_use]
    pub fn external_auth(&self) -> bool {
        self.external_auth
    }

    /// Whether shared exchanges and queues are only checked, not declared.
    #[must_use]
    pub fn passive(&self) -> bool {
        self.passive
    }

    /// The exchange name.
    #[must_use]
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The exchange kind.
    #[must_use]
    pub fn exchange_kind(&self) -> ExchangeKind {
        self.kind
    }

    /// The heartbeat interval, `None` when heartbeats are off.
    #[must_use]
    pub fn heartbeat(&self) -> Option<Duration> {
        self.heartbeat
    }

    /// Unacknowledged deliveries a consumer may hold; `0` means no limit.
    #[must_use]
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    /// The connection name, if one is set.
    #[must_use]
    pub fn connection_name(&self) -> Option<&str> {
        self.connection_name.as_deref()
    }

    /// How long connecting may take.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The largest message body a consumer decodes.
    #[must_use]
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The codec that encodes published messages.
    #[must_use]
    pub fn codec(&self) -> &Arc<dyn Codec> {
        &self.codec
    }

    /// How a bus on these props compresses, and the body size it starts at.
    #[must_use]
    pub fn compression(&self) -> (Compression, usize) {
        (self.compression, self.compression_threshold)
    }

    /// **The settings as a URL with the password replaced by `***`**, fit
    /// for logs and error messages.
    ///
    /// # Examples
    ///
    /// ```
    /// let props = tidings::AmqpProps::from_url("amqp://app:hunter2@mq:5672/%2f?exchange=orders")?;
    /// assert_eq!(
    ///     props.redacted_url(),
    ///     "amqp://app:***@mq:5672/%2F?exchange=orders&kind=fanout",
    /// );
    /// # Ok::<(), tidings::Error>(())
    /// ```
    #[must_use]
    pub fn redacted_url(&self) -> String {
        self.url_with_password("***")
    }

    /// The URL lapin connects to at one address: credentials, host, port,
    /// vhost, heartbeat.
    pub(crate) fn lapin_uri(&self, host: &str, port: u16) -> lapin::uri::AMQPUri {
        use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
        AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.user.clone(),
                    password: self.password.clone(),
                },
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(
                    self.heartbeat
                        .map_or(0, |d| u16::try_from(d.as_secs().max(1)).unwrap_or(u16::MAX)),
                ),
                connection_timeout: Some(
                    u64::try_from(self.connect_timeout.as_millis()).unwrap_or(u64::MAX),
                ),
                auth_mechanism: self
                    .external_auth
                    .then_some(lapin::uri::SASLMechanism::External),
                ..AMQPQueryString::default()
            },
        }
    }

    fn url_with_password(&self, password: &str) -> String {
        use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
        const PART: &AsciiSet = &NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        let enc = |s: &str| utf8_percent_encode(s, PART).to_string();
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let hosts = self
            .addresses()
            .map(|(host, port)| format!("{host}:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut url = format!(
            "{scheme}://{}:{password}@{hosts}/{}?exchange={}&kind={}",
            enc(&self.user),
            enc(&self.vhost),
            enc(&self.exchange),
            self.kind,
        );
        if let Some(path) = &self.ca_file {
            url.push_str(&format!("&cacertfile={}", enc(&path.to_string_lossy())));
        }
        if let Some((cert, key)) = self.client_cert() {
            url.push_str(&format!(
                "&certfile={}&keyfile={}",
                enc(&cert.to_string_lossy()),
                enc(&key.to_string_lossy())
            ));
        }
        if self.external_auth {
            url.push_str("&auth_mechanism=external");
        }
        if self.passive {
            url.push_str("&passive=true");
        }
        if self.queue_type != QueueType::default() {
            url.push_str(&format!("&queue_type={}", self.queue_type));
        }
        if self.delivery_limit != DEFAULT_DELIVERY_LIMIT {
            url.push_str(&format!("&delivery_limit={}", self.delivery_limit));
        }
        if !self.shuffle_hosts {
            url.push_str("&shuffle_hosts=false");
        }
        url
    }
}

impl fmt::Debug for AmqpProps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpProps")
            .field(
                "hosts",
                &self
                    .addresses()
                    .map(|(host, port)| format!("{host}:{port}"))
                    .collect::<Vec<_>>(),
            )
            .field("shuffle_hosts", &self.shuffle_hosts)
            .field("user", &self.user)
            .field("password", &"***")
            .field("vhost", &self.vhost)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("external_auth", &self.external_auth)
            .field("passive", &self.passive)
            .field("exchange", &self.exchange)
            .field("kind", &self.kind)
            .field("heartbeat", &self.heartbeat)
            .field("prefetch", &self.prefetch)
            .field("connection_name", &self.connection_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("codec", &self.codec.content_type())
            .field("compression", &self.compression)
            .field("compression_threshold", &self.compression_threshold)
            .field("buffer_events", &self.buffer_events)
            .field("buffer_bytes", &self.buffer_bytes)
            .field("when_full", &self.when_full)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .finish()
    }
}

impl FromStr for AmqpProps {
    type Err = Error;

    /// Same as [`AmqpProps::from_url`].
    fn from_str(url: &str) -> Result<Self> {
        Self::from_url(url)
    }
}

/// Checks a name that will become an AMQP short string (exchange, queue,
/// routing key): lapin panics on one over 255 bytes.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(config_error(format!(
            "{what} is {} bytes long, over the AMQP limit of {MAX_NAME_LEN}: {:?}...",
            name.len(),
            truncate(name, 40),
        )));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn config_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidConfig, message)
}

fn decode_part(raw: &str, what: &str) -> Result<String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            config_error(format!(
                "{what} in AMQP URL is not valid percent-encoded UTF-8"
            ))
        })
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(config_error(format!(
            "{key} is {other:?}; use true or false"
        ))),
    }
}

/// Splits a URL with a host list (`amqp://u:p@h1:1,h2:2/vhost`) into the
/// URL with its first host only and the other hosts as written; a URL with
/// one host comes back as it is.
///
/// The hosts run from after the user info's last `@` to the first `/ ? #`
/// after it. A URL with an `@` after the first `/` is left whole: its
/// password holds a raw reserved character, which parsing reports.
fn split_host_list(url: &str) -> (String, Option<Vec<String>>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail.contains('@') {
        return (url.to_owned(), None);
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    if !hosts.contains(',') {
        return (url.to_owned(), None);
    }
    let mut list = hosts.split(',').map(str::to_owned);
    let first = list.next().unwrap_or_default();
    (
        format!("{scheme}://{userinfo}{first}{tail}"),
        Some(list.collect()),
    )
}

fn parse_number<T: FromStr>(key: &str, value: &str) -> Result<T> {
    value.parse().map_err(|_| {
        config_error(format!(
            "query key {key:?} in AMQP URL wants a whole number in range, found {value:?}"
        ))
    })
}

/// How to write a password that holds characters a URL reserves.
const PERCENT_ENCODE_HINT: &str =
    "; if the password contains / ? # @ or :, percent-encode them as %2F %3F %23 %40 %3A";

/// Whether the text after the scheme holds an `@`: user info, or a reserved
/// character of a password that was not percent-encoded.
fn has_raw_at(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(_, rest)| rest.contains('@'))
}

/// Replaces the password in a URL that failed to parse or was misread, so an
/// error message can quote it.
///
/// The user info runs from `://` to the LAST `@`, not to the first `/`: a
/// password may hold a raw `/ ? # @` (which is why the URL did not parse).
/// When an `@` sits in a query or virtual host instead, more than the
/// password is hidden, which is the safe side.
fn redact_url_text(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        let e = AmqpProps::from_url(url).expect_err(url);
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}");
        e.to_string()
    }

    #[test]
    fn full_url_parses_every_part() {
        let p = AmqpProps::from_url(
            "amqps://us%65r:p%40ss%3Aw@h.example:1234/v%2fh?exchange=ex&kind=direct&heartbeat=0\
             &prefetch=7&connection_name=svc&connection_timeout=1500&max_message_size=99\
             &codec=json&cacertfile=/tmp/ca.pem",
        )
        .unwrap();
        assert!(p.tls());
        assert_eq!(p.user(), "user");
        assert_eq!(p.password, "p@ss:w");
        assert_eq!((p.host(), p.port()), ("h.example", 1234));
        assert_eq!(p.vhost(), "v/h");
        assert_eq!(p.exchange(), "ex");
        assert_eq!(p.exchange_kind(), ExchangeKind::Direct);
        assert_eq!(p.heartbeat(), None);
        assert_eq!(p.prefetch(), 7);
        assert_eq!(p.connection_name(), Some("svc"));
        assert_eq!(p.connect_timeout(), Duration::from_millis(1500));
        assert_eq!(p.max_message_size(), 99);
        assert_eq!(p.codec().content_type(), "application/json");
        assert_eq!(p.ca_file(), Some(Path::new("/tmp/ca.pem")));
    }

    #[test]
    fn defaults_fill_what_the_url_leaves_out() {
        let p = AmqpProps::from_url("amqp://localhost").unwrap();
        assert_eq!((p.user(), p.vhost(), p.port()), ("guest", "/", 5672));
        assert_eq!(AmqpProps::from_url("amqp://h/").unwrap().vhost(), "/");
        assert_eq!(AmqpProps::from_url("amqps://h").unwrap().port(), 5671);
        assert_eq!(
            AmqpProps::from_url("amqp://[::1]:5673").unwrap().host(),
            "[::1]"
        );
    }

    #[test]
    fn each_bad_part_is_named() {
        assert!(err("http://localhost").contains("unknown scheme \"http\""));
        assert!(err("amqp://localhost:99999").contains("bad port"));
        assert!(err("amqp://localhost:port").contains("bad port"));
        assert!(err("amqp://localhost?kind=headers").contains("unknown exchange kind \"headers\""));
        assert!(err("amqp://localhost?colour=blue").contains("unknown query key \"colour\""));
        assert!(err("amqp://localhost?prefetch=-1").contains("\"prefetch\""));
        assert!(err("amqp://localhost?heartbeat=70000").contains("\"heartbeat\""));
        assert!(err("amqp://localhost?codec=pickle").contains("unknown codec \"pickle\""));
        assert!(
            err("amqp://localhost?compression=brotli").contains("unknown compression \"brotli\"")
        );
        assert!(err("amqp://localhost?compression_threshold=x").contains("compression_threshold"));
        let props =
            AmqpProps::from_url("amqp://h?compression=gzip&compression_threshold=10").unwrap();
        assert_eq!(props.compression(), (Compression::Gzip, 10));
        assert_eq!(
            AmqpProps::from_url("amqp://h").unwrap().compression(),
            (Compression::None, DEFAULT_COMPRESSION_THRESHOLD)
        );
        assert!(err("amqp://").contains("missing host"));
        assert!(err("localhost:5672").contains("scheme"));
        assert!(err("amqp://h/a/b").contains("%2f"));
        assert!(err("amqp://h?exchange=").contains("exchange name is empty"));
        let long = "x".repeat(256);
        let msg = err(&format!("amqp://localhost?exchange={long}"));
        assert!(msg.contains("256 bytes") && msg.contains("255"), "{msg}");
        assert!(AmqpProps::from_url(&format!("amqp://h?exchange={}", "x".repeat(255))).is_ok());
    }

    #[test]
    fn password_never_shows() {
        let p = AmqpProps::from_url("amqp://u:topsecret@h/%2f").unwrap();
        assert!(!format!("{p:?}").contains("topsecret"));
        assert!(!p.redacted_url().contains("topsecret"));
        let e = err("amqp://u:topsecret@h:99999/");
        assert!(!e.contains("topsecret"), "{e}");
        assert!(e.contains("u:***@h:99999"), "{e}");
    }

    /// Passwords with characters a URL reserves, written raw: whether the
    /// URL fails to parse or parses as something else, no error (Display or
    /// Debug) and no props (Debug) show any part of the password.
    #[test]
    fn raw_reserved_characters_in_a_password_never_show() {
        // (url, the fragments of the password that must not show)
        let cases: &[(&str, &[&str])] = &[
            (
                "amqp://app:Sup3r/S3cret@rabbit:5672/%2f",
                &["Sup3r", "S3cret"],
            ),
            ("amqp://app:Sup3r/S3cret@rabbit/%2f", &["Sup3r", "S3cret"]),
            ("amqp://app:12/S3cret@rabbit:5672/%2f", &["S3cret"]),
            ("amqp://app:12/S3cret@rabbit", &["S3cret"]),
            (
                "amqp://app:Sup3r?S3cret@rabbit:5672/%2f",
                &["Sup3r", "S3cret"],
            ),
            ("amqp://app:12?S3cret@rabbit:5672/%2f", &["S3cret"]),
            ("amqp://app:12?S3cret=x@rabbit", &["S3cret"]),
            (
                "amqp://app:Sup3r#S3cret@rabbit:5672/%2f",
                &["Sup3r", "S3cret"],
            ),
            ("amqp://app:12#S3cret@rabbit", &["S3cret"]),
            (
                "amqp://app:Sup3r@S3cret@rabbit:5672/%2f",
                &["Sup3r", "S3cret"],
            ),
            (
                "amqp://app:Sup3r@S3cret@rabbit:99999/%2f",
                &["Sup3r", "S3cret"],
            ),
            (
                "amqp://app:Sup3r:S3cret@rabbit:99999/%2f",
                &["Sup3r", "S3cret"],
            ),
            (
                "amqp://app:Sup3r/S3cret@[::1]:5672/%2f",
                &["Sup3r", "S3cret"],
            ),
            ("amqp://app:Sup3r/S3cret@[::1]/%2f", &["Sup3r", "S3cret"]),
            ("amqp://app:Sup3r@[::1]:99999/%2f", &["Sup3r"]),
            (
                "amqps://app:Sup3r/S3cret@rabbit:5671/prod?exchange=x",
                &["Sup3r", "S3cret"],
            ),
            ("amqp://:Sup3r/S3cret@rabbit:5672/%2f", &["Sup3r", "S3cret"]),
            ("amqp://app@rabbit:99999/%2f", &[]),
            ("amqp://rabbit:99999/%2f", &[]),
        ];
        for (url, secrets) in cases {
            let shown = match AmqpProps::from_url(url) {
                Ok(props) => format!("{props:?} {}", props.redacted_url()),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}");
                    format!("{e} {e:?}")
                }
            };
            for secret in *secrets {
                assert!(!shown.contains(secret), "{url} shows {secret:?}: {shown}");
            }
        }
    }

    #[test]
    fn a_misplaced_password_says_to_percent_encode() {
        for url in [
            "amqp://app:Sup3r/S3cret@rabbit:5672/%2f",
            "amqp://app:12/S3cret@rabbit",
            "amqp://app:12?S3cret@rabbit",
            "amqp://app:12#S3cret@rabbit",
        ] {
            let e = err(url);
            assert!(e.contains("percent-encode"), "{url}: {e}");
            assert!(e.contains("%2F %3F %23 %40 %3A"), "{url}: {e}");
            assert!(e.contains("app:***@rabbit"), "{url}: {e}");
        }
        // Percent-encoded, the same password is fine.
        let p =
            AmqpProps::from_url("amqp://app:Sup3r%2FS3cret%3F%23%40%3A@rabbit:5672/%2f").unwrap();
        assert_eq!(p.password, "Sup3r/S3cret?#@:");
        assert_eq!(p.host(), "rabbit");
        // No '@': no hint about passwords.
        assert!(!err("amqp://rabbit:99999/").contains("password"));
    }

    #[test]
    fn a_host_list_keeps_each_port() {
        let p = AmqpProps::from_url("amqp://u:p%2Cw@h1:5672,h2:5673,h3,[::1]:5674/prod?exchange=x")
            .unwrap();
        assert_eq!(
            p.addresses().collect::<Vec<_>>(),
            [("h1", 5672), ("h2", 5673), ("h3", 5672), ("[::1]", 5674)]
        );
        assert_eq!((p.host(), p.port(), p.vhost()), ("h1", 5672, "prod"));
        assert_eq!(p.password, "p,w");
        assert_eq!(
            p.redacted_url(),
            "amqp://u:***@h1:5672,h2:5673,h3:5672,[::1]:5674/prod?exchange=x&kind=fanout"
        );
        let back = AmqpProps::from_url(&p.redacted_url()).unwrap();
        assert_eq!(
            back.addresses().collect::<Vec<_>>(),
            p.addresses().collect::<Vec<_>>()
        );
        // TLS: hosts without a port take 5671.
        let tls = AmqpProps::from_url("amqps://a,b:1/").unwrap();
        assert_eq!(tls.addresses().collect::<Vec<_>>(), [("a", 5671), ("b", 1)]);
        // A host without a port takes the scheme's, not the first host's.
        let first = AmqpProps::from_url("amqp://a:1,b/").unwrap();
        assert_eq!(
            first.addresses().collect::<Vec<_>>(),
            [("a", 1), ("b", 5672)]
        );
        // with_port sets every host's port; with_host replaces the list.
        let one = p.clone().with_port(6000);
        assert!(one.addresses().all(|(_, port)| port == 6000));
        assert_eq!(
            p.clone().with_host("z").addresses().collect::<Vec<_>>(),
            [("z", 5672)]
        );
        // A single host keeps its port across with_host, as before.
        let single = AmqpProps::from_url("amqp://h:1234").unwrap().with_host("k");
        assert_eq!((single.host(), single.port()), ("k", 1234));
    }

    #[test]
    fn a_bad_host_list_is_named() {
        let e = err("amqp://h1:5672,h2:99999/");
        assert!(
            e.contains("bad port in host \"h2:99999\"") && e.contains("host 2"),
            "{e}"
        );
        assert!(err("amqp://h1,,h3/").contains("an empty host"));
        assert!(err("amqp://h1,/").contains("an empty host"));
        assert!(err("amqp://,h2/").contains("missing host"));
        assert!(err("amqp://h1,h2:x/").contains("bad port"));
        let e = err("amqp://u:secret@h1,h2:0x/");
        assert!(!e.contains("secret"), "{e}");
        let builder = AmqpProps::default().with_hosts(["a", "b:70000"]);
        assert!(
            builder
                .validate()
                .unwrap_err()
                .to_string()
                .contains("bad port in host \"b:70000\"")
        );
        assert!(
            AmqpProps::default()
                .with_hosts(Vec::<String>::new())
                .validate()
                .is_err()
        );
        assert!(AmqpProps::default().with_hosts(["a/b"]).validate().is_err());
    }

    #[test]
    fn queue_type_and_delivery_limit_parse() {
        let p = AmqpProps::from_url("amqp://h").unwrap();
        assert_eq!(
            (p.queue_type(), p.delivery_limit()),
            (QueueType::Classic, 20)
        );
        assert!(p.shuffled_hosts());
        let p =
            AmqpProps::from_url("amqp://h?queue_type=quorum&delivery_limit=5&shuffle_hosts=false")
                .unwrap();
        assert_eq!((p.queue_type(), p.delivery_limit()), (QueueType::Quorum, 5));
        assert!(!p.shuffled_hosts());
        let back = AmqpProps::from_url(&p.redacted_url()).unwrap();
        assert_eq!(
            (back.queue_type(), back.delivery_limit()),
            (QueueType::Quorum, 5)
        );
        assert!(!back.shuffled_hosts());
        assert!(err("amqp://h?queue_type=stream").contains("unknown queue_type \"stream\""));
        assert!(err("amqp://h?delivery_limit=0").contains("delivery limit is zero"));
        assert!(err("amqp://h?shuffle_hosts=yes").contains("use true or false"));
    }

    #[test]
    fn builder_values_are_checked_by_validate() {
        let long = AmqpProps::default().with_exchange("e".repeat(300), ExchangeKind::Topic);
        assert!(long.validate().unwrap_err().is_config());
        let no_tls = AmqpProps::default().with_ca_file("/ca.pem").with_tls(false);
        assert!(
            no_tls
                .validate()
                .unwrap_err()
                .to_string()
                .contains("TLS is off")
        );
        assert!(AmqpProps::default().validate().is_ok());
    }

    #[test]
    fn redacted_url_parses_back_to_the_same_settings() {
        let p = AmqpProps::default()
            .with_credentials("a b", "pw")
            .with_vhost("/")
            .with_exchange("orders.v1", ExchangeKind::Topic);
        let back = AmqpProps::from_url(&p.redacted_url()).unwrap();
        assert_eq!(back.user(), "a b");
        assert_eq!(back.vhost(), "/");
        assert_eq!(back.exchange(), "orders.v1");
        assert_eq!(back.exchange_kind(), ExchangeKind::Topic);
    }
}
