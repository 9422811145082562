//! `Delivery`: one received message, its metadata, and how to settle it.

use std::fmt;
use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use serde::de::DeserializeOwned;

use std::future::Future;

use tokio::sync::watch;

use crate::amqp::connection::{Link, gone};
use crate::codec::Codecs;
use crate::compression::{Inflate, decompress};
use crate::error::{Error, ErrorKind, Result};
use crate::headers::ORIGIN_HEADER;

/// **One message from a queue**: its body, its metadata, and the means to
/// settle it.
///
/// Settle every delivery exactly once: [`ack`](Delivery::ack) when it was
/// handled, [`nack`](Delivery::nack) with `requeue = true` to have it
/// delivered again (with [`redelivered`](Delivery::redelivered) set), or
/// [`reject`](Delivery::reject) to drop it (or dead-letter it, when the queue
/// has a dead-letter exchange). A delivery dropped unsettled stays
/// outstanding until its consumer's channel closes, then goes back to the
/// queue.
pub struct Delivery {
    inner: lapin::message::Delivery,
    shared: Arc<Shared>,
    origin: Arc<Origin>,
}

impl Delivery {
    pub(crate) fn new(
        inner: lapin::message::Delivery,
        shared: Arc<Shared>,
        origin: Arc<Origin>,
    ) -> Self {
        Self {
            inner,
            shared,
            origin,
        }
    }

