//! The in-memory transport: `memory://name` buses in one process share a
//! hub of queues, routed like a topic exchange.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use super::seam::{
    BoxFuture, DeadLetter, Header, Inbox, Outgoing, PublishCounters, Received, Replies, Settlement,
    Transport,
};
use crate::amqp::connection_event::{ConnectionEvent, ConnectionEvents};
use crate::codec::{Bincode, Codec};
use crate::error::{Error, ErrorKind, Result};
use crate::headers::{FINGERPRINT_HEADER, TAG_HEADER, VERSION_HEADER};
use crate::transport::listen::{Listen, Mode};
use crate::transport::memory_stream::{self, Streams};

/// Where replies to the requests of the memory transport `<instance>` go:
/// `memory.reply-to.<instance>`.
const REPLY_TO: &str = "memory.reply-to.";

/// The largest body a memory bus decodes.
const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// **The in-process transport** (`memory://name`): buses of one process
/// that name the same hub meet there, with RabbitMQ's routing (topic
/// patterns, groups as shared queues, named queues) and none of its
/// outages. For unit tests, examples and doctests.
pub struct MemoryTransport {
    hub: Arc<Hub>,
    name: String,
    instance_id: String,
    counters: PublishCounters,
    events: broadcast::Sender<ConnectionEvent>,
    closed: AtomicBool,
    /// Where the replies to this transport's requests go.
    replier: Arc<Replier>,
}

impl MemoryTransport {
    /// A transport on the hub `name` (`memory://name`).
    #[must_use]
    pub fn named(name: &str) -> Self {
        let hub = Hub::named(name);
        let instance_id = uuid::Uuid::new_v4().to_string();
        let replier = Arc::new(Replier::default());
        hub.repliers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(format!("{REPLY_TO}{instance_id}"), replier.clone());
        Self {
            hub,
            name: name.to_owned(),
            instance_id,
            counters: PublishCounters::default(),
            events: broadcast::channel(4).0,
            closed: AtomicBool::new(false),
            replier,
        }
    }

