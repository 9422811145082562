//! `Connection`: one supervised AMQP connection opened from props. It hands
//! out channels, producers and consumers, records what it declares, and
//! recovers by itself when the connection is lost.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicQosOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::sync::{broadcast, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::amqp::connection_event::{ConnectionEvent, ConnectionEvents};
use crate::amqp::props::{AmqpProps, ExchangeKind, QueueType, check_name};
use crate::amqp::queue::Queue;
pub(crate) use crate::amqp::recovery::Link;
use crate::amqp::recovery::{self, Backoff, Supervised};
use crate::amqp::topology::{self, QueueDecl, Topology};
use crate::codec::Codecs;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::lock;

/// **A supervised connection to the broker**, made from [`AmqpProps`]: it
/// declares the exchange, hands out channels, and makes [`Producer`](crate::Producer)s and
/// [`Consumer`](crate::Consumer)s.
///
/// When the connection is lost (a broker restart, a cut TCP connection, a
/// missed heartbeat), it reconnects by itself with capped exponential
/// backoff and jitter ([`AmqpProps::with_reconnect_delay`]), for as long as
/// the application runs: it declares again every exchange, queue and
/// binding declared through it, its [`Consumer`](crate::Consumer)s resume, and its
/// [`Producer`](crate::Producer)s send again what the broker had not confirmed. Watch it
/// happen with [`events`](Connection::events). Channels taken with
/// [`channel`](Connection::channel) belong to one underlying connection and
/// are not recovered.
///
/// A `Connection` is a cheap handle: clones share one TCP connection. Each
/// connection has an instance id (a random UUID) that names its exclusive
/// queues and marks the messages it publishes with their origin.
///
/// # Examples
///
/// ```
/// # async fn example() -> tidings::Result<()> {
/// use tidings::{AmqpProps, Connection, Queue};
///
/// let props = AmqpProps::from_env()?.with_exchange("doc.connection", tidings::ExchangeKind::Fanout);
/// let conn = Connection::connect(&props).await?;
/// let consumer = conn.consumer(&Queue::exclusive()).await?;
/// assert!(consumer.queue().starts_with("doc.connection."));
/// let producer = conn.producer().await?;
/// producer.publish_confirmed(&"hello").await?;
/// # conn.delete_exchange("doc.connection").await?;
/// conn.close().await?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
/// ```
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    props: AmqpProps,
    instance_id: String,
    connection_name: String,
    /// The address (`host:port`) of the current underlying connection, or
    /// of the last one while it is recovered.
    address: Mutex<String>,
    codecs: Codecs,
    exclusive_queues: AtomicU64,
    /// The current underlying connection.
    pub(crate) link: watch::Sender<Link>,
    topology: Mutex<Topology>,
    events: broadcast::Sender<ConnectionEvent>,
    pub(crate) reconnects: AtomicU64,
    pub(crate) blocked: AtomicBool,
    pub(crate) backoff: Backoff,
    /// One channel for declarations and deletions, reopened after the
    /// broker closes it. Short-lived channels are avoided: lapin may hand a
    /// closing channel's id to a new channel, whose late close-ok then
    /// closes the new one.
    admin: tokio::sync::Mutex<Option<lapin::Channel>>,
}

/// How many messages a dead-letter queue holds by default.
pub const DEAD_LETTER_MAX_MESSAGES: u64 = 100_000;
/// How many bytes a dead-letter queue holds by default (1 GiB).
pub const DEAD_LETTER_MAX_BYTES: u64 = 1 << 30;

