//! **Blocking facades** for code that is not async: a producer and a consumer
//! usable from a plain `fn main()`.
//!
//! Each wraps the async type of the same name and runs it on a private Tokio
//! runtime with one worker thread, so the connection stays alive (heartbeats)
//! between calls. Calling them from inside an async runtime is an error
//! ([`ErrorKind::Usage`]); use the async API there.
//! For a callback-driven consumer on its own thread, see
//! [`ConsumerThread`](crate::ConsumerThread); for typed events, [`Bus`].
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tidings::{AmqpProps, Queue, blocking};
//!
//! let props = AmqpProps::from_env()?.with_exchange("doc.blocking", tidings::ExchangeKind::Fanout);
//! let mut consumer = blocking::Consumer::connect(&props, &Queue::exclusive())?;
//! let producer = blocking::Producer::connect(&props)?;
//! producer.publish(&"ping")?;
//!
//! let delivery = consumer.recv_timeout(Duration::from_secs(5))?.expect("nothing arrived");
//! assert_eq!(delivery.decode::<String>()?, "ping");
//! delivery.ack()?;
//! assert!(consumer.recv_timeout(Duration::from_millis(50))?.is_none());
//! # drop((consumer, producer));
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! #     let conn = tidings::Connection::connect(&props).await?;
//! #     conn.delete_exchange("doc.blocking").await?;
//! #     conn.close().await
//! # })?;
//! # Ok::<(), tidings::Error>(())
//! ```

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_stream::StreamExt;

use crate::Connection;
use crate::amqp::producer::Publish;
use crate::amqp::props::AmqpProps;
use crate::amqp::queue::Queue;
use crate::bus::BusBuilder;
use crate::bus::stats::Stats;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::runtime::BlockingRuntime;

/// How long closing may take when a facade is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// **A producer for non-async code**: [`send`](Producer::publish) returns when
/// the broker has confirmed the message.
pub struct Producer {
    producer: crate::Producer,
    conn: Connection,
    runtime: BlockingRuntime,
}

impl Producer {
    /// **Connects** with its own connection and declares the exchange.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect`], and [`ErrorKind::Usage`] inside an async
    /// runtime.
    pub fn connect(props: &AmqpProps) -> Result<Self> {
        let runtime = BlockingRuntime::new("tidings-producer")?;
        let (conn, producer) = runtime.block_on(async {
            let conn = Connection::connect(props).await?;
            let producer = conn.producer().await?;
            Ok::<_, Error>((conn, producer))
        })??;
        Ok(Self {
            producer,
            conn,
            runtime,
        })
    }

    /// **Publishes a value and waits for the broker's confirm** (the async
    /// [`Producer::publish_confirmed`](crate::Producer::publish_confirmed)).
    ///
    /// # Errors
    ///
    /// As [`crate::Producer::publish_confirmed`].
    pub fn publish<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.publish_with(value, &Publish::default())
    }

    /// **Publishes a value with per-message settings** and waits for the
    /// broker's confirm.
    ///
    /// # Errors
    ///
    /// As [`crate::Producer::publish_with`], and the confirm's errors.
    pub fn publish_with<T: Serialize + ?Sized>(&self, value: &T, publish: &Publish) -> Result<()> {
        self.runtime
            .block_on(async { self.producer.publish_with(value, publish).await?.await })?
    }

    /// The connection underneath, for its instance id and props.
    #[must_use]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// **Closes the connection** after the broker confirmed what was sent.
    ///
    /// # Errors
    ///
    /// As [`Connection::close`].
    pub fn close(self) -> Result<()> {
        self.runtime.block_on(self.conn.close())?
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        close_quietly(&self.runtime, &self.conn);
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Producer")
            .field("connection", &self.conn)
            .finish_non_exhaustive()
    }
}

/// **A consumer for non-async code** that is polled:
/// [`recv_timeout`](Consumer::recv_timeout) waits for the next delivery.
pub struct Consumer {
    consumer: crate::Consumer,
    conn: Connection,
    runtime: Arc<BlockingRuntime>,
}

impl Consumer {
    /// **Connects**, declares and binds `queue`, and starts consuming.
    ///
    /// # Errors
    ///
    /// As [`Connection::consumer`], and [`ErrorKind::Usage`] inside an
    /// async runtime.
    pub fn connect(props: &AmqpProps, queue: &Queue) -> Result<Self> {
        let runtime = BlockingRuntime::new("tidings-consumer")?;
        let (conn, consumer) = runtime.block_on(async {
            let conn = Connection::connect(props).await?;
            let consumer = conn.consumer(queue).await?;
            Ok::<_, Error>((conn, consumer))
        })??;
        Ok(Self {
            consumer,
            conn,
            runtime: Arc::new(runtime),
        })
    }

