//! `Requester`: requests whose replies come by RabbitMQ's direct reply-to
//! (`amq.rabbitmq.reply-to`). One channel per requester consumes the
//! pseudo-queue (no-ack) before publishing any request on it; every
//! request carries a correlation id, and replies are matched by it, so any
//! number of requests are in flight on the one channel with no reply
//! queue at all. When the connection goes, every request waiting fails,
//! and the next opens a channel on the recovered connection.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tracing::{Instrument, debug, debug_span};

use crate::amqp::connection::{Connection, gone};
use crate::error::{Error, ErrorKind, Result};

/// The pseudo-queue of direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What a request's waiter hears: a reply, or why none will come.
pub(crate) type ReplyResult = Result<lapin::message::Delivery>;

/// **Sends requests and routes their replies**, on one channel of a
/// recovering [`Connection`].
pub(crate) struct Requester {
    conn: Connection,
    current: tokio::sync::Mutex<Option<Arc<ReplyChannel>>>,
    late: Arc<AtomicU64>,
    next_id: AtomicU64,
}

/// The channel requests go out and replies come in on, and who waits.
struct ReplyChannel {
    channel: lapin::Channel,
    pending: Arc<Pending>,
}

#[derive(Default)]
struct Pending {
    /// Waiters by correlation id; `None` once the channel is gone.
    waiters: Mutex<Option<HashMap<String, mpsc::UnboundedSender<ReplyResult>>>>,
}

impl Pending {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<HashMap<String, mpsc::UnboundedSender<ReplyResult>>>>
    {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails every waiter, and every request from now on.
    fn fail_all(&self, why: &str) {
        let waiters = self.lock().take();
        for (_, waiter) in waiters.into_iter().flatten() {
            let _ = waiter.send(Err(lost(why)));
        }
    }
}

fn lost(why: &str) -> Error {
    Error::new(
        ErrorKind::ConnectionLost,
        format!(
            "the connection to the broker was lost while waiting for the reply ({why}); the request may or may not have been handled, so call again only if it is safe to repeat"
        ),
    )
}

/// **One request in flight**: its replies, and the broker's confirm
/// (which says whether any queue took it).
pub(crate) struct Call {
    id: String,
    pending: Arc<Pending>,
    replies: mpsc::UnboundedReceiver<ReplyResult>,
    confirm: Option<lapin::PublisherConfirm>,
}

impl Requester {
    pub(crate) fn new(conn: Connection) -> Self {
        Self {
            conn,
            current: tokio::sync::Mutex::new(None),
            late: Arc::default(),
            next_id: AtomicU64::new(0),
        }
    }