impl Connection {
    /// **Connects to the broker** and declares the exchange of the props.
    ///
    /// The first connection is not retried, so wrong settings show at once;
    /// once connected, a lost connection is recovered by itself.
    ///
    /// Must be called inside a Tokio runtime (multi-threaded, or a
    /// current-thread runtime that keeps running); the connection's
    /// background tasks run on it.
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::InvalidConfig`] for bad props, or a CA file that cannot
    ///   be read or holds no certificate;
    /// - [`ErrorKind::Authentication`] when the broker refuses the
    ///   credentials or the virtual host;
    /// - [`ErrorKind::Connect`] when the broker cannot be reached, or does not
    ///   finish the handshake within the connect timeout, or what answers is
    ///   not an AMQP server, or TLS fails (the message says which: the
    ///   certificate was not accepted, the server did not answer with TLS);
    /// - [`ErrorKind::Broker`] when the exchange exists with another kind.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: tidings keeps nothing of a connection whose opening was
    /// dropped.
    pub async fn connect(props: &AmqpProps) -> Result<Self> {
        Self::establish(props, true).await
    }

    /// **Connects without declaring the props' exchange**: for a
    /// connection that only works with queues by name (the schema stream,
    /// the dead letters) or with an exchange that must exist already (a
    /// tool inspecting it), which must not create one or bring back one
    /// that its owner deleted.
    ///
    /// # Errors
    ///
    /// As [`connect`](Connection::connect), less the exchange's.
    ///
    /// # Cancel safety
    ///
    /// As [`connect`](Connection::connect).
    pub async fn connect_without_exchange(props: &AmqpProps) -> Result<Self> {
        Self::establish(props, false).await
    }

    async fn establish(props: &AmqpProps, declare_exchange: bool) -> Result<Self> {
        props.validate()?;
        let instance_id = uuid::Uuid::new_v4().to_string();
        let connection_name = props
            .connection_name()
            .map_or_else(|| format!("tidings {instance_id}"), str::to_owned);
        let (amqp, address) = open(props, &connection_name, None).await?;
        let amqp = Arc::new(amqp);
        info!(url = %props.redacted_url(), %address, instance = %instance_id, "connected");
        let (min, max) = props.reconnect_delay();
        let conn = Self {
            inner: Arc::new(Inner {
                codecs: Codecs::new(props.codec().clone()),
                props: props.clone(),
                instance_id,
                connection_name,
                address: Mutex::new(address),
                exclusive_queues: AtomicU64::new(0),
                link: watch::channel(Link::Up(amqp.clone())).0,
                topology: Mutex::default(),
                events: broadcast::channel(64).0,
                reconnects: AtomicU64::new(0),
                blocked: AtomicBool::new(false),
                backoff: Backoff { min, max },
                admin: tokio::sync::Mutex::new(None),
            }),
        };
        if declare_exchange && let Err(e) = conn.declare_exchange().await {
            let _ = amqp
                .close(200, "declaring the exchange failed".into())
                .await;
            return Err(e);
        }
        let span = info_span!("connection", instance = %conn.inner.instance_id);
        tokio::spawn(
            recovery::supervise(Arc::downgrade(&conn.inner), conn.link()).instrument(span),
        );
        Ok(conn)
    }

    /// The props this connection was made from.
    #[must_use]
    pub fn props(&self) -> &AmqpProps {
        &self.inner.props
    }

    /// This connection's instance id: a random UUID, the `x-origin` header of
    /// what it publishes and part of its exclusive queue names.
    #[must_use]
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// **The broker address in use**, `host:port`: the host of the props'
    /// list this connection reached (while it recovers, the one it lost).
    #[must_use]
    pub fn address(&self) -> String {
        lock(&self.inner.address).clone()
    }

    /// Whether the connection is up now (`false` while it recovers and
    /// after [`close`](Connection::close)).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        matches!(&*self.inner.link.borrow(), Link::Up(amqp) if amqp.status().connected())
    }

    /// Whether the broker has blocked this connection (a resource alarm).
    #[must_use]
    pub fn is_blocked(&self) -> bool {
        self.inner.blocked.load(Ordering::Relaxed)
    }

    /// How many times the connection was recovered after being lost.
    #[must_use]
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// **What happens to the connection**, as a stream: disconnected (with
    /// the reason), failed reconnect attempts, recovered, blocked and
    /// unblocked by the broker, closed. It starts with
    /// [`ConnectionEvent::Connected`] when the connection is up.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn example() -> tidings::Result<()> {
    /// use tidings::{AmqpProps, Connection, ConnectionEvent};
    /// use tokio_stream::StreamExt;
    ///
    /// let conn = Connection::connect(&AmqpProps::from_env()?.with_exchange("doc.events", tidings::ExchangeKind::Fanout)).await?;
    /// let mut events = conn.events();
    /// assert_eq!(events.next().await, Some(ConnectionEvent::Connected { address: conn.address() }));
    /// tokio::spawn(async move {
    ///     while let Some(event) = events.next().await {
    ///         eprintln!("broker connection: {event}");
    ///     }
    /// });
    /// # conn.delete_exchange("doc.events").await?;
    /// conn.close().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
    /// ```
    #[must_use]
    pub fn events(&self) -> ConnectionEvents {
        let receiver = self.inner.events.subscribe();
        let first = self.is_connected().then(|| ConnectionEvent::Connected {
            address: self.address(),
        });
        ConnectionEvents::new(first, receiver)
    }

