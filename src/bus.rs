//! `Bus`: the remote-event layer. Publishing an event broadcasts it; every
//! receiving process decodes it and dispatches it to its local subscribers.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tracing::{Instrument, debug, info_span, warn};

use crate::codec::{BINCODE_CONTENT_TYPE, Bincode, Codec, Codecs};
use crate::connection::Connection;
use crate::consumer::Consumer;
use crate::context::Context;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, Fingerprint, registered_events};
use crate::props::AmqpProps;
use crate::stats::{Counters, RejectReason, Stats};
use crate::subscribers::Subscribers;
use crate::transport::amqp::Amqp;
use crate::transport::memory::{self, Hub};
use crate::transport::{FINGERPRINT_HEADER, Header, Incoming, Outgoing, Pending, TAG_HEADER};

/// Events accepted by `publish` and not yet handed to the transport.
const DEFAULT_BUFFER: usize = 8192;
/// Publishes awaiting their confirm; beyond this the publisher task waits.
const CONFIRMS_IN_FLIGHT: usize = 4096;
/// The largest body a memory bus decodes.
const MEMORY_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// **A typed event bus** (zamqp's `AMQPEvent` with `AMQPEventCallback`):
/// [`publish`](Bus::publish) broadcasts an event through the exchange, and
/// every connected bus, in this process or another, decodes it and
/// dispatches it to its local [`Subscribers`].
///
/// Connect to `amqp://` / `amqps://` for RabbitMQ, or to `memory://name` for
/// the same semantics inside one process (unit tests, examples). Each bus
/// consumes from a queue of its own bound to the exchange, so every bus
/// receives every event (broadcast); events are handled one at a time, in
/// the order they were published.
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
    outbox: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    subscribers: Subscribers,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    connection: Option<Connection>,
    /// Keeps the producer's channel open while confirms are outstanding,
    /// after the publisher task has ended.
    _link: Link,
    sequence: AtomicU64,
}

/// **How to connect a [`Bus`]**: where, which subscribers, and whether the
/// bus's own events reach its own subscribers.
#[derive(Debug, Clone)]
pub struct BusBuilder {
    target: Target,
    subscribers: Subscribers,
    self_delivery: bool,
    buffer: usize,
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

    /// Whether this bus's own subscribers receive the events it publishes
    /// (default `true`). Either way each of them gets each event once.
    #[must_use]
    pub fn self_delivery(mut self, on: bool) -> Self {
        self.self_delivery = on;
        self
    }

    /// How many published events may wait to be sent (default 8192);
    /// `publish` waits while the buffer is full.
    ///
    /// # Panics
    ///
    /// At [`connect`](BusBuilder::connect) if `events` is zero.
    #[must_use]
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events;
        self
    }

    /// **Connects**: checks the registered event types, opens the
    /// transport, starts consuming, and starts the background publisher.
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
        match self.target.clone() {
            Target::Amqp(props) => {
                let conn = Connection::connect(&props).await?;
                let amqp = Arc::new(Amqp::open(conn.clone()).await?);
                let consumer = amqp.subscribe().await?;
                let codec = props.codec().clone();
                let instance_id = conn.instance_id().to_owned();
                let decoder = Decoder {
                    codecs: Codecs::new(codec.clone()),
                    max_message_size: props.max_message_size(),
                };
                Ok(self.start(
                    instance_id,
                    codec,
                    Link::Amqp(amqp),
                    Receiver::Amqp(Box::new(consumer)),
                    decoder,
                    Some(conn),
                ))
            }
            Target::Memory(name) => {
                let hub = Hub::named(&name);
                let receiver = Receiver::Memory(hub.subscribe());
                let codec: Arc<dyn Codec> = Arc::new(Bincode);
                let decoder = Decoder {
                    codecs: Codecs::new(codec.clone()),
                    max_message_size: MEMORY_MAX_MESSAGE_SIZE,
                };
                let instance_id = uuid::Uuid::new_v4().to_string();
                Ok(self.start(
                    instance_id,
                    codec,
                    Link::Memory(hub),
                    receiver,
                    decoder,
                    None,
                ))
            }
        }
    }

    fn start(
        self,
        instance_id: String,
        codec: Arc<dyn Codec>,
        link: Link,
        receiver: Receiver,
        decoder: Decoder,
        connection: Option<Connection>,
    ) -> Bus {
        let counters = Arc::new(Counters::default());
        let (outbox, jobs) = mpsc::channel(self.buffer);
        let (confirm_tx, confirm_rx) = mpsc::channel(CONFIRMS_IN_FLIGHT);
        let (stop, stopped) = watch::channel(false);
        let span = info_span!("bus", instance = %instance_id);
        let publisher = Publisher {
            link: link.clone(),
            instance_id: instance_id.clone(),
            counters: counters.clone(),
        };
        let dispatcher = Dispatcher {
            decoder,
            subscribers: self.subscribers.clone(),
            counters: counters.clone(),
            instance_id: instance_id.clone(),
            self_delivery: self.self_delivery,
        };
        let tasks = vec![
            tokio::spawn(publisher.run(jobs, confirm_tx).instrument(span.clone())),
            tokio::spawn(confirm_loop(confirm_rx, counters.clone()).instrument(span.clone())),
            tokio::spawn(dispatcher.run(receiver, stopped).instrument(span)),
        ];
        Bus {
            inner: Arc::new(Inner {
                instance_id,
                codec,
                outbox,
                counters,
                subscribers: self.subscribers,
                stop,
                tasks: Mutex::new(tasks),
                connection,
                _link: link,
                sequence: AtomicU64::new(0),
            }),
        }
    }
}

