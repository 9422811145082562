//! `Faults`: a transport that wraps another and injects what goes wrong
//! in production (lost connections, delays, duplicates, reordering,
//! refused publishes), deterministically for a seed, so that a test can
//! prove its handlers idempotent and its publishers ready for refusals.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_stream::StreamExt;

use super::listen::Listen;
use super::seam::{
    BoxFuture, DeadLetter, Header, Inbox, Outgoing, PublishCounters, Received, Settlement,
    Transport,
};
use crate::amqp::connection_event::{ConnectionEvent, ConnectionEvents};
use crate::codec::Codec;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::{lock, now_or_never};

/// **What [`Faults`] injects, and how often**, from a seed: the same seed
/// and the same calls give the same faults.
///
/// Probabilities are per message (0.0 to 1.0). Everything is off in
/// [`FaultPlan::seeded`]; [`FaultPlan::chaos`] turns on a mix that
/// at-least-once delivery and the dedup window must absorb.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FaultPlan {
    /// The seed of the schedule.
    pub seed: u64,
    /// Deliver a received message twice.
    pub duplicate: f64,
    /// Deliver a received message after the one behind it, when that one
    /// is there already.
    pub reorder: f64,
    /// Hold a received message or a publish for up to `max_delay`.
    pub delay: f64,
    /// The longest injected delay.
    pub max_delay: Duration,
    /// Refuse a publish ([`ErrorKind::Refused`]).
    pub refuse: f64,
    /// Drop the connection after every this many received messages: what
    /// was received and not settled is delivered again, marked redelivered,
    /// and settling the old copies fails as on a lost channel.
    pub drop_every: Option<u32>,
}

impl FaultPlan {
    /// A plan with this seed and no faults yet.
    #[must_use]
    pub fn seeded(seed: u64) -> Self {
        Self {
            seed,
            duplicate: 0.0,
            reorder: 0.0,
            delay: 0.0,
            max_delay: Duration::from_millis(5),
            refuse: 0.0,
            drop_every: None,
        }
    }

    /// Duplicates (10 %), reordering (10 %), short delays (5 %, at most
    /// 5 ms) and a dropped connection every 50 messages; no refusals.
    #[must_use]
    pub fn chaos(seed: u64) -> Self {
        Self {
            duplicate: 0.1,
            reorder: 0.1,
            delay: 0.05,
            drop_every: Some(50),
            ..Self::seeded(seed)
        }
    }

    /// Duplicates received messages with probability `p`.
    #[must_use]
    pub fn duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    /// Reorders received messages with probability `p`.
    #[must_use]
    pub fn reorder(mut self, p: f64) -> Self {
        self.reorder = p;
        self
    }

    /// Delays messages and publishes with probability `p`, up to `max`.
    #[must_use]
    pub fn delay(mut self, p: f64, max: Duration) -> Self {
        self.delay = p;
        self.max_delay = max;
        self
    }

    /// Refuses publishes with probability `p`.
    #[must_use]
    pub fn refuse_publishes(mut self, p: f64) -> Self {
        self.refuse = p;
        self
    }

    /// Drops the connection after every `n` received messages.
    #[must_use]
    pub fn drop_connection_every(mut self, n: u32) -> Self {
        self.drop_every = Some(n.max(1));
        self
    }
}

/// **How many faults a [`Faults`] injected.**
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultStats {
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Messages delivered after the one behind them.
    pub reordered: u64,
    /// Messages and publishes held back.
    pub delayed: u64,
    /// Publishes refused.
    pub refused: u64,
    /// Connections dropped (by schedule or by command).
    pub connection_drops: u64,
    /// Messages delivered again after a dropped connection.
    pub redelivered: u64,
}

#[derive(Default)]
struct Counts {
    duplicated: AtomicU64,
    reordered: AtomicU64,
    delayed: AtomicU64,
    refused: AtomicU64,
    connection_drops: AtomicU64,
    redelivered: AtomicU64,
    received: AtomicU64,
}

