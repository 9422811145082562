//! `Listener`: one queue a bus consumes and its dispatch loop: decode,
//! skip own and duplicate events, dispatch to the subscribers, settle.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, debug_span, info, info_span, trace, warn};

use super::context::{Context, Deadline};
use super::decision::Decision;
use super::decode::Decoder;
use super::dedup::{Claim, Recent};
use super::health::ListenerHealth;
use super::settings::{Settings, UnknownEvents};
use super::signing::Signing;
use super::stats::{Count, Counters, RejectReason};
use super::subscribers::Subscribers;
use super::text::bounded;
use crate::error::Result;
use crate::headers::TAG_HEADER;
use crate::runtime::now_or_never;
use crate::telemetry;
use crate::trace_context;
use crate::transport::listen::{Listen, Mode};
use crate::transport::seam::{DeadLetter, Header, Inbox, Received, Transport};

/// What every listener of one bus shares.
pub(crate) struct Shared {
    pub(crate) recent: Recent,
    pub(crate) decoder: Decoder,
    pub(crate) subscribers: Subscribers,
    pub(crate) counters: Arc<Counters>,
    pub(crate) instance_id: String,
    pub(crate) settings: Settings,
    pub(crate) transport: Arc<dyn Transport>,
    /// Checks signatures, if set.
    pub(crate) signing: Option<Signing>,
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
    /// Whether the loop runs, stopped when asked, or ended by itself.
    phase: Arc<AtomicU8>,
    /// Whether the queue belongs to this listener alone (broadcast), so
    /// cancelling deletes it and its bindings.
    owned: bool,
    stop: watch::Sender<Stop>,
    task: Mutex<Option<JoinHandle<Result<()>>>>,
}