    /// The current underlying connection, waiting while it is being
    /// recovered; `None` once closed.
    pub(crate) async fn up(&self) -> Option<Arc<lapin::Connection>> {
        let mut link = self.inner.link.subscribe();
        let found = link
            .wait_for(|l| !matches!(l, Link::Down))
            .await
            .ok()
            .map(|l| l.clone());
        match found {
            Some(Link::Up(amqp)) => Some(amqp),
            _ => None,
        }
    }

    /// The current underlying connection, waiting at most the connect
    /// timeout while it is being recovered.
    async fn up_within_timeout(&self) -> Result<Arc<lapin::Connection>> {
        let timeout = self.inner.props.connect_timeout();
        match tokio::time::timeout(timeout, self.up()).await {
            Ok(Some(amqp)) => Ok(amqp),
            Ok(None) => Err(Error::new(ErrorKind::Closed, "the connection is closed")),
            Err(_) => Err(Error::new(
                ErrorKind::Connect,
                format!(
                    "the connection to the broker is down and was not recovered within {timeout:?}; it keeps trying"
                ),
            )),
        }
    }

    /// The largest frame the broker accepts on the current connection (the
    /// negotiated `frame_max`; RabbitMQ's default while none is up).
    pub(crate) fn frame_max(&self) -> usize {
        match &*self.inner.link.borrow() {
            Link::Up(amqp) => {
                usize::try_from(amqp.configuration().frame_max()).unwrap_or(usize::MAX)
            }
            _ => 131_072,
        }
    }

    /// Watches which underlying connection is in use.
    pub(crate) fn link(&self) -> watch::Receiver<Link> {
        self.inner.link.subscribe()
    }

