//! `Connection`: one AMQP connection opened from props, handing out channels,
//! producers and consumers.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lapin::options::{
    BasicQosOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tracing::{debug, info};

use crate::codec::Codecs;
use crate::consumer::Consumer;
use crate::error::{Error, ErrorKind, Result};
use crate::producer::Producer;
use crate::props::{AmqpProps, ExchangeKind, check_name};
use crate::queue::Queue;

/// **An open connection to the broker**, made from [`AmqpProps`]: it declares
/// the exchange, hands out channels, and makes [`Producer`]s and
/// [`Consumer`]s.
///
/// A `Connection` is a cheap handle: clones share one TCP connection. Each
/// connection has an instance id (a random UUID) that names its exclusive
/// queues and marks the messages it publishes with their origin.
///
/// # Examples
///
/// ```
/// # async fn example() -> tidings::Result<()> {
/// use tidings::{AmqpProps, Connection, Queue};
///
/// let props = AmqpProps::from_env()?.with_exchange("doc.connection", tidings::ExchangeKind::Fanout);
/// let conn = Connection::connect(&props).await?;
/// let consumer = conn.consumer(&Queue::exclusive()).await?;
/// assert!(consumer.queue().starts_with("doc.connection."));
/// let producer = conn.producer().await?;
/// producer.publish_confirmed(&"hello").await?;
/// conn.close().await?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
/// ```
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    props: AmqpProps,
    amqp: lapin::Connection,
    instance_id: String,
    codecs: Codecs,
    exclusive_queues: AtomicU64,
    /// One channel for declarations and deletions, reopened after the
    /// broker closes it. Short-lived channels are avoided: lapin may hand a
    /// closing channel's id to a new channel, whose late close-ok then
    /// closes the new one.
    admin: tokio::sync::Mutex<Option<lapin::Channel>>,
}