/// The phases of a listener's loop.
const RUNNING: u8 = 0;
const STOPPED: u8 = 1;
const FAILED: u8 = 2;

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
        let phase = Arc::new(AtomicU8::new(RUNNING));
        let ended = phase.clone();
        let task = tokio::spawn(
            async move {
                let asked = stopped.clone();
                let result = run(shared, inbox, stopped).await;
                let how = if *asked.borrow() == Stop::Running {
                    warn!("the listener's queue closed for good; it receives no more");
                    FAILED
                } else {
                    STOPPED
                };
                ended.store(how, Ordering::Relaxed);
                result
            }
            .instrument(span),
        );
        Ok(Self {
            state: Arc::new(State {
                queue,
                phase,
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

    /// Its part of the bus's health; `None` once it was stopped on request.
    pub(crate) fn health(&self, connected: bool) -> Option<ListenerHealth> {
        let phase = self.state.phase.load(Ordering::Relaxed);
        let asked = *self.state.stop.borrow() != Stop::Running;
        if phase == STOPPED || (asked && phase == RUNNING) {
            return None;
        }
        Some(ListenerHealth {
            queue: self.state.queue.clone(),
            consuming: phase == RUNNING && connected,
            failed: phase == FAILED,
        })
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
        self.signal(Stop::Keep);
    }

    /// Tells the loop how to stop; the first word counts.
    fn signal(&self, how: Stop) {
        self.state.stop.send_if_modified(|stop| {
            let first = *stop == Stop::Running;
            if first {
                *stop = how;
            }
            first
        });
    }

    /// Stops the dispatch loop and waits for it (the queue stays).
    pub(crate) async fn stop(&self) {
        let _ = self.finish(Stop::Keep).await;
    }

    async fn finish(&self, how: Stop) -> Result<()> {
        self.signal(how);
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
    last: Option<Arc<dyn Received>>,
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

    async fn add(&mut self, shared: &Shared, incoming: Arc<dyn Received>) {
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
    let queue: Arc<str> = source.queue().into();
    let mut batch = AckBatch::new(shared.transport.prefetch());
    loop {
        // A batch handler's batch must be able to fill.
        let concurrency = shared
            .settings
            .concurrency
            .max(shared.subscribers.batch_room());
        while running.len() >= concurrency {
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
        // Shared with the handlers' `Context`, which reads it when asked.
        let incoming: Arc<dyn Received> = incoming.into();
        if concurrency == 1 {
            if let Outcome::Ack = shared.handle(&incoming, &queue).await {
                batch.add(&shared, incoming).await;
            }
        } else {
            let shared = shared.clone();
            let queue = queue.clone();
            running.spawn(async move {
                if let Outcome::Ack = shared.handle(&incoming, &queue).await {
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

/// The tag header of a delivery, or nothing.
fn tag_of(incoming: &dyn Received) -> &str {
    match incoming.header(TAG_HEADER) {
        Header::Text(tag) => tag,
        _ => "",
    }
}

/// What is left to do with a delivery once handled.
enum Outcome {
    /// Acknowledge it (perhaps with others).
    Ack,
    /// It was settled already (retried, dead-lettered or requeued).
    Settled,
}

impl Shared {
    /// How much longer than the signing window a delivery at `attempt` may
    /// have been on its way: the delays of its retries (bounded by
    /// `max_attempts`, since the attempt header is not signed).
    fn retry_allowance(&self, attempt: u32) -> Duration {
        (1..attempt.min(self.settings.max_attempts))
            .map(|a| self.settings.retry_delay(a))
            .sum()
    }

    /// Handles one delivery in a span of its own (a root, or the child of
    /// the publisher's span with trace context), counting it as unacked
    /// until its outcome is decided.
    async fn handle(&self, delivery: &Arc<dyn Received>, queue: &Arc<str>) -> Outcome {
        let incoming: &dyn Received = &**delivery;
        let span = debug_span!(
            parent: None,
            "handle",
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            tag = %bounded(tag_of(incoming)),
            message_id = %bounded(incoming.message_id().unwrap_or("")),
            origin = %bounded(incoming.origin().unwrap_or("")),
            attempt = incoming.attempt(),
            queue = %queue,
        );
        trace_context::extract(&span, incoming);
        telemetry::gauge("tidings_unacked_deliveries", 1.0);
        let outcome = self.handle_in_span(delivery, queue).instrument(span).await;
        telemetry::gauge("tidings_unacked_deliveries", -1.0);
        outcome
    }

    async fn handle_in_span(&self, delivery: &Arc<dyn Received>, queue: &Arc<str>) -> Outcome {
        let incoming: &dyn Received = &**delivery;
        self.counters.count(Count::Delivered, "", "");
        // The signature first: nothing unauthenticated is decoded.
        let verified = match &self.signing {
            Some(signing) => signing.verify(incoming, self.retry_allowance(incoming.attempt())),
            None => Ok(()),
        };
        let decoded = match verified {
            Ok(()) => {
                self.decoder
                    .decode(incoming, &self.counters, &*self.transport)
                    .await
            }
            Err(refusal) => Err(refusal),
        };
        let event = match decoded {
            Ok(event) => event,
            Err((RejectReason::UnknownTag, _))
                if self.settings.unknown_events == UnknownEvents::Acknowledge =>
            {
                let tag = tag_of(incoming);
                if self.counters.unknown(tag) {
                    info!(tag = %bounded(tag), "events of a type this process does not know arrive; acknowledging and counting them (logged once per tag)");
                }
                debug!(
                    outcome = "acked",
                    "an event of an unknown type, acknowledged"
                );
                return Outcome::Ack;
            }
            // What may pass goes the way of a failed handler: retried,
            // dead-lettered after the last attempt.
            Err((reason, detail))
                if reason.may_pass() && incoming.attempt() < self.settings.max_attempts =>
            {
                let tag = bounded(tag_of(incoming));
                debug!(tag = %tag, attempt = incoming.attempt(), "{}; retrying later", bounded(&detail));
                self.settle_failure(incoming, &tag, reason.as_str(), detail, None)
                    .await;
                return Outcome::Settled;
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
                self.dead_letter(incoming, "", letter).await;
                return Outcome::Settled;
            }
        };
        let tag = event.tag();
        let origin = incoming.origin();
        if !self.settings.self_delivery && origin == Some(self.instance_id.as_str()) {
            self.counters.count(Count::OwnSkipped, "", "");
            trace!(outcome = "acked", "own event skipped");
            return Outcome::Ack;
        }
        // No copy of the id, one hash of it per event, and no lock at all
        // when dedup is off.
        let dedup_key = incoming
            .message_id()
            .filter(|_| self.settings.dedup_window > 0)
            .map(|id| self.recent.key(origin.unwrap_or(""), id));
        // Claimed atomically: of two deliveries of one id at once, the
        // second waits for the first's outcome.
        let handling = match dedup_key {
            Some(key) => match self.recent.claim(key).await {
                Claim::Duplicate => {
                    self.counters.count(Count::Deduplicated, "", "");
                    debug!(
                        outcome = "acked",
                        "a duplicate of an event handled lately, acknowledged"
                    );
                    return Outcome::Ack;
                }
                Claim::Mine(handling) => Some(handling),
            },
            None => None,
        };
        let deadline = self.settings.handler_timeout.map(Deadline::after);
        let context = Context::watched(delivery.clone(), queue, deadline.clone());
        // Read from the headers only for the metric.
        let sent_at = if telemetry::ENABLED {
            context.sent_at()
        } else {
            None
        };
        let started = Instant::now();
        let dispatching = context
            .clone()
            .scope(self.subscribers.dispatch(&event, &context));
        let dispatch = match &deadline {
            None => Some(dispatching.await),
            Some(deadline) => within(dispatching, deadline).await,
        };
        if telemetry::ENABLED {
            telemetry::time("tidings_handler_seconds", tag, started.elapsed());
        }
        if telemetry::ENABLED
            && let Some(latency) =
                sent_at.and_then(|sent| SystemTime::now().duration_since(sent).ok())
        {
            telemetry::time("tidings_end_to_end_seconds", tag, latency);
        }
        self.counters.count(Count::Dispatched, "", "");
        let Some(dispatch) = dispatch else {
            let limit = self.settings.handler_timeout.unwrap_or_default();
            let error = format!("handlers did not finish within {limit:?}");
            self.counters.count(Count::HandlerTimeouts, tag, "");
            self.counters.count(Count::HandlerFailures, tag, "");
            warn!(tag, message_id = %bounded(incoming.message_id().unwrap_or("")), attempt = incoming.attempt(), error = %error, "event handlers timed out");
            self.settle_failure(incoming, tag, "handler_failed", error, None)
                .await;
            return Outcome::Settled;
        };
        let failed =
            (!dispatch.is_ok()).then(|| bounded(&dispatch.failures().join("; ")).into_owned());
        // A bus with no handler of the type handled nothing: no receipt.
        if failed.is_some() || dispatch.handled() > 0 {
            crate::bus::receipts::send_receipt(
                &*self.transport,
                &self.instance_id,
                incoming,
                failed.as_deref(),
            )
            .await;
        }
        let decision = dispatch.decision();
        // Remembered once settled for good (handled, or dead-lettered by a
        // handler): a failed, retried or requeued delivery must come back.
        if let Some(handling) = handling {
            let settled = match decision {
                Decision::DeadLetter(_) => true,
                Decision::Ack => failed.is_none(),
                Decision::RetryAfter(_) | Decision::Requeue => false,
            };
            handling.done(settled, self.settings.dedup_window);
        }
        // Each failure was logged with the tag, message id and attempt.
        for _ in dispatch.failures() {
            self.counters.count(Count::HandlerFailures, tag, "");
        }
        match (decision, failed) {
            // A handler's dead letter is stricter than another's failure.
            (Decision::DeadLetter(reason), failed) => {
                let reason = match failed {
                    Some(failures) => bounded(&format!("{reason}; {failures}")).into_owned(),
                    None => bounded(reason).into_owned(),
                };
                warn!(tag, message_id = %bounded(incoming.message_id().unwrap_or("")), reason = %reason, "a handler rejected the event; dead-lettering");
                self.dead_letter(incoming, tag, DeadLetter::new("handler_rejected", &reason))
                    .await;
            }
            (decision, Some(error)) => {
                // A handler that asked for a longer delay than the backoff
                // gets it.
                let delay = match decision {
                    Decision::RetryAfter(delay) => {
                        Some((*delay).max(self.settings.retry_delay(incoming.attempt())))
                    }
                    _ => None,
                };
                self.settle_failure(incoming, tag, "handler_failed", error, delay)
                    .await;
            }
            (Decision::Ack, None) => {
                self.counters.count(Count::Handled, tag, "");
                debug!(
                    outcome = "acked",
                    handlers = dispatch.handled(),
                    "event handled"
                );
                return Outcome::Ack;
            }
            (Decision::RetryAfter(delay), None) => {
                let error = format!("a handler asked for a retry after {delay:?}");
                self.settle_failure(incoming, tag, "handler_retry", error, Some(*delay))
                    .await;
            }
            (Decision::Requeue, None) => {
                self.counters.count(Count::Requeued, "", "");
                debug!(outcome = "requeued", "a handler asked to requeue the event");
                if let Err(e) = incoming.requeue().await {
                    debug!(error = %e, "requeueing a delivery failed; the broker redelivers it after recovery");
                }
            }
        }
        Outcome::Settled
    }
}

/// Runs `future` until it ends or the `deadline` passes, which the handler
/// may move on ([`Context::keep_alive`]): `None` when it overran. A sync
/// handler cannot be interrupted, so one that overran is `None` when it
/// returns.
async fn within<F: std::future::Future>(future: F, deadline: &Deadline) -> Option<F::Output> {
    tokio::pin!(future);
    loop {
        let at = deadline.at();
        match tokio::time::timeout_at(at.into(), &mut future).await {
            Ok(output) => return (Instant::now() <= deadline.at()).then_some(output),
            Err(_) if deadline.at() > at => {}
            Err(_) => return None,
        }
    }
}
