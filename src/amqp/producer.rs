//! `Producer`: publishes any `Serialize` value to the exchange.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::amqp::connection::{Connection, short};
use crate::amqp::outbox::PublishCounters;
use crate::amqp::outbox::{Message, Outbox, Properties};
use crate::amqp::props::WhenFull;
use crate::codec::Codec;
use crate::error::{Error, ErrorKind, Result};
use crate::headers::ORIGIN_HEADER;

/// **Publishes values to the exchange of the props**, encoded with the props'
/// codec, with `content-type`, `message-id`, `timestamp`, `app-id` and an
/// [`x-origin`](crate::headers::ORIGIN_HEADER) header.
///
/// A `Producer` is a cheap handle: clones share one channel and one publish
/// buffer. A publish returns once the message is in the buffer (or fails
/// at once, by the props' [`WhenFull`]); a task of the producer sends the
/// buffer in order, many messages in flight. With publisher confirms on
/// (the default of [`Connection::producer`]) each publish returns a
/// [`Confirm`]: await it to know the broker has the message, or keep
/// publishing and await later, or call
/// [`wait_for_confirms`](Producer::wait_for_confirms).
///
/// When the connection is lost, messages wait in the buffer, and those the
/// broker had not confirmed are sent again once it is recovered (at least
/// once: the broker may get one twice). Closing the connection reports what
/// is still unconfirmed as failed.
///
/// # Examples
///
/// ```
/// # async fn example() -> tidings::Result<()> {
/// use tidings::{AmqpProps, Connection, Publish};
///
/// let props = AmqpProps::from_env()?.with_exchange("doc.producer", tidings::ExchangeKind::Topic);
/// let conn = Connection::connect(&props).await?;
/// let producer = conn.producer().await?;
///
/// // One at a time: returns when the broker has confirmed.
/// producer.publish_confirmed(&vec![1, 2, 3]).await?;
///
/// // Pipelined: publish many, then wait for all confirms.
/// for i in 0..100u32 {
///     drop(producer.publish_with(&i, &Publish::new().routing_key("numbers.small")).await?);
/// }
/// producer.wait_for_confirms().await?;
/// # conn.delete_exchange("doc.producer").await?;
/// # conn.close().await?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
/// ```
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    outbox: Outbox,
    exchange: ShortString,
    codec: Arc<dyn Codec>,
    content_type: ShortString,
    app_id: ShortString,
    origin: AMQPValue,
    instance_id: String,
    sequence: AtomicU64,
    confirms: bool,
    when_full: WhenFull,
}

/// **How to publish one message**: routing key, extra headers, persistence,
/// and the rest of the per-message settings. The default publishes with the
/// empty routing key, transient, not mandatory.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tidings::Publish;
///
/// let publish = Publish::new()
///     .routing_key("orders.placed")
///     .header("tenant", "acme")
///     .persistent(true)
///     .mandatory(true)
///     .expiration(Duration::from_secs(60));
/// assert_eq!(publish.routing_key_of(), "orders.placed");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    routing_key: String,
    headers: Vec<(String, String)>,
    persistent: bool,
    mandatory: bool,
    message_id: Option<String>,
    expiration: Option<Duration>,
    to_queue: bool,
}

impl Publish {
    /// The defaults: empty routing key, no extra headers, transient.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// **Sends to one named queue** through the default exchange (point to
    /// point), bypassing the exchange of the props.
    #[must_use]
    pub fn to_queue(queue: impl Into<String>) -> Self {
        Self {
            routing_key: queue.into(),
            to_queue: true,
            ..Self::default()
        }
    }

    /// Sets the routing key (default empty).
    #[must_use]
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = key.into();
        self
    }

    /// Adds a string header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Asks the broker to write the message to disk (delivery mode 2) so it
    /// survives a broker restart in a durable queue.
    #[must_use]
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Asks the broker to return the message if no queue is bound to its
    /// routing key; with confirms, the [`Confirm`] then fails with
    /// [`ErrorKind::Unroutable`].
    #[must_use]
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Uses this message id instead of a generated one.
    #[must_use]
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Lets the broker drop the message if it waits in a queue longer than
    /// this.
    #[must_use]
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.expiration = Some(ttl);
        self
    }

    /// The routing key set.
    #[must_use]
    pub fn routing_key_of(&self) -> &str {
        &self.routing_key
    }
}

impl Producer {
    pub(crate) fn open(conn: &Connection, confirms: bool) -> Result<Self> {
        Self::with_counters(conn, confirms, Arc::default())
    }

    /// A producer whose application messages are counted in `counters`.
    pub(crate) fn with_counters(
        conn: &Connection,
        confirms: bool,
        counters: Arc<PublishCounters>,
    ) -> Result<Self> {
        if conn.is_closed() {
            return Err(Error::new(ErrorKind::Closed, "the connection is closed"));
        }
        let props = conn.props();
        let codec = props.codec().clone();
        Ok(Self {
            inner: Arc::new(Inner {
                outbox: Outbox::start(conn, confirms, counters),
                exchange: short(props.exchange())?,
                content_type: short(codec.content_type())?,
                codec,
                app_id: short(props.connection_name().unwrap_or("tidings"))?,
                origin: AMQPValue::LongString(conn.instance_id().into()),
                instance_id: conn.instance_id().to_owned(),
                sequence: AtomicU64::new(0),
                confirms,
                when_full: props.when_full(),
            }),
        })
    }

