//! Streams of the in-memory transport: a log per stream name in the hub,
//! appended to by publishes routed to it and read by every stream
//! listener from its own position. Offsets are kept in the hub by
//! consumer name, saved when a listener stops (a process has no crash to
//! survive); retention is not modelled: a hub's log grows while it lives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use tokio::sync::Notify;

use super::lock;
use super::memory::{Hub, MemoryQueue, MemoryReceived, Message, topic_matches};
use super::seam::{BoxFuture, Inbox, Received};
use crate::error::Result;
use crate::runtime::now_or_never;
use crate::transport::replay::{StreamSpec, StreamStart};

/// One stream of a hub.
#[derive(Default)]
pub(crate) struct MemoryStream {
    bindings: Mutex<Vec<String>>,
    log: Mutex<Vec<Arc<Message>>>,
    appended: Notify,
}

/// The streams of a hub and their readers' saved offsets.
#[derive(Default)]
pub(crate) struct Streams {
    streams: Mutex<HashMap<String, Arc<MemoryStream>>>,
    /// By stream and consumer: the next offset to read.
    saved: Mutex<HashMap<(String, String), usize>>,
}

impl Streams {
    /// The stream `name`, bound (also) with `keys`, everything when empty.
    fn stream(&self, name: &str, keys: &[String]) -> Arc<MemoryStream> {
        let stream = lock(&self.streams)
            .entry(name.to_owned())
            .or_default()
            .clone();
        let mut bindings = lock(&stream.bindings);
        let keys = if keys.is_empty() {
            vec!["#".to_owned()]
        } else {
            keys.to_vec()
        };
        for key in keys {
            if !bindings.contains(&key) {
                bindings.push(key);
            }
        }
        drop(bindings);
        stream
    }

    /// Appends `message` to every stream bound to its routing key; how many.
    pub(crate) fn append(&self, message: &Arc<Message>) -> usize {
        // Under the map's lock (nothing awaits): no copy of it per publish.
        let streams = lock(&self.streams);
        let mut taken = 0;
        for stream in streams.values() {
            let routes = lock(&stream.bindings)
                .iter()
                .any(|pattern| topic_matches(pattern, &message.routing_key));
            if routes {
                lock(&stream.log).push(message.clone());
                stream.appended.notify_waiters();
                taken += 1;
            }
        }
        taken
    }
}

/// Starts reading the stream of `spec` on `hub`, bound with `keys`.
pub(crate) fn listen(
    hub: &Arc<Hub>,
    label: String,
    keys: &[String],
    spec: &StreamSpec,
) -> Box<dyn Inbox> {
    let stream = hub.streams.stream(&label, keys);
    let saved = spec.consumer.as_ref().and_then(|c| {
        lock(&hub.streams.saved)
            .get(&(label.clone(), c.clone()))
            .copied()
    });
    let position = saved.unwrap_or_else(|| {
        let log = lock(&stream.log);
        match spec.start {
            StreamStart::Beginning => 0,
            StreamStart::Now => log.len(),
            StreamStart::Offset(offset) => usize::try_from(offset).unwrap_or(usize::MAX),
            StreamStart::Time(time) => {
                let since = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
                log.iter()
                    .position(|m| sent_at(m).is_none_or(|at| at >= since))
                    .unwrap_or(log.len())
            }
        }
    });
    Box::new(MemoryStreamInbox {
        retries: hub.queue(None, &[], false),
        hub: hub.clone(),
        label,
        consumer: spec.consumer.clone(),
        stream,
        position,
    })
}

/// When a message was sent, in microseconds, by its `x-tidings-sent-at`.
fn sent_at(message: &Message) -> Option<u128> {
    message
        .headers
        .iter()
        .find(|(name, _)| name == crate::headers::SENT_AT_HEADER)
        .and_then(|(_, at)| at.parse().ok())
}

/// One stream listener on the memory transport.
struct MemoryStreamInbox {
    hub: Arc<Hub>,
    label: String,
    consumer: Option<String>,
    stream: Arc<MemoryStream>,
    /// The next offset to read.
    position: usize,
    /// Failed events come back here after their delay.
    retries: Arc<MemoryQueue>,
}

impl Inbox for MemoryStreamInbox {
    fn queue(&self) -> &str {
        &self.label
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Box<dyn Received>>> {
        Box::pin(async move {
            loop {
                let appended = self.stream.appended.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                // A retry that is due goes first.
                if let Some(retry) = now_or_never(self.retries.recv()) {
                    let received: Box<dyn Received> =
                        Box::new(MemoryReceived::new(retry?, self.retries.clone()));
                    return Some(received);
                }
                let next = lock(&self.stream.log).get(self.position).cloned();
                let message = match next {
                    Some(message) => {
                        self.position += 1;
                        message
                    }
                    None => tokio::select! {
                        () = appended => continue,
                        retry = self.retries.recv() => retry?,
                    },
                };
                let received: Box<dyn Received> =
                    Box::new(MemoryReceived::new(message, self.retries.clone()));
                return Some(received);
            }
        })
    }

    fn close(self: Box<Self>, _delete: bool) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if let Some(consumer) = &self.consumer {
                lock(&self.hub.streams.saved)
                    .insert((self.label.clone(), consumer.clone()), self.position);
            }
            self.hub.remove(&self.retries);
            Ok(())
        })
    }
}
