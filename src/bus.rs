//! `Bus`: the remote-event layer. Publishing an event broadcasts it; every
//! receiving process decodes it and dispatches it to its local subscribers.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tracing::{debug, warn};

use crate::codec::{BINCODE_CONTENT_TYPE, Bincode, Codec, Codecs};
use crate::connection::Connection;
use crate::connection_event::{ConnectionEvent, ConnectionEvents};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, registered_events};
use crate::listen::Listen;
use crate::listener::{Decoder, Link, Listener, Recent, Settings, Shared, UnknownEvents};
use crate::props::AmqpProps;
use crate::stats::{Counters, Stats};
use crate::subscribers::Subscribers;
use crate::transport::Outgoing;
use crate::transport::amqp::Amqp;
use crate::transport::memory::{self, Hub};

/// How long `close` waits for the broker to confirm what was published.
const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest body a memory bus decodes.
const MEMORY_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// **A typed event bus** (zamqp's `AMQPEvent` with `AMQPEventCallback`):
/// [`publish`](Bus::publish) broadcasts an event through the exchange, and
/// every connected bus, in this process or another, decodes it and
/// dispatches it to its local [`Subscribers`].
///
/// Connect to `amqp://` / `amqps://` for RabbitMQ, or to `memory://name` for
/// the same semantics inside one process (unit tests, examples). By default
/// a bus listens with [`Listen::broadcast`]: a queue of its own bound to the
/// exchange, so every bus receives every event. Groups, routing keys and
/// point-to-point queues are other [`Listen`]s. Events are handled one at a
/// time, in the order they arrive, unless
/// [`concurrency`](BusBuilder::concurrency) allows more.
///
/// Settlement: a delivery is acknowledged once all its handlers succeeded.
/// When one fails or panics, the delivery is parked in a retry queue and
/// comes back after a delay that doubles each attempt, without blocking the
/// events behind it; after [`max_attempts`](BusBuilder::max_attempts) it goes
/// to the dead-letter exchange `<exchange>.dead-letter` with the reason, the
/// last error, the attempt count and the original routing key in its
/// headers. Messages that cannot be decoded go there at once.
///
/// Recovery: when the connection to the broker is lost, the bus reconnects
/// by itself (see [`Connection`]); its queues, bindings and listeners come
/// back, events published meanwhile wait in the publish buffer, and events
/// the broker had not confirmed are sent again. Receivers drop the
/// duplicates this can make (the dedup window). Watch it with
/// [`connection_events`](Bus::connection_events).
///
/// A `Bus` is a cheap handle: clones share one connection.
/// [`close`](Bus::close) flushes what was published and stops receiving.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tidings::Result<()> {
/// use serde::{Deserialize, Serialize};
/// use tidings::{Bus, Event, Subscribers};
/// use tokio_stream::StreamExt;
///
/// #[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
/// #[event(name = "shop.order_placed")]
/// struct OrderPlaced { id: u64 }
///
/// // Two "processes" on one in-memory exchange.
/// let (here, there) = (Subscribers::new(), Subscribers::new());
/// let mut placed = there.stream::<OrderPlaced>(16);
/// let a = Bus::builder("memory://shop")?.subscribers(here).connect().await?;
/// let b = Bus::builder("memory://shop")?.subscribers(there).connect().await?;
///
/// a.publish_confirmed(&OrderPlaced { id: 1 }).await?;
/// assert_eq!(*placed.next().await.unwrap().unwrap(), OrderPlaced { id: 1 });
/// a.close().await?;
/// b.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    instance_id: String,
    exchange: String,
    codec: Arc<dyn Codec>,
    counters: Arc<Counters>,
    subscribers: Subscribers,
    listeners: Mutex<Vec<Listener>>,
    shared: Arc<Shared>,
    connection: Option<Connection>,
    sequence: AtomicU64,
    closed: AtomicBool,
    close_timeout: Duration,
    /// The connection events of a memory bus: connected, then closed.
    memory_events: broadcast::Sender<ConnectionEvent>,
}

/// **How to connect a [`Bus`]**: where, what to listen to, which
/// subscribers, and how deliveries are settled.
#[derive(Debug, Clone)]
pub struct BusBuilder {
    target: Target,
    subscribers: Subscribers,
    listens: Option<Vec<Listen>>,
    settings: Settings,
    close_timeout: Duration,
}

