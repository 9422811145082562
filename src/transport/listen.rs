//! `Listen`: which queue a bus consumes, and which events it binds.

use crate::amqp::props::ExchangeKind;
use crate::amqp::queue::Queue;
use crate::error::{Error, ErrorKind, Result};
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
            subscribed: None,
        }
    }

    /// One member of the group handles each event.
    #[must_use]
    pub fn group(name: impl Into<String>) -> Self {
        Self {
            mode: Mode::Group(name.into()),
            keys: Vec::new(),
            subscribed: None,
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
        }
    }

    /// The queue of the servers of one request type (or of one named
    /// server), for [`Bus::serve`](crate::Bus::serve).
    pub(crate) fn service(name: impl Into<String>) -> Self {
        Self {
            mode: Mode::Service(name.into()),
            keys: Vec::new(),
            subscribed: None,
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
            Mode::Queue(name) => return Ok(Queue::durable(name.clone()).unbound()),
            Mode::Service(name) => return Ok(Queue::service(name.clone())),
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
        Ok(keys.into_iter().fold(queue, Queue::bind))
    }
}
