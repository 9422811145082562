//! The in-memory transport: `memory://name` buses in one process share a
//! hub that broadcasts every event to each of them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::Outgoing;
use crate::error::{Error, ErrorKind, Result};

/// How many events wait for one memory bus before publishers wait too.
const QUEUE_CAPACITY: usize = 1024;

/// One event in the hub, shared by every receiving bus.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: &'static str,
    pub(crate) tag: &'static str,
    pub(crate) fingerprint: String,
    pub(crate) routing_key: &'static str,
    pub(crate) message_id: String,
    pub(crate) origin: String,
    pub(crate) timestamp: u64,
}

#[derive(Default)]
pub(crate) struct Hub {
    queues: Mutex<Vec<mpsc::Sender<Arc<Message>>>>,
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

    /// A queue that receives every event published from now on.
    pub(crate) fn subscribe(&self) -> mpsc::Receiver<Arc<Message>> {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sender);
        receiver
    }

    /// Delivers to every queue, waiting while one is full.
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
            routing_key: out.routing_key,
            message_id: out.message_id.clone(),
            origin: origin.to_owned(),
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for queue in queues {
            // A closed queue belongs to a bus that is gone.
            let _ = queue.send(message.clone()).await;
        }
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|q| !q.is_closed());
        Ok(())
    }
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
