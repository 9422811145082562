//! **Typed events across processes, over RabbitMQ.**
//!
//! A service derives [`Event`] on its types, subscribes local handlers to
//! [`Subscribers`], and connects a [`Bus`]: every event any process
//! publishes is broadcast through a RabbitMQ exchange and dispatched, typed,
//! to the subscribers of every receiving process. `memory://` gives the same
//! semantics inside one process, for tests.
//!
//! A bus outlives its broker's outages: a lost connection is recovered by
//! itself with backoff, queues and listeners come back, events published
//! meanwhile wait in a bounded buffer, and what the broker had not confirmed
//! is sent again; receivers drop the duplicates this makes
//! ([`Bus::connection_events`] shows it happen, [`Bus::stats`] counts it).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tidings::Result<()> {
//! use serde::{Deserialize, Serialize};
//! use tidings::{Bus, Event, Subscribers};
//!
//! #[derive(Event, Serialize, Deserialize, Debug, Clone)]
//! #[event(name = "orders.placed")]
//! struct OrderPlaced { id: u64, item: String }
//!
//! let subscribers = Subscribers::new();
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let _guard = subscribers.subscribe(move |order: &OrderPlaced| tx.send(order.id).unwrap());
//!
//! // amqp://guest:guest@localhost:5672/%2f?exchange=orders crosses processes;
//! // memory:// stays in this one, with the same semantics.
//! let bus = Bus::builder("memory://crate-docs")?.subscribers(subscribers).connect().await?;
//! bus.publish(&OrderPlaced { id: 7, item: "tea".into() }).await?;
//! assert_eq!(rx.recv().await, Some(7));
//! bus.close().await?;
//! # Ok(()) }
//! ```
//!
//! Underneath is the AMQP core, grown out of the Python `zamqp` package and
//! usable on its own: [`AmqpProps`] say where the broker is and which
//! exchange carries the messages; a [`Connection`] opens from them; a
//! [`Producer`] publishes any `Serialize` value; a [`Consumer`] is a stream
//! of [`Delivery`]s from a [`Queue`]; a [`ConsumerThread`] runs a callback on
//! an OS thread of its own; the [`blocking`] module serves code that is not
//! async. Bodies are encoded by a [`Codec`] ([`Bincode`] by default, or
//! [`Json`]), and receivers decode by each message's `content-type`.
//!
//! ```
//! # async fn example() -> tidings::Result<()> {
//! use serde::{Deserialize, Serialize};
//! use tidings::{AmqpProps, Connection, ExchangeKind, Queue};
//! use tokio_stream::StreamExt;
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Reading { sensor: String, value: f64 }
//!
//! // AMQP_URL, or amqp://guest:guest@localhost:5672/%2f
//! let props = AmqpProps::from_env()?.with_exchange("doc.readings", ExchangeKind::Fanout);
//! let conn = Connection::connect(&props).await?;
//! let mut readings = conn.consumer(&Queue::exclusive()).await?;
//! let reading = Reading { sensor: "t1".into(), value: 21.5 };
//! conn.producer().await?.publish_confirmed(&reading).await?;
//!
//! let delivery = readings.next().await.expect("consumer closed")?;
//! assert_eq!(delivery.decode::<Reading>()?, reading);
//! assert_eq!(delivery.content_type(), Some("application/x-bincode"));
//! delivery.ack().await?;
//! # conn.delete_exchange("doc.readings").await?;
//! conn.close().await?;
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
//! ```
#![doc(test(attr(deny(warnings))))]

// Lets `#[derive(Event)]`, which writes `::tidings::..` paths, work in this
// crate's own unit tests.
#[cfg(test)]
extern crate self as tidings;

mod amqp;
pub mod blocking;
mod bus;
mod codec;
mod compression;
mod contract;
mod dead_letters;
mod error;
mod event;
pub mod headers;
pub mod log;
mod runtime;
mod schema;
mod telemetry;
mod trace_context;
mod transport;

