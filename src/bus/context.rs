//! `Context`: what a handler may want to know about the event it handles,
//! and the context of the event a task is handling now, which the events it
//! publishes carry on (correlation and causation).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::headers::{CAUSATION_HEADER, CORRELATION_HEADER, SENT_AT_HEADER, is_reserved};
use crate::transport::seam::{Header, Received};

tokio::task_local! {
    /// The event the current task is handling.
    static HANDLING: Context;
}

/// **Where an event came from**: routing key, message id, publishing
/// instance, delivery attempt, the conversation it belongs to, and the
/// application's headers. Handlers subscribed with
/// [`subscribe_with`](crate::Subscribers::subscribe_with) or
/// [`subscribe_async`](crate::Subscribers::subscribe_async) receive it;
/// [`Context::current`] finds it from anywhere in the handling task.
///
/// Events a handler publishes carry the conversation on: their correlation
/// id is this event's, their causation id this event's message id.
///
/// A cheap handle: clones share one allocation.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    routing_key: String,
    message_id: Option<String>,
    origin: Option<String>,
    timestamp: Option<u64>,
    attempt: u32,
    redelivered: bool,
    remote: bool,
    queue: Arc<str>,
    /// The correlation header, when the event did not start its conversation.
    correlation_id: Option<String>,
    causation_id: Option<String>,
    sent_at: Option<SystemTime>,
    /// The application's string headers.
    headers: Vec<(String, String)>,
    /// When the bus's handler watchdog fails the handling, if it watches.
    deadline: Option<Arc<Deadline>>,
}

/// When the handling of one delivery overruns `handler_timeout`; a handler
/// that is still working moves it on with [`Context::keep_alive`].
#[derive(Debug)]
pub(crate) struct Deadline(Mutex<Instant>);

impl Deadline {
    pub(crate) fn after(limit: Duration) -> Arc<Self> {
        Arc::new(Self(Mutex::new(Instant::now() + limit)))
    }

    /// The deadline now.
    pub(crate) fn at(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn extend_to(&self, at: Instant) {
        let mut deadline = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *deadline = (*deadline).max(at);
    }
}

static LOCAL: LazyLock<Context> = LazyLock::new(|| Context {
    inner: Arc::new(Inner {
        attempt: 1,
        ..Inner::default()
    }),
});

impl Context {
    /// The context of an event notified in this process.
    pub(crate) fn local() -> Self {
        LOCAL.clone()
    }

    /// The context of a message received from `queue`.
    pub(crate) fn remote(incoming: &dyn Received, queue: &Arc<str>) -> Self {
        Self::watched(incoming, queue, None)
    }

    /// The same, handled under a watchdog's `deadline`.
    pub(crate) fn watched(
        incoming: &dyn Received,
        queue: &Arc<str>,
        deadline: Option<Arc<Deadline>>,
    ) -> Self {
        let mut inner = Inner {
            routing_key: incoming.routing_key().to_owned(),
            message_id: incoming.message_id().map(str::to_owned),
            origin: incoming.origin().map(str::to_owned),
            timestamp: incoming.timestamp(),
            attempt: incoming.attempt(),
            redelivered: incoming.redelivered(),
            remote: true,
            queue: queue.clone(),
            deadline,
            ..Inner::default()
        };
        incoming.visit_headers(&mut |name, header| {
            let Header::Text(value) = header else { return };
            match name {
                CORRELATION_HEADER => inner.correlation_id = Some(value.to_owned()),
                CAUSATION_HEADER => inner.causation_id = Some(value.to_owned()),
                SENT_AT_HEADER => {
                    inner.sent_at = value
                        .parse()
                        .ok()
                        .and_then(|micros| UNIX_EPOCH.checked_add(Duration::from_micros(micros)));
                }
                _ if is_reserved(name) => {}
                _ => inner.headers.push((name.to_owned(), value.to_owned())),
            }
        });
        Self {
            inner: Arc::new(inner),
        }
    }

    /// **The context of the event this task is handling**, if it is
    /// handling one: inside a handler, and in what it awaits. A task the
    /// handler spawns does not inherit it; hand it over, or pass it to
    /// [`PublishOptions::caused_by`](crate::PublishOptions::caused_by).
    #[must_use]
    pub fn current() -> Option<Context> {
        HANDLING.try_with(Context::clone).ok()
    }