impl Connection {
    /// **Connects to the broker** and declares the exchange of the props.
    ///
    /// Must be called inside a Tokio runtime (multi-threaded, or a
    /// current-thread runtime that keeps running); the connection's
    /// background tasks run on it.
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::InvalidConfig`] for bad props or an unreadable CA file;
    /// - [`ErrorKind::Authentication`] when the broker refuses the
    ///   credentials or the virtual host;
    /// - [`ErrorKind::Connect`] when the broker cannot be reached, or does not
    ///   finish the handshake within the connect timeout;
    /// - [`ErrorKind::Broker`] when the exchange exists with another kind.
    pub async fn connect(props: &AmqpProps) -> Result<Self> {
        props.validate()?;
        let tls = tls_config(props)?;
        let instance_id = uuid::Uuid::new_v4().to_string();
        let name = props
            .connection_name()
            .map_or_else(|| format!("tidings {instance_id}"), str::to_owned);
        let options = lapin::ConnectionProperties::default().with_connection_name(name.into());
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| Error::amqp("starting the AMQP runtime", e))?;
        let connecting =
            lapin::Connection::connect_uri_with_config(props.lapin_uri(), options, tls, runtime);
        let url = props.redacted_url();
        let amqp = match tokio::time::timeout(props.connect_timeout(), connecting).await {
            Ok(Ok(amqp)) => amqp,
            Ok(Err(e)) => return Err(Error::connect(&url, e)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Connect,
                    format!(
                        "connecting to {url} timed out after {:?}; check that the broker is running and reachable",
                        props.connect_timeout()
                    ),
                ));
            }
        };
        info!(url = %url, instance = %instance_id, "connected");
        let conn = Self {
            inner: Arc::new(Inner {
                codecs: Codecs::new(props.codec().clone()),
                props: props.clone(),
                amqp,
                instance_id,
                exclusive_queues: AtomicU64::new(0),
                admin: tokio::sync::Mutex::new(None),
            }),
        };
        conn.declare_exchange().await?;
        Ok(conn)
    }

    /// The props this connection was made from.
    #[must_use]
    pub fn props(&self) -> &AmqpProps {
        &self.inner.props
    }

    /// This connection's instance id: a random UUID, the `x-origin` header of
    /// what it publishes and part of its exclusive queue names.
    #[must_use]
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// Whether the connection is open.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.inner.amqp.status().connected()
    }

    /// **Opens a new channel** for direct use of the AMQP API.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the connection is closed,
    /// [`ErrorKind::Broker`] when the broker refuses another channel.
    pub async fn channel(&self) -> Result<lapin::Channel> {
        self.inner
            .amqp
            .create_channel()
            .await
            .map_err(|e| Error::amqp("opening a channel", e))
    }

    /// The channel for declarations: the open one, or a new one.
    async fn admin_channel(&self) -> Result<lapin::Channel> {
        let mut admin = self.inner.admin.lock().await;
        if let Some(channel) = admin.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self.channel().await?;
        *admin = Some(channel.clone());
        Ok(channel)
    }

    /// **Declares the exchange of the props** (durable, of the props' kind).
    /// [`connect`](Connection::connect) already did; declaring again is
    /// harmless.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Broker`] when an exchange of that name exists with
    /// another kind or durability.
    pub async fn declare_exchange(&self) -> Result<()> {
        let props = &self.inner.props;
        let channel = self.admin_channel().await?;
        let kind = match props.exchange_kind() {
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        };
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                short(props.exchange())?,
                kind,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                Error::amqp(
                    &format!(
                        "declaring {} exchange {:?}",
                        props.exchange_kind(),
                        props.exchange()
                    ),
                    e,
                )
            })?;
        debug!(exchange = %props.exchange(), kind = %props.exchange_kind(), "exchange declared");
        Ok(())
    }

    /// **Declares the dead-letter exchange and queue** of the props'
    /// exchange, both named `<exchange>.dead-letter` (a durable fanout
    /// exchange and a durable queue bound to it); returns the name.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Broker`] when the broker refuses a declaration.
    pub async fn declare_dead_letters(&self) -> Result<String> {
        let name = format!("{}.dead-letter", self.inner.props.exchange());
        check_name("dead-letter exchange name", &name)?;
        let channel = self.admin_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                short(&name)?,
                lapin::ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::amqp(&format!("declaring dead-letter exchange {name:?}"), e))?;
        let queue_options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(short(&name)?, queue_options, FieldTable::default())
            .await
            .map_err(|e| Error::amqp(&format!("declaring dead-letter queue {name:?}"), e))?;
        channel
            .queue_bind(
                short(&name)?,
                short(&name)?,
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::amqp(&format!("binding dead-letter queue {name:?}"), e))?;
        Ok(name)
    }

    /// **Declares a queue and binds it** to the exchange of the props;
    /// returns its name (chosen by tidings for an exclusive queue).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a bad queue name or binding key,
    /// [`ErrorKind::Broker`] when the broker refuses the declaration (for
    /// example, a queue of that name exists with other settings).
    pub async fn declare_queue(&self, queue: &Queue) -> Result<String> {
        let channel = self.admin_channel().await?;
        self.declare_queue_on(&channel, queue).await
    }

    pub(crate) async fn declare_queue_on(
        &self,
        channel: &lapin::Channel,
        queue: &Queue,
    ) -> Result<String> {
        queue.check()?;
        let props = &self.inner.props;
        let keys = queue.binding_keys(props.exchange_kind())?;
        let name = match queue.name() {
            Some(name) => name.to_owned(),
            None => {
                let n = self.inner.exclusive_queues.fetch_add(1, Ordering::Relaxed);
                format!("{}.{}.{n}", props.exchange(), self.inner.instance_id)
            }
        };
        check_name("queue name", &name).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("{e}; exclusive queues are named <exchange>.<instance-id>.<n>, so shorten the exchange name"),
            )
        })?;
        let options = QueueDeclareOptions {
            durable: queue.is_durable(),
            exclusive: !queue.is_durable(),
            auto_delete: !queue.is_durable(),
            ..QueueDeclareOptions::default()
        };
        let mut arguments = FieldTable::default();
        if let Some(target) = queue.dead_letter_to() {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(target.into()),
            );
        }
        channel
            .queue_declare(short(&name)?, options, arguments)
            .await
            .map_err(|e| Error::amqp(&format!("declaring queue {name:?}"), e))?;
        for key in keys {
            channel
                .queue_bind(
                    short(&name)?,
                    short(props.exchange())?,
                    short(&key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    Error::amqp(
                        &format!(
                            "binding queue {name:?} to {:?} with key {key:?}",
                            props.exchange()
                        ),
                        e,
                    )
                })?;
        }
        debug!(queue = %name, durable = queue.is_durable(), "queue declared");
        Ok(name)
    }

    /// **Deletes a queue** by name; returns how many messages it held.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Broker`] when the broker refuses, for example because
    /// another connection holds the queue exclusively.
    pub async fn delete_queue(&self, name: &str) -> Result<u32> {
        self.admin_channel()
            .await?
            .queue_delete(short(name)?, QueueDeleteOptions::default())
            .await
            .map_err(|e| Error::amqp(&format!("deleting queue {name:?}"), e))
    }

    /// **Deletes an exchange** by name.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Broker`] when the broker refuses.
    pub async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.admin_channel()
            .await?
            .exchange_delete(short(name)?, ExchangeDeleteOptions::default())
            .await
            .map_err(|e| Error::amqp(&format!("deleting exchange {name:?}"), e))
    }

    /// **A producer** on its own channel, with publisher confirms on: every
    /// publish returns a [`Confirm`](crate::Confirm) to await or drop.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the connection is closed.
    pub async fn producer(&self) -> Result<Producer> {
        Producer::open(self, true).await
    }

    /// **A producer without publisher confirms**: nothing waits for the
    /// broker; a message lost in a failing connection goes unnoticed.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the connection is closed.
    pub async fn producer_without_confirms(&self) -> Result<Producer> {
        Producer::open(self, false).await
    }

    /// **Declares `queue`, binds it, and consumes from it** on a channel of
    /// its own, with the prefetch of the props.
    ///
    /// # Errors
    ///
    /// As [`declare_queue`](Connection::declare_queue); also
    /// [`ErrorKind::Broker`] when another connection consumes the queue
    /// exclusively.
    pub async fn consumer(&self, queue: &Queue) -> Result<Consumer> {
        let channel = self.channel().await?;
        let name = self.declare_queue_on(&channel, queue).await?;
        channel
            .basic_qos(self.inner.props.prefetch(), BasicQosOptions::default())
            .await
            .map_err(|e| Error::amqp("setting the prefetch", e))?;
        Consumer::start(channel, name, self).await
    }

    /// **Closes the connection** and every channel on it. Unacknowledged
    /// deliveries go back to their queues.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] if it was already closed.
    pub async fn close(&self) -> Result<()> {
        match self
            .inner
            .amqp
            .close(200, "closed by the application".into())
            .await
        {
            Ok(()) => Ok(()),
            // lapin tears the connection down with this error when a channel
            // dropped just before was still closing: the connection is gone.
            Err(e) if matches!(e.kind(), lapin::ErrorKind::InvalidChannelState(..)) => {
                debug!(error = %e, "connection closed while a channel was closing");
                Ok(())
            }
            Err(e) => Err(Error::amqp("closing the connection", e)),
        }
    }

    pub(crate) fn codecs(&self) -> &Codecs {
        &self.inner.codecs
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.inner.props.redacted_url())
            .field("instance_id", &self.inner.instance_id)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// A checked AMQP short string (lapin panics on over 255 bytes).
pub(crate) fn short(name: &str) -> Result<ShortString> {
    check_name("name", name)?;
    Ok(ShortString::from(name))
}

fn tls_config(props: &AmqpProps) -> Result<lapin::tcp::OwnedTLSConfig> {
    let cert_chain = match props.ca_file() {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("cannot read the CA file {}: {e}", path.display()),
                e,
            )
        })?),
        None => None,
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain,
    })
}