#[derive(Debug, Clone)]
enum Target {
    Amqp(Box<AmqpProps>),
    Memory(String),
}

impl BusBuilder {
    /// Dispatches received events to these subscribers instead of
    /// [`Subscribers::global`].
    #[must_use]
    pub fn subscribers(mut self, subscribers: Subscribers) -> Self {
        self.subscribers = subscribers;
        self
    }

    /// Listens this way; the first call replaces the default
    /// [`Listen::broadcast`], later calls add listeners.
    #[must_use]
    pub fn listen(mut self, listen: Listen) -> Self {
        self.listens.get_or_insert_with(Vec::new).push(listen);
        self
    }

    /// Listens to nothing: a bus that only publishes. It declares no
    /// dead-letter queue.
    #[must_use]
    pub fn publish_only(mut self) -> Self {
        self.listens = Some(Vec::new());
        self
    }

    /// Whether this bus's own subscribers receive the events it publishes
    /// (default `true`). Either way each of them gets each event once.
    #[must_use]
    pub fn self_delivery(mut self, on: bool) -> Self {
        self.settings.self_delivery = on;
        self
    }

    /// How many recently handled message ids the bus remembers (default
    /// 10,000; 0 turns it off): a redelivered or re-published event whose
    /// id is among them is acknowledged without reaching the handlers again.
    #[must_use]
    pub fn dedup_window(mut self, ids: usize) -> Self {
        self.settings.dedup_window = ids;
        self
    }