    /// Whether the application closed the connection.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(&*self.inner.link.borrow(), Link::Closed)
    }

    /// **Opens a new channel** for direct use of the AMQP API. The channel
    /// belongs to the current underlying connection: it is not recovered.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the connection is closed,
    /// [`ErrorKind::Connect`] when it is down for longer than the connect
    /// timeout, [`ErrorKind::Broker`] when the broker refuses another
    /// channel.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a channel whose opening is dropped is closed with it.
    pub async fn channel(&self) -> Result<lapin::Channel> {
        self.up_within_timeout()
            .await?
            .create_channel()
            .await
            .map_err(|e| Error::amqp("opening a channel", e))
    }

    /// The channel for declarations: the open one, or a new one.
    pub(super) async fn admin_channel(&self) -> Result<lapin::Channel> {
        let mut admin = self.inner.admin.lock().await;
        if let Some(channel) = admin.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self.channel().await?;
        *admin = Some(channel.clone());
        Ok(channel)
    }

    /// **Declares the exchange of the props** (durable, of the props' kind).
    /// [`connect`](Connection::connect) already did; declaring again is
    /// harmless.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Broker`] when an exchange of that name exists with
    /// another kind or durability.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, the declaration may or may not have happened;
    /// declarations are idempotent, so repeat it.
    pub async fn declare_exchange(&self) -> Result<()> {
        let props = &self.inner.props;
        let kind = match props.exchange_kind() {
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        };
        let name = short(props.exchange())?;
        let channel = self.admin_channel().await?;
        let passive = props.passive();
        topology::declare_exchange(&channel, name.clone(), kind.clone(), passive).await?;
        self.topology().exchange(name, kind, passive);
        debug!(exchange = %props.exchange(), kind = %props.exchange_kind(), "exchange declared");
        Ok(())
    }

    /// **Declares the dead-letter exchange and queue** of the props'
    /// exchange, both named `<exchange>.dead-letter` (a durable fanout
    /// exchange and a durable queue bound to it); returns the name. The
    /// queue holds at most [`DEAD_LETTER_MAX_MESSAGES`] messages and
    /// [`DEAD_LETTER_MAX_BYTES`] bytes and refuses more (the publisher of a
    /// dead letter hears it and says so), so poison cannot fill the
    /// broker's disk.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Broker`] when the broker refuses a declaration, for
    /// example because the queue exists with other limits (delete it, or
    /// declare with the same limits).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, the declaration may or may not have happened;
    /// declarations are idempotent, so repeat it.
    pub async fn declare_dead_letters(&self) -> Result<String> {
        self.declare_dead_letters_bounded(DEAD_LETTER_MAX_MESSAGES, DEAD_LETTER_MAX_BYTES)
            .await
    }

    /// As [`declare_dead_letters`](Self::declare_dead_letters), with these
    /// limits.
    pub(crate) async fn declare_dead_letters_bounded(
        &self,
        max_messages: u64,
        max_bytes: u64,
    ) -> Result<String> {
        let name = self.inner.props.dead_letter_name();
        check_name("dead-letter exchange name", &name)?;
        let limit = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        let mut arguments = FieldTable::default();
        // Always a classic queue, whatever the props' queue type: listing
        // and replaying dead letters takes each and gives back the others,
        // which a classic queue does at once and in place, and a quorum
        // queue later, in another order, counting each as a delivery.
        arguments.insert("x-max-length".into(), limit(max_messages));
        arguments.insert("x-max-length-bytes".into(), limit(max_bytes));
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        self.declare_fanout_queue(&name, arguments).await?;
        Ok(name)
    }

    /// Declares the durable fanout exchange `name` and the durable queue of
    /// the same name bound to it, with `arguments` (or, passive, checks
    /// that both exist).
    async fn declare_fanout_queue(&self, name: &str, arguments: FieldTable) -> Result<()> {
        let channel = self.admin_channel().await?;
        let kind = lapin::ExchangeKind::Fanout;
        let passive = self.inner.props.passive();
        topology::declare_exchange(&channel, short(name)?, kind.clone(), passive).await?;
        self.topology().exchange(short(name)?, kind, passive);
        let queue = QueueDecl {
            name: short(name)?,
            options: QueueDeclareOptions {
                durable: true,
                passive,
                ..QueueDeclareOptions::default()
            },
            arguments,
            bindings: vec![(short(name)?, ShortString::from(""))],
        };
        // Not recorded for recovery: the queue is durable, so it is still
        // there after a reconnect, and on a cluster declaring it again
        // would fail, holding up the recovery, while its node is down.
        match topology::declare_queue(&channel, &queue).await {
            Ok(()) => Ok(()),
            Err(e) if is_home_node_down(&e) => {
                warn!(queue = %name, error = %e, "the queue's node is down; what is sent to it is refused until the node is back");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// **Declares the delay queue for `delay_ms`** and the fanout exchange
    /// in front of it, both `<exchange>.delay.<ms>`: a message published to
    /// that exchange waits in the queue for the delay, then the broker
    /// dead-letters it to the exchange of the props with its own routing
    /// key (the retry queues' mechanism, no plugin). One queue per delay,
    /// because messages expire only at a queue's head; durable, and
    /// deleted by the broker once unused for ten minutes longer than its
    /// delay (declaring it again is a use). Returns the exchange's name.
    pub(crate) async fn declare_delay(&self, delay_ms: u32) -> Result<String> {
        let props = &self.inner.props;
        let name = format!("{}.delay.{delay_ms}", props.exchange());
        check_name("delay queue name", &name)?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(props.exchange().into()),
        );
        arguments.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay_ms.into()),
        );
        arguments.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(i64::from(delay_ms) + 600_000),
        );
        self.declare_fanout_queue(&name, arguments).await?;
        Ok(name)
    }

    /// **Declares a queue and binds it** to the exchange of the props;
    /// returns its name (chosen by tidings for an exclusive queue).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a bad queue name or binding key,
    /// [`ErrorKind::Broker`] when the broker refuses the declaration (for
    /// example, a queue of that name exists with other settings).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, the declaration may or may not have happened;
    /// declarations are idempotent, so repeat it.
    pub async fn declare_queue(&self, queue: &Queue) -> Result<String> {
        let declared = self.queue_decl(queue)?;
        let channel = self.admin_channel().await?;
        topology::declare_queue(&channel, &declared).await?;
        let name = declared.name.to_string();
        debug!(queue = %name, durable = queue.is_durable(), "queue declared");
        self.topology().queue(declared);
        Ok(name)
    }

    /// What declaring `queue` means on this connection.
    pub(super) fn queue_decl(&self, queue: &Queue) -> Result<QueueDecl> {
        queue.check()?;
        let props = &self.inner.props;
        let keys = queue.binding_keys(props.exchange_kind())?;
        let name = match queue.name() {
            Some(name) => name.to_owned(),
            None => {
                let n = self.inner.exclusive_queues.fetch_add(1, Ordering::Relaxed);
                format!("{}.{}.{n}", props.exchange(), self.inner.instance_id)
            }
        };
        check_name("queue name", &name).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("{e}; exclusive queues are named <exchange>.<instance-id>.<n>, so shorten the exchange name"),
            )
        })?;
        // An exclusive queue goes with its connection or its last consumer;
        // it is declared again by name after a reconnect.
        let options = QueueDeclareOptions {
            // Least privilege: what is shared is only checked; a queue of
            // this connection alone cannot exist before it.
            passive: queue.is_existing() || (props.passive() && queue.is_durable()),
            durable: queue.is_durable(),
            exclusive: !queue.is_durable() && !queue.is_shared(),
            auto_delete: !queue.is_durable(),
            ..QueueDeclareOptions::default()
        };
        let mut arguments = FieldTable::default();
        if !options.passive && queue.type_under(props.queue_type()) == QueueType::Quorum {
            quorum_arguments(&mut arguments, queue, props);
        }
        if let Some(target) = queue.dead_letter_to() {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(target.into()),
            );
        }
        if let Some(ttl) = queue.message_ttl() {
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl.into()));
        }
        if let Some(expires) = queue.expires() {
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(expires.into()));
        }
        let exchange = short(props.exchange())?;
        let bindings = keys
            .iter()
            .map(|key| Ok((exchange.clone(), short(key)?)))
            .collect::<Result<_>>()?;
        Ok(QueueDecl {
            name: short(&name)?,
            options,
            arguments,
            bindings,
        })
    }

    /// Declares a recorded queue again on `channel` (a consumer resuming
    /// after its queue was deleted under it).
    pub(crate) async fn redeclare_queue(&self, channel: &lapin::Channel, name: &str) -> Result<()> {
        let declared = self.topology().find_queue(name).cloned();
        match declared {
            Some(queue) => topology::declare_queue(channel, &queue).await,
            None => Ok(()),
        }
    }

    pub(super) fn topology(&self) -> std::sync::MutexGuard<'_, Topology> {
        lock(&self.inner.topology)
    }

    /// **Deletes a queue** by name; returns how many messages it held.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Broker`] when the broker refuses, for example because
    /// another connection holds the queue exclusively.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, the deletion may or may not have happened;
    /// deleting again is harmless.
    pub async fn delete_queue(&self, name: &str) -> Result<u32> {
        self.topology().remove_queue(name);
        self.admin_channel()
            .await?
            .queue_delete(short(name)?, QueueDeleteOptions::default())
            .await
            .map_err(|e| Error::amqp(&format!("deleting queue {name:?}"), e))
    }

    /// **Deletes an exchange** by name.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Broker`] when the broker refuses.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, the deletion may or may not have happened;
    /// deleting again is harmless.
    pub async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.topology().remove_exchange(name);
        self.admin_channel()
            .await?
            .exchange_delete(short(name)?, ExchangeDeleteOptions::default())
            .await
            .map_err(|e| Error::amqp(&format!("deleting exchange {name:?}"), e))
    }

    /// Opens a channel with the props' prefetch on `amqp`.
    pub(crate) async fn consumer_channel(
        &self,
        amqp: &lapin::Connection,
    ) -> Result<lapin::Channel> {
        let channel = amqp
            .create_channel()
            .await
            .map_err(|e| Error::amqp("opening a channel", e))?;
        channel
            .basic_qos(self.inner.props.prefetch(), BasicQosOptions::default())
            .await
            .map_err(|e| Error::amqp("setting the prefetch", e))?;
        Ok(channel)
    }

    /// **Closes the connection** and every channel on it, and stops
    /// recovering it. Unacknowledged deliveries go back to their queues;
    /// messages its producers still held unconfirmed are reported failed.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] if it was already closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and safe to call twice: the connection is marked closed
    /// first, so it is not recovered whatever happens to the future.
    pub async fn close(&self) -> Result<()> {
        let previous = self.inner.link.send_replace(Link::Closed);
        if !matches!(previous, Link::Closed) {
            self.inner.emit(ConnectionEvent::Closed);
        }
        match previous {
            // A connection that died just now may never answer.
            Link::Up(amqp) => {
                let timeout = self.inner.props.connect_timeout();
                tokio::time::timeout(timeout, close_amqp(&amqp))
                    .await
                    .unwrap_or_else(|_| {
                        debug!(
                            "the broker did not answer the close in time; the connection is dropped"
                        );
                        Ok(())
                    })
            }
            Link::Down => Ok(()),
            Link::Closed => Err(Error::new(
                ErrorKind::Closed,
                "the connection is already closed",
            )),
        }
    }

    pub(crate) fn codecs(&self) -> &Codecs {
        &self.inner.codecs
    }
}

