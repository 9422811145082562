//! `Queue`: what a consumer reads from, and how it is bound to the exchange.

use crate::amqp::props::{ExchangeKind, QueueType, check_name};
use crate::error::{Error, ErrorKind, Result};

/// **A queue to consume from**, declared by tidings before consuming: a
/// durable queue shared by name, or an exclusive per-process queue.
///
/// Every queue tidings declares has a name tidings chose, never a
/// server-generated `amq.gen-*` one: a named queue can be declared again after
/// a reconnect, a server-named one cannot.
///
/// Unless told otherwise ([`bind`](Queue::bind), [`unbound`](Queue::unbound))
/// a queue is bound to the exchange of the props so that it receives
/// everything: with the empty key on a fanout exchange, with `#` on a topic
/// exchange. A direct exchange routes only exact keys, so a queue on one needs
/// at least one [`bind`](Queue::bind).
///
/// # Examples
///
/// ```
/// use tidings::Queue;
///
/// // Shared work queue, survives broker restarts, gets only `orders.*`.
/// let work = Queue::durable("billing").bind("orders.*");
/// assert_eq!(work.name(), Some("billing"));
///
/// // This process's own queue, gone when the connection closes.
/// let mine = Queue::exclusive();
/// assert_eq!(mine.name(), None); // named `<exchange>.<instance-id>.<n>` at declare time
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    name: Option<String>,
    durable: bool,
    binding: Binding,
    /// For a retry queue: the queue its expired messages go back to.
    dead_letter_to: Option<String>,
    /// For a retry queue: how long each message waits, in milliseconds.
    message_ttl: Option<u32>,
    /// For a retry queue: how long it may stay unused before the broker
    /// deletes it, in milliseconds.
    expires: Option<u32>,
    /// Declared passively: it must exist, whatever its arguments.
    existing: bool,
    /// Not durable yet shared by several consumers: deleted by the broker
    /// once its last consumer goes.
    shared: bool,
    /// The type of a durable queue; `None`: the props'.
    queue_type: Option<QueueType>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    Everything,
    Keys(Vec<String>),
    Unbound,
}