    /// **Publishes a value** with the default [`Publish`] settings.
    ///
    /// Returns once the message is in the producer's buffer; the returned
    /// [`Confirm`] resolves when the broker has it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encode`] when the value cannot be encoded,
    /// [`ErrorKind::Closed`] when the connection is closed,
    /// [`ErrorKind::BufferFull`] or [`ErrorKind::Blocked`] under
    /// [`WhenFull::Fail`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in that nothing is half-sent: dropped while waiting for room
    /// in the buffer, the message was not accepted; once accepted, it is sent
    /// whatever happens to the future.
    pub async fn publish<T: Serialize + ?Sized>(&self, value: &T) -> Result<Confirm> {
        self.publish_with(value, &Publish::default()).await
    }

    /// **Publishes a value and waits for the broker's confirm.**
    ///
    /// # Errors
    ///
    /// As [`publish`](Producer::publish), and [`ErrorKind::Nacked`] when the
    /// broker refused the message.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the message was accepted does not withdraw it;
    /// only the outcome is not awaited.
    pub async fn publish_confirmed<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.publish(value).await?.await
    }

    /// **Publishes a value with per-message settings.**
    ///
    /// # Errors
    ///
    /// As [`publish`](Producer::publish), and [`ErrorKind::InvalidConfig`]
    /// for a routing key or header name over 255 bytes.
    ///
    /// # Cancel safety
    ///
    /// As [`publish`](Producer::publish).
    pub async fn publish_with<T: Serialize + ?Sized>(
        &self,
        value: &T,
        publish: &Publish,
    ) -> Result<Confirm> {
        let body = (*self.inner.codec).encode(value)?;
        self.publish_encoded(body, publish).await
    }

    /// **Publishes an already-encoded body**, labelled with the codec's
    /// `content-type` like any other message.
    ///
    /// # Errors
    ///
    /// As [`publish_with`](Producer::publish_with).
    ///
    /// # Cancel safety
    ///
    /// As [`publish`](Producer::publish).
    pub async fn publish_bytes(&self, body: &[u8], publish: &Publish) -> Result<Confirm> {
        self.publish_encoded(body.to_vec(), publish).await
    }

    async fn publish_encoded(&self, body: Vec<u8>, publish: &Publish) -> Result<Confirm> {
        let message_id = match &publish.message_id {
            Some(id) => short(id)?,
            None => self.next_message_id(),
        };
        let mut headers = FieldTable::default();
        for (name, value) in &publish.headers {
            headers.insert(short(name)?, AMQPValue::LongString(value.as_str().into()));
        }
        let exchange = if publish.to_queue {
            ShortString::from("")
        } else {
            self.inner.exchange.clone()
        };
        let mut properties = self.properties(message_id, headers);
        if publish.persistent {
            properties = properties.with_delivery_mode(2);
        }
        if let Some(ttl) = publish.expiration {
            properties = properties.with_expiration(ttl.as_millis().to_string().into());
        }
        let (done, confirmed) = oneshot::channel();
        let message = Message {
            exchange,
            routing_key: short(&publish.routing_key)?,
            mandatory: publish.mandatory,
            body: Arc::new(body),
            properties: Properties::Kept(properties),
            done: Some(done),
            counted: true,
            strikes: 0,
            nacks: 0,
            accepted: Instant::now(),
        };
        self.inner
            .outbox
            .submit(message, self.inner.when_full)
            .await?;
        Ok(Confirm {
            inner: Some(confirmed),
        })
    }

    /// An encoded event for the props' exchange (or `exchange`): the bus's
    /// path, with its properties built by the caller (from
    /// [`properties_at`](Self::properties_at)). `done` hears the outcome;
    /// without it a failure is counted and logged.
    pub(crate) fn event(
        &self,
        exchange: Option<ShortString>,
        routing_key: ShortString,
        body: Arc<Vec<u8>>,
        properties: Properties,
        mandatory: bool,
        done: Option<oneshot::Sender<Result<()>>>,
    ) -> Message {
        Message {
            exchange: exchange.unwrap_or_else(|| self.inner.exchange.clone()),
            routing_key,
            mandatory,
            body,
            properties,
            done,
            counted: true,
            strikes: 0,
            nacks: 0,
            accepted: Instant::now(),
        }
    }

    /// Queues an [`event`](Self::event), waiting for room in the buffer
    /// if the props say so.
    pub(crate) async fn send(&self, message: Message) -> Result<()> {
        self.inner
            .outbox
            .submit(message, self.inner.when_full)
            .await
    }

    /// Queues an [`event`](Self::event) if that needs no waiting: the
    /// message back when it has to wait for room
    /// ([`send_waiting`](Self::send_waiting)).
    pub(crate) fn try_send(&self, message: Message) -> Result<Option<Message>> {
        self.inner.outbox.try_submit(message, self.inner.when_full)
    }

    /// Queues an [`event`](Self::event) [`try_send`](Self::try_send) gave
    /// back, once there is room for it.
    pub(crate) async fn send_waiting(&self, message: Message) -> Result<()> {
        self.inner.outbox.submit_waiting(message).await
    }

    /// Publishes a received message again, properties and all (a retry or
    /// a dead letter), and waits for the broker's confirm. Not counted as
    /// an application publish, so a nack fails it at once; never fails for a
    /// full buffer.
    pub(crate) async fn republish(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<()> {
        let (done, confirmed) = oneshot::channel();
        let message = Message {
            exchange,
            routing_key,
            mandatory,
            body: Arc::new(body.to_vec()),
            properties: Properties::Kept(properties),
            done: Some(done),
            counted: false,
            strikes: 0,
            nacks: 0,
            accepted: Instant::now(),
        };
        self.inner.outbox.submit(message, WhenFull::Wait).await?;
        Confirm {
            inner: Some(confirmed),
        }
        .await
    }

    /// A message id unique across processes: `<instance-id>-<n>`.
    fn next_message_id(&self) -> ShortString {
        let sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        ShortString::from(crate::headers::message_id(
            &self.inner.instance_id,
            sequence,
        ))
    }

    /// The content type of what this producer encodes.
    pub(crate) fn content_type(&self) -> &str {
        self.inner.content_type.as_str()
    }

    pub(crate) fn properties(
        &self,
        message_id: ShortString,
        headers: FieldTable,
    ) -> BasicProperties {
        self.properties_at(message_id, headers, unix_now())
    }

    /// The properties of a message sent at `timestamp` (seconds since the
    /// Unix epoch): content type, message id, timestamp, app id, and the
    /// headers with the origin added.
    pub(crate) fn properties_at(
        &self,
        message_id: ShortString,
        mut headers: FieldTable,
        timestamp: u64,
    ) -> BasicProperties {
        let inner = &*self.inner;
        headers.insert(ORIGIN_HEADER.into(), inner.origin.clone());
        BasicProperties::default()
            .with_content_type(inner.content_type.clone())
            .with_message_id(message_id)
            .with_timestamp(timestamp)
            .with_app_id(inner.app_id.clone())
            .with_headers(headers)
    }

    /// **Waits until the broker has settled every message published so
    /// far** on this producer, through outages.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the messages as they are.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Nacked`] if the broker refused any of them or returned
    /// a mandatory one (each [`Confirm`] says which),
    /// [`ErrorKind::Closed`] when the connection was closed first.
    pub async fn wait_for_confirms(&self) -> Result<()> {
        match self.inner.outbox.flush().await? {
            0 => Ok(()),
            n => Err(Error::new(
                ErrorKind::Nacked,
                format!(
                    "{n} messages were not confirmed by the broker (refused, returned or lost); their Confirms say why"
                ),
            )),
        }
    }

    /// Waits until everything published so far is settled; how many failed.
    pub(crate) async fn flush(&self) -> Result<u64> {
        self.inner.outbox.flush().await
    }

    /// Reports everything not yet confirmed as failed and stops sending.
    pub(crate) fn abort(&self, reason: &str) {
        self.inner.outbox.abort(reason);
    }

    /// Whether this producer asks the broker for confirms.
    #[must_use]
    pub fn confirms(&self) -> bool {
        self.inner.confirms
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("exchange", &self.inner.exchange.as_str())
            .field("content_type", &self.inner.content_type.as_str())
            .field("confirms", &self.inner.confirms)
            .field("outbox", &self.inner.outbox)
            .finish_non_exhaustive()
    }
}

