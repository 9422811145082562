//! `Context`: what a handler may want to know about the event it handles.

use std::fmt;
use std::sync::{Arc, LazyLock};

/// **Where an event came from**: routing key, message id, publishing
/// instance, delivery attempt. Handlers subscribed with
/// [`subscribe_with`](crate::Subscribers::subscribe_with) or
/// [`subscribe_async`](crate::Subscribers::subscribe_async) receive it.
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

    pub(crate) fn remote(
        routing_key: &str,
        message_id: Option<&str>,
        origin: Option<&str>,
        timestamp: Option<u64>,
        redelivered: bool,
        attempt: u32,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                routing_key: routing_key.to_owned(),
                message_id: message_id.map(str::to_owned),
                origin: origin.map(str::to_owned),
                timestamp,
                attempt,
                redelivered,
                remote: true,
            }),
        }
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
            .finish()
    }
}