    /// Replies that came for no waiter (it timed out or was dropped).
    pub(crate) fn late_replies(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// **Publishes a request** (mandatory, with `reply_to` and a fresh
    /// correlation id set on `properties`) and returns its call, which
    /// yields the replies.
    pub(crate) async fn request(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Call> {
        let reply = self.channel().await?;
        let id = format!("{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (sender, replies) = mpsc::unbounded_channel();
        match reply.pending.lock().as_mut() {
            Some(waiters) => waiters.insert(id.clone(), sender),
            None => return Err(lost("the reply channel closed")),
        };
        let mut call = Call {
            id: id.clone(),
            pending: reply.pending.clone(),
            replies,
            confirm: None,
        };
        let properties = properties
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(id.into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = reply
            .channel
            .basic_publish(exchange, routing_key, options, body, properties)
            .await
            .map_err(|e| {
                if reply.channel.status().connected() {
                    Error::amqp("publishing a request", e)
                } else {
                    lost(&e.to_string())
                }
            })?;
        call.confirm = Some(confirm);
        Ok(call)
    }

    /// **Publishes a reply** (or a receipt) to a `reply-to` address on the
    /// reply channel, at once, without waiting for the broker's confirm.
    pub(crate) async fn send(
        &self,
        routing_key: ShortString,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let reply = self.channel().await?;
        reply
            .channel
            .basic_publish(
                ShortString::from(""),
                routing_key,
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(|e| Error::amqp("publishing a reply", e))?;
        Ok(())
    }

    /// The reply channel: the open one, or a new one on the current
    /// connection (waiting at most the connect timeout for it).
    async fn channel(&self) -> Result<Arc<ReplyChannel>> {
        let mut current = self.current.lock().await;
        if let Some(open) = current
            .as_ref()
            .filter(|c| c.channel.status().connected() && c.pending.lock().is_some())
        {
            return Ok(open.clone());
        }
        let timeout = self.conn.props().connect_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let down = || {
            Error::new(
                ErrorKind::ConnectionLost,
                format!(
                    "the connection to the broker is down and was not recovered within {timeout:?}; the request was not sent"
                ),
            )
        };
        let (amqp, link, channel, mut replies) = loop {
            let link = self.conn.link();
            let amqp = match tokio::time::timeout_at(deadline, self.conn.up()).await {
                Ok(Some(amqp)) => amqp,
                Ok(None) => return Err(Error::new(ErrorKind::Closed, "the connection is closed")),
                Err(_) => return Err(down()),
            };
            match open_reply_channel(&amqp).await {
                Ok((channel, replies)) => break (amqp, link, channel, replies),
                // Lost, and not yet noticed by the supervisor: wait for the
                // next connection.
                Err(_) if !amqp.status().connected() => {
                    if tokio::time::timeout_at(deadline, gone(link, &amqp))
                        .await
                        .is_err()
                    {
                        return Err(down());
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let pending = Arc::new(Pending {
            waiters: Mutex::new(Some(HashMap::new())),
        });
        let routing = pending.clone();
        let late = self.late.clone();
        let span = debug_span!("replies", instance = %self.conn.instance_id());
        tokio::spawn(
            async move {
                let why = loop {
                    let next = tokio::select! {
                        () = gone(link.clone(), &amqp) => break "the connection was lost".to_owned(),
                        next = replies.next() => next,
                    };
                    let delivery = match next {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(e)) => break e.to_string(),
                        None => break "the reply channel closed".to_owned(),
                    };
                    let id = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|id| id.as_str().to_owned())
                        .unwrap_or_default();
                    let waiter = routing
                        .lock()
                        .as_ref()
                        .and_then(|waiters| waiters.get(&id).cloned());
                    match waiter {
                        Some(waiter) if waiter.send(Ok(delivery)).is_ok() => {}
                        _ => {
                            late.fetch_add(1, Ordering::Relaxed);
                            debug!(correlation_id = %id, "a reply came after its caller stopped waiting; dropped");
                        }
                    }
                };
                debug!(reason = %why, "the reply channel ended; calls waiting fail");
                routing.fail_all(&why);
            }
            .instrument(span),
        );
        let open = Arc::new(ReplyChannel { channel, pending });
        *current = Some(open.clone());
        Ok(open)
    }
}

impl Call {
    /// **The next reply**: fails with [`ErrorKind::Unroutable`] when the
    /// broker returned the request (no queue took it), and with
    /// [`ErrorKind::ConnectionLost`] when the connection went first.
    ///
    /// Cancel safe.
    pub(crate) async fn next(&mut self) -> ReplyResult {
        loop {
            let Some(confirm) = self.confirm.as_mut() else {
                return match self.replies.recv().await {
                    Some(reply) => reply,
                    None => Err(lost("the reply channel closed")),
                };
            };
            tokio::select! {
                biased;
                reply = self.replies.recv() => {
                    return reply.unwrap_or_else(|| Err(lost("the reply channel closed")));
                }
                confirmed = confirm => {
                    self.confirm = None;
                    match confirmed {
                        Ok(Confirmation::Ack(Some(returned))) => {
                            return Err(Error::new(
                                ErrorKind::Unroutable,
                                format!(
                                    "the broker returned the request: no queue is bound to {:?} ({})",
                                    returned.delivery.routing_key.as_str(),
                                    returned.reply_text.as_str()
                                ),
                            ));
                        }
                        Ok(Confirmation::Nack(_)) => {
                            return Err(Error::new(
                                ErrorKind::Nacked,
                                "the broker refused the request (nack)",
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => return Err(lost(&e.to_string())),
                    }
                }
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(waiters) = self.pending.lock().as_mut() {
            waiters.remove(&self.id);
        }
    }
}

impl fmt::Debug for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("late_replies", &self.late_replies())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A channel with confirms on, consuming direct replies: the consumer is
/// started before any request goes out on the channel, as direct reply-to
/// requires.
async fn open_reply_channel(amqp: &lapin::Connection) -> Result<(lapin::Channel, lapin::Consumer)> {
    let channel = amqp
        .create_channel()
        .await
        .map_err(|e| Error::amqp("opening the reply channel", e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| Error::amqp("turning on confirms on the reply channel", e))?;
    let replies = channel
        .basic_consume(
            REPLY_TO.into(),
            ShortString::from(""),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::amqp("consuming direct replies (amq.rabbitmq.reply-to)", e))?;
    Ok((channel, replies))
}

/// How long a request may wait in a server's queue: its timeout, as an
/// AMQP `expiration` in milliseconds.
pub(crate) fn expiration(ttl: Duration) -> ShortString {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
        .to_string()
        .into()
}