/// **A transport that injects faults into another**, for tests: lost
/// connections, delays, duplicates, reordering and refused publishes, by a
/// seeded [`FaultPlan`] or on command ([`drop_connection`]). With it a unit
/// test can show that handlers see each event once (at-least-once delivery
/// plus the dedup window) and that publishers handle refusals.
///
/// [`drop_connection`]: Faults::drop_connection
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tidings::Result<()> {
/// use std::sync::Arc;
/// use tidings::{Bus, FaultPlan, Faults, MemoryTransport};
///
/// let faults = Faults::wrap(Arc::new(MemoryTransport::named("chaos")), FaultPlan::chaos(7));
/// let bus = Bus::with_transport(faults.clone()).connect().await?;
/// // ... publish, and assert each handler saw each event once ...
/// faults.drop_connection();
/// bus.close().await?;
/// # Ok(()) }
/// ```
pub struct Faults {
    inner: Arc<dyn Transport>,
    plan: FaultPlan,
    rng: Mutex<Rng>,
    counts: Arc<Counts>,
    /// Bumped by every dropped connection; inboxes compare it with theirs.
    generation: Arc<AtomicU64>,
    events: broadcast::Sender<ConnectionEvent>,
    closed: AtomicBool,
}

impl Faults {
    /// Wraps `inner` with the faults of `plan`. Inside a Tokio runtime,
    /// `inner`'s own connection events are passed on too.
    #[must_use]
    pub fn wrap(inner: Arc<dyn Transport>, plan: FaultPlan) -> Arc<Self> {
        let events = broadcast::channel(64).0;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (mut theirs, ours) = (inner.events(), events.clone());
            runtime.spawn(async move {
                while let Some(event) = theirs.next().await {
                    if !matches!(event, ConnectionEvent::Connected { .. }) {
                        let _ = ours.send(event);
                    }
                }
            });
        }
        Arc::new(Self {
            rng: Mutex::new(Rng::new(plan.seed)),
            inner,
            plan,
            counts: Arc::default(),
            generation: Arc::default(),
            events,
            closed: AtomicBool::new(false),
        })
    }

    /// **Drops the connection now**: what listeners received and did not
    /// settle is delivered again, and settling the old copies fails.
    pub fn drop_connection(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        Self::add(&self.counts.connection_drops);
        let _ = self.events.send(ConnectionEvent::Disconnected {
            reason: "dropped by the fault injector".to_owned(),
        });
        let _ = self.events.send(ConnectionEvent::Recovered {
            downtime: Duration::ZERO,
            attempts: 1,
            address: "fault injector".to_owned(),
        });
    }

    /// How many faults were injected so far.
    #[must_use]
    pub fn stats(&self) -> FaultStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counts;
        FaultStats {
            duplicated: get(&c.duplicated),
            reordered: get(&c.reordered),
            delayed: get(&c.delayed),
            refused: get(&c.refused),
            connection_drops: get(&c.connection_drops),
            redelivered: get(&c.redelivered),
        }
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a fault of probability `p` happens now.
    fn roll(&self, p: f64) -> bool {
        p > 0.0 && lock(&self.rng).chance(p)
    }

    /// A delay, if one is due now.
    fn delay(&self) -> Option<Duration> {
        let delay = lock(&self.rng).delay(&self.plan)?;
        Self::add(&self.counts.delayed);
        Some(delay)
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("inner", &self.inner)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl Transport for Faults {
    fn instance_id(&self) -> &str {
        self.inner.instance_id()
    }

    fn codec(&self) -> Arc<dyn Codec> {
        self.inner.codec()
    }

    fn max_message_size(&self) -> usize {
        self.inner.max_message_size()
    }

    fn compression(&self) -> (crate::compression::Compression, usize) {
        self.inner.compression()
    }

    fn prefetch(&self) -> u16 {
        self.inner.prefetch()
    }

    fn publish(&self, out: Outgoing, done: Option<Settlement>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if let Some(delay) = self.delay() {
                tokio::time::sleep(delay).await;
            }
            if self.roll(self.plan.refuse) {
                Self::add(&self.counts.refused);
                let refused = Err(Error::new(
                    ErrorKind::Refused,
                    "the fault injector refused the publish",
                ));
                self.inner.counters().settled(&refused);
                match done {
                    Some(done) => {
                        let _ = done.send(refused);
                    }
                    None => tracing::warn!("the fault injector refused a publish"),
                }
                return Ok(());
            }
            self.inner.publish(out, done).await
        })
    }

    fn listen<'a>(&'a self, listen: &'a Listen) -> BoxFuture<'a, Result<Box<dyn Inbox>>> {
        Box::pin(async move {
            let inner = self.inner.listen(listen).await?;
            let inbox: Box<dyn Inbox> = Box::new(FaultInbox {
                inner,
                generation: self.generation.clone(),
                plan: self.plan.clone(),
                rng: Rng::new(self.plan.seed ^ 0x9E37_79B9_7F4A_7C15),
                counts: self.counts.clone(),
                ready: VecDeque::new(),
                outstanding: Arc::default(),
                handed: 0,
                seen_generation: self.generation.load(Ordering::SeqCst),
            });
            Ok(inbox)
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<u64>> {
        self.inner.flush()
    }

    fn request(
        &self,
        out: Outgoing,
        ttl: Option<std::time::Duration>,
    ) -> BoxFuture<'_, Result<Box<dyn crate::transport::seam::Replies>>> {
        self.inner.request(out, ttl)
    }

    fn late_replies(&self) -> u64 {
        self.inner.late_replies()
    }

    fn reply(&self, out: Outgoing) -> BoxFuture<'_, Result<()>> {
        self.inner.reply(out)
    }

    fn store_schema(&self, schema: &'static crate::schema::Schema) -> BoxFuture<'_, Result<()>> {
        self.inner.store_schema(schema)
    }

    fn find_schema(
        &self,
        fingerprint: crate::schema::Fingerprint,
    ) -> BoxFuture<'_, Result<Option<Arc<crate::schema::Schema>>>> {
        self.inner.find_schema(fingerprint)
    }

    fn abort(&self, reason: &str) {
        self.inner.abort(reason);
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let closed = self.inner.close().await;
            if !self.closed.swap(true, Ordering::Relaxed) {
                let _ = self.events.send(ConnectionEvent::Closed);
            }
            closed
        })
    }

    fn events(&self) -> ConnectionEvents {
        // The inner transport's address, from its own first event.
        let address = match self.inner.events().first() {
            Some(ConnectionEvent::Connected { address }) => address.clone(),
            _ => "fault injector".to_owned(),
        };
        let first = (!self.closed.load(Ordering::Relaxed))
            .then_some(ConnectionEvent::Connected { address });
        ConnectionEvents::new(first, self.events.subscribe())
    }

    fn counters(&self) -> &PublishCounters {
        // The inner transport's, where the refusals are counted too.
        self.inner.counters()
    }

    fn reconnects(&self) -> u64 {
        self.inner.reconnects() + self.counts.connection_drops.load(Ordering::Relaxed)
    }

    fn dead_letter_queue(&self) -> Option<&str> {
        self.inner.dead_letter_queue()
    }

    fn exchange(&self) -> &str {
        self.inner.exchange()
    }

    fn buffer_capacity(&self) -> Option<u64> {
        self.inner.buffer_capacity()
    }
}