impl Supervised for Inner {
    fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    fn set_link(&self, link: Link) {
        self.link.send_if_modified(|current| {
            if matches!(current, Link::Closed) {
                return false;
            }
            *current = link;
            true
        });
    }

    fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
    }

    fn emit(&self, event: ConnectionEvent) {
        let _ = self.events.send(event);
    }

    fn backoff(&self) -> Backoff {
        self.backoff
    }

    fn recovered(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::count("tidings_reconnects_total", "", "");
    }

    /// A new underlying connection with the topology declared again, and
    /// its address.
    async fn reopen(&self) -> Result<(Arc<lapin::Connection>, String)> {
        let lost = lock(&self.address).clone();
        let (amqp, address) = open(&self.props, &self.connection_name, Some(&lost)).await?;
        let amqp = Arc::new(amqp);
        let replayed = async {
            let channel = amqp
                .create_channel()
                .await
                .map_err(|e| Error::amqp("opening a channel", e))?;
            let topology = lock(&self.topology).clone();
            topology.replay(&channel).await?;
            Ok::<_, Error>(channel)
        };
        match replayed.await {
            Ok(channel) => {
                *self.admin.lock().await = Some(channel);
                *lock(&self.address) = address.clone();
                Ok((amqp, address))
            }
            Err(e) => {
                let _ = amqp
                    .close(200, "declaring the topology again failed".into())
                    .await;
                Err(e)
            }
        }
    }
}

