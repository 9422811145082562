//! The seam between a bus and what carries its events: [`Transport`] (open,
//! publish, listen, flush, close, connection events), [`Inbox`] (the
//! messages of one listener) and [`Received`] (one message, which settles
//! itself: ack, retry after a delay, dead-letter with a reason).
//!
//! The bus and its listener loop see only these traits. RabbitMQ
//! (`amqp://`), the in-process hub (`memory://`) and the fault injector
//! ([`Faults`](crate::Faults)) implement them; so can a user's own
//! transport, registered for a URL scheme with
//! [`register_driver`](crate::register_driver).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::amqp::connection::{DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_MESSAGES};
use crate::amqp::connection_event::ConnectionEvents;
pub(crate) use crate::amqp::outbox::PublishCounters;
use crate::codec::Codec;
use crate::compression::{Compression, DEFAULT_COMPRESSION_THRESHOLD};
use crate::error::Result;
use crate::schema::Fingerprint;
use crate::schema::Schema;
use crate::transport::listen::Listen;

/// A boxed future, as the object-safe [`Transport`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a publish's outcome goes: `Ok` once the transport has the event
/// safely (a broker's confirm), or why not.
pub type Settlement = oneshot::Sender<Result<()>>;

/// **An encoded event on its way out**, as a bus hands it to its transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outgoing {
    /// The encoded event.
    pub body: Arc<Vec<u8>>,
    /// The codec's content type (`application/x-bincode`, ...).
    pub content_type: Arc<str>,
    /// The event's wire tag.
    pub tag: &'static str,
    /// The event type's schema fingerprint.
    pub fingerprint: Fingerprint,
    /// The event type's version (sent as a header when not 1).
    pub version: u32,
    /// The event's routing key: its type's, or one given for this event.
    pub routing_key: Cow<'static, str>,
    /// Unique per publisher: `<instance-id>-<n>`.
    pub message_id: String,
    /// Sent to this queue by name instead of through the exchange.
    pub to_queue: Option<String>,
    /// More string headers: the application's own, correlation and
    /// causation ids, trace context, the publish time.
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// For a reply (sent to the request's [`Received::reply_to`]): the
    /// request's [`Received::correlation_id`], which the caller matches
    /// replies by. Not the conversation header `x-correlation-id`.
    pub correlation_id: Option<String>,
    /// How the body is compressed (`gzip`, `zstd`, `lz4`): the AMQP
    /// `content-encoding`; `None` for a body as the codec wrote it.
    pub content_encoding: Option<&'static str>,
    /// How the broker treats the message: persistence, priority,
    /// expiration, mandatory, delay.
    pub delivery: DeliveryOptions,
}

/// **How the broker treats one outgoing message**, beyond where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryOptions {
    /// Written to disk by the broker (delivery mode 2; default `true`).
    pub persistent: bool,
    /// The AMQP priority, 0 to 255; honoured by queues declared with
    /// `x-max-priority` (classic queues), ignored by quorum queues.
    pub priority: Option<u8>,
    /// Dropped by the broker if it waits in a queue longer than this.
    pub expiration: Option<Duration>,
    /// Returned as unroutable when no queue takes it; `None`: the
    /// transport's default ([`Endpoint::mandatory`]).
    pub mandatory: Option<bool>,
    /// Held back this long before it is routed to the queues.
    pub delay: Option<Duration>,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl DeliveryOptions {
    /// Persistent, no priority, expiration or delay, the transport's
    /// mandatory setting.
    pub const DEFAULT: Self = Self {
        persistent: true,
        priority: None,
        expiration: None,
        mandatory: None,
        delay: None,
    };
}

/// **A message header as received**: absent, a string, or of another type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header<'a> {
    /// No such header.
    Absent,
    /// A string header.
    Text(&'a str),
    /// A header of another type than a string.
    WrongType,
}

/// **Why a message goes to the dead letters.**
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DeadLetter<'a> {
    /// A short snake_case reason (`decode`, `handler_failed`, ...).
    pub reason: &'a str,
    /// What went wrong, in words (bounded by the bus to 1 KiB).
    pub error: &'a str,
    /// Keep the body; `false` for a body too large to copy again.
    pub keep_body: bool,
}

impl<'a> DeadLetter<'a> {
    /// A dead letter with its body.
    #[must_use]
    pub fn new(reason: &'a str, error: &'a str) -> Self {
        Self {
            reason,
            error,
            keep_body: true,
        }
    }

    /// The same, without the body.
    #[must_use]
    pub fn without_body(self) -> Self {
        Self {
            keep_body: false,
            ..self
        }
    }
}

