//! **Typed events across processes, over RabbitMQ.**
//!
//! tidings grows out of the Python `zamqp` package. This is its AMQP core:
//! [`AmqpProps`] say where the broker is and which exchange carries the
//! messages; a [`Connection`] opens from them and declares that exchange; a
//! [`Producer`] publishes any `Serialize` value; a [`Consumer`] is a stream
//! of [`Delivery`]s from a [`Queue`]; a [`ConsumerThread`] runs a callback on
//! an OS thread of its own; the [`blocking`] module serves code that is not
//! async. Bodies are encoded by a [`Codec`] ([`Bincode`] by default, or
//! [`Json`]), and receivers decode by each message's `content-type`.
//!
//! # Examples
//!
//! ```
//! # async fn example() -> tidings::Result<()> {
//! use serde::{Deserialize, Serialize};
//! use tidings::{AmqpProps, Connection, ExchangeKind, Queue};
//! use tokio_stream::StreamExt;
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct OrderPlaced { id: u64, item: String }
//!
//! // AMQP_URL, or amqp://guest:guest@localhost:5672/%2f
//! let props = AmqpProps::from_env()?.with_exchange("doc.orders", ExchangeKind::Fanout);
//! let conn = Connection::connect(&props).await?;
//!
//! let mut orders = conn.consumer(&Queue::exclusive()).await?;
//! let producer = conn.producer().await?;
//! producer.publish_confirmed(&OrderPlaced { id: 1, item: "tea".into() }).await?;
//!
//! let delivery = orders.next().await.expect("consumer closed")?;
//! assert_eq!(delivery.decode::<OrderPlaced>()?, OrderPlaced { id: 1, item: "tea".into() });
//! assert_eq!(delivery.content_type(), Some("application/x-bincode"));
//! delivery.ack().await?;
//! conn.close().await?;
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod blocking;
mod codec;
mod connection;
mod consumer;
mod consumer_thread;
mod delivery;
mod error;
mod producer;
mod props;
mod queue;
mod runtime;

pub use codec::{BINCODE_CONTENT_TYPE, Bincode, Codec, DecodeVisitor, JSON_CONTENT_TYPE, Json};
pub use connection::Connection;
pub use consumer::Consumer;
pub use consumer_thread::{CallbackError, ConsumerThread};
pub use delivery::Delivery;
pub use error::{Error, ErrorKind, Result};
pub use producer::{Confirm, ORIGIN_HEADER, Producer, Publish};
pub use props::{AmqpProps, ExchangeKind};
pub use queue::Queue;