/// Whether declaring a durable classic queue failed because the cluster
/// node that holds it is down (`NOT_FOUND - home node ... is down or
/// inaccessible`).
fn is_home_node_down(error: &Error) -> bool {
    let text = error.to_string();
    text.contains("home node") && text.contains("down or inaccessible")
}

/// The arguments that make `queue` a quorum queue. A retry queue
/// dead-letters back at least once (the broker keeps a message until the
/// queue it goes back to has it, which needs `reject-publish`); a queue
/// consumed from dead-letters a message delivered `delivery_limit` times to
/// the props' dead-letter exchange, so a message that kills its consumers
/// cannot loop for ever.
fn quorum_arguments(arguments: &mut FieldTable, queue: &Queue, props: &AmqpProps) {
    let text = |s: &str| AMQPValue::LongString(s.into());
    arguments.insert("x-queue-type".into(), text("quorum"));
    if queue.dead_letter_to().is_some() {
        arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        arguments.insert("x-overflow".into(), text("reject-publish"));
    } else {
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(props.delivery_limit().into()),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            text(&props.dead_letter_name()),
        );
    }
}

/// Resolves once `amqp` is no longer the connection in use: lost, replaced
/// or closed. lapin does not always answer what was sent on a connection
/// that died (an ack queued after its I/O loop stopped is never resolved),
/// so whatever waits on one races this.
pub(crate) async fn gone(mut link: watch::Receiver<Link>, amqp: &Arc<lapin::Connection>) {
    let _ = link
        .wait_for(|l| !matches!(l, Link::Up(current) if Arc::ptr_eq(current, amqp)))
        .await;
}

