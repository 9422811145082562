//! The in-memory transport: `memory://name` buses in one process share a
//! hub of queues, routed like a topic exchange.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::Outgoing;
use crate::error::{Error, ErrorKind, Result};

/// How many events wait in one memory queue before publishers wait too
/// (a group queue with no member fills up while events are published).
const QUEUE_CAPACITY: usize = 65_536;

/// One event in the hub, shared by every queue it is routed to.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: &'static str,
    pub(crate) tag: &'static str,
    pub(crate) fingerprint: String,
    pub(crate) routing_key: String,
    pub(crate) message_id: String,
    pub(crate) origin: String,
    pub(crate) timestamp: u64,
    pub(crate) attempt: u32,
}

impl Message {
    /// The same message, for its next delivery attempt.
    pub(crate) fn next_attempt(&self) -> Self {
        Self {
            body: self.body.clone(),
            fingerprint: self.fingerprint.clone(),
            routing_key: self.routing_key.clone(),
            message_id: self.message_id.clone(),
            origin: self.origin.clone(),
            attempt: self.attempt + 1,
            ..*self
        }
    }
}

/// A queue of the hub: its bindings, and the channel its consumers share.
pub(crate) struct MemoryQueue {
    id: u64,
    name: Option<String>,
    bindings: Mutex<Vec<String>>,
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
    /// named queue, waiting while a queue is full.
    pub(crate) async fn publish(
        &self,
        out: &Outgoing,
        content_type: &'static str,
        origin: &str,
    ) -> Result<()> {
        let message = Arc::new(Message {
            body: out.body.clone(),
            content_type,
            tag: out.tag,
            fingerprint: out.fingerprint.to_string(),
            routing_key: out.routing_key.to_owned(),
            message_id: out.message_id.clone(),
            origin: origin.to_owned(),
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            attempt: 1,
        });
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
                    .filter(|q| q.routes(out.routing_key))
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
        for queue in targets {
            let _ = queue.sender.send(message.clone()).await;
        }
        Ok(())
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
    use super::topic_matches;

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