/// One received message, shared by its copies (a duplicate, a redelivery):
/// the first settlement of any copy settles it, later ones do nothing.
struct Original {
    message: Box<dyn Received>,
    settled: AtomicBool,
    /// Its place in the order the bus received messages (renumbered when
    /// it is delivered again after a dropped connection); 0 until then.
    sequence: AtomicU64,
}

impl Original {
    fn take(&self) -> bool {
        !self.settled.swap(true, Ordering::SeqCst)
    }

    fn is_settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }
}

type Outstanding = Arc<Mutex<VecDeque<Arc<Original>>>>;

/// How a message waiting in [`FaultInbox::ready`] is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Duplicate,
    Redelivery,
}

struct FaultInbox {
    inner: Box<dyn Inbox>,
    generation: Arc<AtomicU64>,
    plan: FaultPlan,
    rng: Rng,
    counts: Arc<Counts>,
    /// Due before anything new: duplicates, redeliveries, the message a
    /// reordering held back.
    ready: VecDeque<(Arc<Original>, Kind)>,
    /// Handed out as a first delivery or a redelivery and not settled, in
    /// the order the bus received them.
    outstanding: Outstanding,
    handed: u64,
    seen_generation: u64,
}

impl FaultInbox {
    /// Hands `original` to the bus as a copy of this kind.
    fn hand_out(&mut self, original: Arc<Original>, kind: Kind) -> Box<dyn Received> {
        if kind != Kind::Duplicate {
            self.handed += 1;
            original.sequence.store(self.handed, Ordering::SeqCst);
            let mut outstanding = lock(&self.outstanding);
            outstanding.retain(|o| !Arc::ptr_eq(o, &original));
            outstanding.push_back(original.clone());
        }
        Box::new(Copy {
            original,
            outstanding: self.outstanding.clone(),
            generation: self.generation.clone(),
            born: self.generation.load(Ordering::SeqCst),
            redelivered: kind == Kind::Redelivery,
        })
    }

