//! `Bus`: the remote-event layer. Publishing an event broadcasts it; every
//! receiving process decodes it and dispatches it to its local subscribers.

mod batch;
pub(crate) mod call;
pub(crate) mod context;
pub(crate) mod decision;
pub(crate) mod decode;
mod dedup;
mod handler_call;
pub(crate) mod health;
pub(crate) mod listener;
pub(crate) mod publish_options;
pub(crate) mod receipts;
mod schemas;
mod scope;
pub(crate) mod serve;
pub(crate) mod settings;
mod settle;
pub(crate) mod signing;
pub(crate) mod stats;
pub(crate) mod subscribers;
pub(crate) mod text;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tracing::{Instrument, debug, debug_span, error, trace, warn};

use crate::amqp::connection_event::ConnectionEvents;
use crate::amqp::props::AmqpProps;
use crate::bus::context::Context;
use crate::bus::decode::Decoder;
use crate::bus::dedup::Recent;
use crate::bus::health::{Health, Link};
use crate::bus::listener::{Listener, Shared};
use crate::bus::publish_options::PublishOptions;
use crate::bus::settings::{Settings, UnknownEvents};
use crate::bus::signing::Signing;
use crate::bus::stats::{Count, Counters, Stats};
use crate::bus::subscribers::Subscribers;
use crate::codec::{Codec, Codecs};
use crate::compression::{Compress, Compression};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, registered_events};
use crate::headers::{CAUSATION_HEADER, CORRELATION_HEADER, SENT_AT_HEADER, push_decimal};
use crate::schema::Fingerprint;
use crate::telemetry;
use crate::trace_context;
use crate::transport::drivers;
use crate::transport::listen::Listen;
use crate::transport::seam::{DeliveryOptions, Endpoint, Outgoing, Transport};

/// The options of a plain publish.
static NO_OPTIONS: PublishOptions = PublishOptions::NONE;

/// How long `close` waits for the broker to confirm what was published.
const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

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
/// by itself (see [`Connection`](crate::Connection)); its queues, bindings and listeners come
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
    codec: Arc<dyn Codec>,
    content_type: Arc<str>,
    counters: Arc<Counters>,
    subscribers: Subscribers,
    listeners: Mutex<Vec<Listener>>,
    shared: Arc<Shared>,
    transport: Arc<dyn Transport>,
    sequence: AtomicU64,
    /// The fingerprints whose schemas this bus stored, or is storing.
    stored_schemas: Mutex<HashSet<Fingerprint>>,
    /// The schema stores still running, which `close` waits for.
    storing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    closed: AtomicBool,
    close_timeout: Duration,
    /// The connection's state, for [`Bus::health`].
    link: Arc<Mutex<Link>>,
    /// The servers started by [`Bus::serve`], which `close` stops.
    servers: Mutex<Vec<serve::Server>>,
    /// How long a call waits for its reply by default.
    call_timeout: Duration,
    /// Signs what is published, if set.
    signing: Option<Signing>,
    /// How what is published is compressed.
    compress: Compress,
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
    call_timeout: Duration,
    signing: Option<Signing>,
    /// The compression and its threshold, if set here rather than by the
    /// transport (the props).
    compression: (Option<Compression>, Option<usize>),
}

