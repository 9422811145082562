//! The AMQP transport: a producer for publishing, queues declared per
//! listener, and the retry and dead-letter paths of settlement.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio_stream::StreamExt;
use tracing::warn;

use super::declared::Declared;
use super::seam::{
    BoxFuture, DeadLetter, Endpoint, Header, Inbox, Outgoing, PublishCounters, Received, Replies,
    Settlement, Transport,
};
use crate::amqp::connection::{Connection, short};
use crate::amqp::connection_event::ConnectionEvents;
use crate::amqp::consumer::Consumer;
use crate::amqp::delivery::Delivery;
use crate::amqp::header_frame;
use crate::amqp::outbox::{Message, Properties};
use crate::amqp::producer::{Producer, unix_now};
use crate::amqp::props::{AmqpProps, QueueType};
use crate::amqp::queue::Queue;
use crate::amqp::rpc::{self, Requester};
use crate::codec::Codec;
use crate::compression::Compression;
use crate::error::{Error, ErrorKind, Result};
use crate::headers::{
    ATTEMPT_HEADER, BODY_DROPPED_HEADER, CAUSATION_HEADER, CORRELATION_HEADER, ERROR_HEADER,
    FINGERPRINT_HEADER, KEY_ID_HEADER, ORIGIN_HEADER, QUEUE_HEADER, REASON_HEADER,
    ROUTING_KEY_HEADER, SENT_AT_HEADER, SIGNATURE_HEADER, TAG_HEADER, VERSION_HEADER,
};
use crate::schema::Fingerprint;
use crate::schema::Schema;
use crate::transport::listen::{Listen, Mode};
use crate::transport::lock;
use crate::transport::schema_stream::SchemaStream;

/// **The RabbitMQ transport** (`amqp://`, `amqps://`): one recovering
/// connection, a confirming producer, a queue per listener, a retry queue
/// per delay, and the dead-letter exchange `<exchange>.dead-letter`.
#[derive(Clone)]
pub struct AmqpTransport {
    inner: Arc<Amqp>,
}

pub(super) struct Amqp {
    pub(super) conn: Connection,
    producer: Producer,
    counters: Arc<PublishCounters>,
    /// The dead-letter exchange and queue, declared at open unless the bus
    /// only publishes, else with its first listener.
    dead_letter_exchange: tokio::sync::OnceCell<String>,
    /// The dead-letter queue's limits: messages, bytes.
    dead_letter_limits: (u64, u64),
    /// Every publish mandatory.
    mandatory: bool,
    /// The queues consumed, by name: whether each is durable, and its type.
    consumed: Mutex<HashMap<String, (bool, Option<QueueType>)>>,
    /// The retry queues declared lately, by name: declared again (which
    /// renews their expiry) before they could expire.
    retry_queues: Declared<String, ()>,
    /// The delay queues declared lately, by delay in milliseconds: the
    /// exchange in front of each.
    delay_queues: Declared<u32, String>,
    /// The exchange's schema stream.
    schemas: SchemaStream,
    /// Requests, their replies by direct reply-to.
    requester: Requester,
}

impl AmqpTransport {
    /// **Connects** with `props`, as `endpoint` asks: unless it only
    /// publishes, it declares the dead-letter exchange and queue.
    ///
    /// # Errors
    ///
    /// The errors of [`Connection::connect`], and the broker's refusal of
    /// the dead-letter declarations.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: tidings keeps nothing of a connection whose opening was
    /// dropped.
    pub async fn open(props: &AmqpProps, endpoint: &Endpoint) -> Result<Self> {
        let conn = Connection::connect(props).await?;
        match Self::on(conn.clone(), endpoint).await {
            Ok(transport) => Ok(transport),
            Err(e) => {
                let _ = conn.close().await;
                Err(e)
            }
        }
    }

