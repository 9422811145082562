//! `Consumer`: a stream of deliveries from one queue.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::{FieldTable, ShortString};
use tokio_stream::Stream;
use tracing::debug;

use crate::codec::Codecs;
use crate::connection::{Connection, short};
use crate::delivery::Delivery;
use crate::error::{Error, Result};

/// **The deliveries of one queue, as a [`Stream`]**, each to be settled
/// with [`ack`](Delivery::ack), [`nack`](Delivery::nack) or
/// [`reject`](Delivery::reject).
///
/// Made by [`Connection::consumer`]. The consumer has a channel of its own
/// whose prefetch (from the props) bounds how many unsettled deliveries it
/// holds. The stream ends when the consumer is cancelled or its channel
/// closes; a delivery that cannot be read yields an `Err` item and the stream
/// goes on. Dropping the consumer closes its channel: the broker puts
/// unsettled deliveries back in the queue.
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
/// # conn.close().await?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
/// ```
pub struct Consumer {
    stream: lapin::Consumer,
    channel: lapin::Channel,
    shared: Arc<Shared>,
}

/// What every delivery of one consumer needs to decode itself.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) queue: String,
    pub(crate) codecs: Codecs,
    pub(crate) max_message_size: usize,
}

impl Consumer {
    pub(crate) async fn start(
        channel: lapin::Channel,
        queue: String,
        conn: &Connection,
    ) -> Result<Self> {
        let tag = format!("{}.{queue}", conn.instance_id());
        let tag = ShortString::from(tag.get(..255).unwrap_or(&tag));
        let stream = channel
            .basic_consume(
                short(&queue)?,
                tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::amqp(&format!("consuming from queue {queue:?}"), e))?;
        debug!(queue = %queue, "consuming");
        Ok(Self {
            stream,
            channel,
            shared: Arc::new(Shared {
                queue,
                codecs: conn.codecs().clone(),
                max_message_size: conn.props().max_message_size(),
            }),
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
    pub async fn cancel(self) -> Result<()> {
        self.channel
            .basic_cancel(self.stream.tag(), BasicCancelOptions::default())
            .await
            .map_err(|e| {
                Error::amqp(
                    &format!("cancelling the consumer of {:?}", self.shared.queue),
                    e,
                )
            })?;
        self.channel
            .close(200, "consumer cancelled".into())
            .await
            .map_err(|e| Error::amqp("closing the consumer channel", e))
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.stream).poll_next(cx) {
            Poll::Ready(Some(Ok(delivery))) => {
                Poll::Ready(Some(Ok(Delivery::new(delivery, self.shared.clone()))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::amqp(
                &format!("receiving from queue {:?}", self.shared.queue),
                e,
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
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