#[derive(Debug, Clone)]
enum Target {
    /// A URL, opened by the driver of its scheme.
    Url(String),
    /// RabbitMQ with these props.
    Amqp(Box<AmqpProps>),
    /// A transport opened already.
    Transport(Arc<dyn Transport>),
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
    ///
    /// **Ordering under concurrency**: deliveries are *started* in queue
    /// order, but up to `n` run at once and finish, and are acknowledged,
    /// in any order; two events of one aggregate may be handled at the
    /// same time. Keep 1 where order matters (or partition by routing key
    /// into listeners of their own).
    ///
    /// **Duplicates under concurrency**: a message id is claimed
    /// atomically in the dedup window. A second delivery of an id whose
    /// first delivery is being handled waits for it: if the first
    /// succeeded (or was dead-lettered by its handler) the second is
    /// acknowledged as a duplicate; if it failed (it is retried), the
    /// second handles the event, and the retried copy is the duplicate
    /// later. Nothing is lost and no two handlings of one id overlap.
    #[must_use]
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.settings.concurrency = handlers.max(1);
        self
    }

    /// Fails a dispatch whose handlers take longer than this (default: no
    /// limit): it is retried, then dead-lettered, like a failing one. An
    /// async handler is cancelled at the limit; a sync handler cannot be
    /// interrupted, so one that overran is counted failed when it returns.
    /// A long handler moves the limit on with
    /// [`Context::keep_alive`] (which also says what RabbitMQ's own
    /// `consumer_timeout` needs).
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

    /// Whether the events this bus publishes carry their send time to the
    /// microsecond, the header `x-tidings-sent-at` (default `true`).
    ///
    /// Receivers use it for [`Context::sent_at`], the end-to-end latency
    /// metric (`tidings_end_to_end_seconds`), and to skip the events sent
    /// before the start time of a stream listener that starts at a time
    /// (without it, to the broker's `timestamp`, whole seconds). A bus that
    /// [signs](Self::signing) what it publishes sends it anyway, since a
    /// receiver with a maximum age needs it. Off, each publish costs a
    /// little less on both sides (one header less to build, send and parse:
    /// about 2,500 instructions each).
    #[must_use]
    pub fn sent_at(mut self, on: bool) -> Self {
        self.settings.sent_at = on;
        self
    }

    /// **Signs what this bus publishes and checks what it receives** with
    /// these keys (see [`Signing`]; default: neither). Clones of the
    /// `Signing` share its keys, so keys can rotate while the bus runs.
    #[must_use]
    pub fn signing(mut self, signing: Signing) -> Self {
        self.signing = Some(signing);
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

    /// How long a [call](Bus::call) waits for its reply unless its
    /// [`CallOptions`](crate::CallOptions) say otherwise (default 10 s).
    #[must_use]
    pub fn call_timeout(mut self, limit: Duration) -> Self {
        self.call_timeout = limit;
        self
    }

    /// **Compresses what this bus publishes** with `compression` (default:
    /// the props' `compression`, else [`Compression::None`]), each body at
    /// least the [threshold](Self::compression_threshold) long; sets the
    /// `content-encoding`. Receivers decompress by the `content-encoding`
    /// whatever they send with, never past their maximum message size.
    /// A single publish can choose otherwise with
    /// [`PublishOptions::compression`].
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression.0 = Some(compression);
        self
    }

    /// Bodies shorter than this are not compressed (default: the props'
    /// `compression_threshold`, else [`DEFAULT_COMPRESSION_THRESHOLD`](crate::DEFAULT_COMPRESSION_THRESHOLD),
    /// 1,024 bytes).
    #[must_use]
    pub fn compression_threshold(mut self, bytes: usize) -> Self {
        self.compression.1 = Some(bytes);
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
    /// errors of [`Connection::connect`](crate::Connection::connect) and [`Connection::consumer`](crate::Connection::consumer).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future before it returns leaves nothing
    /// running (what was opened closes when dropped).
    pub async fn connect(self) -> Result<Bus> {
        let events = registered_events()?;
        debug!(types = events.len(), "event types registered");
        if let Some(compression) = self.compression.0 {
            compression.check_built()?;
        }
        telemetry::describe();
        let listens = self.listens.unwrap_or_else(|| vec![Listen::broadcast()]);
        let endpoint = |url: String| {
            let mut endpoint = Endpoint::new(url);
            endpoint.publish_only = listens.is_empty();
            endpoint.mandatory = self.settings.mandatory;
            endpoint.dead_letter_limits = self.settings.dead_letter_limits;
            endpoint
        };
        let transport = match self.target {
            Target::Url(url) => drivers::open(endpoint(url)).await?,
            Target::Amqp(props) => {
                let url = props.redacted_url();
                drivers::open_amqp(&props, &endpoint(url)).await?
            }
            Target::Transport(transport) => transport,
        };
        let codec = transport.codec();
        let content_type: Arc<str> = codec.content_type().into();
        let (algorithm, threshold) = transport.compression();
        let compress = Compress {
            algorithm: self.compression.0.unwrap_or(algorithm),
            threshold: self.compression.1.unwrap_or(threshold),
        };
        let counters = Arc::new(Counters::default());
        let link = health::follow(transport.events());
        let shared = Arc::new(Shared {
            recent: Recent::default(),
            decoder: Decoder::new(Codecs::new(codec.clone()), transport.max_message_size()),
            subscribers: self.subscribers.clone(),
            counters: counters.clone(),
            instance_id: transport.instance_id().to_owned(),
            settings: self.settings,
            transport: transport.clone(),
            signing: self.signing.clone(),
        });
        let bus = Bus {
            inner: Arc::new(Inner {
                instance_id: transport.instance_id().to_owned(),
                codec,
                content_type,
                counters,
                subscribers: self.subscribers,
                listeners: Mutex::new(Vec::new()),
                shared,
                transport,
                sequence: AtomicU64::new(0),
                stored_schemas: Mutex::default(),
                storing: Mutex::default(),
                closed: AtomicBool::new(false),
                close_timeout: self.close_timeout,
                link,
                servers: Mutex::default(),
                call_timeout: self.call_timeout,
                signing: self.signing,
                compress,
            }),
        };
        bus.inner.subscribers.attach();
        for listen in listens {
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
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future before it returns leaves nothing
    /// running (what was opened closes when dropped).
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
        drivers::check(url)?;
        Ok(Self::builder_for(Target::Url(url.to_owned())))
    }

    /// **A builder for a bus on a RabbitMQ broker** described by props.
    #[must_use]
    pub fn with_props(props: AmqpProps) -> BusBuilder {
        Self::builder_for(Target::Amqp(Box::new(props)))
    }

    /// **A builder for a bus on a transport opened already**: one of your
    /// own, or one wrapped in [`Faults`](crate::Faults).
    #[must_use]
    pub fn with_transport(transport: Arc<dyn Transport>) -> BusBuilder {
        Self::builder_for(Target::Transport(transport))
    }

    fn builder_for(target: Target) -> BusBuilder {
        BusBuilder {
            target,
            subscribers: Subscribers::global().clone(),
            listens: None,
            settings: Settings::default(),
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            call_timeout: call::DEFAULT_CALL_TIMEOUT,
            signing: None,
            compression: (None, None),
        }
    }

    /// **Starts listening** one more way (see [`Listen`]); events arriving
    /// there are dispatched to this bus's subscribers.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a bad queue name or binding, the
    /// broker's refusals, [`ErrorKind::Closed`] on a closed bus.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a listener whose start is dropped stops with it; its queue
    /// may have been declared (declaring again is harmless).
    pub async fn listen(&self, listen: &Listen) -> Result<Listener> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(closed());
        }
        // A direct exchange routes only exact keys: with none given, the
        // listener binds those of the types subscribed to now.
        let listen = listen
            .clone()
            .with_subscribed(self.inner.subscribers.routing_keys());
        let listener = Listener::start(self.inner.shared.clone(), &listen).await?;
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
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in that nothing is half-sent: dropped while waiting for room
    /// in the buffer, the event was not accepted; once accepted, it is sent
    /// whatever happens to the future.
    pub async fn publish(&self, event: &dyn Event) -> Result<()> {
        self.send(event, None, &NO_OPTIONS, None).await
    }

    /// **Publishes an event and waits for the broker's confirm.**
    ///
    /// # Errors
    ///
    /// As [`publish`](Bus::publish), and [`ErrorKind::Nacked`] or
    /// [`ErrorKind::Closed`] when the broker did not take the event.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the event was accepted does not withdraw it:
    /// it is still sent, confirmed and counted; only the outcome is not
    /// awaited.
    pub async fn publish_confirmed(&self, event: &dyn Event) -> Result<()> {
        let (done, confirmed) = oneshot::channel();
        self.send(event, None, &NO_OPTIONS, Some(done)).await?;
        confirmed.await.map_err(|_| closed())?
    }

    /// **Publishes an event with options**: headers of the application's
    /// own, its conversation, waiting for the confirm, routing key,
    /// priority, expiration, persistence, mandatory, message id, delay,
    /// codec and compression (see [`PublishOptions`]).
    ///
    /// # Errors
    ///
    /// As [`publish`](Bus::publish) (and, with
    /// [`confirm`](PublishOptions::confirm), as
    /// [`publish_confirmed`](Bus::publish_confirmed));
    /// [`ErrorKind::InvalidConfig`] for a header name tidings uses itself,
    /// or one that is empty or longer than 255 bytes, a routing key or
    /// message id over 255 bytes, a delay out of range, or a compression
    /// this build lacks.
    ///
    /// # Cancel safety
    ///
    /// As [`publish_confirmed`](Bus::publish_confirmed).
    pub async fn publish_with(&self, event: &dyn Event, options: &PublishOptions) -> Result<()> {
        options.check()?;
        if !options.confirm {
            return self.send(event, None, options, None).await;
        }
        let (done, confirmed) = oneshot::channel();
        self.send(event, None, options, Some(done)).await?;
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
    ///
    /// # Cancel safety
    ///
    /// As [`publish_confirmed`](Bus::publish_confirmed): dropping the future
    /// does not withdraw an accepted event.
    pub async fn send_to(&self, queue: &str, event: &dyn Event) -> Result<()> {
        let (done, confirmed) = oneshot::channel();
        self.send(event, Some(queue.to_owned()), &NO_OPTIONS, Some(done))
            .await?;
        confirmed.await.map_err(|_| closed())?
    }

    async fn send(
        &self,
        event: &dyn Event,
        to_queue: Option<String>,
        options: &PublishOptions,
        done: Option<oneshot::Sender<Result<()>>>,
    ) -> Result<()> {
        let inner = &*self.inner;
        let (out, span) = self.prepare(event, to_queue, options)?;
        let tag = out.tag;
        // Counted before the transport may confirm it, so that confirmed
        // never runs ahead of published; taken back if it is not accepted.
        inner.counters.count(Count::Published, tag, "");
        if let Err(e) = inner
            .transport
            .publish(out, done)
            .instrument(span.clone())
            .await
        {
            inner.counters.uncount(Count::Published, tag);
            debug!(parent: &span, error = %e, "the event was not accepted for publishing");
            return Err(e);
        }
        trace!(parent: &span, "accepted for publishing");
        Ok(())
    }

    /// Encodes `event` for the transport, with its headers, and the span
    /// of its publishing.
    pub(crate) fn prepare(
        &self,
        event: &dyn Event,
        to_queue: Option<String>,
        options: &PublishOptions,
    ) -> Result<(Outgoing, tracing::Span)> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            return Err(closed());
        }
        let (body, content_type) = match &options.codec {
            Some(codec) => (
                codec.encode::<dyn Event>(event)?,
                Arc::from(codec.content_type()),
            ),
            None => (
                inner.codec.encode::<dyn Event>(event)?,
                inner.content_type.clone(),
            ),
        };
        let compress = match options.compression {
            Some((algorithm, threshold)) => Compress {
                algorithm,
                threshold: threshold.unwrap_or(inner.compress.threshold),
            },
            None => inner.compress,
        };
        // Receivers refuse what decompresses past their maximum size.
        let limit = inner.transport.max_message_size();
        if compress.algorithm != Compression::None && body.len() > limit {
            return Err(Error::new(
                ErrorKind::MessageTooLarge,
                format!(
                    "event of {} bytes is over the maximum message size of {limit} bytes, which receivers apply to a body once decompressed too; raise max_message_size on every bus",
                    body.len()
                ),
            ));
        }
        let (body, content_encoding) = compress.apply(body)?;
        let fingerprint = event.fingerprint();
        self.store_schema(event, fingerprint)?;
        let sequence = inner.sequence.fetch_add(1, Ordering::Relaxed);
        let tag = event.tag();
        let message_id = match &options.message_id {
            Some(id) => id.clone(),
            None => crate::headers::message_id(&inner.instance_id, sequence),
        };
        let routing_key: Cow<'static, str> = match &options.routing_key {
            Some(key) => Cow::Owned(key.clone()),
            None => Cow::Borrowed(event.routing_key()),
        };
        let span = debug_span!(
            "publish",
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            tag = %tag,
            message_id = %message_id,
            routing_key = %routing_key,
            exchange = %inner.transport.exchange(),
        );
        let mut out = Outgoing {
            body: Arc::new(body),
            content_type,
            tag,
            fingerprint,
            version: event.version(),
            routing_key,
            headers: headers(
                options,
                &span,
                inner.shared.settings.sent_at || inner.signing.is_some(),
            ),
            message_id,
            to_queue,
            correlation_id: None,
            content_encoding,
            delivery: options.delivery,
        };
        if let Some(signing) = &inner.signing {
            signing.sign(&mut out, &inner.instance_id);
        }
        Ok((out, span))
    }

    /// A message with an empty body and no event in it (an error reply, a
    /// receipt), tagged `tag`.
    pub(crate) fn bare(&self, tag: &'static str, routing_key: &'static str) -> Outgoing {
        let inner = &*self.inner;
        let sequence = inner.sequence.fetch_add(1, Ordering::Relaxed);
        Outgoing {
            body: Arc::new(Vec::new()),
            content_type: inner.content_type.clone(),
            tag,
            fingerprint: Fingerprint::from_u64(0),
            version: 1,
            routing_key: routing_key.into(),
            message_id: crate::headers::message_id(&inner.instance_id, sequence),
            to_queue: None,
            headers: Vec::new(),
            correlation_id: None,
            content_encoding: None,
            delivery: DeliveryOptions::DEFAULT,
        }
    }

    /// Stores the schema of `event`'s type when it is first published, so
    /// that a receiver with another schema can read it: in the background,
    /// retried until it is stored, so that publishing never waits for it
    /// (nor fails with it during an outage); `close` waits for it as for
    /// confirms. A receiver that gets the event first retries it until the
    /// schema is there.
    fn store_schema(&self, event: &dyn Event, fingerprint: Fingerprint) -> Result<()> {
        let inner = &*self.inner;
        if !inner
            .stored_schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fingerprint)
        {
            return Ok(());
        }
        let Some(registration) = registered_events()?.get(event.tag(), event.version()) else {
            return Ok(());
        };
        let schema = registration.schema();
        let bus = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                // A bus dropped without `close` stops trying.
                let Some(inner) = bus.upgrade() else {
                    return;
                };
                let transport = inner.transport.clone();
                drop(inner);
                match transport.store_schema(schema).await {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(tag = schema.tag(), error = %e, retry_in = ?delay, "storing the schema of an event type failed; receivers of another schema cannot read its events until it is stored");
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        });
        let mut storing = inner.storing.lock().unwrap_or_else(|p| p.into_inner());
        storing.retain(|task| !task.is_finished());
        storing.push(task);
        Ok(())
    }

    /// **What happens to the connection to the broker**: disconnected,
    /// reconnect attempts, recovered, blocked, closed (see
    /// [`Connection::events`](crate::Connection::events)). A memory bus is connected until closed.
    #[must_use]
    pub fn connection_events(&self) -> ConnectionEvents {
        self.inner.transport.events()
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
        self.inner.transport.dead_letter_queue()
    }

    /// **Events of types this process does not know, by tag** (see
    /// [`UnknownEvents`]): at most 256 tags, the rest counted under
    /// [`OTHER_TAGS`](crate::OTHER_TAGS).
    #[must_use]
    pub fn unknown_events(&self) -> std::collections::BTreeMap<String, u64> {
        self.inner.counters.unknown_tags()
    }

    /// **Whether the bus is connected and consuming**, for readiness and
    /// liveness probes (see [`Health`]). Cheap: no call to the broker.
    #[must_use]
    pub fn health(&self) -> Health {
        let inner = &*self.inner;
        let link = inner.link.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let closed = inner.closed.load(Ordering::Relaxed);
        let connected = link.connected && !closed;
        let listeners = inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|listener| listener.health(connected))
            .collect();
        Health {
            connected,
            since: link.since,
            blocked: link.blocked,
            buffered: inner.transport.counters().buffered.load(Ordering::Relaxed),
            buffer_capacity: inner.transport.buffer_capacity(),
            listeners,
            last_error: link.last_error,
            closed,
        }
    }

    /// **A snapshot of the bus's counters**: cheap (relaxed atomic loads),
    /// fine to call often.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let transport = &self.inner.transport;
        let mut stats = self.inner.counters.snapshot(transport.counters());
        stats.reconnects = transport.reconnects();
        stats.late_replies = transport.late_replies();
        stats
    }

    /// **Closes the bus**: waits until every event published before is
    /// confirmed by the broker (through an outage, at most the
    /// [close timeout](BusBuilder::close_timeout); what is unconfirmed then
    /// is reported failed), lets the handlers running now finish, stops
    /// every listener, and closes the connection. Clones of this bus can
    /// publish no more.
    ///
    /// Safe to call twice (the second call returns at once) and to cancel:
    /// the bus is marked closed first, so a cancelled `close` leaves a bus
    /// that publishes no more and whose listeners stop; nothing accepted
    /// is dropped by cancelling, but then nothing waits for it either.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when events were still unconfirmed at the
    /// close timeout (the bus is closed all the same); the transport's
    /// error closing the connection.
    pub async fn close(&self) -> Result<()> {
        let inner = &*self.inner;
        if inner.closed.swap(true, Ordering::Relaxed) {
            // Closed already (or being closed): nothing more to do.
            return Ok(());
        }
        // No handler starts from now on; the running ones finish meanwhile.
        let listeners =
            std::mem::take(&mut *inner.listeners.lock().unwrap_or_else(|p| p.into_inner()));
        for listener in &listeners {
            listener.request_stop();
        }
        let servers = std::mem::take(&mut *inner.servers.lock().unwrap_or_else(|p| p.into_inner()));
        for server in &servers {
            server.request_stop();
        }
        let mut result = Ok(());
        let transport = &inner.transport;
        // The schemas of what was published, so that readers of another
        // schema can read it after this process is gone.
        let storing = std::mem::take(&mut *inner.storing.lock().unwrap_or_else(|p| p.into_inner()));
        let aborts: Vec<_> = storing
            .iter()
            .map(tokio::task::JoinHandle::abort_handle)
            .collect();
        let stored = async {
            for task in storing {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(inner.close_timeout, stored)
            .await
            .is_err()
        {
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
            warn!(timeout = ?inner.close_timeout, "schemas of published event types were not stored within the close timeout; receivers of another schema cannot read those events");
        }
        if tokio::time::timeout(inner.close_timeout, transport.flush())
            .await
            .is_err()
        {
            let unconfirmed = transport.counters().buffered.load(Ordering::Relaxed);
            transport.abort("the bus was closed before the broker confirmed it");
            let _ = transport.flush().await;
            result = Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "{unconfirmed} events were not confirmed by the broker within the close timeout of {:?}; they are counted as failed",
                    inner.close_timeout
                ),
            ));
        }
        for listener in listeners {
            listener.stop().await;
        }
        for server in servers {
            server.stop().await;
        }
        // Streams and pollers end once no bus feeds them.
        inner.subscribers.detach();
        transport.close().await?;
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Relaxed) {
            self.subscribers.detach();
            // A destructor cannot wait for the broker: say what may be lost.
            let unconfirmed = self.transport.counters().buffered.load(Ordering::Relaxed);
            if unconfirmed > 0 {
                error!(
                    unconfirmed,
                    instance = %self.instance_id,
                    "a bus was dropped without close() while {unconfirmed} published events were not yet confirmed by the broker; \
                     they are lost if the process exits before its connection sends them. Call close(), or run the bus in Bus::scope"
                );
            }
        }
        // A bus dropped without `close` stores no more schemas.
        for task in self
            .storing
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            task.abort();
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
        for server in self
            .servers
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            server.request_stop();
        }
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("instance_id", &self.inner.instance_id)
            .field("transport", &self.inner.transport)
            .finish_non_exhaustive()
    }
}