/// **One received message**, not yet decoded, that settles itself.
pub trait Received: Send + Sync {
    /// The encoded event.
    fn body(&self) -> &[u8];
    /// Its content type, if it has one.
    fn content_type(&self) -> Option<&str>;
    /// How its body is compressed (the AMQP `content-encoding`), if it is.
    fn content_encoding(&self) -> Option<&str> {
        None
    }
    /// A header by name.
    fn header(&self, name: &str) -> Header<'_>;
    /// Calls `visit` with each header, in no particular order.
    fn visit_headers(&self, visit: &mut dyn FnMut(&str, Header<'_>));
    /// The routing key it was published with (also after retries).
    fn routing_key(&self) -> &str;
    /// Which delivery attempt this is, from 1.
    fn attempt(&self) -> u32;
    /// The message id, if it has one.
    fn message_id(&self) -> Option<&str>;
    /// The publisher's instance id (`x-origin`), if known.
    fn origin(&self) -> Option<&str>;
    /// When it was published, in seconds since the Unix epoch.
    fn timestamp(&self) -> Option<u64>;
    /// Whether the transport delivered it before (its settlement was lost).
    fn redelivered(&self) -> bool;
    /// Where replies to it go (a request, or an event whose publisher
    /// waits for receipts), if anywhere: a queue name to
    /// [`Outgoing::to_queue`].
    fn reply_to(&self) -> Option<&str> {
        None
    }
    /// The id its replies carry in [`Outgoing::correlation_id`].
    fn correlation_id(&self) -> Option<&str> {
        None
    }
    /// Acknowledges it: handled.
    fn ack(&self) -> BoxFuture<'_, Result<()>>;
    /// Acknowledges it and every message received before it on its inbox.
    fn ack_through(&self) -> BoxFuture<'_, Result<()>> {
        self.ack()
    }
    /// Puts it back, to be delivered again after `delay` as attempt
    /// `attempt`. On success the bus acknowledges this delivery.
    fn retry(&self, attempt: u32, delay: Duration) -> BoxFuture<'_, Result<()>>;
    /// Sends it to the dead letters. On success the bus acknowledges this
    /// delivery; on failure it [rejects](Received::reject) it.
    fn dead_letter<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<()>>;
    /// Gives it back to its queue at once (a retry could not be parked).
    fn requeue(&self) -> BoxFuture<'_, Result<()>>;
    /// Drops it (its dead letter could not be sent).
    fn reject(&self) -> BoxFuture<'_, Result<()>>;
}

/// **The messages of one listener**, in the order the transport gives them.
pub trait Inbox: Send {
    /// The queue's name.
    fn queue(&self) -> &str;
    /// The next message; `None` once the inbox is closed for good.
    /// Cancel safe: a message is never lost by dropping the future.
    fn next(&mut self) -> BoxFuture<'_, Option<Box<dyn Received>>>;
    /// Stops receiving: messages received and not settled go back to the
    /// queue. With `delete`, the queue goes too (a broadcast listener that
    /// was cancelled).
    fn close(self: Box<Self>, delete: bool) -> BoxFuture<'static, Result<()>>;
}

/// **The replies to one [request](Transport::request)**, as they come.
/// Dropping it stops waiting: later replies are dropped and counted in
/// [`Transport::late_replies`].
pub trait Replies: Send {
    /// The next reply. Fails with [`ErrorKind::Unroutable`] when the
    /// request reached no queue, [`ErrorKind::ConnectionLost`] when the
    /// connection was lost before the reply came.
    ///
    /// Cancel safe: a reply is never lost by dropping the future.
    ///
    /// [`ErrorKind::Unroutable`]: crate::ErrorKind::Unroutable
    /// [`ErrorKind::ConnectionLost`]: crate::ErrorKind::ConnectionLost
    fn next(&mut self) -> BoxFuture<'_, Result<Box<dyn Received>>>;
}

/// **What carries a bus's events**: RabbitMQ, the in-process hub, a fault
/// injector around either, or a transport of your own.
///
/// Every method that returns a future is cancel safe unless it says
/// otherwise.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The bus's instance id: the origin of what it publishes.
    fn instance_id(&self) -> &str;
    /// The codec events are encoded with.
    fn codec(&self) -> Arc<dyn Codec>;
    /// Where events are published, for logs and traces: the exchange, the
    /// hub's name.
    fn exchange(&self) -> &str {
        ""
    }
    /// How many events the publish buffer holds at most, if it is bounded.
    fn buffer_capacity(&self) -> Option<u64> {
        None
    }
    /// The largest body a listener decodes (also once decompressed).
    fn max_message_size(&self) -> usize;
    /// How a bus on this transport compresses what it publishes, unless
    /// its builder says otherwise: the algorithm and the size it starts at
    /// (for RabbitMQ, the props' `compression` and `compression_threshold`).
    fn compression(&self) -> (Compression, usize) {
        (Compression::None, DEFAULT_COMPRESSION_THRESHOLD)
    }
    /// How many messages a listener holds unsettled at most.
    fn prefetch(&self) -> u16;
    /// **Accepts an event** (waiting for room while a buffer is full); its
    /// outcome goes to `done`, or, without it, is counted and logged.
    fn publish(&self, out: Outgoing, done: Option<Settlement>) -> BoxFuture<'_, Result<()>>;
    /// **Sends a request that waits for replies**: `out` goes to its
    /// [`to_queue`](Outgoing::to_queue) (a server's queue) or, without
    /// one, through the exchange; it is mandatory and, with a `ttl`, not
    /// persistent and discarded unhandled after it. Receivers see a
    /// [`reply_to`](Received::reply_to) and a
    /// [`correlation_id`](Received::correlation_id) to reply with. On
    /// RabbitMQ, replies come by direct reply-to: no queue per call.
    ///
    /// By default a transport cannot: [`ErrorKind::Usage`](crate::ErrorKind::Usage).
    fn request(
        &self,
        out: Outgoing,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, Result<Box<dyn Replies>>> {
        let _ = (out, ttl);
        Box::pin(std::future::ready(Err(crate::error::Error::new(
            crate::error::ErrorKind::Usage,
            "this transport does not support requests; use amqp:// or memory://",
        ))))
    }
    /// Replies that came after their caller stopped waiting (timed out or
    /// cancelled), dropped.
    fn late_replies(&self) -> u64 {
        0
    }
    /// **Sends a reply or a receipt** to its caller's `reply-to`
    /// ([`Outgoing::to_queue`]), at once: not buffered through an outage
    /// nor tracked to a confirm, since its caller gives up on a lost
    /// connection anyway. By default, [`publish`](Transport::publish)
    /// without a settlement.
    fn reply(&self, out: Outgoing) -> BoxFuture<'_, Result<()>> {
        self.publish(out, None)
    }
    /// **Starts receiving** the way `listen` says.
    fn listen<'a>(&'a self, listen: &'a Listen) -> BoxFuture<'a, Result<Box<dyn Inbox>>>;
    /// Waits until every event accepted so far is settled; how many failed
    /// since the last flush.
    fn flush(&self) -> BoxFuture<'_, Result<u64>>;
    /// Reports every event not yet settled as failed, with `reason`.
    fn abort(&self, reason: &str);
    /// Closes the connection. Safe to call twice.
    fn close(&self) -> BoxFuture<'_, Result<()>>;
    /// What happens to the connection.
    fn events(&self) -> ConnectionEvents;
    /// The counters of what was published.
    fn counters(&self) -> &PublishCounters;
    /// Times the connection was lost and recovered.
    fn reconnects(&self) -> u64 {
        0
    }
    /// The queue that collects dead letters, if the transport keeps them.
    fn dead_letter_queue(&self) -> Option<&str> {
        None
    }
    /// **Stores an event type's schema** where receivers can find it by
    /// fingerprint; a bus calls it before it first publishes the type. By
    /// default the schema is kept in this process, which is enough for
    /// buses that meet in it.
    fn store_schema(&self, schema: &'static Schema) -> BoxFuture<'_, Result<()>> {
        crate::schema::store::local()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(schema.fingerprint(), Arc::new(schema.clone()));
        Box::pin(std::future::ready(Ok(())))
    }
    /// **Finds a writer's schema** by fingerprint, when an event's differs
    /// from the receiver's own; `None` when the store does not have it.
    fn find_schema(&self, fingerprint: Fingerprint) -> BoxFuture<'_, Result<Option<Arc<Schema>>>> {
        let found = crate::schema::store::local()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fingerprint)
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }
}

/// **What a bus asks of the transport it opens**: where, and what the bus
/// needs declared.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Endpoint {
    /// The URL the bus was given.
    pub url: String,
    /// The bus only publishes: no dead letters to keep.
    pub publish_only: bool,
    /// Every publish mandatory: an unroutable one fails.
    pub mandatory: bool,
    /// The most messages and bytes the dead-letter queue holds.
    pub dead_letter_limits: (u64, u64),
}

impl Endpoint {
    /// An endpoint at `url` with the defaults: listening, not mandatory,
    /// the default dead-letter limits.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            publish_only: false,
            mandatory: false,
            dead_letter_limits: (DEAD_LETTER_MAX_MESSAGES, DEAD_LETTER_MAX_BYTES),
        }
    }

    /// The URL's scheme, before `://`.
    #[must_use]
    pub fn scheme(&self) -> &str {
        self.url.split_once("://").map_or("", |(scheme, _)| scheme)
    }
}