/// Opens an underlying connection to the first of the props' hosts that
/// answers, tried in turn ([`connect_order`]; `lost`, the address of a
/// connection just lost, last), all of it under the connect timeout: each
/// host gets an equal share of the time left, so one that never answers
/// cannot use up the others' time. Returns the connection and its address.
async fn open(
    props: &AmqpProps,
    name: &str,
    lost: Option<&str>,
) -> Result<(lapin::Connection, String)> {
    let tls = tls_config(props)?;
    let addresses = connect_order(props, lost);
    let started = Instant::now();
    let deadline = started + props.connect_timeout();
    let mut failures = Vec::new();
    for (i, (host, port)) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let share = left / u32::try_from(addresses.len() - i).unwrap_or(u32::MAX);
        let address = format!("{host}:{port}");
        match open_at(props, name, tls.clone(), host, *port, share).await {
            Ok(amqp) => {
                if !failures.is_empty() {
                    info!(%address, skipped = failures.len(), "connected to a later host of the list");
                }
                return Ok((amqp, address));
            }
            Err(e) if addresses.len() == 1 => return Err(e),
            Err(e) => {
                debug!(%address, error = %e, "connecting to this host failed; trying the next");
                failures.push((address, e));
            }
        }
    }
    let untried = addresses.len() - failures.len();
    let kind = match failures.first() {
        Some((_, first)) if failures.iter().all(|(_, e)| e.kind() == first.kind()) => first.kind(),
        _ => ErrorKind::Connect,
    };
    let mut message = format!(
        "no host of {} answered within the connect timeout of {:?}: ",
        props.redacted_url(),
        props.connect_timeout()
    );
    for (address, error) in &failures {
        message.push_str(&format!("{address}: {error}; "));
    }
    if untried > 0 {
        message.push_str(&format!("{untried} host(s) not tried, the time ran out; "));
    }
    message.push_str("check that the brokers are running and reachable");
    Err(Error::new(kind, message))
}

/// Opens an underlying connection to one address, the whole handshake
/// within `timeout`.
async fn open_at(
    props: &AmqpProps,
    name: &str,
    tls: lapin::tcp::OwnedTLSConfig,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<lapin::Connection> {
    let options = lapin::ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()
        .map_err(|e| Error::amqp("starting the AMQP runtime", e))?;
    let connecting = lapin::Connection::connect_uri_with_config(
        props.lapin_uri(host, port),
        options,
        tls,
        runtime,
    );
    // One host: the URL as ever; one of several: its address.
    let url = if props.addresses().nth(1).is_none() {
        props.redacted_url()
    } else {
        format!("{host}:{port}")
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(amqp)) => Ok(amqp),
        Ok(Err(e)) => Err(Error::connect(
            &url,
            props.tls(),
            props.client_cert().is_some(),
            e,
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Connect,
            format!(
                "connecting to {url} timed out after {timeout:?}; check that the broker is running and reachable"
            ),
        )),
    }
}

/// The props' addresses in the order to try them: shuffled unless the
/// props say not to, and `lost` (the address of a connection just lost)
/// last.
fn connect_order(props: &AmqpProps, lost: Option<&str>) -> Vec<(String, u16)> {
    let mut order: Vec<(String, u16)> = props
        .addresses()
        .map(|(host, port)| (host.to_owned(), port))
        .collect();
    if props.shuffled_hosts() {
        // Fisher-Yates, random from UUIDs as the backoff's jitter.
        for i in (1..order.len()).rev() {
            let j = (uuid::Uuid::new_v4().as_u128() % (i as u128 + 1)) as usize;
            order.swap(i, j);
        }
    }
    if let Some(lost) = lost
        && let Some(at) = order
            .iter()
            .position(|(host, port)| format!("{host}:{port}") == lost)
    {
        let address = order.remove(at);
        order.push(address);
    }
    order
}