    /// **Decodes the body** with the codec its `content-type` names.
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::MessageTooLarge`] when the body exceeds the props'
    ///   maximum message size;
    /// - [`ErrorKind::UnknownContentType`] when no codec reads the
    ///   `content-type`, or there is none;
    /// - [`ErrorKind::Decode`] when the body is not a valid `T`, or is
    ///   compressed (`content-encoding`) with an algorithm this build
    ///   lacks, wrongly, or to more than the maximum message size once
    ///   decompressed (never decompressed past it).
    ///
    /// The delivery is not settled by a failure: reject it.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        let size = self.inner.data.len();
        if size > self.shared.max_message_size {
            return Err(Error::new(
                ErrorKind::MessageTooLarge,
                format!(
                    "message body of {size} bytes exceeds the maximum message size of {} bytes; raise it with with_max_message_size",
                    self.shared.max_message_size
                ),
            ));
        }
        let codec = self.shared.codecs.for_content_type(self.content_type())?;
        let encoding = self.inner.properties.content_encoding().as_ref();
        let body = decompress(
            &self.inner.data,
            encoding.map(|e| e.as_str()),
            self.shared.max_message_size,
        )
        .map_err(|e| match e {
            Inflate::Bomb(why) | Inflate::Unknown(why) | Inflate::Corrupt(why) => {
                Error::new(ErrorKind::Decode, why)
            }
        })?;
        codec.decode(&body)
    }

    /// The raw body.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// The queue it came from.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.shared.queue
    }

    /// The exchange it was published to (empty for the default exchange).
    #[must_use]
    pub fn exchange(&self) -> &str {
        self.inner.exchange.as_str()
    }

    /// The routing key it was published with.
    #[must_use]
    pub fn routing_key(&self) -> &str {
        self.inner.routing_key.as_str()
    }

    /// Whether the broker delivered it before (it was requeued, or its
    /// consumer went away unsettled).
    #[must_use]
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// The `content-type` property.
    #[must_use]
    pub fn content_type(&self) -> Option<&str> {
        self.inner
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str())
    }

    /// The `message-id` property.
    #[must_use]
    pub fn message_id(&self) -> Option<&str> {
        self.inner
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
    }

    /// The `timestamp` property: seconds since the Unix epoch at publish.
    #[must_use]
    pub fn timestamp(&self) -> Option<u64> {
        *self.inner.properties.timestamp()
    }

    /// The `app-id` property: the publisher's connection name.
    #[must_use]
    pub fn app_id(&self) -> Option<&str> {
        self.inner.properties.app_id().as_ref().map(|s| s.as_str())
    }

    /// The instance id of the publishing connection (the
    /// [`x-origin`](crate::headers::ORIGIN_HEADER) header).
    #[must_use]
    pub fn origin(&self) -> Option<&str> {
        self.header_str(ORIGIN_HEADER)
    }

    /// A header whose value is a string; `None` when absent or of another
    /// AMQP type.
    #[must_use]
    pub fn header_str(&self, name: &str) -> Option<&str> {
        match self.header(name)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// A header as its raw AMQP value.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.inner.properties.headers().as_ref()?.inner().get(name)
    }

    /// All AMQP properties, for what the accessors above do not cover.
    #[must_use]
    pub fn properties(&self) -> &lapin::BasicProperties {
        &self.inner.properties
    }

    /// **Acknowledges**: the message was handled and leaves the queue.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the channel or the connection it came on
    /// was lost first (the broker then delivers the message again).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, the ack may or may not have been sent; an
    /// unsettled delivery comes back when its channel closes.
    pub async fn ack(&self) -> Result<()> {
        let acking = self.inner.acker.ack(BasicAckOptions::default());
        self.origin
            .settle("acknowledging a delivery", acking)
            .await
            .map(drop)
    }

    /// Acknowledges this delivery and every unsettled one before it on its
    /// channel.
    pub(crate) async fn ack_multiple(&self) -> Result<()> {
        let acking = self.inner.acker.ack(BasicAckOptions { multiple: true });
        self.origin
            .settle("acknowledging deliveries", acking)
            .await
            .map(drop)
    }

    /// **Negatively acknowledges**: with `requeue` the broker delivers the
    /// message again, marked redelivered; without, it is dropped or
    /// dead-lettered.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the channel closed first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, the nack may or may not have been sent; an
    /// unsettled delivery comes back when its channel closes.
    pub async fn nack(&self, requeue: bool) -> Result<()> {
        let nacking = self.inner.acker.nack(BasicNackOptions {
            requeue,
            ..BasicNackOptions::default()
        });
        self.origin
            .settle("nacking a delivery", nacking)
            .await
            .map(drop)
    }

    /// **Rejects**: the message is not delivered again; the broker drops it,
    /// or dead-letters it when the queue has a dead-letter exchange.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the channel closed first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, the reject may or may not have been sent; an
    /// unsettled delivery comes back when its channel closes.
    pub async fn reject(&self) -> Result<()> {
        let rejecting = self
            .inner
            .acker
            .reject(BasicRejectOptions { requeue: false });
        self.origin
            .settle("rejecting a delivery", rejecting)
            .await
            .map(drop)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.shared.queue)
            .field("routing_key", &self.routing_key())
            .field("message_id", &self.message_id())
            .field("content_type", &self.content_type())
            .field("redelivered", &self.redelivered())
            .field("bytes", &self.inner.data.len())
            .finish_non_exhaustive()
    }
}

/// The underlying connection deliveries came on, to tell when settling
/// them can no longer work.
pub(crate) struct Origin {
    pub(crate) amqp: Arc<lapin::Connection>,
    pub(crate) link: watch::Receiver<Link>,
}

impl Origin {
    /// Runs `settling` unless the connection goes first.
    pub(crate) async fn settle<T>(
        &self,
        what: &str,
        settling: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T> {
        tokio::select! {
            biased;
            done = settling => done.map_err(|e| Error::amqp(what, e)),
            () = gone(self.link.clone(), &self.amqp) => Err(Error::new(
                crate::ErrorKind::Closed,
                format!("{what} failed: the connection was lost; the broker delivers unsettled messages again"),
            )),
        }
    }
}

/// What every delivery of one consumer needs to decode itself.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) queue: String,
    pub(crate) codecs: Codecs,
    pub(crate) max_message_size: usize,
}
