//! `Listener`: one queue a bus consumes, its dispatch loop, and the
//! settlement of each delivery (ack, retry, dead letter).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::codec::{Codecs, JSON_CONTENT_TYPE};
use crate::context::Context;
use crate::error::Result;
use crate::event::{Event, Fingerprint, registered_events};
use crate::headers::{FINGERPRINT_HEADER, TAG_HEADER};
use crate::listen::{Listen, Mode};
use crate::recovery::Backoff;
use crate::stats::{Counters, RejectReason};
use crate::subscribers::Subscribers;
use crate::transport::seam::{DeadLetter, Header, Inbox, Received, Transport};

/// The longest a retry waits.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// How deliveries are settled and handled; set on the
/// [`BusBuilder`](crate::BusBuilder).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) self_delivery: bool,
    pub(crate) dedup_window: usize,
    pub(crate) max_attempts: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) concurrency: usize,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) unknown_events: UnknownEvents,
    /// Every publish mandatory: unroutable ones fail instead of vanishing.
    pub(crate) mandatory: bool,
    /// The dead-letter queue's limits: messages, bytes.
    pub(crate) dead_letter_limits: (u64, u64),
}

/// **What a bus does with an event of a type this process does not know**
/// (no type registered under its tag), set with
/// [`BusBuilder::unknown_events`](crate::BusBuilder::unknown_events).
///
/// On a fanout exchange every listener receives every type, so during a
/// rolling deploy old instances see the new types of new ones: that is not
/// an error, and by default such an event is acknowledged and counted
/// ([`Stats::unknown_events`](crate::Stats::unknown_events), by tag in
/// [`Bus::unknown_events`](crate::Bus::unknown_events)), and its tag is
/// logged once, at INFO. What cannot be decoded at all is dead-lettered
/// either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownEvents {
    /// Acknowledge and count it (the default).
    #[default]
    Acknowledge,
    /// Dead-letter it with the reason `unknown_tag`, as poison.
    DeadLetter,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            self_delivery: true,
            dedup_window: 10_000,
            max_attempts: 5,
            retry_delay: Duration::from_secs(1),
            concurrency: 1,
            handler_timeout: None,
            unknown_events: UnknownEvents::Acknowledge,
            mandatory: false,
            dead_letter_limits: (
                crate::connection::DEAD_LETTER_MAX_MESSAGES,
                crate::connection::DEAD_LETTER_MAX_BYTES,
            ),
        }
    }
}

impl Settings {
    /// The delay before attempt `attempt + 1`: doubling, capped.
    fn retry_delay(&self, attempt: u32) -> Duration {
        let backoff = Backoff {
            min: self.retry_delay,
            max: MAX_RETRY_DELAY,
        };
        backoff.ceiling(attempt)
    }
}

/// What a message must pass to be decoded.
pub(crate) struct Decoder {
    codecs: Codecs,
    max_message_size: usize,
}

impl Decoder {
    pub(crate) fn new(codecs: Codecs, max_message_size: usize) -> Self {
        Self {
            codecs,
            max_message_size,
        }
    }
}

/// The message ids handled lately, oldest first out.
///
/// Each id is kept as a 128-bit key made of two independently, randomly
/// keyed SipHashes of it, computed once per event outside the lock: no
/// allocation per id, and a wrong match (which would drop an event as a
/// duplicate) needs a 128-bit collision that the sender cannot aim for
/// without the random keys.
#[derive(Default)]
pub(crate) struct Recent {
    hashers: (RandomState, RandomState),
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    keys: HashSet<u128, BuildHasherDefault<KeyHasher>>,
    order: VecDeque<u128>,
}

impl Recent {
    /// The key of a message: its publisher and its id, so that a foreign
    /// publisher reusing an id cannot suppress another's events.
    fn key(&self, origin: &str, id: &str) -> u128 {
        let key = (origin, id);
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, key: u128) -> bool {
        self.window().keys.contains(&key)
    }

