//! `Context`: what a handler may want to know about the event it handles,
//! and the context of the event a task is handling now, which the events it
//! publishes carry on (correlation and causation).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
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
    /// The message received; `None` for a local notify. Everything else
    /// is read from it when asked (most handlers ask nothing), not copied
    /// for every event.
    delivery: Option<Arc<dyn Received>>,
    queue: Arc<str>,
    /// The application's string headers, collected the first time asked.
    headers: OnceLock<Vec<(String, String)>>,
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
    inner: Arc::new(Inner::default()),
});

impl Context {
    /// The context of an event notified in this process.
    pub(crate) fn local() -> Self {
        LOCAL.clone()
    }

    /// The context of a message received from `queue`.
    pub(crate) fn remote(incoming: Arc<dyn Received>, queue: &Arc<str>) -> Self {
        Self::watched(incoming, queue, None)
    }

    /// The same, handled under a watchdog's `deadline`.
    pub(crate) fn watched(
        incoming: Arc<dyn Received>,
        queue: &Arc<str>,
        deadline: Option<Arc<Deadline>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                delivery: Some(incoming),
                queue: queue.clone(),
                headers: OnceLock::new(),
                deadline,
            }),
        }
    }

    /// The message, for a remote event.
    fn delivery(&self) -> Option<&dyn Received> {
        self.inner.delivery.as_deref()
    }

    /// A string header of the message.
    fn text(&self, name: &str) -> Option<&str> {
        match self.delivery()?.header(name) {
            Header::Text(text) => Some(text),
            Header::Absent | Header::WrongType => None,
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
        self.delivery().map_or("", |d| d.routing_key())
    }

    /// The message id, for events that crossed the broker.
    #[must_use]
    pub fn message_id(&self) -> Option<&str> {
        self.delivery()?.message_id()
    }

    /// The instance id of the publishing bus.
    #[must_use]
    pub fn origin(&self) -> Option<&str> {
        self.delivery()?.origin()
    }

    /// When the event was published, in seconds since the Unix epoch.
    #[must_use]
    pub fn timestamp(&self) -> Option<u64> {
        self.delivery()?.timestamp()
    }

    /// When the event was published, to the microsecond, if the publisher
    /// said so (tidings does, in `x-tidings-sent-at`).
    #[must_use]
    pub fn sent_at(&self) -> Option<SystemTime> {
        let micros = self.text(SENT_AT_HEADER)?.parse().ok()?;
        UNIX_EPOCH.checked_add(Duration::from_micros(micros))
    }

    /// Which delivery attempt this is, starting at 1.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.delivery().map_or(1, |d| d.attempt())
    }

    /// Whether the broker delivered this event before.
    #[must_use]
    pub fn redelivered(&self) -> bool {
        self.delivery().is_some_and(|d| d.redelivered())
    }

    /// Whether the event came through the bus (`false` for a local notify).
    #[must_use]
    pub fn is_remote(&self) -> bool {
        self.inner.delivery.is_some()
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
        self.text(CORRELATION_HEADER).or_else(|| self.message_id())
    }

    /// The message id of the event whose handler published this one;
    /// `None` at the start of a conversation.
    #[must_use]
    pub fn causation_id(&self) -> Option<&str> {
        self.text(CAUSATION_HEADER)
    }

    /// An application header the publisher set
    /// ([`PublishOptions::header`](crate::PublishOptions::header)), if it
    /// is a string. tidings' own headers are not among them.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.app_headers()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// The application's string headers, collected once.
    fn app_headers(&self) -> &[(String, String)] {
        self.inner.headers.get_or_init(|| {
            let mut headers = Vec::new();
            if let Some(delivery) = self.delivery() {
                delivery.visit_headers(&mut |name, header| {
                    if let Header::Text(value) = header
                        && !is_reserved(name)
                    {
                        headers.push((name.to_owned(), value.to_owned()));
                    }
                });
            }
            headers
        })
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
        self.app_headers()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("routing_key", &self.routing_key())
            .field("message_id", &self.message_id())
            .field("origin", &self.origin())
            .field("attempt", &self.attempt())
            .field("redelivered", &self.redelivered())
            .field("remote", &self.is_remote())
            .field("queue", &self.inner.queue)
            .field("correlation_id", &self.correlation_id())
            .field("causation_id", &self.causation_id())
            .field("headers", &self.app_headers())
            .finish()
    }
}