    fn closed_error() -> Error {
        Error::new(ErrorKind::Closed, "the memory transport is closed")
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("hub", &self.name)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl Transport for MemoryTransport {
    fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn codec(&self) -> Arc<dyn Codec> {
        Arc::new(Bincode)
    }

    fn exchange(&self) -> &str {
        &self.name
    }

    fn max_message_size(&self) -> usize {
        MAX_MESSAGE_SIZE
    }

    fn prefetch(&self) -> u16 {
        u16::MAX
    }

    fn publish(&self, out: Outgoing, done: Option<Settlement>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Relaxed) {
                return Err(Self::closed_error());
            }
            if let Some(delay) = out.delivery.delay.filter(|_| out.to_queue.is_none()) {
                // Held back, then routed: settled once accepted, as the
                // broker confirms a delayed event once its delay queue has it.
                let (hub, origin) = (self.hub.clone(), self.instance_id.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = hub.publish(&out, &origin, None).await;
                });
                self.counters.settled(&Ok(()));
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
                return Ok(());
            }
            let mandatory = out.delivery.mandatory == Some(true);
            let sent = match self.hub.publish(&out, &self.instance_id, None).await {
                Ok(0) if mandatory => Err(Error::new(
                    ErrorKind::Unroutable,
                    format!(
                        "no memory queue is bound to routing key {:?} and the event is mandatory",
                        out.routing_key
                    ),
                )),
                other => other.map(drop),
            };
            self.counters.settled(&sent);
            match (done, sent) {
                (Some(done), sent) => {
                    let _ = done.send(sent);
                }
                (None, Err(e)) => warn!(error = %e, "publishing an event failed"),
                (None, Ok(())) => {}
            }
            Ok(())
        })
    }

    fn request(
        &self,
        out: Outgoing,
        _ttl: Option<Duration>,
    ) -> BoxFuture<'_, Result<Box<dyn Replies>>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Relaxed) {
                return Err(Self::closed_error());
            }
            let id = self
                .replier
                .next_id
                .fetch_add(1, Ordering::Relaxed)
                .to_string();
            let (sender, replies) = mpsc::unbounded_channel();
            self.replier.lock().insert(id.clone(), sender);
            let replies = MemoryReplies {
                id: id.clone(),
                replier: self.replier.clone(),
                replies,
            };
            let reply_to = (format!("{REPLY_TO}{}", self.instance_id), id);
            // Mandatory: a request no queue takes fails at once.
            match self
                .hub
                .publish(&out, &self.instance_id, Some(reply_to))
                .await?
            {
                0 => Err(Error::new(
                    ErrorKind::Unroutable,
                    format!(
                        "no memory queue takes the request (routing key {:?})",
                        out.to_queue.as_deref().unwrap_or(&out.routing_key)
                    ),
                )),
                _ => {
                    let replies: Box<dyn Replies> = Box::new(replies);
                    Ok(replies)
                }
            }
        })
    }

    fn late_replies(&self) -> u64 {
        self.replier.late.load(Ordering::Relaxed)
    }

    fn listen<'a>(&'a self, listen: &'a Listen) -> BoxFuture<'a, Result<Box<dyn Inbox>>> {
        Box::pin(async move {
            let (name, bound) = match listen.mode() {
                Mode::Broadcast => (None, true),
                Mode::Group(group) => (Some(format!("{}.{group}", self.name)), true),
                Mode::Queue(name) | Mode::Service(name) => (Some(name.clone()), false),
                Mode::Stream(spec) => {
                    let label = format!("{}.{}", self.name, spec.name);
                    return Ok(memory_stream::listen(&self.hub, label, listen.keys(), spec));
                }
            };
            let queue = self.hub.queue(name.as_deref(), listen.keys(), bound);
            let service = matches!(listen.mode(), Mode::Service(_));
            if service {
                queue.consumers.fetch_add(1, Ordering::SeqCst);
            }
            let label = name.unwrap_or_else(|| format!("{}.{}", self.name, self.instance_id));
            let inbox: Box<dyn Inbox> = Box::new(MemoryInbox {
                label,
                owned: matches!(listen.mode(), Mode::Broadcast),
                service,
                queue,
                hub: self.hub.clone(),
            });
            Ok(inbox)
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async { Ok(0) })
    }

    fn abort(&self, _reason: &str) {}

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async {
            if !self.closed.swap(true, Ordering::Relaxed) {
                let _ = self.events.send(ConnectionEvent::Closed);
                self.hub
                    .repliers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&format!("{REPLY_TO}{}", self.instance_id));
                // Calls waiting now end: their transport is closed.
                self.replier.lock().clear();
            }
            Ok(())
        })
    }

    fn events(&self) -> ConnectionEvents {
        let receiver = self.events.subscribe();
        let first = (!self.closed.load(Ordering::Relaxed)).then(|| ConnectionEvent::Connected {
            address: format!("memory://{}", self.name),
        });
        ConnectionEvents::new(first, receiver)
    }

    fn counters(&self) -> &PublishCounters {
        &self.counters
    }
}

/// The messages of one memory queue.
struct MemoryInbox {
    label: String,
    /// A broadcast queue: it goes when the listener stops.
    owned: bool,
    /// A service queue: it goes when its last listener stops.
    service: bool,
    queue: Arc<MemoryQueue>,
    hub: Arc<Hub>,
}

impl Inbox for MemoryInbox {
    fn queue(&self) -> &str {
        &self.label
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Box<dyn Received>>> {
        Box::pin(async move {
            let message = self.queue.recv().await?;
            let received: Box<dyn Received> = Box::new(MemoryReceived {
                message,
                queue: self.queue.clone(),
            });
            Some(received)
        })
    }

    fn close(self: Box<Self>, _delete: bool) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let last = self.service && self.queue.consumers.fetch_sub(1, Ordering::SeqCst) == 1;
            if self.owned || last {
                self.hub.remove(&self.queue);
            }
            Ok(())
        })
    }
}

/// A received message with these contents, on a queue of its own (for
/// tests and benchmarks of the decode path).
pub(crate) fn test_message(
    body: Vec<u8>,
    content_type: &'static str,
    tag: &'static str,
    fingerprint: String,
) -> Box<dyn Received> {
    let hub = Hub::default();
    Box::new(MemoryReceived {
        message: Arc::new(Message {
            body: Arc::new(body),
            content_type: content_type.into(),
            content_encoding: None,
            tag,
            fingerprint,
            version: None,
            routing_key: "test".into(),
            message_id: "test-1".into(),
            origin: "elsewhere".into(),
            timestamp: 0,
            attempt: 1,
            headers: Vec::new(),
            reply_to: None,
            correlation_id: None,
        }),
        queue: hub.queue(None, &[], false),
    })
}

/// One message of a memory queue.
pub(crate) struct MemoryReceived {
    message: Arc<Message>,
    queue: Arc<MemoryQueue>,
}