impl Bus {
    /// **Connects to `amqp://..`, `amqps://..` or `memory://name`** with the
    /// defaults: the [global](Subscribers::global) subscribers,
    /// self-delivery on.
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
            self_delivery: true,
            buffer: DEFAULT_BUFFER,
        }
    }

    /// **Publishes an event** (fire and forget): returns once the event is
    /// encoded and accepted into the bus's buffer, waiting while the buffer
    /// is full. The broker's confirm is tracked in the background; a
    /// failure is logged and counted in [`Stats::publish_failed`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encode`] when the event cannot be encoded,
    /// [`ErrorKind::Closed`] when the bus is closed.
    pub async fn publish(&self, event: &dyn Event) -> Result<()> {
        self.send(event, None).await
    }

    /// **Publishes an event and waits for the broker's confirm.**
    ///
    /// # Errors
    ///
    /// As [`publish`](Bus::publish), and [`ErrorKind::Nacked`] or
    /// [`ErrorKind::Closed`] when the broker did not take the event.
    pub async fn publish_confirmed(&self, event: &dyn Event) -> Result<()> {
        let (done, confirmed) = oneshot::channel();
        self.send(event, Some(done)).await?;
        confirmed.await.map_err(|_| closed())?
    }

    async fn send(
        &self,
        event: &dyn Event,
        done: Option<oneshot::Sender<Result<()>>>,
    ) -> Result<()> {
        let inner = &*self.inner;
        let body = inner.codec.encode::<dyn Event>(event)?;
        let sequence = inner.sequence.fetch_add(1, Ordering::Relaxed);
        let out = Outgoing {
            body,
            tag: event.tag(),
            fingerprint: event.fingerprint(),
            routing_key: event.routing_key(),
            message_id: format!("{}-{sequence}", inner.instance_id),
        };
        inner
            .outbox
            .send(Job::Publish(out, done))
            .await
            .map_err(|_| closed())?;
        Counters::add(&inner.counters.published);
        Ok(())
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

    /// **A snapshot of the bus's counters.**
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// **Closes the bus**: waits until every event published before is
    /// confirmed or reported failed, lets the handler running now finish,
    /// stops receiving, and closes the connection. Clones of this bus can
    /// publish no more.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the bus was closed already.
    pub async fn close(&self) -> Result<()> {
        let (flushed, done) = oneshot::channel();
        self.inner
            .outbox
            .send(Job::Close(flushed))
            .await
            .map_err(|_| closed())?;
        let _ = done.await;
        let _ = self.inner.stop.send(true);
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        if let Some(conn) = &self.inner.connection {
            conn.close().await?;
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The publisher ends when the outbox closes; the dispatcher on this.
        let _ = self.stop.send(true);
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("instance_id", &self.inner.instance_id)
            .field("connection", &self.inner.connection)
            .finish_non_exhaustive()
    }
}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the bus is closed; connect a new one")
}