    fn remember(&self, key: u128, size: usize) {
        let mut window = self.window();
        if size == 0 || !window.keys.insert(key) {
            return;
        }
        window.order.push_back(key);
        while window.order.len() > size {
            if let Some(oldest) = window.order.pop_front() {
                window.keys.remove(&oldest);
            }
        }
    }
}

/// Hashes a key that is a keyed hash already: its low 64 bits.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, key: u128) {
        // Truncation intended: the low half of a keyed hash.
        #[allow(clippy::cast_possible_truncation)]
        let low = key as u64;
        self.0 = low;
    }
}

/// What every listener of one bus shares.
pub(crate) struct Shared {
    pub(crate) recent: Recent,
    pub(crate) decoder: Decoder,
    pub(crate) subscribers: Subscribers,
    pub(crate) counters: Arc<Counters>,
    pub(crate) instance_id: String,
    pub(crate) settings: Settings,
    pub(crate) transport: Arc<dyn Transport>,
}

/// **One way a [`Bus`](crate::Bus) listens**, returned by
/// [`Bus::listen`](crate::Bus::listen): a queue consumed until the listener
/// is [cancelled](Listener::cancel) or the bus closes.
#[derive(Clone)]
pub struct Listener {
    state: Arc<State>,
}

struct State {
    queue: String,
    /// Whether the queue belongs to this listener alone (broadcast), so
    /// cancelling deletes it and its bindings.
    owned: bool,
    stop: watch::Sender<Stop>,
    task: Mutex<Option<JoinHandle<Result<()>>>>,
}

/// What the dispatch loop is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// Stop; the queue stays (bus closed, or a shared queue cancelled).
    Keep,
    /// Stop and delete the queue (a broadcast listener cancelled).
    Delete,
}