    async fn on(conn: Connection, endpoint: &Endpoint) -> Result<Self> {
        let conn_props = &conn.props().clone();
        let counters = Arc::new(PublishCounters::default());
        let producer = Producer::with_counters(&conn, true, counters.clone())?;
        let transport = Self {
            inner: Arc::new(Amqp {
                conn: conn.clone(),
                producer,
                counters,
                dead_letter_exchange: tokio::sync::OnceCell::new(),
                dead_letter_limits: endpoint.dead_letter_limits,
                mandatory: endpoint.mandatory,
                consumed: Mutex::default(),
                retry_queues: Declared::default(),
                delay_queues: Declared::default(),
                schemas: SchemaStream::new(conn_props),
                requester: Requester::new(conn.clone()),
            }),
        };
        if !endpoint.publish_only {
            transport.inner.dead_letters().await?;
        }
        Ok(transport)
    }

    /// The connection underneath.
    #[must_use]
    pub fn connection(&self) -> &Connection {
        &self.inner.conn
    }
}

impl fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("connection", &self.inner.conn)
            .finish_non_exhaustive()
    }
}

impl Transport for AmqpTransport {
    fn instance_id(&self) -> &str {
        self.inner.conn.instance_id()
    }

    fn codec(&self) -> Arc<dyn Codec> {
        self.inner.conn.props().codec().clone()
    }

    fn exchange(&self) -> &str {
        self.inner.conn.props().exchange()
    }

    fn buffer_capacity(&self) -> Option<u64> {
        Some(self.inner.conn.props().publish_buffer().0 as u64)
    }

    fn max_message_size(&self) -> usize {
        self.inner.conn.props().max_message_size()
    }

    fn compression(&self) -> (Compression, usize) {
        self.inner.conn.props().compression()
    }

    fn prefetch(&self) -> u16 {
        self.inner.conn.props().prefetch()
    }

    fn publish(&self, out: Outgoing, done: Option<Settlement>) -> BoxFuture<'_, Result<()>> {
        self.inner.publish(out, done)
    }

    fn request(
        &self,
        out: Outgoing,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, Result<Box<dyn Replies>>> {
        Box::pin(async move {
            let (exchange, routing_key) = match &out.to_queue {
                Some(queue) => (ShortString::from(""), short(queue)?),
                None => (
                    short(self.inner.conn.props().exchange())?,
                    short(&out.routing_key)?,
                ),
            };
            let body = out.body.clone();
            let properties = self.inner.properties(&out)?;
            let properties = match ttl {
                Some(ttl) => properties
                    .with_expiration(rpc::expiration(ttl))
                    .with_delivery_mode(1),
                None => properties.with_delivery_mode(2),
            };
            let call = self
                .inner
                .requester
                .request(exchange, routing_key, &body, properties)
                .await?;
            let replies: Box<dyn Replies> = Box::new(AmqpReplies {
                call,
                amqp: self.inner.clone(),
            });
            Ok(replies)
        })
    }

    fn late_replies(&self) -> u64 {
        self.inner.requester.late_replies()
    }

    fn reply(&self, out: Outgoing) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let Some(queue) = out.to_queue.clone() else {
                return self.publish(out, None).await;
            };
            let routing_key = short(&queue)?;
            let correlation_id = out.correlation_id.clone();
            let body = out.body.clone();
            let mut properties = self.inner.properties(&out)?;
            if let Some(id) = correlation_id {
                properties = properties.with_correlation_id(id.into());
            }
            self.inner
                .requester
                .send(routing_key, &body, properties)
                .await
        })
    }

    fn listen<'a>(&'a self, listen: &'a Listen) -> BoxFuture<'a, Result<Box<dyn Inbox>>> {
        Box::pin(async move {
            // A bus that was opened to publish only and listens after all
            // needs somewhere to put what it cannot handle.
            self.inner.dead_letters().await?;
            if let Mode::Stream(spec) = listen.mode() {
                return super::amqp_stream::listen(self.inner.clone(), listen, spec).await;
            }
            let props = self.inner.conn.props();
            let queue = listen.queue_on(props.exchange(), props.exchange_kind())?;
            let consumer = self.inner.consume(&queue).await?;
            let inbox: Box<dyn Inbox> = Box::new(AmqpInbox {
                queue: consumer.queue().to_owned(),
                consumer: Some(consumer),
                amqp: self.inner.clone(),
            });
            Ok(inbox)
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.inner.producer.flush())
    }

    fn abort(&self, reason: &str) {
        self.inner.producer.abort(reason);
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.inner.conn.close())
    }

    fn events(&self) -> ConnectionEvents {
        self.inner.conn.events()
    }

    fn counters(&self) -> &PublishCounters {
        &self.inner.counters
    }

    fn reconnects(&self) -> u64 {
        self.inner.conn.reconnects()
    }

    fn store_schema(&self, schema: &'static Schema) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.inner.schemas.store(schema))
    }

    fn find_schema(&self, fingerprint: Fingerprint) -> BoxFuture<'_, Result<Option<Arc<Schema>>>> {
        Box::pin(self.inner.schemas.find(fingerprint))
    }

    fn dead_letter_queue(&self) -> Option<&str> {
        self.inner.dead_letter_exchange.get().map(String::as_str)
    }
}