enum Job {
    Publish(Outgoing, Option<oneshot::Sender<Result<()>>>),
    Close(oneshot::Sender<()>),
}

enum Confirming {
    Pending(Pending, Option<oneshot::Sender<Result<()>>>),
    Close(oneshot::Sender<()>),
}

#[derive(Clone)]
enum Link {
    Amqp(Arc<Amqp>),
    Memory(Arc<Hub>),
}

struct Publisher {
    link: Link,
    instance_id: String,
    counters: Arc<Counters>,
}

impl Publisher {
    /// Sends jobs in order; confirms are awaited by `confirm_loop`.
    async fn run(self, mut jobs: mpsc::Receiver<Job>, confirms: mpsc::Sender<Confirming>) {
        while let Some(job) = jobs.recv().await {
            let next = match job {
                Job::Close(flushed) => {
                    jobs.close();
                    Confirming::Close(flushed)
                }
                Job::Publish(out, done) => {
                    let sent = match &self.link {
                        Link::Amqp(amqp) => amqp.publish(&out).await,
                        Link::Memory(hub) => hub
                            .publish(&out, BINCODE_CONTENT_TYPE, &self.instance_id)
                            .await
                            .map(|()| Pending::Done),
                    };
                    match sent {
                        Ok(pending) => Confirming::Pending(pending, done),
                        Err(e) => {
                            warn!(error = %e, message_id = %out.message_id, "publishing an event failed");
                            Counters::add(&self.counters.publish_failed);
                            if let Some(done) = done {
                                let _ = done.send(Err(e));
                            }
                            continue;
                        }
                    }
                }
            };
            if confirms.send(next).await.is_err() {
                break;
            }
        }
    }
}