    /// How many times a delivery is tried before it is dead-lettered
    /// (default 5; at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.settings.max_attempts = attempts.max(1);
        self
    }

    /// The delay before the first retry (default 1 s); it doubles with each
    /// attempt, up to 5 minutes.
    #[must_use]
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.settings.retry_delay = delay;
        self
    }

    /// How many deliveries of one listener are handled at once (default 1,
    /// which keeps the order of the queue). With more, the prefetch of the
    /// props still bounds what is held in memory.
    #[must_use]
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.settings.concurrency = handlers.max(1);
        self
    }

    /// Fails a dispatch whose handlers take longer than this (default: no
    /// limit): it is retried, then dead-lettered, like a failing one. An
    /// async handler is cancelled at the limit; a sync handler cannot be
    /// interrupted, so one that overran is counted failed when it returns.
    #[must_use]
    pub fn handler_timeout(mut self, limit: Duration) -> Self {
        self.settings.handler_timeout = Some(limit);
        self
    }

    /// What to do with an event of a type this process does not know
    /// (default [`UnknownEvents::Acknowledge`]: acknowledge and count).
    #[must_use]
    pub fn unknown_events(mut self, policy: UnknownEvents) -> Self {
        self.settings.unknown_events = policy;
        self
    }

    /// Makes every [`publish`](Bus::publish) mandatory (default off): an
    /// event no queue is bound to is returned by the broker and fails with
    /// [`ErrorKind::Unroutable`] (counted in [`Stats::returned`]) instead
    /// of vanishing.
    #[must_use]
    pub fn mandatory(mut self, on: bool) -> Self {
        self.settings.mandatory = on;
        self
    }

    /// The most messages and bytes the dead-letter queue holds (default
    /// [`DEAD_LETTER_MAX_MESSAGES`](crate::DEAD_LETTER_MAX_MESSAGES) and
    /// [`DEAD_LETTER_MAX_BYTES`](crate::DEAD_LETTER_MAX_BYTES)). Beyond
    /// them the broker refuses dead letters: each is dropped, logged at
    /// ERROR and counted in [`Stats::dead_letters_dropped`]. The limits are
    /// part of the queue's declaration, so every bus on one exchange must
    /// use the same.
    #[must_use]
    pub fn dead_letter_limits(mut self, messages: u64, bytes: u64) -> Self {
        self.settings.dead_letter_limits = (messages, bytes);
        self
    }

    /// How long [`close`](Bus::close) waits for the broker to confirm what
    /// was published (default 30 s); what is still unconfirmed then is
    /// reported failed. The size of the publish buffer and what happens
    /// when it is full are props:
    /// [`AmqpProps::with_publish_buffer`], [`AmqpProps::with_when_full`].
    #[must_use]
    pub fn close_timeout(mut self, limit: Duration) -> Self {
        self.close_timeout = limit;
        self
    }

    /// **Connects**: checks the registered event types, opens the
    /// transport, starts the listeners and the background publisher.
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] when two event types share a tag; the
    /// errors of [`Connection::connect`] and [`Connection::consumer`].
    pub async fn connect(self) -> Result<Bus> {
        let events = registered_events()?;
        debug!(types = events.len(), "event types registered");
        let counters = Arc::new(Counters::default());
        let prefetch = match &self.target {
            Target::Amqp(props) => props.prefetch(),
            Target::Memory(_) => u16::MAX,
        };
        let (instance_id, exchange, codec, link, decoder, connection) = match &self.target {
            Target::Amqp(props) => {
                let conn = Connection::connect(props).await?;
                let listens = self.listens.as_ref().is_none_or(|l| !l.is_empty());
                let dead_letters = listens.then_some(self.settings.dead_letter_limits);
                let opened = Amqp::open(
                    conn.clone(),
                    counters.clone(),
                    dead_letters,
                    self.settings.mandatory,
                )
                .await;
                let amqp = match opened {
                    Ok(amqp) => Arc::new(amqp),
                    Err(e) => {
                        let _ = conn.close().await;
                        return Err(e);
                    }
                };
                let decoder =
                    Decoder::new(Codecs::new(props.codec().clone()), props.max_message_size());
                let id = conn.instance_id().to_owned();
                (
                    id,
                    props.exchange().to_owned(),
                    props.codec().clone(),
                    Link::Amqp(amqp),
                    decoder,
                    Some(conn),
                )
            }
            Target::Memory(name) => {
                let codec: Arc<dyn Codec> = Arc::new(Bincode);
                let decoder = Decoder::new(Codecs::new(codec.clone()), MEMORY_MAX_MESSAGE_SIZE);
                let id = uuid::Uuid::new_v4().to_string();
                (
                    id,
                    name.clone(),
                    codec,
                    Link::Memory(Hub::named(name)),
                    decoder,
                    None,
                )
            }
        };
        let shared = Arc::new(Shared {
            recent: Recent::default(),
            decoder,
            subscribers: self.subscribers.clone(),
            counters: counters.clone(),
            instance_id: instance_id.clone(),
            settings: self.settings,
            link,
            prefetch,
        });
        let bus = Bus {
            inner: Arc::new(Inner {
                instance_id,
                exchange,
                codec,
                counters,
                subscribers: self.subscribers,
                listeners: Mutex::new(Vec::new()),
                shared,
                connection,
                sequence: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                close_timeout: self.close_timeout,
                memory_events: broadcast::channel(4).0,
            }),
        };
        bus.inner.subscribers.attach();
        for listen in self.listens.unwrap_or_else(|| vec![Listen::broadcast()]) {
            if let Err(e) = bus.listen(&listen).await {
                let _ = bus.close().await;
                return Err(e);
            }
        }
        Ok(bus)
    }
}