    /// Runs `future` as the handling of this event.
    pub(crate) async fn scope<F: Future>(self, future: F) -> F::Output {
        HANDLING.scope(self, future).await
    }

    /// The routing key (the topic) the event was published with; empty for
    /// a local notify.
    #[must_use]
    pub fn routing_key(&self) -> &str {
        &self.inner.routing_key
    }

    /// The message id, for events that crossed the broker.
    #[must_use]
    pub fn message_id(&self) -> Option<&str> {
        self.inner.message_id.as_deref()
    }

    /// The instance id of the publishing bus.
    #[must_use]
    pub fn origin(&self) -> Option<&str> {
        self.inner.origin.as_deref()
    }

    /// When the event was published, in seconds since the Unix epoch.
    #[must_use]
    pub fn timestamp(&self) -> Option<u64> {
        self.inner.timestamp
    }

    /// When the event was published, to the microsecond, if the publisher
    /// said so (tidings does, in `x-tidings-sent-at`).
    #[must_use]
    pub fn sent_at(&self) -> Option<SystemTime> {
        self.inner.sent_at
    }

    /// Which delivery attempt this is, starting at 1.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Whether the broker delivered this event before.
    #[must_use]
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// Whether the event came through the bus (`false` for a local notify).
    #[must_use]
    pub fn is_remote(&self) -> bool {
        self.inner.remote
    }

    /// The queue the event was received from; empty for a local notify.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// **The conversation this event belongs to**: the message id of the
    /// event that started it, which is this event's own when it started
    /// one. `None` for a local notify.
    #[must_use]
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner
            .correlation_id
            .as_deref()
            .or(self.inner.message_id.as_deref())
    }

    /// The message id of the event whose handler published this one;
    /// `None` at the start of a conversation.
    #[must_use]
    pub fn causation_id(&self) -> Option<&str> {
        self.inner.causation_id.as_deref()
    }

    /// An application header the publisher set
    /// ([`PublishOptions::header`](crate::PublishOptions::header)), if it
    /// is a string. tidings' own headers are not among them.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// **Tells the bus this handler is still working**: its
    /// [`handler_timeout`](crate::BusBuilder::handler_timeout) watchdog
    /// fails the handling no earlier than `more` from now (a deadline is
    /// only ever moved later). Call it now and then from a long handler
    /// (a loop over a large file, a slow upstream); without a
    /// `handler_timeout`, or for a local notify, it does nothing.
    ///
    /// This is the bus's own watchdog. RabbitMQ (AMQP 0-9-1) has no way
    /// to extend one delivery's acknowledgement deadline: its
    /// `consumer_timeout` (30 minutes by default on 3.10, broker-wide in
    /// `rabbitmq.conf`; per queue by policy from 3.12) closes the channel
    /// of a consumer that holds a delivery longer, and the delivery goes
    /// back to the queue. A handler that may run longer needs that setting
    /// raised on the broker.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(tidings::Event, Serialize, Deserialize, Debug)]
    /// # #[event(name = "keep_alive.import")]
    /// # struct Import { files: u32 }
    /// let subscribers = tidings::Subscribers::new();
    /// let _g = subscribers.subscribe_async(|import: Arc<Import>, ctx: tidings::Context| async move {
    ///     for _file in 0..import.files {
    ///         ctx.keep_alive(Duration::from_secs(30)); // this file may take 30 s more
    ///         // ... import it ...
    ///     }
    /// });
    /// ```
    pub fn keep_alive(&self, more: Duration) {
        if let Some(deadline) = &self.inner.deadline {
            deadline.extend_to(Instant::now() + more);
        }
    }

    /// Every application header with a string value, in no particular
    /// order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inner
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("routing_key", &self.inner.routing_key)
            .field("message_id", &self.inner.message_id)
            .field("origin", &self.inner.origin)
            .field("attempt", &self.inner.attempt)
            .field("redelivered", &self.inner.redelivered)
            .field("remote", &self.inner.remote)
            .field("queue", &self.inner.queue)
            .field("correlation_id", &self.correlation_id())
            .field("causation_id", &self.inner.causation_id)
            .field("headers", &self.inner.headers)
            .finish()
    }
}