/// The messages of one consumer.
struct AmqpInbox {
    queue: String,
    consumer: Option<Consumer>,
    amqp: Arc<Amqp>,
}

impl Inbox for AmqpInbox {
    fn queue(&self) -> &str {
        &self.queue
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Box<dyn Received>>> {
        Box::pin(async move {
            let consumer = self.consumer.as_mut()?;
            loop {
                match consumer.next().await? {
                    Ok(delivery) => {
                        let received: Box<dyn Received> =
                            Box::new(AmqpReceived::new(delivery, self.amqp.clone()));
                        return Some(received);
                    }
                    Err(e) => warn!(error = %e, "receiving an event failed"),
                }
            }
        })
    }

    fn close(mut self: Box<Self>, delete: bool) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if let Some(consumer) = self.consumer.take() {
                // Closing its channel gives back what was not settled.
                let _ = consumer.cancel().await;
            }
            if delete {
                self.amqp.delete_retry_queues(&self.queue).await?;
                self.amqp.conn.delete_queue(&self.queue).await?;
            }
            Ok(())
        })
    }
}

/// One delivery, with the transport to settle it through.
pub(super) struct AmqpReceived {
    pub(super) delivery: Delivery,
    pub(super) amqp: Arc<Amqp>,
    /// The attempt header, read once.
    attempt: u32,
    /// Whether a routing-key header (of a retried delivery) overrides the
    /// delivery's routing key: most deliveries have none, and then it is
    /// not searched for.
    rerouted: bool,
}

impl AmqpReceived {
    /// Reads what is asked for more than once per delivery (the attempt,
    /// whether it was rerouted) in one pass over its headers.
    pub(super) fn new(delivery: Delivery, amqp: Arc<Amqp>) -> Self {
        let (mut attempt, mut rerouted) = (1, false);
        let headers = delivery.properties().headers().as_ref();
        for (name, value) in headers.map(FieldTable::inner).into_iter().flatten() {
            match name.as_str() {
                ATTEMPT_HEADER => {
                    if let Header::Text(n) = as_header(value) {
                        attempt = n.parse().unwrap_or(1);
                    }
                }
                ROUTING_KEY_HEADER => rerouted = matches!(as_header(value), Header::Text(_)),
                _ => {}
            }
        }
        Self {
            delivery,
            amqp,
            attempt,
            rerouted,
        }
    }
}

impl Received for AmqpReceived {
    fn body(&self) -> &[u8] {
        self.delivery.body()
    }

    fn content_type(&self) -> Option<&str> {
        self.delivery.content_type()
    }

    fn content_encoding(&self) -> Option<&str> {
        let encoding = self.delivery.properties().content_encoding().as_ref()?;
        Some(encoding.as_str())
    }