async fn close_amqp(amqp: &lapin::Connection) -> Result<()> {
    match amqp.close(200, "closed by the application".into()).await {
        Ok(()) => Ok(()),
        // lapin tears the connection down with this error when a channel
        // dropped just before was still closing: the connection is gone.
        Err(e) if matches!(e.kind(), lapin::ErrorKind::InvalidChannelState(..)) => {
            debug!(error = %e, "connection closed while a channel was closing");
            Ok(())
        }
        // Lost just before: nothing left to close.
        Err(e) if !amqp.status().connected() => {
            debug!(error = %e, "connection was already lost when closed");
            Ok(())
        }
        Err(e) => Err(Error::amqp("closing the connection", e)),
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.inner.props.redacted_url())
            .field("instance_id", &self.inner.instance_id)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// A checked AMQP short string (lapin panics on over 255 bytes).
pub(crate) fn short(name: &str) -> Result<ShortString> {
    check_name("name", name)?;
    Ok(ShortString::from(name))
}

fn tls_config(props: &AmqpProps) -> Result<lapin::tcp::OwnedTLSConfig> {
    let cert_chain = match props.ca_file() {
        Some(path) => Some(read_ca_file(path)?),
        None => None,
    };
    let identity = match props.client_cert() {
        Some((cert, key)) => Some(read_client_cert(cert, key)?),
        None => None,
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Reads the client's certificate chain and private key (both PEM) for
/// mutual TLS, and checks each holds what it should: the TLS layer would
/// otherwise fail later with less to say.
fn read_client_cert(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<lapin::tcp::OwnedIdentity> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let config = |message: String| Error::new(ErrorKind::InvalidConfig, message);
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("cannot read the client {what} file {}: {e}", path.display()),
                e,
            )
        })
    };
    let pem = read(cert, "certificate")?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            config(format!(
                "the client certificate file {} is not valid PEM ({e})",
                cert.display()
            ))
        })?;
    if certificates.is_empty() {
        return Err(config(format!(
            "the client certificate file {} holds no certificate; give a PEM file with the client's certificate (-----BEGIN CERTIFICATE-----)",
            cert.display()
        )));
    }
    let key_pem = read(key, "key")?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        config(format!(
            "the client key file {} holds no private key ({e}); give a PEM file with the key (-----BEGIN PRIVATE KEY-----, RSA or EC)",
            key.display()
        ))
    })?;
    Ok(lapin::tcp::OwnedIdentity::PKCS8 { pem, key: key_pem })
}

/// Reads a PEM CA file and checks it holds at least one certificate: the TLS
/// layer skips what it cannot use, so a file without one would silently
/// leave only the system's roots to verify the broker.
fn read_ca_file(path: &std::path::Path) -> Result<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let config = |message: String| Error::new(ErrorKind::InvalidConfig, message);
    let pem = std::fs::read_to_string(path).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidConfig,
            format!("cannot read the CA file {}: {e}", path.display()),
            e,
        )
    })?;
    let mut certificates = 0;
    for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        certificate.map_err(|e| {
            config(format!(
                "the CA file {} is not valid PEM ({e}); give a PEM file with the CA's certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ))
        })?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err(config(format!(
            "the CA file {} holds no certificate; give a PEM file with the CA's certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_tried_in_order_or_shuffled_and_the_lost_one_last() {
        let props = AmqpProps::default()
            .with_hosts(["a:1", "b:2", "c:3"])
            .with_shuffled_hosts(false);
        let names =
            |order: Vec<(String, u16)>| order.into_iter().map(|(h, _)| h).collect::<Vec<_>>();
        assert_eq!(names(connect_order(&props, None)), ["a", "b", "c"]);
        assert_eq!(names(connect_order(&props, Some("a:1"))), ["b", "c", "a"]);
        let shuffled = props.with_shuffled_hosts(true);
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let order = names(connect_order(&shuffled, Some("b:2")));
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], "b");
            firsts.insert(order[0].clone());
        }
        assert_eq!(firsts.len(), 2, "both other hosts come first sometimes");
    }
}