    /// **Waits up to `timeout` for the next delivery**; `Ok(None)` when none
    /// came in time.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the consumer was cancelled or its
    /// connection closed; a delivery the broker sent but lapin could not
    /// read gives that error, and the next call goes on.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>> {
        let next = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, self.consumer.next()).await })?;
        match next {
            Err(_elapsed) => Ok(None),
            Ok(None) => Err(Error::new(
                ErrorKind::Closed,
                format!(
                    "the consumer of queue {:?} is closed",
                    self.consumer.queue()
                ),
            )),
            Ok(Some(delivery)) => Ok(Some(Delivery {
                inner: delivery?,
                runtime: self.runtime.clone(),
            })),
        }
    }

    /// The name of the queue consumed.
    #[must_use]
    pub fn queue(&self) -> &str {
        self.consumer.queue()
    }

    /// **Cancels the consumer and closes the connection**; unsettled
    /// deliveries go back to the queue.
    ///
    /// # Errors
    ///
    /// As [`Connection::close`].
    pub fn close(self) -> Result<()> {
        self.runtime.block_on(self.conn.close())?
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        close_quietly(&self.runtime, &self.conn);
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Consumer")
            .field("queue", &self.queue())
            .field("connection", &self.conn)
            .finish_non_exhaustive()
    }
}

/// **A delivery received by a blocking [`Consumer`]**: everything of
/// [`crate::Delivery`] (through `Deref`), with blocking settlement.
pub struct Delivery {
    inner: crate::Delivery,
    runtime: Arc<BlockingRuntime>,
}

impl Delivery {
    /// Acknowledges; see [`crate::Delivery::ack`].
    ///
    /// # Errors
    ///
    /// As [`crate::Delivery::ack`].
    pub fn ack(&self) -> Result<()> {
        self.runtime.block_on(self.inner.ack())?
    }

    /// Negatively acknowledges; see [`crate::Delivery::nack`].
    ///
    /// # Errors
    ///
    /// As [`crate::Delivery::nack`].
    pub fn nack(&self, requeue: bool) -> Result<()> {
        self.runtime.block_on(self.inner.nack(requeue))?
    }

    /// Rejects; see [`crate::Delivery::reject`].
    ///
    /// # Errors
    ///
    /// As [`crate::Delivery::reject`].
    pub fn reject(&self) -> Result<()> {
        self.runtime.block_on(self.inner.reject())?
    }
}

impl Deref for Delivery {
    type Target = crate::Delivery;