    fn header(&self, name: &str) -> Header<'_> {
        // One search of the table, not one for presence and one for text.
        self.delivery.header(name).map_or(Header::Absent, as_header)
    }

    fn visit_headers(&self, visit: &mut dyn FnMut(&str, Header<'_>)) {
        visit_table(self.delivery.properties().headers().as_ref(), visit);
    }

    fn routing_key(&self) -> &str {
        let d = &self.delivery;
        if !self.rerouted {
            return d.routing_key();
        }
        d.header_str(ROUTING_KEY_HEADER).unwrap_or(d.routing_key())
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn message_id(&self) -> Option<&str> {
        self.delivery.message_id()
    }

    fn origin(&self) -> Option<&str> {
        self.delivery.origin()
    }

    fn timestamp(&self) -> Option<u64> {
        self.delivery.timestamp()
    }

    fn redelivered(&self) -> bool {
        self.delivery.redelivered()
    }

    fn reply_to(&self) -> Option<&str> {
        let reply_to = self.delivery.properties().reply_to().as_ref()?;
        Some(reply_to.as_str())
    }

    fn correlation_id(&self) -> Option<&str> {
        let id = self.delivery.properties().correlation_id().as_ref()?;
        Some(id.as_str())
    }

    fn ack(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.delivery.ack())
    }

    fn ack_through(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.delivery.ack_multiple())
    }

    fn retry(&self, attempt: u32, delay: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(
            self.amqp
                .retry(&self.delivery, self.routing_key(), attempt, delay),
        )
    }

    fn dead_letter<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(
            self.amqp
                .dead_letter(&self.delivery, self.routing_key(), letter, self.attempt()),
        )
    }

    fn requeue(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.delivery.nack(true))
    }

    fn reject(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.delivery.reject())
    }
}

impl Amqp {
    /// The dead-letter exchange, declared (with its queue) the first time.
    async fn dead_letters(&self) -> Result<&str> {
        let (messages, bytes) = self.dead_letter_limits;
        self.dead_letter_exchange
            .get_or_try_init(|| self.conn.declare_dead_letters_bounded(messages, bytes))
            .await
            .map(String::as_str)
    }

    /// Declares the queue and consumes it. Its retry queues are declared
    /// when first needed.
    async fn consume(&self, queue: &Queue) -> Result<Consumer> {
        let consumer = self.conn.consumer(queue).await?;
        // Its retry queues are of its type.
        let queue_type = queue.type_under(self.conn.props().queue_type());
        lock(&self.consumed).insert(
            consumer.queue().to_owned(),
            (queue.is_durable(), Some(queue_type)),
        );
        Ok(consumer)
    }

    /// Deletes the retry queues declared for `queue` (a broadcast queue
    /// being cancelled).
    async fn delete_retry_queues(&self, queue: &str) -> Result<()> {
        let prefix = format!("{queue}.retry.");
        let names = self
            .retry_queues
            .take_matching(|name| name.starts_with(&prefix));
        for name in names {
            self.conn.delete_queue(&name).await?;
        }
        lock(&self.consumed).remove(queue);
        Ok(())
    }

    /// The retry queue of `queue` for `delay`, declared (again) unless it
    /// was lately.
    async fn retry_queue(&self, queue: &str, delay: Duration) -> Result<String> {
        let delay_ms = whole_ms(delay);
        let name = format!("{queue}.retry.{delay_ms}");
        if self.retry_queues.fresh(&name).is_none() {
            let (durable, queue_type) = lock(&self.consumed)
                .get(queue)
                .copied()
                .unwrap_or((true, None));
            self.conn
                .declare_queue(&Queue::retry_for(queue, delay_ms, durable, queue_type))
                .await?;
            self.retry_queues.remember(name.clone(), ());
        }
        Ok(name)
    }