    /// A dropped connection: what is outstanding comes again, redelivered,
    /// before anything else.
    fn redeliver(&mut self) {
        let outstanding: Vec<Arc<Original>> = lock(&self.outstanding)
            .iter()
            .filter(|o| !o.is_settled())
            .cloned()
            .collect();
        for original in outstanding.into_iter().rev() {
            Faults::add(&self.counts.redelivered);
            self.ready.push_front((original, Kind::Redelivery));
        }
    }

    /// Drops the connection when the schedule says so.
    fn maybe_drop(&self, count: u64) {
        if let Some(every) = self.plan.drop_every
            && count.is_multiple_of(u64::from(every))
        {
            self.generation.fetch_add(1, Ordering::SeqCst);
            Faults::add(&self.counts.connection_drops);
        }
    }
}

fn adopt(message: Box<dyn Received>) -> Arc<Original> {
    Arc::new(Original {
        message,
        settled: AtomicBool::new(false),
        sequence: AtomicU64::new(0),
    })
}

impl Inbox for FaultInbox {
    fn queue(&self) -> &str {
        self.inner.queue()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Box<dyn Received>>> {
        Box::pin(async move {
            let generation = self.generation.load(Ordering::SeqCst);
            if generation != self.seen_generation {
                self.seen_generation = generation;
                self.redeliver();
            }
            while let Some((original, kind)) = self.ready.pop_front() {
                // A duplicate of what is settled already still comes (the
                // dedup window must drop it); a redelivery does not.
                if kind == Kind::Redelivery && original.is_settled() {
                    continue;
                }
                return Some(self.hand_out(original, kind));
            }
            // Held back before it is taken, so that dropping this future
            // (the bus stops waiting) loses nothing.
            if let Some(delay) = self.rng.delay(&self.plan) {
                Faults::add(&self.counts.delayed);
                tokio::time::sleep(delay).await;
            }
            let message = self.inner.next().await?;
            // No await from here on: the message is the bus's or waits in
            // `ready`.
            let mut original = adopt(message);
            if self.rng.chance(self.plan.reorder)
                && let Some(Some(behind)) = now_or_never(self.inner.next())
            {
                Faults::add(&self.counts.reordered);
                self.ready.push_front((original, Kind::First));
                original = adopt(behind);
                self.counts.received.fetch_add(1, Ordering::Relaxed);
            }
            if self.rng.chance(self.plan.duplicate) {
                Faults::add(&self.counts.duplicated);
                self.ready.push_front((original.clone(), Kind::Duplicate));
            }
            let count = self.counts.received.fetch_add(1, Ordering::Relaxed) + 1;
            let received = self.hand_out(original, Kind::First);
            self.maybe_drop(count);
            Some(received)
        })
    }

    fn close(self: Box<Self>, delete: bool) -> BoxFuture<'static, Result<()>> {
        self.inner.close(delete)
    }
}

/// One delivery of an [`Original`].
struct Copy {
    original: Arc<Original>,
    outstanding: Outstanding,
    generation: Arc<AtomicU64>,
    /// The connection generation it was delivered on.
    born: u64,
    redelivered: bool,
}

impl Copy {
    fn message(&self) -> &dyn Received {
        &*self.original.message
    }

    /// Whether the connection it came on is gone.
    fn lost(&self) -> bool {
        self.generation.load(Ordering::SeqCst) != self.born
    }

    fn lost_error() -> Error {
        Error::new(
            ErrorKind::Closed,
            "settling failed: the fault injector dropped the connection; the message comes again",
        )
    }