impl MemoryReceived {
    /// `message`, retried through `queue`.
    pub(crate) fn new(message: Arc<Message>, queue: Arc<MemoryQueue>) -> Self {
        Self { message, queue }
    }
}

impl Received for MemoryReceived {
    fn body(&self) -> &[u8] {
        &self.message.body
    }

    fn content_type(&self) -> Option<&str> {
        Some(&self.message.content_type)
    }

    fn content_encoding(&self) -> Option<&str> {
        self.message.content_encoding.as_deref()
    }

    fn header(&self, name: &str) -> Header<'_> {
        match name {
            TAG_HEADER => Header::Text(self.message.tag),
            FINGERPRINT_HEADER => Header::Text(&self.message.fingerprint),
            VERSION_HEADER => self
                .message
                .version
                .as_deref()
                .map_or(Header::Absent, Header::Text),
            _ => self
                .message
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map_or(Header::Absent, |(_, value)| Header::Text(value)),
        }
    }

    fn visit_headers(&self, visit: &mut dyn FnMut(&str, Header<'_>)) {
        let message = &*self.message;
        visit(TAG_HEADER, Header::Text(message.tag));
        visit(FINGERPRINT_HEADER, Header::Text(&message.fingerprint));
        if let Some(version) = &message.version {
            visit(VERSION_HEADER, Header::Text(version));
        }
        for (name, value) in &message.headers {
            visit(name, Header::Text(value));
        }
    }

    fn routing_key(&self) -> &str {
        &self.message.routing_key
    }

    fn attempt(&self) -> u32 {
        self.message.attempt
    }

    fn message_id(&self) -> Option<&str> {
        Some(&self.message.message_id)
    }

    fn origin(&self) -> Option<&str> {
        Some(&self.message.origin)
    }

    fn timestamp(&self) -> Option<u64> {
        Some(self.message.timestamp)
    }

    fn redelivered(&self) -> bool {
        false
    }

    fn reply_to(&self) -> Option<&str> {
        self.message.reply_to.as_deref()
    }

    fn correlation_id(&self) -> Option<&str> {
        self.message.correlation_id.as_deref()
    }

    fn ack(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn retry(&self, attempt: u32, delay: Duration) -> BoxFuture<'_, Result<()>> {
        let (queue, next) = (self.queue.clone(), Arc::new(self.message.attempt(attempt)));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.requeue(next).await;
        });
        Box::pin(async { Ok(()) })
    }

    fn dead_letter<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<()>> {
        warn!(
            reason = letter.reason,
            error = letter.error,
            "memory transport: dead letter dropped"
        );
        Box::pin(async { Ok(()) })
    }

    fn requeue(&self) -> BoxFuture<'_, Result<()>> {
        let (queue, message) = (self.queue.clone(), self.message.clone());
        Box::pin(async move {
            queue.requeue(message).await;
            Ok(())
        })
    }

    fn reject(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// How many events wait in one memory queue before publishers wait too
/// (a group queue with no member fills up while events are published).
const QUEUE_CAPACITY: usize = 65_536;

/// One event in the hub, shared by every queue it is routed to.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) body: Arc<Vec<u8>>,
    pub(crate) content_type: Arc<str>,
    /// How the body is compressed, if it is.
    pub(crate) content_encoding: Option<Arc<str>>,
    pub(crate) tag: &'static str,
    pub(crate) fingerprint: String,
    /// The version, when it is not 1.
    pub(crate) version: Option<String>,
    pub(crate) routing_key: String,
    pub(crate) message_id: String,
    pub(crate) origin: String,
    pub(crate) timestamp: u64,
    pub(crate) attempt: u32,
    /// The application's and tidings' other headers.
    pub(crate) headers: Vec<(Cow<'static, str>, String)>,
    /// Where replies go, for a request.
    pub(crate) reply_to: Option<String>,
    /// The request's id, on it and on its replies.
    pub(crate) correlation_id: Option<String>,
}

impl Message {
    /// The same message, as delivery attempt `attempt`.
    fn attempt(&self, attempt: u32) -> Self {
        Self {
            body: self.body.clone(),
            content_type: self.content_type.clone(),
            content_encoding: self.content_encoding.clone(),
            fingerprint: self.fingerprint.clone(),
            version: self.version.clone(),
            routing_key: self.routing_key.clone(),
            message_id: self.message_id.clone(),
            origin: self.origin.clone(),
            attempt,
            headers: self.headers.clone(),
            reply_to: self.reply_to.clone(),
            correlation_id: self.correlation_id.clone(),
            ..*self
        }
    }
}

/// A queue of the hub: its bindings, and the channel its consumers share.
pub(crate) struct MemoryQueue {
    id: u64,
    name: Option<String>,
    bindings: Mutex<Vec<String>>,
    /// How many servers consume it (a service queue).
    consumers: AtomicUsize,
    sender: mpsc::Sender<Arc<Message>>,
    receiver: tokio::sync::Mutex<mpsc::Receiver<Arc<Message>>>,
}

impl MemoryQueue {
    /// The next message; consumers of one queue take turns.
    pub(crate) async fn recv(&self) -> Option<Arc<Message>> {
        self.receiver.lock().await.recv().await
    }

    /// Puts a message back in this queue (a retry).
    pub(crate) async fn requeue(&self, message: Arc<Message>) {
        let _ = self.sender.send(message).await;
    }

    fn routes(&self, routing_key: &str) -> bool {
        let bindings = self.bindings.lock().unwrap_or_else(|p| p.into_inner());
        bindings
            .iter()
            .any(|pattern| topic_matches(pattern, routing_key))
    }
}

#[derive(Default)]
pub(crate) struct Hub {
    queues: Mutex<Vec<Arc<MemoryQueue>>>,
    next_id: AtomicU64,
    /// Where replies go, by reply-to address (one per transport).
    repliers: Mutex<HashMap<String, Arc<Replier>>>,
    /// The streams, and their readers' offsets.
    pub(crate) streams: Streams,
}

type Waiters = HashMap<String, mpsc::UnboundedSender<Arc<Message>>>;

/// The calls of one memory transport waiting for replies.
#[derive(Default)]
struct Replier {
    waiters: Mutex<Waiters>,
    next_id: AtomicU64,
    late: AtomicU64,
}

impl Replier {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The replies to one memory request.
struct MemoryReplies {
    id: String,
    replier: Arc<Replier>,
    replies: mpsc::UnboundedReceiver<Arc<Message>>,
}

impl Replies for MemoryReplies {
    fn next(&mut self) -> BoxFuture<'_, Result<Box<dyn Received>>> {
        Box::pin(async move {
            let message = self.replies.recv().await.ok_or_else(|| {
                Error::new(
                    ErrorKind::ConnectionLost,
                    "the memory transport was closed while waiting for the reply",
                )
            })?;
            let hub = Hub::default();
            let received: Box<dyn Received> = Box::new(MemoryReceived {
                message,
                queue: hub.queue(None, &[], false),
            });
            Ok(received)
        })
    }
}

impl Drop for MemoryReplies {
    fn drop(&mut self) {
        self.replier.lock().remove(&self.id);
    }
}

static HUBS: LazyLock<Mutex<HashMap<String, Weak<Hub>>>> = LazyLock::new(Default::default);

impl Hub {
    /// The hub of this name, shared by every bus that names it.
    pub(crate) fn named(name: &str) -> Arc<Hub> {
        let mut hubs = HUBS.lock().unwrap_or_else(|p| p.into_inner());
        hubs.retain(|_, hub| hub.strong_count() > 0);
        if let Some(hub) = hubs.get(name).and_then(Weak::upgrade) {
            return hub;
        }
        let hub = Arc::new(Hub::default());
        hubs.insert(name.to_owned(), Arc::downgrade(&hub));
        hub
    }

    /// A queue bound with `keys` (everything when empty). A named queue is
    /// shared by everyone who names it and outlives its consumers; an
    /// unnamed one lives until [`remove`](Hub::remove).
    pub(crate) fn queue(
        &self,
        name: Option<&str>,
        keys: &[String],
        bound: bool,
    ) -> Arc<MemoryQueue> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<String> = match (bound, keys.is_empty()) {
            (false, _) => Vec::new(),
            (true, true) => vec!["#".to_owned()],
            (true, false) => keys.to_vec(),
        };
        if let Some(name) = name
            && let Some(queue) = queues.iter().find(|q| q.name.as_deref() == Some(name))
        {
            let mut bindings = queue.bindings.lock().unwrap_or_else(|p| p.into_inner());
            for key in keys {
                if !bindings.contains(&key) {
                    bindings.push(key);
                }
            }
            return queue.clone();
        }
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let queue = Arc::new(MemoryQueue {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name: name.map(str::to_owned),
            bindings: Mutex::new(keys),
            consumers: AtomicUsize::new(0),
            sender,
            receiver: tokio::sync::Mutex::new(receiver),
        });
        queues.push(queue.clone());
        queue
    }

    /// Deletes a queue (a broadcast listener that ended).
    pub(crate) fn remove(&self, queue: &MemoryQueue) {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|q| q.id != queue.id);
    }

    #[cfg(test)]
    pub(crate) fn queue_count(&self) -> usize {
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Routes an event to every queue bound to its routing key, or to the
    /// named queue, waiting while a queue is full; a request carries
    /// `reply` (where to, and its id). How many queues took it.
    pub(crate) async fn publish(
        &self,
        out: &Outgoing,
        origin: &str,
        reply: Option<(String, String)>,
    ) -> Result<usize> {
        let (reply_to, correlation_id) = match reply {
            Some((to, id)) => (Some(to), Some(id)),
            None => (None, out.correlation_id.clone()),
        };
        let message = Arc::new(Message {
            body: out.body.clone(),
            content_type: out.content_type.clone(),
            content_encoding: out.content_encoding.map(Arc::from),
            tag: out.tag,
            fingerprint: out.fingerprint.to_string(),
            version: (out.version != 1).then(|| out.version.to_string()),
            routing_key: out.routing_key.to_string(),
            message_id: out.message_id.clone(),
            origin: origin.to_owned(),
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            attempt: 1,
            headers: out.headers.clone(),
            reply_to,
            correlation_id,
        });
        if let Some(to) = out
            .to_queue
            .as_deref()
            .filter(|to| to.starts_with(REPLY_TO))
        {
            let replier = self
                .repliers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(to)
                .cloned();
            if let Some(replier) = replier {
                let id = message.correlation_id.as_deref().unwrap_or("");
                let waiter = replier.lock().get(id).cloned();
                match waiter {
                    Some(waiter) if waiter.send(message).is_ok() => {}
                    _ => {
                        replier.late.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Like RabbitMQ: a reply to a caller that is gone vanishes.
            return Ok(1);
        }
        let targets: Vec<Arc<MemoryQueue>> = {
            let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            match &out.to_queue {
                Some(name) => queues
                    .iter()
                    .filter(|q| q.name.as_deref() == Some(name.as_str()))
                    .cloned()
                    .collect(),
                None => queues
                    .iter()
                    .filter(|q| q.routes(&out.routing_key))
                    .cloned()
                    .collect(),
            }
        };
        if let (Some(name), true) = (&out.to_queue, targets.is_empty()) {
            return Err(Error::new(
                ErrorKind::Unroutable,
                format!("no memory queue named {name:?}; a listener must declare it first"),
            ));
        }
        let mut taken = targets.len();
        if out.to_queue.is_none() {
            taken += self.streams.append(&message);
        }
        for queue in targets {
            let _ = queue.sender.send(message.clone()).await;
        }
        Ok(taken)
    }
}

/// AMQP topic matching: words split on `.`, `*` is one word, `#` zero or
/// more.
pub(crate) fn topic_matches(pattern: &str, key: &str) -> bool {
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| matches(rest, &key[skip..])),
            Some((&word, rest)) => key.split_first().is_some_and(|(&first, tail)| {
                (word == "*" || word == first) && matches(rest, tail)
            }),
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    matches(&pattern, &key)
}

/// Parses `memory://name`.
pub(crate) fn parse_url(url: &str) -> Result<&str> {
    match url.strip_prefix("memory://") {
        Some(name) if !name.is_empty() && !name.contains(['/', '?']) => Ok(name),
        _ => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("invalid memory URL {url:?}; write memory://<name>"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_broadcast_inbox_leaves_no_queue_behind() {
        let transport = MemoryTransport::named("inbox-close");
        let group = transport.listen(&Listen::group("kept")).await.unwrap();
        let broadcast = transport.listen(&Listen::broadcast()).await.unwrap();
        assert_eq!(transport.hub.queue_count(), 2);
        broadcast.close(false).await.unwrap();
        group.close(false).await.unwrap();
        assert_eq!(
            transport.hub.queue_count(),
            1,
            "the group queue stays for other members, the broadcast one goes"
        );
    }

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        assert!(topic_matches("orders.*", "orders.placed"));
        assert!(!topic_matches("orders.*", "orders.eu.placed"));
        assert!(!topic_matches("orders.*", "orders"));
        assert!(topic_matches("orders.#", "orders"));
        assert!(topic_matches("orders.#", "orders.eu.placed"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches("#.placed", "orders.eu.placed"));
        assert!(topic_matches("orders.placed", "orders.placed"));
        assert!(!topic_matches("orders.placed", "orders.shipped"));
        assert!(topic_matches("*.*.placed", "orders.eu.placed"));
    }
}
