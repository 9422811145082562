//! `Listen`: which queue a bus consumes, and which events it binds.

use crate::amqp::props::{ExchangeKind, QueueType};
use crate::amqp::queue::Queue;
use crate::error::{Error, ErrorKind, Result};
use crate::event::EventType;
use crate::transport::replay::{Retention, StreamSpec, StreamStart};

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
/// - [`Listen::stream`]: a durable RabbitMQ stream named
///   `<exchange>.<name>` that every listener reads whole, from where it
///   left off: a broadcast that a restarted process catches up on.
///
/// [`event`](Listen::event) and [`pattern`](Listen::pattern) bind the queue
/// to only those routing keys, so on a `direct` or `topic` exchange the
/// broker filters and the process never receives what it would drop. With
/// no binding given, the queue receives everything the exchange carries;
/// on a `direct` exchange, which routes only exact keys, it is bound with
/// the routing keys of the types subscribed to when the listener starts (a
/// type subscribed later is not bound: name it with `event::<E>()`), and
/// with no typed subscriber (or a `subscribe_all` handler, which has no
/// key) listening fails with a message saying so.
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
    /// The routing keys of the event types subscribed to when the bus
    /// started listening: what a queue with no keys of its own binds on a
    /// `direct` exchange, which routes only exact keys.
    subscribed: Option<Vec<&'static str>>,
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
    /// A stream every listener reads whole, resuming at its saved offset.
    Stream(Box<StreamSpec>),
}

impl Listen {
    /// Every bus gets every event, on a queue of its own.
    #[must_use]
    pub fn broadcast() -> Self {
        Self {
            mode: Mode::Broadcast,
            keys: Vec::new(),
            subscribed: None,
            queue_type: None,
        }
    }

    /// One member of the group handles each event.
    #[must_use]
    pub fn group(name: impl Into<String>) -> Self {
        Self {
            mode: Mode::Group(name.into()),
            keys: Vec::new(),
            subscribed: None,
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
            subscribed: None,
            queue_type: None,
        }
    }

    /// **Every listener reads every event, and catches up after a
    /// restart**: a durable RabbitMQ stream `<exchange>.<name>` (an
    /// append-only log bound to the exchange like a group's queue) read
    /// from the listener's saved offset. Name the reader with
    /// [`consumer`](Listen::consumer) to have its offset kept; choose where
    /// a reader with no saved offset begins with
    /// [`start`](Listen::start) (default: now), and how long events are
    /// kept with [`retention`](Listen::retention).
    ///
    /// The offset is kept on the broker, in the queue
    /// `<exchange>.<name>.offset.<consumer>` (one message: the offset of
    /// the last event handled, with all before it), written at most every
    /// 250 ms while it moves, every 1,000 events, and when the listener
    /// stops. A clean stop and start handles each event once. After a lost
    /// connection, events that were in flight come again and the dedup
    /// window drops them by message id; a process that crashes resumes
    /// from its last write, and the events it handled since are handled
    /// again by the new one (**at least once**: handlers must be
    /// idempotent). A handler that fails
    /// is retried in the process (a stream cannot take an event back),
    /// then the event goes to the dead letters; the offset does not pass
    /// an event still being retried. On `memory://` a stream is a log in
    /// the hub, its offsets saved when a listener stops, with no retention.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidings::{Listen, StreamStart};
    ///
    /// // This process audits every event, including those published
    /// // while it was down; on its first start, the whole history.
    /// let audit = Listen::stream("audit").consumer("audit-eu-1").start(StreamStart::Beginning);
    /// # let _ = audit;
    /// ```
    #[must_use]
    pub fn stream(name: impl Into<String>) -> Self {
        Self {
            mode: Mode::Stream(Box::new(StreamSpec {
                name: name.into(),
                consumer: None,
                start: StreamStart::default(),
                retention: Retention::default(),
            })),
            keys: Vec::new(),
            subscribed: None,
            queue_type: None,
        }
    }

    /// For a [stream](Listen::stream) listener: the name its offset is kept
    /// under. Give each process its own, stable across its restarts (a
    /// host or pod name); two running listeners with one name overwrite
    /// each other's offset. Without one, nothing is kept and every start
    /// begins at [`start`](Listen::start). Other listeners ignore it.
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        if let Mode::Stream(spec) = &mut self.mode {
            spec.consumer = Some(name.into());
        }
        self
    }

    /// For a [stream](Listen::stream) listener: where it begins when it has
    /// no saved offset. Other listeners ignore it.
    #[must_use]
    pub fn start(mut self, start: StreamStart) -> Self {
        if let Mode::Stream(spec) = &mut self.mode {
            spec.start = start;
        }
        self
    }

    /// For a [stream](Listen::stream) listener: how long the stream keeps
    /// events, sent when it is declared. Other listeners ignore it.
    #[must_use]
    pub fn retention(mut self, retention: Retention) -> Self {
        if let Mode::Stream(spec) = &mut self.mode {
            spec.retention = retention;
        }
        self
    }

    /// The queue of the servers of one request type (or of one named
    /// server), for [`Bus::serve`](crate::Bus::serve).
    pub(crate) fn service(name: impl Into<String>) -> Self {
        Self {
            mode: Mode::Service(name.into()),
            keys: Vec::new(),
            subscribed: None,
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

    /// The same, knowing the routing keys of the subscribed types (`None`
    /// when nothing is subscribed, or a handler takes every type).
    pub(crate) fn with_subscribed(mut self, keys: Option<Vec<&'static str>>) -> Self {
        self.subscribed = keys;
        self
    }

    /// The queue this listens on, on the exchange named `exchange` of
    /// `kind`. On a `direct` exchange, a queue with no keys of its own is
    /// bound with the routing keys of the subscribed types.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) on a
    /// direct exchange with neither keys nor typed subscribers.
    pub(crate) fn queue_on(&self, exchange: &str, kind: ExchangeKind) -> Result<Queue> {
        let queue = match &self.mode {
            Mode::Broadcast => Queue::exclusive(),
            Mode::Group(group) => Queue::durable(format!("{exchange}.{group}")),
            Mode::Queue(name) => return Ok(self.typed(Queue::durable(name.clone()).unbound())),
            Mode::Service(name) => return Ok(Queue::service(name.clone())),
            Mode::Stream(spec) => Queue::durable(format!("{exchange}.{}", spec.name)),
        };
        let keys: Vec<String> = match (kind, self.keys.is_empty(), &self.subscribed) {
            (ExchangeKind::Direct, true, Some(subscribed)) => {
                subscribed.iter().map(|&key| key.to_owned()).collect()
            }
            (ExchangeKind::Direct, true, None) => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "the direct exchange {exchange:?} routes only exact keys, and this listener has none: \
                         subscribe to the event types before connecting (their routing keys are bound; a \
                         subscribe_all handler has no key), or name them with Listen::event::<E>() or pattern(..)"
                    ),
                ));
            }
            _ => self.keys.clone(),
        };
        Ok(self.typed(keys.into_iter().fold(queue, Queue::bind)))
    }

    /// `queue` with this listener's queue type, if it sets one.
    fn typed(&self, queue: Queue) -> Queue {
        match self.queue_type {
            Some(queue_type) => queue.with_type(queue_type),
            None => queue,
        }
    }
}