impl Bus {
    /// **Connects to `amqp://..`, `amqps://..` or `memory://name`** with the
    /// defaults: a broadcast listener, the [global](Subscribers::global)
    /// subscribers, self-delivery on.
    ///
    /// # Errors
    ///
    /// As [`Bus::builder`] and [`BusBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Bus> {
        Self::builder(url)?.connect().await
    }

    /// **A builder for a bus on this URL** (`amqp://`, `amqps://`, or
    /// `memory://name`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a bad URL.
    pub fn builder(url: &str) -> Result<BusBuilder> {
        let target = if url.starts_with("memory:") {
            Target::Memory(memory::parse_url(url)?.to_owned())
        } else {
            Target::Amqp(Box::new(AmqpProps::from_url(url)?))
        };
        Ok(Self::builder_for(target))
    }

    /// **A builder for a bus on a RabbitMQ broker** described by props.
    #[must_use]
    pub fn with_props(props: AmqpProps) -> BusBuilder {
        Self::builder_for(Target::Amqp(Box::new(props)))
    }

    fn builder_for(target: Target) -> BusBuilder {
        BusBuilder {
            target,
            subscribers: Subscribers::global().clone(),
            listens: None,
            settings: Settings::default(),
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        }
    }

    /// **Starts listening** one more way (see [`Listen`]); events arriving
    /// there are dispatched to this bus's subscribers.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a bad queue name or binding, the
    /// broker's refusals, [`ErrorKind::Closed`] on a closed bus.
    pub async fn listen(&self, listen: &Listen) -> Result<Listener> {
        let listener =
            Listener::start(self.inner.shared.clone(), listen, &self.inner.exchange).await?;
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener.clone());
        Ok(listener)
    }

    /// **Publishes an event** (fire and forget): returns once the event is
    /// encoded and accepted into the bus's publish buffer, which holds it
    /// through an outage until the broker confirms it. When the buffer is
    /// full, `publish` waits or fails, by the props' [`WhenFull`](crate::WhenFull).
    /// The broker's confirm is tracked in the background; a refusal is
    /// logged and counted in [`Stats::publish_failed`]. Bus events are
    /// persistent, so they survive a broker restart in durable (group)
    /// queues.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encode`] when the event cannot be encoded,
    /// [`ErrorKind::Closed`] when the bus is closed,
    /// [`ErrorKind::BufferFull`] or [`ErrorKind::Blocked`] under
    /// [`WhenFull::Fail`](crate::WhenFull::Fail).
    pub async fn publish(&self, event: &dyn Event) -> Result<()> {
        self.send(event, None, None).await
    }

    /// **Publishes an event and waits for the broker's confirm.**
    ///
    /// # Errors
    ///
    /// As [`publish`](Bus::publish), and [`ErrorKind::Nacked`] or
    /// [`ErrorKind::Closed`] when the broker did not take the event.
    pub async fn publish_confirmed(&self, event: &dyn Event) -> Result<()> {
        let (done, confirmed) = oneshot::channel();
        self.send(event, None, Some(done)).await?;
        confirmed.await.map_err(|_| closed())?
    }

    /// **Sends an event to one named queue** (point to point), bypassing the
    /// exchange, and waits for the broker's confirm. A bus listening with
    /// [`Listen::queue`] of that name receives it.
    ///
    /// # Errors
    ///
    /// As [`publish_confirmed`](Bus::publish_confirmed); on `memory://`,
    /// [`ErrorKind::Unroutable`] when no listener declared the queue.
    pub async fn send_to(&self, queue: &str, event: &dyn Event) -> Result<()> {
        let (done, confirmed) = oneshot::channel();
        self.send(event, Some(queue.to_owned()), Some(done)).await?;
        confirmed.await.map_err(|_| closed())?
    }

    async fn send(
        &self,
        event: &dyn Event,
        to_queue: Option<String>,
        done: Option<oneshot::Sender<Result<()>>>,
    ) -> Result<()> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            return Err(closed());
        }
        let body = inner.codec.encode::<dyn Event>(event)?;
        let sequence = inner.sequence.fetch_add(1, Ordering::Relaxed);
        let out = Outgoing {
            body,
            tag: event.tag(),
            fingerprint: event.fingerprint(),
            routing_key: event.routing_key(),
            message_id: format!("{}-{sequence}", inner.instance_id),
            to_queue,
        };
        // Counted before the transport may confirm it, so that confirmed
        // never runs ahead of published; taken back if it is not accepted.
        Counters::add(&inner.counters.published);
        match &inner.shared.link {
            Link::Amqp(amqp) => {
                if let Err(e) = amqp.publish(out, done).await {
                    inner.counters.published.fetch_sub(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Link::Memory(hub) => {
                let sent = hub
                    .publish(&out, BINCODE_CONTENT_TYPE, &inner.instance_id)
                    .await;
                let counter = match &sent {
                    Ok(()) => &inner.counters.confirmed,
                    Err(_) => &inner.counters.returned,
                };
                Counters::add(counter);
                match (done, sent) {
                    (Some(done), sent) => {
                        let _ = done.send(sent);
                    }
                    (None, Err(e)) => warn!(error = %e, "publishing an event failed"),
                    (None, Ok(())) => {}
                }
            }
        }
        Ok(())
    }

    /// **What happens to the connection to the broker**: disconnected,
    /// reconnect attempts, recovered, blocked, closed (see
    /// [`Connection::events`]). A memory bus is connected until closed.
    #[must_use]
    pub fn connection_events(&self) -> ConnectionEvents {
        match &self.inner.connection {
            Some(conn) => conn.events(),
            None => {
                let receiver = self.inner.memory_events.subscribe();
                let first = (!self.inner.closed.load(Ordering::Relaxed))
                    .then_some(ConnectionEvent::Connected);
                ConnectionEvents::new(first, receiver)
            }
        }
    }

    /// The subscribers this bus dispatches to.
    #[must_use]
    pub fn subscribers(&self) -> &Subscribers {
        &self.inner.subscribers
    }

    /// This bus's instance id: the `x-origin` of what it publishes.
    #[must_use]
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// The queue that collects dead letters, `None` on a bus that only
    /// publishes and on `memory://` (which logs and counts them, and keeps
    /// none).
    #[must_use]
    pub fn dead_letter_queue(&self) -> Option<&str> {
        match &self.inner.shared.link {
            Link::Amqp(amqp) => amqp.dead_letter_queue(),
            Link::Memory(_) => None,
        }
    }

    /// **Events of types this process does not know, by tag** (see
    /// [`UnknownEvents`]): at most 256 tags, the rest counted under
    /// [`OTHER_TAGS`](crate::OTHER_TAGS).
    #[must_use]
    pub fn unknown_events(&self) -> std::collections::BTreeMap<String, u64> {
        self.inner.counters.unknown_tags()
    }

    /// **A snapshot of the bus's counters**: cheap (relaxed atomic loads),
    /// fine to call often.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.counters.snapshot();
        stats.reconnects = self
            .inner
            .connection
            .as_ref()
            .map_or(0, Connection::reconnects);
        stats
    }

    /// **Closes the bus**: waits until every event published before is
    /// confirmed by the broker (through an outage, at most the
    /// [close timeout](BusBuilder::close_timeout); what is unconfirmed then
    /// is reported failed), lets the handlers running now finish, stops
    /// every listener, and closes the connection. Clones of this bus can
    /// publish no more.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the bus was closed already;
    /// [`ErrorKind::Timeout`] when events were still unconfirmed at the
    /// close timeout (the bus is closed all the same).
    pub async fn close(&self) -> Result<()> {
        let inner = &*self.inner;
        if inner.closed.swap(true, Ordering::Relaxed) {
            return Err(closed());
        }
        // No handler starts from now on; the running ones finish meanwhile.
        let listeners =
            std::mem::take(&mut *inner.listeners.lock().unwrap_or_else(|p| p.into_inner()));
        for listener in &listeners {
            listener.request_stop();
        }
        let mut result = Ok(());
        if let Link::Amqp(amqp) = &inner.shared.link {
            match tokio::time::timeout(inner.close_timeout, amqp.flush()).await {
                Ok(_) => {}
                Err(_) => {
                    let unconfirmed = inner.counters.buffered.load(Ordering::Relaxed);
                    amqp.abort("the bus was closed before the broker confirmed it");
                    let _ = amqp.flush().await;
                    result = Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "{unconfirmed} events were not confirmed by the broker within the close timeout of {:?}; they are counted as failed",
                            inner.close_timeout
                        ),
                    ));
                }
            }
        }
        for listener in listeners {
            listener.stop().await;
        }
        // Streams and pollers end once no bus feeds them.
        inner.subscribers.detach();
        let _ = inner.memory_events.send(ConnectionEvent::Closed);
        if let Some(conn) = &inner.connection {
            conn.close().await?;
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Relaxed) {
            self.subscribers.detach();
        }
        // The producer ends once what it holds is settled; the listeners on
        // this.
        for listener in self
            .listeners
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            listener.request_stop();
        }
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("instance_id", &self.inner.instance_id)
            .field("exchange", &self.inner.exchange)
            .field("connection", &self.inner.connection)
            .finish_non_exhaustive()
    }
}

pub(crate) fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the bus is closed; connect a new one")
}