impl Queue {
    /// **A durable queue with this name**, shared by every consumer that
    /// names it (competing consumers). It survives broker restarts and keeps
    /// messages while no consumer runs.
    #[must_use]
    pub fn durable(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            durable: true,
            binding: Binding::Everything,
            dead_letter_to: None,
            message_ttl: None,
            expires: None,
            existing: false,
            shared: false,
            queue_type: None,
        }
    }

    /// **A queue of this process alone**: exclusive to its connection and
    /// deleted with it, named `<exchange>.<instance-id>.<n>` by tidings. The
    /// broadcast queue: every process gets every message.
    #[must_use]
    pub fn exclusive() -> Self {
        Self {
            name: None,
            durable: false,
            binding: Binding::Everything,
            dead_letter_to: None,
            message_ttl: None,
            expires: None,
            existing: false,
            shared: false,
            queue_type: None,
        }
    }

    /// **A queue that exists already**, consumed as it is: declared
    /// passively (so its arguments, such as a dead-letter queue's limits,
    /// need not be repeated) and not bound. Consuming it fails with
    /// [`ErrorKind::Broker`](crate::ErrorKind::Broker) when it does not
    /// exist.
    ///
    /// ```
    /// let dead_letters = tidings::Queue::existing("orders.dead-letter");
    /// assert_eq!(dead_letters.name(), Some("orders.dead-letter"));
    /// ```
    #[must_use]
    pub fn existing(name: impl Into<String>) -> Self {
        Self {
            existing: true,
            ..Self::durable(name).unbound()
        }
    }

    /// **Sets the type of this durable queue** (quorum or classic),
    /// instead of the props' ([`AmqpProps::with_queue_type`](crate::AmqpProps::with_queue_type)).
    /// An exclusive queue is always classic.
    ///
    /// ```
    /// use tidings::{Queue, QueueType};
    ///
    /// let legacy = Queue::durable("billing").with_type(QueueType::Classic);
    /// assert_eq!(legacy.queue_type(), Some(QueueType::Classic));
    /// ```
    #[must_use]
    pub fn with_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = Some(queue_type);
        self
    }

    /// The type set with [`with_type`](Self::with_type), `None` for the
    /// props'.
    #[must_use]
    pub fn queue_type(&self) -> Option<QueueType> {
        self.queue_type
    }

    /// The type declared for this queue under props whose type is
    /// `default`: classic unless durable.
    pub(crate) fn type_under(&self, default: QueueType) -> QueueType {
        if self.durable {
            self.queue_type.unwrap_or(default)
        } else {
            QueueType::Classic
        }
    }

    pub(crate) fn is_existing(&self) -> bool {
        self.existing
    }

    /// Binds the queue to the exchange with this routing key or pattern
    /// (`orders.*` on a topic exchange). Call it once per key; the first call
    /// replaces the default binding.
    #[must_use]
    pub fn bind(mut self, routing_key: impl Into<String>) -> Self {
        match &mut self.binding {
            Binding::Keys(keys) => keys.push(routing_key.into()),
            other => *other = Binding::Keys(vec![routing_key.into()]),
        }
        self
    }

    /// Leaves the queue unbound: it receives only what is sent to it by
    /// name (point to point), nothing published to the exchange.
    #[must_use]
    pub fn unbound(mut self) -> Self {
        self.binding = Binding::Unbound;
        self
    }

    /// The retry queue of the queue `name` for one delay,
    /// `<name>.retry.<ms>`: unbound, holding each message for `delay_ms`,
    /// then dead-lettering it back to `name` through the default exchange.
    /// One queue per delay, because the broker expires messages only at a
    /// queue's head: a short retry must not wait behind a long one. Durable
    /// like the queue it serves, and deleted by the broker once unused for
    /// ten minutes longer than its delay.
    pub(crate) fn retry_for(
        name: &str,
        delay_ms: u32,
        durable: bool,
        queue_type: Option<QueueType>,
    ) -> Self {
        Self {
            name: Some(format!("{name}.retry.{delay_ms}")),
            durable,
            binding: Binding::Unbound,
            dead_letter_to: Some(name.to_owned()),
            message_ttl: Some(delay_ms),
            expires: Some(delay_ms.saturating_add(600_000)),
            existing: false,
            shared: false,
            queue_type,
        }
    }

    /// The queue of a request type's servers: not durable, not exclusive,
    /// unbound, deleted by the broker with its last consumer.
    pub(crate) fn service(name: String) -> Self {
        Self {
            shared: true,
            durable: false,
            ..Self::durable(name).unbound()
        }
    }

    /// Shared by consumers yet deleted with the last of them.
    pub(crate) fn is_shared(&self) -> bool {
        self.shared
    }

    pub(crate) fn dead_letter_to(&self) -> Option<&str> {
        self.dead_letter_to.as_deref()
    }

    pub(crate) fn message_ttl(&self) -> Option<u32> {
        self.message_ttl
    }

    pub(crate) fn expires(&self) -> Option<u32> {
        self.expires
    }

    /// The name given, `None` for an exclusive queue named at declare time.
    #[must_use]
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the queue survives broker restarts.
    #[must_use]
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// The routing keys this queue is bound with on an exchange of `kind`.
    pub(crate) fn binding_keys(&self, kind: ExchangeKind) -> Result<Vec<String>> {
        match &self.binding {
            Binding::Unbound => Ok(Vec::new()),
            Binding::Keys(keys) => {
                for key in keys {
                    check_name("routing key", key)?;
                }
                Ok(keys.clone())
            }
            Binding::Everything => match kind {
                ExchangeKind::Fanout => Ok(vec![String::new()]),
                ExchangeKind::Topic => Ok(vec!["#".to_owned()]),
                ExchangeKind::Direct => Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "a queue on a direct exchange receives only the keys it is bound to; add one with Queue::bind",
                )),
            },
        }
    }

    /// Checks a name the user gave.
    pub(crate) fn check(&self) -> Result<()> {
        let Some(name) = &self.name else {
            return Ok(());
        };
        if name.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "queue name is empty; name the queue or use Queue::exclusive",
            ));
        }
        if name.starts_with("amq.") {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("queue name {name:?} starts with \"amq.\", which the broker reserves"),
            ));
        }
        check_name("queue name", name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_bindings_follow_the_exchange_kind() {
        let q = Queue::exclusive();
        assert_eq!(q.binding_keys(ExchangeKind::Fanout).unwrap(), [""]);
        assert_eq!(q.binding_keys(ExchangeKind::Topic).unwrap(), ["#"]);
        assert!(
            q.binding_keys(ExchangeKind::Direct)
                .unwrap_err()
                .is_config()
        );
        let keyed = Queue::durable("q").bind("a").bind("b.*");
        assert_eq!(
            keyed.binding_keys(ExchangeKind::Direct).unwrap(),
            ["a", "b.*"]
        );
        assert!(
            Queue::durable("q")
                .unbound()
                .binding_keys(ExchangeKind::Topic)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(Queue::durable("").check().is_err());
        assert!(Queue::durable("amq.gen-x").check().is_err());
        assert!(Queue::durable("q".repeat(256)).check().is_err());
        assert!(
            Queue::durable("q")
                .bind("k".repeat(256))
                .binding_keys(ExchangeKind::Topic)
                .is_err()
        );
        assert!(Queue::durable("orders").check().is_ok());
    }
}
