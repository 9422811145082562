//! `Consumer`: a stream of deliveries from one queue.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::{FieldTable, ShortString};
use tokio_stream::Stream;
use tracing::{debug, info};

use crate::amqp::connection::{Connection, short};
use crate::amqp::delivery::{Delivery, Origin, Shared};
use crate::amqp::queue::Queue;
use crate::error::{Error, Result};

/// **The deliveries of one queue, as a [`Stream`]**, each to be settled
/// with [`ack`](Delivery::ack), [`nack`](Delivery::nack) or
/// [`reject`](Delivery::reject).
///
/// Made by [`Connection::consumer`]. The consumer has a channel of its own
/// whose prefetch (from the props) bounds how many unsettled deliveries it
/// holds. When the connection is lost the stream waits and resumes on the
/// recovered connection; deliveries received before can then no longer be
/// settled (the broker delivers them again, marked redelivered). The stream
/// ends when the connection is closed. Dropping the consumer closes its
/// channel: the broker puts unsettled deliveries back in the queue.
///
/// # Examples
///
/// ```
/// # async fn example() -> tidings::Result<()> {
/// use tidings::{AmqpProps, Connection, Queue};
/// use tokio_stream::StreamExt;
///
/// let props = AmqpProps::from_env()?.with_exchange("doc.consumer", tidings::ExchangeKind::Fanout);
/// let conn = Connection::connect(&props).await?;
/// let mut consumer = conn.consumer(&Queue::exclusive()).await?;
/// conn.producer().await?.publish_confirmed(&("hi", 42u8)).await?;
///
/// let delivery = consumer.next().await.expect("stream ended")?;
/// assert_eq!(delivery.decode::<(String, u8)>()?, ("hi".to_owned(), 42));
/// delivery.ack().await?;
/// # conn.delete_exchange("doc.consumer").await?;
/// # conn.close().await?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
/// ```
pub struct Consumer {
    conn: Connection,
    shared: Arc<Shared>,
    state: State,
    /// The consume arguments, asked again at each (re)subscription (a
    /// stream's `x-stream-offset` moves on).
    arguments: Option<ConsumeArguments>,
}

/// Gives the arguments of a `basic.consume`, each time the consumer
/// subscribes.
pub(crate) type ConsumeArguments = Arc<dyn Fn() -> FieldTable + Send + Sync>;

enum State {
    Live(Box<Subscription>),
    /// Only ever polled through `&mut`; the mutex makes the consumer `Sync`
    /// without being locked.
    Resuming(Mutex<Pin<Box<dyn Future<Output = Option<Subscription>> + Send>>>),
    Ended,
}

struct Subscription {
    stream: lapin::Consumer,
    channel: lapin::Channel,
    origin: Arc<Origin>,
}

/// How long a consumer waits before trying again to resume on a connection
/// that is up but refuses (its queue is held by a connection the broker has
/// not yet seen die).
const RESUME_RETRY: Duration = Duration::from_millis(500);

impl Consumer {
    pub(crate) async fn start(conn: Connection, queue: String) -> Result<Self> {
        Self::start_with(conn, queue, None).await
    }

    /// Starts consuming with the arguments `arguments` gives.
    pub(crate) async fn start_with(
        conn: Connection,
        queue: String,
        arguments: Option<ConsumeArguments>,
    ) -> Result<Self> {
        let amqp = conn
            .up()
            .await
            .ok_or_else(|| Error::new(crate::ErrorKind::Closed, "the connection is closed"))?;
        let subscription = subscribe(&conn, &amqp, &queue, arguments.as_ref()).await?;
        debug!(queue = %queue, "consuming");
        Ok(Self {
            shared: Arc::new(Shared {
                queue,
                codecs: conn.codecs().clone(),
                max_message_size: conn.props().max_message_size(),
            }),
            conn,
            state: State::Live(Box::new(subscription)),
            arguments,
        })
    }