    /// Queues an event for the broker; `done` hears the broker's answer.
    /// Sent to a queue by name it is mandatory, so a missing queue is
    /// reported instead of dropped.
    ///
    /// Unless it is delayed (whose delay queue may have to be declared
    /// first) or has to wait for room in the buffer, the event is queued
    /// before this returns, and the future returned is a zero-sized box
    /// (no allocation) with the outcome.
    fn publish(&self, out: Outgoing, done: Option<Settlement>) -> BoxFuture<'_, Result<()>> {
        if let (None, Some(delay)) = (&out.to_queue, out.delivery.delay) {
            return Box::pin(async move {
                let exchange = short(&self.delay_exchange(delay).await?)?;
                let message = self.message(out, Some(exchange), done)?;
                self.producer.send(message).await
            });
        }
        let queued = self
            .message(out, None, done)
            .and_then(|message| self.producer.try_send(message));
        match queued {
            Ok(None) => Box::pin(Accepted),
            Ok(Some(message)) => Box::pin(self.producer.send_waiting(message)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    /// The message of an outgoing event, through `exchange` (the props'
    /// exchange without one).
    ///
    /// Its properties are sent as built the first time, and built again
    /// from `out` (kept for it) only if it has to be sent again after a
    /// lost channel: cheaper than keeping a copy of them for every event.
    fn message(
        &self,
        out: Outgoing,
        exchange: Option<ShortString>,
        done: Option<Settlement>,
    ) -> Result<Message> {
        // A reply goes to a caller that may be gone: not an error.
        let correlation_id = out.correlation_id.as_deref().map(short).transpose()?;
        let mandatory = out.delivery.mandatory.unwrap_or(self.mandatory);
        let (exchange, routing_key, mandatory) = match &out.to_queue {
            Some(queue) => (
                Some(ShortString::from("")),
                short(queue)?,
                correlation_id.is_none(),
            ),
            None => (exchange, short(&out.routing_key)?, mandatory),
        };
        let body = out.body.clone();
        let timestamp = unix_now();
        let first = event_properties(&self.producer, &out, timestamp, correlation_id)?;
        let producer = self.producer.clone();
        // Built from the same values as `first`, so it cannot fail where
        // `first` did not.
        let again = Box::new(move || {
            let correlation_id = out.correlation_id.as_deref().map(ShortString::from);
            event_properties(&producer, &out, timestamp, correlation_id).unwrap_or_default()
        });
        let properties = Properties::Rebuilt {
            first: Some(first),
            again,
        };
        Ok(self
            .producer
            .event(exchange, routing_key, body, properties, mandatory, done))
    }

    /// The AMQP properties of an outgoing event sent now.
    fn properties(&self, out: &Outgoing) -> Result<BasicProperties> {
        event_properties(&self.producer, out, unix_now(), None)
    }

    /// The exchange of the delay queue for `delay`, declared (again) unless
    /// it was lately.
    async fn delay_exchange(&self, delay: Duration) -> Result<String> {
        let delay_ms = whole_ms(delay);
        if let Some(name) = self.delay_queues.fresh(&delay_ms) {
            return Ok(name);
        }
        let name = self.conn.declare_delay(delay_ms).await?;
        self.delay_queues.remember(delay_ms, name.clone());
        Ok(name)
    }

    /// Parks a failed delivery in its queue's retry queue for `delay`
    /// (one queue per delay), with the attempt count raised; the broker
    /// then puts it back. Headers that would make the message too large
    /// for a frame are dropped, the event's own kept.
    async fn retry(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        attempt: u32,
        delay: Duration,
    ) -> Result<()> {
        let mut headers = headers_of(delivery);
        headers.insert(
            ROUTING_KEY_HEADER.into(),
            AMQPValue::LongString(routing_key.into()),
        );
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongString(attempt.to_string().into()),
        );
        let properties = delivery.properties().clone().with_headers(headers);
        let keep = [
            TAG_HEADER,
            FINGERPRINT_HEADER,
            VERSION_HEADER,
            ATTEMPT_HEADER,
            ROUTING_KEY_HEADER,
            ORIGIN_HEADER,
            // What a signature covers, and the signature.
            SENT_AT_HEADER,
            CORRELATION_HEADER,
            CAUSATION_HEADER,
            KEY_ID_HEADER,
            SIGNATURE_HEADER,
        ];
        let properties = self.fit(properties, &keep)?;
        let retry_queue = self.retry_queue(delivery.queue(), delay).await?;
        let parked = self
            .producer
            .republish(
                "".into(),
                retry_queue.as_str().into(),
                delivery.body(),
                properties,
                true,
            )
            .await;
        if parked.is_err() {
            // Perhaps deleted under us: declare it again next time.
            self.retry_queues.forget(&retry_queue);
        }
        parked
    }

    /// Publishes a delivery to the dead-letter exchange with why; without
    /// its body unless the letter keeps it. Foreign headers are dropped, largest
    /// first, if the message would not fit a frame otherwise.
    pub(super) async fn dead_letter(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        letter: DeadLetter<'_>,
        attempts: u32,
    ) -> Result<()> {
        let exchange = self.dead_letters().await?;
        let mut headers = headers_of(delivery);
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert(REASON_HEADER.into(), text(letter.reason));
        headers.insert(ERROR_HEADER.into(), text(letter.error));
        headers.insert(ATTEMPT_HEADER.into(), text(&attempts.to_string()));
        headers.insert(ROUTING_KEY_HEADER.into(), text(routing_key));
        headers.insert(QUEUE_HEADER.into(), text(delivery.queue()));
        let body: &[u8] = if letter.keep_body {
            delivery.body()
        } else {
            headers.insert(
                BODY_DROPPED_HEADER.into(),
                text(&delivery.body().len().to_string()),
            );
            &[]
        };
        let properties = delivery.properties().clone().with_headers(headers);
        let keep = [
            REASON_HEADER,
            ERROR_HEADER,
            ATTEMPT_HEADER,
            ROUTING_KEY_HEADER,
            QUEUE_HEADER,
            BODY_DROPPED_HEADER,
        ];
        let properties = self.fit(properties, &keep)?;
        self.producer
            .republish(
                exchange.into(),
                short(routing_key)?,
                body,
                properties,
                false,
            )
            .await
    }

    /// `properties` trimmed to fit the broker's frame limit.
    fn fit(&self, properties: BasicProperties, keep: &[&str]) -> Result<BasicProperties> {
        header_frame::fit(properties, self.conn.frame_max(), keep).ok_or_else(|| {
            Error::new(
                ErrorKind::MessageTooLarge,
                "the message's own properties are too large for a frame even without foreign headers",
            )
        })
    }
}

/// A delay in whole milliseconds, at least 1, at most `u32::MAX` (the
/// name of its retry or delay queue).
fn whole_ms(delay: Duration) -> u32 {
    u32::try_from(delay.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// The AMQP properties of an outgoing event sent by `producer` at
/// `timestamp`: message id, content type and encoding, headers,
/// persistence, priority, expiration, and the correlation id of a reply.
fn event_properties(
    producer: &Producer,
    out: &Outgoing,
    timestamp: u64,
    correlation_id: Option<ShortString>,
) -> Result<BasicProperties> {
    let message_id = short(&out.message_id)?;
    let delivery = out.delivery;
    let mut properties = producer.properties_at(message_id, event_headers(out), timestamp);
    // Another than the producer's only for an event of another codec.
    if *out.content_type != *producer.content_type() {
        properties = properties.with_content_type(short(&out.content_type)?);
    }
    if delivery.persistent {
        properties = properties.with_delivery_mode(2);
    }
    if let Some(encoding) = out.content_encoding {
        properties = properties.with_content_encoding(encoding.into());
    }
    if let Some(priority) = delivery.priority {
        properties = properties.with_priority(priority);
    }
    if let Some(ttl) = delivery.expiration {
        properties = properties.with_expiration(rpc::expiration(ttl));
    }
    if let Some(id) = correlation_id {
        properties = properties.with_correlation_id(id);
    }
    Ok(properties)
}

/// The outcome of a publish queued before its future was asked for: `Ok`,
/// without allocating (a zero-sized future in a `Box` takes no memory).
struct Accepted;

impl Future for Accepted {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The headers of an outgoing event: its tag, fingerprint, version and
/// the others it carries.
fn event_headers(out: &Outgoing) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(TAG_HEADER.into(), AMQPValue::LongString(out.tag.into()));
    headers.insert(
        FINGERPRINT_HEADER.into(),
        AMQPValue::LongString(hex16(out.fingerprint.as_u64()).into()),
    );
    if out.version != 1 {
        headers.insert(
            VERSION_HEADER.into(),
            AMQPValue::LongString(out.version.to_string().into()),
        );
    }
    for (name, value) in &out.headers {
        headers.insert(
            name.as_ref().into(),
            AMQPValue::LongString(value.as_str().into()),
        );
    }
    headers
}

/// `value` in 16 lowercase hex digits, as `{:016x}` writes it, without the
/// formatting machinery.
fn hex16(value: u64) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..16)
        .rev()
        .map(|nibble| DIGITS[((value >> (nibble * 4)) & 0xf) as usize])
        .collect()
}

/// The replies to one request, by direct reply-to.
struct AmqpReplies {
    call: rpc::Call,
    amqp: Arc<Amqp>,
}

impl Replies for AmqpReplies {
    fn next(&mut self) -> BoxFuture<'_, Result<Box<dyn Received>>> {
        Box::pin(async move {
            let delivery = self.call.next().await?;
            let received: Box<dyn Received> = Box::new(AmqpReply {
                queue: self.amqp.conn.props().exchange().to_owned(),
                delivery,
            });
            Ok(received)
        })
    }
}