pub use amqp::connection::{Connection, DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_MESSAGES};
pub use amqp::connection_event::{ConnectionEvent, ConnectionEvents};
pub use amqp::consumer::Consumer;
pub use amqp::consumer_thread::ConsumerThread;
pub use amqp::delivery::Delivery;
pub use amqp::outbox::PublishCounters;
pub use amqp::producer::{Confirm, Producer, Publish};
pub use amqp::props::{AmqpProps, DEFAULT_DELIVERY_LIMIT, ExchangeKind, QueueType, WhenFull};
pub use amqp::queue::Queue;
pub use bus::call::{CallOptions, Request};
pub use bus::context::Context;
pub use bus::decision::Decision;
pub use bus::health::{Health, ListenerHealth};
pub use bus::listener::Listener;
pub use bus::publish_options::PublishOptions;
pub use bus::receipts::{Receipt, ReceiptOutcome, Receipts};
pub use bus::serve::{ServeOptions, Server};
pub use bus::settings::UnknownEvents;
pub use bus::signing::Signing;
pub use bus::stats::{OTHER_TAGS, RejectReason, Stats, TagStats};
pub use bus::subscribers::{
    Dispatch, EventStream, HandlerError, HandlerOutput, Lagged, Poller, Subscribers, Subscription,
};
pub use bus::{Bus, BusBuilder};
pub use codec::{BINCODE_CONTENT_TYPE, Bincode, Codec, DecodeVisitor, JSON_CONTENT_TYPE, Json};
pub use compression::{Compression, DEFAULT_COMPRESSION_THRESHOLD};
pub use contract::{Contract, UPDATE_CONTRACT_ENV};
pub use dead_letters::{
    DeadLetterFilter, DeadLetterMessage, DeadLetters, Progress, ReplayFailure, ReplayReport,
    ReplayTo,
};
pub use error::{Error, ErrorKind, Result};
pub use event::{Event, EventRegistry, EventType, Registration, registered_events};
#[doc(no_inline)]
pub use headers::{
    ATTEMPT_HEADER, BODY_DROPPED_HEADER, CAUSATION_HEADER, CORRELATION_HEADER, ERROR_HEADER,
    FINGERPRINT_HEADER, KEY_ID_HEADER, ORIGIN_HEADER, OUTCOME_HEADER, QUEUE_HEADER, REASON_HEADER,
    RECEIPT_HEADER, REPLY_ERROR_HEADER, REPLY_ERROR_TYPE_HEADER, ROUTING_KEY_HEADER,
    SENT_AT_HEADER, SIGNATURE_HEADER, TAG_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER,
    TRIMMED_HEADER, VERSION_HEADER,
};
pub use schema::{Fingerprint, Incompatible, Schema};
/// Derives [`Event`] and [`EventType`] for a struct or enum that also
/// derives serde's `Serialize` and `Deserialize`.
///
/// `#[event(name = "orders.placed")]` sets the wire tag (default: the
/// type's name); `#[event(routing_key = "orders.eu")]` sets the routing key
/// (default: the tag); `#[event(version = 2, upcast_from = OrderPlacedV1)]`
/// declares a breaking change and how the previous version becomes this one
/// (`OrderPlaced: From<OrderPlacedV1>`). Generic types cannot be events.
pub use tidings_macros::Event;
pub use transport::amqp::AmqpTransport;
pub use transport::drivers::{Driver, register_driver};
pub use transport::faults::{FaultPlan, FaultStats, Faults};
pub use transport::listen::Listen;
pub use transport::memory::MemoryTransport;
pub use transport::replay::{Retention, StreamStart};
pub use transport::schema_stream::schema_stream;
pub use transport::seam::{
    BoxFuture, DeadLetter, DeliveryOptions, Endpoint, Header, Inbox, Outgoing, Received, Replies,
    Settlement, Transport,
};

/// lapin, whose types appear in the AMQP core's API ([`Delivery::header`],
/// [`Connection::channel`]).
pub use lapin;

/// Not public API: what `#[derive(Event)]` expands to refers to these.
#[doc(hidden)]
pub mod __private {
    use std::sync::Arc;

    pub use inventory;
    pub use serde;
    pub use typetag;

    pub use crate::bus::decode::ListenerDecoder;
    pub use crate::bus::signing::{SigningProbe, signed_bytes};
    pub use crate::compression::decompress_probe;
    pub use crate::event::UpcastFn;
    pub use crate::schema::Value;
    use crate::{Event, EventType};

    /// Reads an event of type `T` out of a resolved value; with
    /// `naming_path`, a failure names the field's path (slower: for
    /// wording an error).
    pub fn read_event<T: EventType>(
        value: Value,
        human_readable: bool,
        naming_path: bool,
    ) -> Result<Box<dyn Event>, String> {
        let read = if naming_path {
            crate::schema::read_value_naming_path::<T>(value, human_readable)
        } else {
            crate::schema::read_value::<T>(value, human_readable)
        };
        read.map(|event| Box::new(event) as Box<dyn Event>)
    }

    /// Turns an event of version `F` into the next version `T`.
    pub fn upcast<F: EventType, T: EventType + From<F>>(
        event: Arc<dyn Event>,
    ) -> Result<Arc<dyn Event>, String> {
        let any = event.into_any_arc();
        let older = any
            .downcast::<F>()
            .map_err(|_| format!("the event is not a {}", std::any::type_name::<F>()))?;
        let older = Arc::try_unwrap(older)
            .map_err(|_| "the event is shared and cannot be upcast".to_owned())?;
        Ok(Arc::new(T::from(older)))
    }

    /// `a == b`, in a constant.
    #[must_use]
    pub const fn same_str(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}