async fn confirm_loop(mut confirms: mpsc::Receiver<Confirming>, counters: Arc<Counters>) {
    while let Some(next) = confirms.recv().await {
        match next {
            Confirming::Close(flushed) => {
                let _ = flushed.send(());
                break;
            }
            Confirming::Pending(pending, done) => {
                let result = pending.wait().await;
                match &result {
                    Ok(()) => Counters::add(&counters.confirmed),
                    Err(e) => {
                        warn!(error = %e, "the broker did not confirm an event");
                        Counters::add(&counters.publish_failed);
                    }
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
        }
    }
}

enum Receiver {
    Amqp(Box<Consumer>),
    Memory(mpsc::Receiver<Arc<memory::Message>>),
}

impl Receiver {
    async fn next(&mut self) -> Option<Incoming> {
        match self {
            Self::Amqp(consumer) => loop {
                match consumer.next().await? {
                    Ok(delivery) => return Some(Incoming::Amqp(delivery)),
                    Err(e) => warn!(error = %e, "receiving an event failed"),
                }
            },
            Self::Memory(queue) => queue.recv().await.map(Incoming::Memory),
        }
    }
}

struct Decoder {
    codecs: Codecs,
    max_message_size: usize,
}

struct Dispatcher {
    decoder: Decoder,
    subscribers: Subscribers,
    counters: Arc<Counters>,
    instance_id: String,
    self_delivery: bool,
}

impl Dispatcher {
    async fn run(self, mut receiver: Receiver, mut stopped: watch::Receiver<bool>) {
        loop {
            let incoming = tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => break,
                next = receiver.next() => match next {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            self.handle(incoming).await;
        }
        if let Receiver::Amqp(consumer) = receiver {
            let _ = consumer.cancel().await;
        }
    }

    async fn handle(&self, incoming: Incoming) {
        Counters::add(&self.counters.delivered);
        let event = match self.decode(&incoming) {
            Ok(event) => event,
            Err(reason) => {
                self.counters.reject(reason);
                if let Err(e) = incoming.reject().await {
                    warn!(error = %e, "rejecting a message failed");
                }
                return;
            }
        };
        if !self.self_delivery && incoming.origin() == Some(self.instance_id.as_str()) {
            Counters::add(&self.counters.own_skipped);
        } else {
            let context = Context::remote(
                incoming.routing_key(),
                incoming.message_id(),
                incoming.origin(),
                incoming.timestamp(),
                incoming.redelivered(),
            );
            let dispatch = self.subscribers.dispatch(&event, &context).await;
            Counters::add(&self.counters.dispatched);
            for _ in dispatch.failures() {
                Counters::add(&self.counters.handler_failures);
            }
        }
        if let Err(e) = incoming.ack().await {
            warn!(error = %e, "acknowledging an event failed");
        }
    }

    /// Checks and decodes one message; logs why when it cannot.
    fn decode(&self, incoming: &Incoming) -> Result<Arc<dyn Event>, RejectReason> {
        let message_id = incoming.message_id().unwrap_or("");
        let reject = |reason: RejectReason, detail: &dyn fmt::Display| {
            warn!(reason = %reason, message_id, "{detail}; message rejected");
            reason
        };
        let body = incoming.body();
        if body.len() > self.decoder.max_message_size {
            let detail = format!(
                "body of {} bytes exceeds the maximum message size of {}",
                body.len(),
                self.decoder.max_message_size
            );
            return Err(reject(RejectReason::TooLarge, &detail));
        }
        let codec = self
            .decoder
            .codecs
            .for_content_type(incoming.content_type())
            .map_err(|e| reject(RejectReason::ContentType, &e))?;
        let tag = match incoming.header(TAG_HEADER) {
            Header::Text(tag) => tag,
            Header::Absent => {
                return Err(reject(
                    RejectReason::MissingTag,
                    &format_args!("no {TAG_HEADER} header"),
                ));
            }
            Header::WrongType => {
                return Err(reject(
                    RejectReason::BadHeader,
                    &format_args!("{TAG_HEADER} header is not a string"),
                ));
            }
        };
        let registered = registered_events().ok().and_then(|events| events.get(tag));
        let Some(registered) = registered else {
            return Err(reject(
                RejectReason::UnknownTag,
                &format_args!("unknown event tag {tag:?}: no such event type in this process"),
            ));
        };
        let theirs = match incoming.header(FINGERPRINT_HEADER) {
            Header::Text(text) => text.parse::<Fingerprint>().ok(),
            Header::Absent => None,
            Header::WrongType => {
                return Err(reject(
                    RejectReason::BadHeader,
                    &format_args!("{FINGERPRINT_HEADER} header is not a string"),
                ));
            }
        };
        let ours = registered.fingerprint();
        let mismatch = theirs.is_some_and(|theirs| theirs != ours) || theirs.is_none();
        if mismatch {
            Counters::add(&self.counters.fingerprint_mismatches);
            let theirs = theirs.map_or_else(|| "none".to_owned(), |f| f.to_string());
            // bincode is not self-describing: a different shape would be
            // misread silently, so it is refused outright.
            if codec.content_type() != crate::codec::JSON_CONTENT_TYPE {
                return Err(reject(
                    RejectReason::FingerprintMismatch,
                    &format_args!(
                        "event {tag:?} has schema fingerprint {theirs}, this process has {ours}; the types differ"
                    ),
                ));
            }
            warn!(tag, theirs = %theirs, ours = %ours, message_id, "schema fingerprints differ; decoding the JSON anyway");
        }
        let event: Box<dyn Event> = codec.decode(body).map_err(|e| {
            let reason = if mismatch {
                RejectReason::FingerprintMismatch
            } else {
                RejectReason::Decode
            };
            reject(reason, &format_args!("event {tag:?}: {e}"))
        })?;
        if event.tag() != tag {
            return Err(reject(
                RejectReason::TagMismatch,
                &format_args!(
                    "body holds event {:?} but the {TAG_HEADER} header says {tag:?}",
                    event.tag()
                ),
            ));
        }
        Ok(Arc::from(event))
    }
}