/// A reply: received without acknowledgement, so settling it does nothing.
struct AmqpReply {
    queue: String,
    delivery: lapin::message::Delivery,
}

impl AmqpReply {
    fn header_value(&self, name: &str) -> Option<&AMQPValue> {
        self.delivery
            .properties
            .headers()
            .as_ref()?
            .inner()
            .get(name)
    }

    fn text(&self, name: &str) -> Option<&str> {
        match self.header_value(name)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }
}

impl Received for AmqpReply {
    fn body(&self) -> &[u8] {
        &self.delivery.data
    }

    fn content_type(&self) -> Option<&str> {
        let content_type = self.delivery.properties.content_type().as_ref()?;
        Some(content_type.as_str())
    }

    fn content_encoding(&self) -> Option<&str> {
        let encoding = self.delivery.properties.content_encoding().as_ref()?;
        Some(encoding.as_str())
    }

    fn header(&self, name: &str) -> Header<'_> {
        self.header_value(name).map_or(Header::Absent, as_header)
    }

    fn visit_headers(&self, visit: &mut dyn FnMut(&str, Header<'_>)) {
        visit_table(self.delivery.properties.headers().as_ref(), visit);
    }

    fn routing_key(&self) -> &str {
        &self.queue
    }

    fn attempt(&self) -> u32 {
        1
    }

    fn message_id(&self) -> Option<&str> {
        let id = self.delivery.properties.message_id().as_ref()?;
        Some(id.as_str())
    }

    fn origin(&self) -> Option<&str> {
        self.text(ORIGIN_HEADER)
    }

    fn timestamp(&self) -> Option<u64> {
        *self.delivery.properties.timestamp()
    }

    fn redelivered(&self) -> bool {
        false
    }

    fn correlation_id(&self) -> Option<&str> {
        let id = self.delivery.properties.correlation_id().as_ref()?;
        Some(id.as_str())
    }

    fn ack(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn retry(&self, _attempt: u32, _delay: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn dead_letter<'a>(&'a self, _letter: DeadLetter<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn requeue(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn reject(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Calls `visit` with each header of `headers`: strings as text, other
/// AMQP types as of the wrong type.
fn visit_table(headers: Option<&FieldTable>, visit: &mut dyn FnMut(&str, Header<'_>)) {
    for (name, value) in headers.map(FieldTable::inner).into_iter().flatten() {
        visit(name.as_str(), as_header(value));
    }
}

/// A header's value as the seam sees it: text, or of another type.
fn as_header(value: &AMQPValue) -> Header<'_> {
    match value {
        AMQPValue::LongString(s) => {
            std::str::from_utf8(s.as_bytes()).map_or(Header::WrongType, Header::Text)
        }
        AMQPValue::ShortString(s) => Header::Text(s.as_str()),
        _ => Header::WrongType,
    }
}

fn headers_of(delivery: &Delivery) -> FieldTable {
    delivery.properties().headers().clone().unwrap_or_default()
}