impl Listener {
    pub(crate) async fn start(shared: Arc<Shared>, listen: &Listen) -> Result<Self> {
        let owned = matches!(listen.mode(), Mode::Broadcast);
        let inbox = shared.transport.listen(listen).await?;
        let queue = inbox.queue().to_owned();
        let (stop, stopped) = watch::channel(Stop::Running);
        let span = info_span!("listener", instance = %shared.instance_id, queue = %queue);
        let task = tokio::spawn(run(shared, inbox, stopped).instrument(span));
        Ok(Self {
            state: Arc::new(State {
                queue,
                owned,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// The queue consumed.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.state.queue
    }

    /// **Stops listening** while the bus goes on: the handlers running now
    /// finish, no new one starts, the consumer is cancelled (deliveries
    /// received and not handled go back to the queue, for other members),
    /// and a broadcast queue is deleted with its bindings and retry queues.
    /// A group or named queue stays, with what it holds, for the other
    /// members.
    ///
    /// Cancel safe, and safe to call twice: the listener stops either way.
    ///
    /// # Errors
    ///
    /// The broker's refusal to delete the queue.
    pub async fn cancel(&self) -> Result<()> {
        let how = if self.state.owned {
            Stop::Delete
        } else {
            Stop::Keep
        };
        self.finish(how).await
    }

    /// Tells the loop to stop, without waiting.
    pub(crate) fn request_stop(&self) {
        self.state.stop.send_if_modified(|stop| {
            let running = *stop == Stop::Running;
            if running {
                *stop = Stop::Keep;
            }
            running
        });
    }

    /// Stops the dispatch loop and waits for it (the queue stays).
    pub(crate) async fn stop(&self) {
        let _ = self.finish(Stop::Keep).await;
    }

    async fn finish(&self, how: Stop) -> Result<()> {
        self.state.stop.send_if_modified(|stop| {
            let first = *stop == Stop::Running;
            if first {
                *stop = how;
            }
            first
        });
        let task = self
            .state
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match task {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("queue", &self.state.queue)
            .finish_non_exhaustive()
    }
}

/// Deliveries acknowledged together, at most: one `multiple` ack for this
/// many handled deliveries (or half the prefetch, if less).
const ACK_BATCH: usize = 64;
/// How long handled deliveries wait for others to be acknowledged with,
/// once none is waiting. Acks do not delay handlers; they only hold
/// prefetch room and, on a crash, make the broker redeliver (the dedup
/// window drops those).
const ACK_DELAY: Duration = Duration::from_millis(2);

/// Handled deliveries not yet acknowledged, acknowledged together with
/// `multiple` (deliveries of one listener are settled in order when it
/// handles one at a time, so every one before the last is settled).
struct AckBatch {
    last: Option<Box<dyn Received>>,
    count: usize,
    limit: usize,
}

impl AckBatch {
    fn new(prefetch: u16) -> Self {
        Self {
            last: None,
            count: 0,
            limit: ACK_BATCH.min(usize::from(prefetch / 2)).max(1),
        }
    }

    async fn add(&mut self, shared: &Shared, incoming: Box<dyn Received>) {
        self.last = Some(incoming);
        self.count += 1;
        if self.count >= self.limit {
            self.flush(shared).await;
        }
    }

    async fn flush(&mut self, shared: &Shared) {
        self.count = 0;
        if let Some(last) = self.last.take() {
            shared.settled(last.ack_through().await);
        }
    }
}

/// Receives until stopped, handling up to `concurrency` deliveries at once.
async fn run(
    shared: Arc<Shared>,
    mut source: Box<dyn Inbox>,
    mut stopped: watch::Receiver<Stop>,
) -> Result<()> {
    let mut running = JoinSet::new();
    let mut batch = AckBatch::new(shared.transport.prefetch());
    loop {
        while running.len() >= shared.settings.concurrency {
            running.join_next().await;
        }
        // Deliveries already here are handled back to back: give the
        // runtime's other tasks their turn now and then.
        tokio::task::consume_budget().await;
        // Stop means stop: deliveries already here are not started; they
        // go back to the queue when the consumer is cancelled.
        if *stopped.borrow() != Stop::Running {
            break;
        }
        let next = match now_or_never(source.next()) {
            Some(next) => next,
            None if batch.last.is_some() => {
                // Nothing waiting: acks go after a short while, or with the
                // next deliveries if they come first.
                let waited = tokio::select! {
                    biased;
                    _ = stopped.wait_for(|stop| *stop != Stop::Running) => break,
                    next = source.next() => Some(next),
                    () = tokio::time::sleep(ACK_DELAY) => None,
                };
                match waited {
                    Some(next) => next,
                    None => {
                        batch.flush(&shared).await;
                        continue;
                    }
                }
            }
            None => tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop != Stop::Running) => break,
                next = source.next() => next,
            },
        };
        let Some(incoming) = next else { break };
        if shared.settings.concurrency == 1 {
            if let Outcome::Ack = shared.handle(&*incoming).await {
                batch.add(&shared, incoming).await;
            }
        } else {
            let shared = shared.clone();
            running.spawn(async move {
                if let Outcome::Ack = shared.handle(&*incoming).await {
                    shared.settled(incoming.ack().await);
                }
            });
        }
    }
    batch.flush(&shared).await;
    while running.join_next().await.is_some() {}
    let delete = *stopped.borrow() == Stop::Delete;
    source.close(delete).await
}

/// The output of `future` if it is ready at its first poll.
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// The tag of a JSON event body, `{"<tag>": ...}`; `None` for any other
/// body.
fn json_tag(body: &[u8]) -> Option<&str> {
    #[derive(serde::Deserialize)]
    struct Wrapper<'a>(#[serde(borrow)] std::collections::BTreeMap<&'a str, serde::de::IgnoredAny>);
    let Wrapper(map) = serde_json::from_slice::<Wrapper<'_>>(body).ok()?;
    match map.len() {
        1 => map.into_keys().next(),
        _ => None,
    }
}

/// The longest text from the wire that goes into a log line or a header.
const TEXT_MAX: usize = 1024;

/// `text` cut to at most [`TEXT_MAX`] bytes (at a character boundary),
/// marked when cut: text from the wire can be as large as a frame.
pub(crate) fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= TEXT_MAX {
        return text.into();
    }
    let mut end = TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}

/// What is left to do with a delivery once handled.
enum Outcome {
    /// Acknowledge it (perhaps with others).
    Ack,
    /// It was settled already (retried, dead-lettered or requeued).
    Settled,
}

impl Shared {
    async fn handle(&self, incoming: &dyn Received) -> Outcome {
        Counters::add(&self.counters.delivered);
        let event = match self.decode(incoming) {
            Ok(event) => event,
            Err((RejectReason::UnknownTag, _))
                if self.settings.unknown_events == UnknownEvents::Acknowledge =>
            {
                let tag = match incoming.header(TAG_HEADER) {
                    Header::Text(tag) => tag,
                    _ => "",
                };
                if self.counters.unknown(tag) {
                    info!(tag = %bounded(tag), "events of a type this process does not know arrive; acknowledging and counting them (logged once per tag)");
                }
                return Outcome::Ack;
            }
            Err((reason, detail)) => {
                let detail = bounded(&detail);
                warn!(reason = %reason, message_id = %bounded(incoming.message_id().unwrap_or("")), "{detail}; message rejected");
                self.counters.reject(reason);
                let letter = DeadLetter::new(reason.as_str(), &detail);
                // One copy of an oversized body is enough.
                let letter = if reason == RejectReason::TooLarge {
                    letter.without_body()
                } else {
                    letter
                };
                self.dead_letter(incoming, letter).await;
                return Outcome::Settled;
            }
        };
        if !self.settings.self_delivery && incoming.origin() == Some(self.instance_id.as_str()) {
            Counters::add(&self.counters.own_skipped);
            return Outcome::Ack;
        }
        // No copy of the id, one hash of it per event, and no lock at all
        // when dedup is off.
        let dedup_key = incoming
            .message_id()
            .filter(|_| self.settings.dedup_window > 0)
            .map(|id| self.recent.key(incoming.origin().unwrap_or(""), id));
        if let Some(key) = dedup_key
            && self.recent.contains(key)
        {
            Counters::add(&self.counters.deduplicated);
            return Outcome::Ack;
        }
        let context = Context::remote(
            incoming.routing_key(),
            incoming.message_id(),
            incoming.origin(),
            incoming.timestamp(),
            incoming.redelivered(),
            incoming.attempt(),
        );
        let started = Instant::now();
        let dispatching = self.subscribers.dispatch(&event, &context);
        let dispatch = match self.settings.handler_timeout {
            None => Some(dispatching.await),
            // A sync handler cannot be interrupted: one that overran is
            // failed when it returns.
            Some(limit) => tokio::time::timeout(limit, dispatching)
                .await
                .ok()
                .filter(|_| started.elapsed() <= limit),
        };
        Counters::add(&self.counters.dispatched);
        let Some(dispatch) = dispatch else {
            let limit = self.settings.handler_timeout.unwrap_or_default();
            let error = format!("handlers did not finish within {limit:?}");
            Counters::add(&self.counters.handler_timeouts);
            Counters::add(&self.counters.handler_failures);
            warn!(tag = event.tag(), message_id = %bounded(incoming.message_id().unwrap_or("")), attempt = incoming.attempt(), error = %error, "event handlers timed out");
            self.settle_failure(incoming, &event, error).await;
            return Outcome::Settled;
        };
        if dispatch.is_ok() {
            Counters::add(&self.counters.handled);
            // Remembered once handled: a failed attempt must come back.
            if let Some(key) = dedup_key {
                self.recent.remember(key, self.settings.dedup_window);
            }
            return Outcome::Ack;
        }
        for _ in dispatch.failures() {
            Counters::add(&self.counters.handler_failures);
        }
        // Each failure was logged with the tag, message id and attempt.
        let error = bounded(&dispatch.failures().join("; ")).into_owned();
        self.settle_failure(incoming, &event, error).await;
        Outcome::Settled
    }