    /// Settles the original with `settle` unless a copy did already, or
    /// this copy's connection was dropped.
    async fn settle<'a, F>(&'a self, settle: F) -> Result<()>
    where
        F: FnOnce(&'a dyn Received) -> BoxFuture<'a, Result<()>>,
    {
        if self.lost() && !self.original.is_settled() {
            return Err(Self::lost_error());
        }
        if !self.original.take() {
            return Ok(());
        }
        let settled = settle(self.message()).await;
        self.forget_settled();
        settled
    }

    fn forget_settled(&self) {
        let mut outstanding = lock(&self.outstanding);
        while outstanding
            .front()
            .is_some_and(|o| o.settled.load(Ordering::SeqCst))
        {
            outstanding.pop_front();
        }
    }
}

impl Received for Copy {
    fn body(&self) -> &[u8] {
        self.message().body()
    }

    fn content_type(&self) -> Option<&str> {
        self.message().content_type()
    }

    fn content_encoding(&self) -> Option<&str> {
        self.message().content_encoding()
    }

    fn header(&self, name: &str) -> Header<'_> {
        self.message().header(name)
    }

    fn visit_headers(&self, visit: &mut dyn FnMut(&str, Header<'_>)) {
        self.message().visit_headers(visit);
    }

    fn routing_key(&self) -> &str {
        self.message().routing_key()
    }

    fn attempt(&self) -> u32 {
        self.message().attempt()
    }

    fn message_id(&self) -> Option<&str> {
        self.message().message_id()
    }

    fn origin(&self) -> Option<&str> {
        self.message().origin()
    }

    fn timestamp(&self) -> Option<u64> {
        self.message().timestamp()
    }

    fn redelivered(&self) -> bool {
        self.redelivered || self.message().redelivered()
    }

    fn reply_to(&self) -> Option<&str> {
        self.message().reply_to()
    }

    fn correlation_id(&self) -> Option<&str> {
        self.message().correlation_id()
    }

    fn ack(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.settle(|m| m.ack()))
    }

    /// Acknowledges this one and every message delivered before it, one by
    /// one: the order the bus saw is not the inner transport's.
    fn ack_through(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.lost() && !self.original.is_settled() {
                return Err(Self::lost_error());
            }
            let through = self.original.sequence.load(Ordering::SeqCst);
            let before: Vec<Arc<Original>> = lock(&self.outstanding)
                .iter()
                .filter(|o| o.sequence.load(Ordering::SeqCst) < through)
                .cloned()
                .collect();
            for original in before {
                if original.take() {
                    original.message.ack().await?;
                }
            }
            self.settle(|m| m.ack()).await
        })
    }

    fn retry(&self, attempt: u32, delay: Duration) -> BoxFuture<'_, Result<()>> {
        // Parking is not settling: the bus acknowledges after it.
        Box::pin(async move {
            if self.original.is_settled() {
                return Ok(());
            }
            if self.lost() {
                return Err(Self::lost_error());
            }
            self.message().retry(attempt, delay).await
        })
    }

    fn dead_letter<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.original.is_settled() {
                return Ok(());
            }
            if self.lost() {
                return Err(Self::lost_error());
            }
            self.message().dead_letter(letter).await
        })
    }

    fn requeue(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.settle(|m| m.requeue()))
    }

    fn reject(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.settle(|m| m.reject()))
    }
}

/// xorshift64*: deterministic for a seed, no dependency.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A delay of up to the plan's longest, if one is due now.
    fn delay(&mut self, plan: &FaultPlan) -> Option<Duration> {
        if !self.chance(plan.delay) {
            return None;
        }
        let max = u64::try_from(plan.max_delay.as_micros()).unwrap_or(u64::MAX);
        Some(Duration::from_micros(self.below(max.max(1))))
    }

    fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a fraction in [0, 1).
        #[allow(clippy::cast_precision_loss)]
        let fraction = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        p > 0.0 && fraction < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..100).map(|_| rng.chance(0.3)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let hits = draws(7).iter().filter(|h| **h).count();
        assert!((15..45).contains(&hits), "{hits} of 100 at p = 0.3");
    }
}