    /// The name of the queue consumed.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.shared.queue
    }

    /// **Stops consuming**: the broker sends nothing more, and deliveries not
    /// yet settled go back to the queue when the channel closes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) when the channel was
    /// already closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the consumer's channel closes with it and what
    /// was unsettled goes back to the queue.
    pub async fn cancel(self) -> Result<()> {
        let State::Live(subscription) = self.state else {
            return Ok(());
        };
        let (channel, origin) = (subscription.channel, subscription.origin);
        let what = format!("cancelling the consumer of {:?}", self.shared.queue);
        origin
            .settle(
                &what,
                channel.basic_cancel(subscription.stream.tag(), BasicCancelOptions::default()),
            )
            .await?;
        origin
            .settle(
                "closing the consumer channel",
                channel.close(200, "consumer cancelled".into()),
            )
            .await
    }

    fn resume(&self) -> State {
        let (conn, queue) = (self.conn.clone(), self.shared.queue.clone());
        let arguments = self.arguments.clone();
        State::Resuming(Mutex::new(Box::pin(async move {
            loop {
                let amqp = conn.up().await?;
                match subscribe(&conn, &amqp, &queue, arguments.as_ref()).await {
                    Ok(subscription) => {
                        info!(queue = %queue, "consuming again");
                        return Some(subscription);
                    }
                    Err(e) => {
                        debug!(queue = %queue, error = %e, "resuming the consumer failed; trying again");
                        tokio::time::sleep(RESUME_RETRY).await;
                    }
                }
            }
        })))
    }
}

/// Declares `queue` again (the broker may have lost it) and consumes it on
/// a new channel of `amqp`.
async fn subscribe(
    conn: &Connection,
    amqp: &Arc<lapin::Connection>,
    queue: &str,
    arguments: Option<&ConsumeArguments>,
) -> Result<Subscription> {
    let channel = conn.consumer_channel(amqp).await?;
    conn.redeclare_queue(&channel, queue).await?;
    let tag = format!("{}.{queue}", conn.instance_id());
    let tag = ShortString::from(tag.get(..255).unwrap_or(&tag));
    let stream = channel
        .basic_consume(
            short(queue)?,
            tag,
            BasicConsumeOptions::default(),
            arguments.map(|arguments| arguments()).unwrap_or_default(),
        )
        .await
        .map_err(|e| Error::amqp(&format!("consuming from queue {queue:?}"), e))?;
    let origin = Arc::new(Origin {
        amqp: amqp.clone(),
        link: conn.link(),
    });
    Ok(Subscription {
        stream,
        channel,
        origin,
    })
}

impl Stream for Consumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut self.state {
                State::Live(subscription) => match Pin::new(&mut subscription.stream).poll_next(cx)
                {
                    Poll::Ready(Some(Ok(delivery))) => {
                        let origin = subscription.origin.clone();
                        return Poll::Ready(Some(Ok(Delivery::new(
                            delivery,
                            self.shared.clone(),
                            origin,
                        ))));
                    }
                    // The channel or the connection failed, or the broker
                    // cancelled the consumer (its queue was deleted):
                    // resume, unless the application closed the connection.
                    Poll::Ready(Some(Err(e))) => {
                        debug!(queue = %self.shared.queue, error = %e, "consumer interrupted");
                        self.state = self.resume();
                    }
                    Poll::Ready(None) => {
                        if self.conn.is_closed() {
                            self.state = State::Ended;
                        } else {
                            info!(queue = %self.shared.queue, "consumer cancelled by the broker; resuming");
                            self.state = self.resume();
                        }
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Resuming(resuming) => match resuming
                    .get_mut()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                    .poll(cx)
                {
                    Poll::Ready(Some(subscription)) => {
                        self.state = State::Live(Box::new(subscription));
                    }
                    Poll::Ready(None) => self.state = State::Ended,
                    Poll::Pending => return Poll::Pending,
                },
                State::Ended => return Poll::Ready(None),
            }
        }
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.shared.queue)
            .finish_non_exhaustive()
    }
}

/// Consumers are started from a connection.
impl Connection {
    /// **Declares `queue`, binds it, and consumes from it** on a channel of
    /// its own, with the prefetch of the props. The consumer resumes by
    /// itself after the connection is recovered, or when the broker cancels
    /// it (its queue was deleted: it is declared again).
    ///
    /// # Errors
    ///
    /// As [`declare_queue`](Connection::declare_queue); also
    /// [`ErrorKind::Broker`](crate::ErrorKind::Broker) when another connection consumes the queue
    /// exclusively.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a consumer whose start is dropped is cancelled with its
    /// channel.
    pub async fn consumer(&self, queue: &Queue) -> Result<Consumer> {
        let name = self.declare_queue(queue).await?;
        Consumer::start(self.clone(), name).await
    }
}