    /// Retries a delivery whose handlers failed, or dead-letters it after
    /// the last attempt.
    async fn settle_failure(&self, incoming: &dyn Received, event: &Arc<dyn Event>, error: String) {
        let attempt = incoming.attempt();
        let message_id = bounded(incoming.message_id().unwrap_or(""));
        if attempt >= self.settings.max_attempts {
            warn!(tag = event.tag(), message_id = %message_id, attempt, error = %error, "handlers failed on the last attempt; dead-lettering");
            return self
                .dead_letter(incoming, DeadLetter::new("handler_failed", &error))
                .await;
        }
        let delay = self.settings.retry_delay(attempt);
        debug!(tag = event.tag(), message_id = %message_id, attempt, delay = ?delay, "retrying after a delay");
        Counters::add(&self.counters.retried);
        match incoming.retry(attempt + 1, delay).await {
            Ok(()) => self.settled(incoming.ack().await),
            Err(e) => {
                warn!(error = %e, tag = event.tag(), message_id = %message_id, "parking a failed delivery for retry failed; requeueing it");
                if let Err(e) = incoming.requeue().await {
                    warn!(error = %e, "requeueing a delivery failed");
                }
            }
        }
    }

    /// Logs a failed acknowledgement.
    fn settled(&self, acked: Result<()>) {
        match acked {
            Ok(()) => {}
            // The channel went with a lost connection: the broker delivers
            // the event again, and the dedup window recognises it.
            Err(e) if e.is_closed() || e.is_connect() => {
                debug!(error = %e, "acknowledging after the channel was lost; the broker will redeliver");
            }
            Err(e) => warn!(error = %e, "acknowledging an event failed"),
        }
    }

