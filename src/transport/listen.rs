//! `Listen`: which queue a bus consumes, and which events it binds.

use crate::amqp::props::QueueType;
use crate::amqp::queue::Queue;
use crate::event::EventType;

/// **What a bus listens to**: a delivery model and the routing keys to bind.
///
/// - [`Listen::broadcast`]: a queue of this bus alone; every bus gets every
///   event (nameko `BROADCAST`, the Distributer's empty group).
/// - [`Listen::group`]: a durable queue named `<exchange>.<group>` shared by
///   every member; each event is handled by one member (nameko
///   `SERVICE_POOL`, competing consumers). Events published while no member
///   runs wait in the queue.
/// - [`Listen::queue`]: a named queue not bound to the exchange, for events
///   sent to it by name ([`Bus::send_to`](crate::Bus::send_to)): point to
///   point.
///
/// [`event`](Listen::event) and [`pattern`](Listen::pattern) bind the queue
/// to only those routing keys, so on a `direct` or `topic` exchange the
/// broker filters and the process never receives what it would drop. With
/// no binding given, the queue receives everything the exchange carries.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::{Event, Listen};
///
/// #[derive(Event, Serialize, Deserialize, Debug)]
/// #[event(name = "listen.order_placed")]
/// struct OrderPlaced { id: u64 }
///
/// // One of the billing workers handles each placed order.
/// let billing = Listen::group("billing").event::<OrderPlaced>();
/// // This process sees every shipping event, whatever its type.
/// let audit = Listen::broadcast().pattern("shipping.#");
/// # let _ = (billing, audit);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    mode: Mode,
    keys: Vec<String>,
    /// The queue's type, instead of the props'.
    queue_type: Option<QueueType>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    Broadcast,
    Group(String),
    Queue(String),
    /// The queue of a request type's servers: shared by them, unbound,
    /// and gone with its last consumer (so a call finds no queue, and
    /// says so at once, when no server runs).
    Service(String),
}

impl Listen {
    /// Every bus gets every event, on a queue of its own.
    #[must_use]
    pub fn broadcast() -> Self {
        Self {
            mode: Mode::Broadcast,
            keys: Vec::new(),
            queue_type: None,
        }
    }

    /// One member of the group handles each event.
    #[must_use]
    pub fn group(name: impl Into<String>) -> Self {
        Self {
            mode: Mode::Group(name.into()),
            keys: Vec::new(),
            queue_type: None,
        }
    }

    /// Consume the named durable queue, which only receives what is sent to
    /// it by name.
    #[must_use]
    pub fn queue(name: impl Into<String>) -> Self {
        Self {
            mode: Mode::Queue(name.into()),
            keys: Vec::new(),
            queue_type: None,
        }
    }

    /// The queue of the servers of one request type (or of one named
    /// server), for [`Bus::serve`](crate::Bus::serve).
    pub(crate) fn service(name: impl Into<String>) -> Self {
        Self {
            mode: Mode::Service(name.into()),
            keys: Vec::new(),
            queue_type: None,
        }
    }

    /// Binds the routing key of events of type `E`.
    #[must_use]
    pub fn event<E: EventType>(self) -> Self {
        self.pattern(E::ROUTING_KEY)
    }

    /// Binds a routing key or, on a topic exchange, a pattern (`orders.*`,
    /// `#.eu`).
    #[must_use]
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.keys.push(pattern.into());
        self
    }

    /// **Declares this listener's queue as a quorum or classic queue**,
    /// instead of by the props ([`AmqpProps::with_queue_type`](crate::AmqpProps::with_queue_type),
    /// quorum by default): for a group or named queue that exists already
    /// as a classic queue, say. Its retry queues follow. A broadcast
    /// listener's queue is always an exclusive classic queue.
    ///
    /// ```
    /// use tidings::{Listen, QueueType};
    ///
    /// let legacy = Listen::group("billing").queue_type(QueueType::Classic);
    /// # let _ = legacy;
    /// ```
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = Some(queue_type);
        self
    }

    pub(crate) fn mode(&self) -> &Mode {
        &self.mode
    }

    /// The bound keys; empty means everything.
    pub(crate) fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The queue this listens on, on the exchange named `exchange`.
    pub(crate) fn queue_on(&self, exchange: &str) -> Queue {
        let queue = match &self.mode {
            Mode::Broadcast => Queue::exclusive(),
            Mode::Group(group) => Queue::durable(format!("{exchange}.{group}")),
            Mode::Queue(name) => return self.typed(Queue::durable(name.clone()).unbound()),
            Mode::Service(name) => return Queue::service(name.clone()),
        };
        let queue = self
            .keys
            .iter()
            .fold(queue, |queue, key| queue.bind(key.clone()));
        self.typed(queue)
    }

    /// `queue` with this listener's queue type, if it sets one.
    fn typed(&self, queue: Queue) -> Queue {
        match self.queue_type {
            Some(queue_type) => queue.with_type(queue_type),
            None => queue,
        }
    }
}