/// **The broker's answer to one publish**, to await or drop.
///
/// Awaiting gives `Ok(())` once the broker has taken responsibility for the
/// message (or once it is written, when confirms are off). Dropping it does
/// not cancel the publish; [`Producer::wait_for_confirms`] still accounts
/// for it.
#[must_use = "await the Confirm to know the broker has the message, or drop it explicitly"]
pub struct Confirm {
    inner: Option<oneshot::Receiver<Result<()>>>,
}

impl fmt::Debug for Confirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Confirm")
            .field("requested", &self.inner.is_some())
            .finish()
    }
}

impl IntoFuture for Confirm {
    type Output = Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Some(pending) = self.inner else {
                return Ok(());
            };
            pending.await.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Closed,
                    "the producer stopped before the broker confirmed the message",
                ))
            })
        })
    }
}

/// Now, in seconds since the Unix epoch: the AMQP `timestamp`.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Producers are opened from a connection.
impl Connection {
    /// **A producer** with publisher confirms on: every publish returns a
    /// [`Confirm`](crate::Confirm) to await or drop. What the broker has not
    /// confirmed when the connection is lost is sent again after recovery.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the connection is closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn producer(&self) -> Result<Producer> {
        Producer::open(self, true)
    }

    /// **A producer without publisher confirms**: nothing waits for the
    /// broker; a message lost in a failing connection goes unnoticed.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the connection is closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn producer_without_confirms(&self) -> Result<Producer> {
        Producer::open(self, false)
    }
}