    /// Sends a message to the dead letters, then acks it; if that fails,
    /// rejects it (the transport drops it), counts it and says so.
    async fn dead_letter(&self, incoming: &dyn Received, letter: DeadLetter<'_>) {
        Counters::add(&self.counters.dead_lettered);
        match incoming.dead_letter(letter).await {
            Ok(()) => self.settled(incoming.ack().await),
            Err(e) => {
                Counters::add(&self.counters.dead_letters_dropped);
                error!(error = %e, reason = letter.reason, message_id = %bounded(incoming.message_id().unwrap_or("")), "dead-lettering failed (is the dead-letter queue full?); the message is dropped");
                if let Err(e) = incoming.reject().await {
                    warn!(error = %e, "rejecting a message failed");
                }
            }
        }
    }

    /// Checks and decodes one message; says why when it cannot.
    fn decode(&self, incoming: &dyn Received) -> Result<Arc<dyn Event>, (RejectReason, String)> {
        let body = incoming.body();
        if body.len() > self.decoder.max_message_size {
            return Err((
                RejectReason::TooLarge,
                format!(
                    "body of {} bytes exceeds the maximum message size of {}",
                    body.len(),
                    self.decoder.max_message_size
                ),
            ));
        }
        let codec = self
            .decoder
            .codecs
            .for_content_type(incoming.content_type())
            .map_err(|e| (RejectReason::ContentType, e.to_string()))?;
        let tag = match incoming.header(TAG_HEADER) {
            Header::Text(tag) => tag,
            Header::Absent => {
                return Err((RejectReason::MissingTag, format!("no {TAG_HEADER} header")));
            }
            Header::WrongType => {
                return Err((
                    RejectReason::BadHeader,
                    format!("{TAG_HEADER} header is not a string"),
                ));
            }
        };
        if tag.len() > 255 {
            return Err((
                RejectReason::BadHeader,
                format!(
                    "{TAG_HEADER} header of {} bytes is longer than any event tag (255 bytes at most)",
                    tag.len()
                ),
            ));
        }
        let Some(registered) = registered_events().ok().and_then(|events| events.get(tag)) else {
            return Err((
                RejectReason::UnknownTag,
                format!("unknown event tag {tag:?}: no such event type in this process"),
            ));
        };
        let theirs = match incoming.header(FINGERPRINT_HEADER) {
            Header::Text(text) => text.parse::<Fingerprint>().ok(),
            Header::Absent => None,
            Header::WrongType => {
                return Err((
                    RejectReason::BadHeader,
                    format!("{FINGERPRINT_HEADER} header is not a string"),
                ));
            }
        };
        let ours = registered.fingerprint();
        let mismatch = theirs != Some(ours);
        if mismatch {
            Counters::add(&self.counters.fingerprint_mismatches);
            let theirs = theirs.map_or_else(|| "none".to_owned(), |f| f.to_string());
            // bincode is not self-describing: a different shape would be
            // misread silently, so it is refused outright.
            if codec.content_type() != JSON_CONTENT_TYPE {
                return Err((
                    RejectReason::FingerprintMismatch,
                    format!(
                        "event {tag:?} has schema fingerprint {theirs}, this process has {ours}; the types differ"
                    ),
                ));
            }
            warn!(tag, theirs = %theirs, ours = %ours, message_id = incoming.message_id().unwrap_or(""), "schema fingerprints differ; decoding the JSON anyway");
        }
        let event: Box<dyn Event> = codec.decode(body).map_err(|e| {
            // Only a body that is an event of this tag can differ by schema.
            let reason = if mismatch && json_tag(body) == Some(tag) {
                RejectReason::FingerprintMismatch
            } else {
                RejectReason::Decode
            };
            (reason, format!("event {tag:?}: {e}"))
        })?;
        if event.tag() != tag {
            return Err((
                RejectReason::TagMismatch,
                format!(
                    "body holds event {:?} but the {TAG_HEADER} header says {tag:?}",
                    event.tag()
                ),
            ));
        }
        Ok(Arc::from(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_are_bounded_by_the_window() {
        let recent = Recent::default();
        let key = |id| recent.key("origin", id);
        for id in ["a", "b", "c", "b"] {
            recent.remember(key(id), 2);
        }
        assert!(!recent.contains(key("a")), "the oldest id left the window");
        assert!(recent.contains(key("b")) && recent.contains(key("c")));
        assert_eq!(recent.window().order.len(), 2);
        recent.remember(key("d"), 0);
        assert!(
            !recent.contains(key("d")),
            "a zero window remembers nothing"
        );
    }

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let settings = Settings {
            retry_delay: Duration::from_secs(1),
            ..Settings::default()
        };
        let delays: Vec<u64> = (1..=4).map(|a| settings.retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(settings.retry_delay(40), MAX_RETRY_DELAY);
    }
}

/// Feeds the whole receive-side decode path with malformed input: valid
/// encodings mutated (bit flips, truncation, inserted length prefixes that
/// claim huge sizes) and random bytes, under both codecs and with right,
/// wrong and missing headers. Nothing may panic or abort; everything must
/// come back as an event or a reason.
#[cfg(test)]
mod fuzz {
    use std::sync::Arc;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::codec::{Bincode, Codec, Json};
    use crate::event::EventType;
    use crate::transport::memory::{Hub, MemoryTransport};

    #[derive(crate::Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[event(name = "fuzz.order")]
    struct Order {
        id: u64,
        customer: String,
        lines: Vec<(String, u32)>,
        note: Option<String>,
        state: State,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    enum State {
        Open,
        Closed { reason: String },
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
        }
    }

    fn shared() -> Shared {
        Shared {
            recent: Recent::default(),
            decoder: Decoder::new(Codecs::new(Arc::new(Bincode)), 64 * 1024),
            subscribers: Subscribers::new(),
            counters: Arc::default(),
            instance_id: "fuzz".to_owned(),
            settings: Settings::default(),
            transport: Arc::new(MemoryTransport::named("fuzz")),
        }
    }

    fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
        let mut bytes = valid.to_vec();
        match rng.below(5) {
            0 => {
                for _ in 0..=rng.below(3) {
                    let i = rng.below(bytes.len());
                    if let Some(b) = bytes.get_mut(i) {
                        *b ^= 1 << rng.below(8);
                    }
                }
            }
            1 => bytes.truncate(rng.below(bytes.len())),
            2 => {
                // A varint length prefix claiming up to 2^64 bytes.
                let at = rng.below(bytes.len() + 1);
                let mut bomb = vec![[0xFB, 0xFC, 0xFD][rng.below(3)]];
                bomb.extend_from_slice(&rng.next().to_le_bytes());
                bytes.splice(at..at, bomb);
            }
            3 => bytes = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            _ => bytes.extend((0..=rng.below(8)).map(|_| rng.next() as u8)),
        }
        bytes
    }

    #[tokio::test]
    async fn a_stopped_broadcast_listener_leaves_no_memory_queue_behind() {
        let shared = Arc::new(Shared {
            transport: Arc::new(MemoryTransport::named("fuzz-stop")),
            ..shared()
        });
        let hub = Hub::named("fuzz-stop");
        let group = Listener::start(shared.clone(), &Listen::group("kept"))
            .await
            .unwrap();
        let broadcast = Listener::start(shared.clone(), &Listen::broadcast())
            .await
            .unwrap();
        assert_eq!(hub.queue_count(), 2);
        broadcast.stop().await;
        group.stop().await;
        assert_eq!(
            hub.queue_count(),
            1,
            "the group queue stays for other members, the broadcast one goes"
        );
    }

    fn incoming(
        body: Vec<u8>,
        content_type: &'static str,
        tag: &'static str,
        fingerprint: String,
    ) -> Box<dyn Received> {
        crate::transport::memory::received(body, content_type, tag, fingerprint)
    }

    fn order() -> Order {
        Order {
            id: 42,
            customer: "Zoë".into(),
            lines: vec![("tea".into(), 2), ("cake".into(), 1)],
            note: Some("ring".into()),
            state: State::Closed {
                reason: "paid".into(),
            },
        }
    }

    /// How a valid encoding is damaged: bit flips, a cut, inserted bytes.
    #[derive(Debug, Clone)]
    enum Damage {
        Flip(usize, u8),
        Truncate(usize),
        Insert(usize, Vec<u8>),
    }

    /// A random damage; positions are reduced modulo the length when applied.
    fn damage(rng: &mut Rng) -> Damage {
        let at = rng.next() as usize;
        match rng.below(3) {
            0 => Damage::Flip(at, 1 + rng.below(255) as u8),
            1 => Damage::Truncate(at),
            _ => Damage::Insert(
                at,
                (0..1 + rng.below(11)).map(|_| rng.next() as u8).collect(),
            ),
        }
    }

    fn apply(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
        for damage in damages {
            let len = bytes.len();
            match damage {
                Damage::Flip(at, bits) if len > 0 => bytes[at % len] ^= bits,
                Damage::Flip(..) => {}
                Damage::Truncate(at) => bytes.truncate(at % (len + 1)),
                Damage::Insert(at, more) => {
                    let at = at % (len + 1);
                    bytes.splice(at..at, more.iter().copied());
                }
            }
        }
        bytes
    }

    const CONTENT_TYPES: [&str; 4] = [
        "application/x-bincode",
        "application/json",
        "text/plain",
        "",
    ];
    const TAGS: [&str; 4] = ["fuzz.order", "fuzz.order", "unknown.tag", ""];
    /// Cases per generated test; the seed makes every run the same.
    const CASES: usize = 3000;

    /// A fingerprint header: 16 hex digits, or up to 20 arbitrary characters.
    fn fingerprint(rng: &mut Rng) -> String {
        if rng.below(2) == 0 {
            format!("{:016x}", rng.next())
        } else {
            (0..rng.below(21))
                .filter_map(|_| char::from_u32((rng.next() % 0x11_0000) as u32))
                .collect()
        }
    }

    /// Any bytes under any content type and headers: an event of the
    /// header's type, or a reason; never a panic.
    #[test]
    fn arbitrary_bytes_are_an_event_or_a_reason() {
        let shared = shared();
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for case in 0..CASES {
            let body: Vec<u8> = (0..rng.below(256)).map(|_| rng.next() as u8).collect();
            let content_type = CONTENT_TYPES[rng.below(CONTENT_TYPES.len())];
            let tag = TAGS[rng.below(TAGS.len())];
            let fingerprint = fingerprint(&mut rng);
            let what = format!("case {case}: {content_type:?} {tag:?} {fingerprint:?} {body:?}");
            match shared.decode(&*incoming(body, content_type, tag, fingerprint)) {
                Ok(event) => assert_eq!(event.tag(), tag, "{what}"),
                Err((_, detail)) => assert!(!detail.is_empty(), "{what}"),
            }
        }
    }

    /// A valid event damaged in a few places, under both codecs: still an
    /// event of the right type, or a reason; never a panic and never an
    /// allocation beyond the decode limit.
    #[test]
    fn damaged_events_are_an_event_or_a_reason() {
        let shared = shared();
        let mut rng = Rng(0x8CB9_2BA7_2F3D_8DD7);
        let event: Box<dyn Event> = Box::new(order());
        for case in 0..CASES {
            let json = rng.below(2) == 0;
            let damages: Vec<Damage> = (0..rng.below(4)).map(|_| damage(&mut rng)).collect();
            let right_fingerprint = rng.below(2) == 0;
            let (codec, content_type): (&dyn Codec, &'static str) = if json {
                (&Json, "application/json")
            } else {
                (&Bincode, "application/x-bincode")
            };
            let valid = codec.encode(&event).unwrap();
            let body = apply(valid, &damages);
            let fingerprint = if right_fingerprint {
                Order::FINGERPRINT.to_string()
            } else {
                "0123456789abcdef".to_owned()
            };
            let what = format!("case {case}: {content_type} {damages:?} {fingerprint}");
            match shared.decode(&*incoming(body, content_type, "fuzz.order", fingerprint)) {
                Ok(event) => assert_eq!(event.tag(), "fuzz.order", "{what}"),
                Err((reason, detail)) => {
                    assert!(!detail.is_empty(), "{what}");
                    // An intact event with the right headers always decodes.
                    assert!(
                        !(damages.is_empty() && right_fingerprint),
                        "{what}: {reason}: {detail}"
                    );
                }
            }
        }
    }

    #[test]
    fn malformed_input_never_panics() {
        let shared = shared();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let order = Order {
            id: 42,
            customer: "Zoë".into(),
            lines: vec![("tea".into(), 2)],
            note: Some("ring".into()),
            state: State::Closed {
                reason: "paid".into(),
            },
        };
        let event: Box<dyn Event> = Box::new(order.clone());
        let codecs: [(&dyn Codec, &'static str); 2] = [
            (&Bincode, "application/x-bincode"),
            (&Json, "application/json"),
        ];
        let (mut decoded, mut rejected) = (0u32, 0u32);
        for round in 0..20_000 {
            let (codec, content_type) = codecs[round % 2];
            let valid = codec.encode(&event).unwrap();
            let body = if round % 10 == 0 {
                valid
            } else {
                mutate(&mut rng, &valid)
            };
            let fingerprint = match rng.below(4) {
                0 => "0123456789abcdef".to_owned(),
                1 => "not hex".to_owned(),
                _ => Order::FINGERPRINT.to_string(),
            };
            let tag = ["fuzz.order", "fuzz.order", "unknown.tag", ""][rng.below(4)];
            let incoming = incoming(body, content_type, tag, fingerprint);
            match shared.decode(&*incoming) {
                Ok(event) => {
                    decoded += 1;
                    assert_eq!(event.tag(), "fuzz.order");
                }
                Err((_, detail)) => {
                    rejected += 1;
                    assert!(!detail.is_empty());
                }
            }
        }
        assert!(
            decoded > 300 && rejected > 15_000,
            "decoded {decoded}, rejected {rejected}"
        );
    }
}