/// The headers an event is published with besides its own: its
/// conversation (the options', else the handled event's), when it was
/// sent (if `sent_at`), the application's, and the trace context of
/// `span`.
fn headers(
    options: &PublishOptions,
    span: &tracing::Span,
    sent_at: bool,
) -> Vec<(Cow<'static, str>, String)> {
    let mut headers = Vec::with_capacity(options.headers.len() + 4);
    let (mut correlation, mut causation) =
        (options.correlation_id.clone(), options.causation_id.clone());
    if correlation.is_none()
        && causation.is_none()
        && let Some(handling) = Context::current()
    {
        correlation = handling.correlation_id().map(str::to_owned);
        causation = handling.message_id().map(str::to_owned);
    }
    if let Some(id) = correlation {
        headers.push((Cow::Borrowed(CORRELATION_HEADER), id));
    }
    if let Some(id) = causation {
        headers.push((Cow::Borrowed(CAUSATION_HEADER), id));
    }
    if sent_at {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_micros());
        let mut sent_at = String::with_capacity(20);
        push_decimal(&mut sent_at, u64::try_from(micros).unwrap_or(u64::MAX));
        headers.push((Cow::Borrowed(SENT_AT_HEADER), sent_at));
    }
    headers.extend(options.headers.iter().cloned());
    trace_context::inject(span, &mut headers);
    headers
}

pub(crate) fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the bus is closed; connect a new one")
}