    fn deref(&self) -> &crate::Delivery {
        &self.inner
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

/// Closes a facade's connection before its runtime goes away, so lapin's
/// I/O thread does not find a runtime shutting down under it.
fn close_quietly(runtime: &BlockingRuntime, conn: &Connection) {
    if conn.is_connected() {
        let _ = runtime.block_on(async { tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await });
    }
}

/// **A typed event bus for non-async code**: [`crate::Bus`] on a private
/// runtime. Subscribers run on that runtime's thread.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::{Event, Subscribers, blocking};
///
/// #[derive(Event, Serialize, Deserialize, Debug)]
/// struct Tick { n: u32 }
///
/// let subscribers = Subscribers::new();
/// let (tx, rx) = std::sync::mpsc::channel();
/// let _guard = subscribers.subscribe(move |t: &Tick| tx.send(t.n).unwrap());
/// let bus = blocking::Bus::connect(tidings::Bus::builder("memory://ticks")?.subscribers(subscribers))?;
/// bus.publish_confirmed(&Tick { n: 1 })?;
/// assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(), 1);
/// bus.close()?;
/// # Ok::<(), tidings::Error>(())
/// ```
pub struct Bus {
    bus: crate::Bus,
    runtime: BlockingRuntime,
}

impl Bus {
    /// **Connects** the bus a builder describes.
    ///
    /// # Errors
    ///
    /// As [`BusBuilder::connect`], and [`ErrorKind::Usage`] inside an async
    /// runtime.
    pub fn connect(builder: BusBuilder) -> Result<Self> {
        let runtime = BlockingRuntime::new("tidings-bus")?;
        let bus = runtime.block_on(builder.connect())??;
        Ok(Self { bus, runtime })
    }

    /// Publishes an event; see [`crate::Bus::publish`].
    ///
    /// # Errors
    ///
    /// As [`crate::Bus::publish`].
    pub fn publish(&self, event: &dyn Event) -> Result<()> {
        self.runtime.block_on(self.bus.publish(event))?
    }

    /// Publishes an event and waits for the broker's confirm; see
    /// [`crate::Bus::publish_confirmed`].
    ///
    /// # Errors
    ///
    /// As [`crate::Bus::publish_confirmed`].
    pub fn publish_confirmed(&self, event: &dyn Event) -> Result<()> {
        self.runtime.block_on(self.bus.publish_confirmed(event))?
    }

    /// Publishes an event with options (headers, conversation, confirm,
    /// routing key, priority, expiration, message id, delay, codec,
    /// compression, ...);
    /// see [`crate::Bus::publish_with`].
    ///
    /// # Errors
    ///
    /// As [`crate::Bus::publish_with`].
    pub fn publish_with(&self, event: &dyn Event, options: &crate::PublishOptions) -> Result<()> {
        self.runtime
            .block_on(self.bus.publish_with(event, options))?
    }

    /// **Calls a server** and blocks until its reply; see
    /// [`crate::Bus::call`].
    ///
    /// # Errors
    ///
    /// As [`crate::Bus::call`]; [`ErrorKind::Usage`]
    /// when called from inside an async runtime.
    pub fn call<R: crate::Request>(&self, request: &R) -> Result<R::Reply> {
        self.runtime.block_on(self.bus.call(request))?
    }

    /// **Calls a server with options** (a timeout, a server by name); see
    /// [`crate::Bus::call_with`].
    ///
    /// # Errors
    ///
    /// As [`call`](Bus::call).
    pub fn call_with<R: crate::Request>(
        &self,
        request: &R,
        options: &crate::CallOptions,
    ) -> Result<R::Reply> {
        self.runtime
            .block_on(self.bus.call_with(request, options))?
    }

    /// Whether the bus is connected and consuming; see
    /// [`crate::Bus::health`].
    #[must_use]
    pub fn health(&self) -> crate::Health {
        self.bus.health()
    }

    /// Sends an event to one named queue and waits for the broker's
    /// confirm; see [`crate::Bus::send_to`].
    ///
    /// # Errors
    ///
    /// As [`crate::Bus::send_to`].
    pub fn send_to(&self, queue: &str, event: &dyn Event) -> Result<()> {
        self.runtime.block_on(self.bus.send_to(queue, event))?
    }

    /// Starts listening one more way; see [`crate::Bus::listen`]. Cancel
    /// the listener with [`Bus::cancel`].
    ///
    /// # Errors
    ///
    /// As [`crate::Bus::listen`].
    pub fn listen(&self, listen: &crate::Listen) -> Result<crate::Listener> {
        self.runtime.block_on(self.bus.listen(listen))?
    }

    /// Stops a listener of this bus; see [`crate::Listener::cancel`].
    ///
    /// # Errors
    ///
    /// As [`crate::Listener::cancel`].
    pub fn cancel(&self, listener: &crate::Listener) -> Result<()> {
        self.runtime.block_on(listener.cancel())?
    }

    /// A snapshot of the bus's counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.bus.stats()
    }

    /// Closes the bus; see [`crate::Bus::close`].
    ///
    /// # Errors
    ///
    /// As [`crate::Bus::close`].
    pub fn close(self) -> Result<()> {
        self.runtime.block_on(self.bus.close())?
    }
}

impl Drop for Bus {
    /// Closes the bus, flushing what was published for up to 5 s, also
    /// when the thread unwinds from a panic: a blocking bus is scoped by
    /// its owner. What is still unconfirmed then is logged at ERROR.
    fn drop(&mut self) {
        // Closed already: `close` returns at once.
        let closed = self
            .runtime
            .block_on(async { tokio::time::timeout(CLOSE_TIMEOUT, self.bus.close()).await });
        let failure = match closed {
            Ok(Ok(Ok(()))) => return,
            Ok(Ok(Err(e))) | Err(e) => e.to_string(),
            Ok(Err(_elapsed)) => format!(
                "closing took longer than {CLOSE_TIMEOUT:?}; {} published events were not confirmed",
                self.bus.stats().buffered
            ),
        };
        tracing::error!(error = %failure, "a blocking bus was dropped and could not flush what it published; call close() to see the error");
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Bus")
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}
