//! The conformance suite under concurrency and churn (issue #20), as
//! Watermill's pub/sub tests run against every driver and configuration:
//! many publishers at once on one bus and across buses (also across a broker
//! restart), group members joining and leaving while events flow, buses
//! created and closed together, two groups on one exchange, and streams
//! ending when the bus closes.
//!
//! Each case runs over both transports and over the configurations
//! watermill-amqp runs its suite with (prefetch 1, JSON, fanout and topic
//! exchanges, dedup off, concurrency 4). A configuration has a set of
//! capabilities; a case that needs one the configuration lacks is not
//! generated at all (see `needs!`), rather than generated and skipped.
//!
//! Waits are stall-based: a wait fails when nothing progressed for
//! [`STALL`], not after a fixed total, so the tests hold up on a loaded
//! machine and still fail with a message saying what did not happen.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidings::{
    AmqpProps, Bus, BusBuilder, Context, Event, ExchangeKind, Json, Listen, Stats, Subscribers,
};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "concurrency.tick", routing_key = "concurrency.tick")]
struct Tick {
    id: u64,
    /// The handlers of a churning member fail its first attempt.
    fail_first: bool,
}

fn tick(id: u64) -> Tick {
    Tick {
        id,
        fail_first: false,
    }
}

/// A wait fails when nothing moved for this long.
const STALL: Duration = Duration::from_secs(30);
/// The longest a `close` may take before the test says it hangs.
const CLOSE_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Configurations and where the buses meet
// ---------------------------------------------------------------------------

/// One configuration of the suite.
#[derive(Debug, Clone, Copy)]
struct Config {
    kind: ExchangeKind,
    prefetch: u16,
    json: bool,
    dedup: bool,
    concurrency: usize,
    /// The full event counts (the base configuration); the variations run
    /// a fifth of them, to keep the binary fast.
    full: bool,
}

mod configs {
    use super::Config;
    use tidings::ExchangeKind;

    /// The props' and builder's defaults: a fanout exchange, bincode,
    /// prefetch 256, dedup on, one handler at a time.
    pub(crate) const fn base() -> Config {
        Config {
            kind: ExchangeKind::Fanout,
            prefetch: 256,
            json: false,
            dedup: true,
            concurrency: 1,
            full: true,
        }
    }
    pub(crate) const fn topic() -> Config {
        Config {
            kind: ExchangeKind::Topic,
            full: false,
            ..base()
        }
    }
    pub(crate) const fn prefetch_1() -> Config {
        Config {
            prefetch: 1,
            full: false,
            ..base()
        }
    }
    pub(crate) const fn json() -> Config {
        Config {
            json: true,
            full: false,
            ..base()
        }
    }
    pub(crate) const fn dedup_off() -> Config {
        Config {
            dedup: false,
            full: false,
            ..base()
        }
    }
    pub(crate) const fn concurrency_4() -> Config {
        Config {
            concurrency: 4,
            full: false,
            ..base()
        }
    }
}

/// Where the buses of one test meet: a fresh in-memory hub or a fresh
/// exchange on the broker, with the configuration applied to every bus.
#[derive(Clone)]
struct Meeting {
    place: Place,
    config: Config,
}

#[derive(Clone)]
enum Place {
    Memory(String),
    Amqp(Box<AmqpProps>),
}

impl Meeting {
    fn memory(config: Config) -> Self {
        Self {
            place: Place::Memory(format!("memory://{}", common::unique("hub"))),
            config,
        }
    }

    fn amqp(config: Config) -> Self {
        Self::on_broker(common::props(config.kind), config)
    }

    fn on_broker(props: AmqpProps, config: Config) -> Self {
        let props = props.with_prefetch(config.prefetch);
        let props = if config.json {
            props.with_codec(Json)
        } else {
            props
        };
        Self {
            place: Place::Amqp(Box::new(props)),
            config,
        }
    }

    /// `events`, or a fifth of it in a variation.
    fn scaled(&self, events: u64) -> u64 {
        if self.config.full { events } else { events / 5 }
    }

    fn props(&self) -> Option<&AmqpProps> {
        match &self.place {
            Place::Amqp(props) => Some(props),
            Place::Memory(_) => None,
        }
    }

    fn builder(&self, subscribers: &Subscribers) -> BusBuilder {
        self.named_builder(subscribers, None)
    }

    /// A builder whose connection carries this name on the broker.
    fn named_builder(&self, subscribers: &Subscribers, name: Option<String>) -> BusBuilder {
        let builder = match (&self.place, name) {
            (Place::Memory(url), _) => Bus::builder(url).unwrap(),
            (Place::Amqp(props), None) => Bus::with_props(AmqpProps::clone(props)),
            (Place::Amqp(props), Some(name)) => {
                Bus::with_props(AmqpProps::clone(props).with_connection_name(name))
            }
        };
        builder
            .subscribers(subscribers.clone())
            .dedup_window(if self.config.dedup { 20_000 } else { 0 })
            .concurrency(self.config.concurrency)
    }

    async fn publisher(&self) -> Bus {
        self.builder(&Subscribers::new())
            .publish_only()
            .connect()
            .await
            .expect("connecting a publisher")
    }

    /// Deletes the exchange, its dead letters and these groups' queues
    /// (with their retry queues) at the end, even when the test fails.
    fn cleanup(&self, groups: &[&str]) -> Option<common::Cleanup> {
        let props = self.props()?;
        let cleanup = common::Cleanup::new(props);
        for group in groups {
            cleanup.queue(&format!("{}.{group}", props.exchange()));
        }
        Some(cleanup)
    }
}

// ---------------------------------------------------------------------------
// Counting and waiting
// ---------------------------------------------------------------------------

/// How often each event id was handled.
#[derive(Clone)]
struct Tally(Arc<TallyInner>);

struct TallyInner {
    counts: Vec<AtomicU32>,
    distinct: AtomicU64,
    total: AtomicU64,
}

impl Tally {
    fn new(events: u64) -> Self {
        Self(Arc::new(TallyInner {
            counts: (0..events).map(|_| AtomicU32::new(0)).collect(),
            distinct: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }))
    }

    fn record(&self, id: u64) {
        let slot = usize::try_from(id).unwrap();
        if self.0.counts[slot].fetch_add(1, Ordering::SeqCst) == 0 {
            self.0.distinct.fetch_add(1, Ordering::SeqCst);
        }
        self.0.total.fetch_add(1, Ordering::SeqCst);
    }

    fn distinct(&self) -> u64 {
        self.0.distinct.load(Ordering::SeqCst)
    }

    fn total(&self) -> u64 {
        self.0.total.load(Ordering::SeqCst)
    }

    fn count(&self, id: u64) -> u32 {
        self.0.counts[usize::try_from(id).unwrap()].load(Ordering::SeqCst)
    }

    fn len(&self) -> u64 {
        self.0.counts.len() as u64
    }

    /// Waits until every id was handled at least once.
    async fn wait_all(&self, what: &str) {
        let want = self.len();
        progress_until(what, || (self.distinct(), self.distinct() >= want)).await;
    }

    /// The ids handled other than once: (never, more than once).
    fn misses(&self) -> (Vec<u64>, Vec<(u64, u32)>) {
        let mut never = Vec::new();
        let mut again = Vec::new();
        for id in 0..self.len() {
            match self.count(id) {
                0 => never.push(id),
                1 => {}
                n => again.push((id, n)),
            }
        }
        (never, again)
    }

    fn assert_each_once(&self, what: &str) {
        let (never, again) = self.misses();
        assert!(
            never.is_empty() && again.is_empty(),
            "{what}: every event handled once, but {} never (first {:?}) and {} more than once (first {:?})",
            never.len(),
            &never[..never.len().min(10)],
            again.len(),
            &again[..again.len().min(10)]
        );
    }
}

/// Polls `probe` (progress so far, done) until done; fails when the
/// progress did not change for [`STALL`].
async fn progress_until(what: &str, mut probe: impl FnMut() -> (u64, bool)) {
    let (mut last, mut since) = (probe().0, Instant::now());
    loop {
        let (now, done) = probe();
        if done {
            return;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > STALL {
            panic!("{what}: no progress for {STALL:?} (stuck at {now})");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Closes a bus, failing the test if that takes longer than
/// [`CLOSE_LIMIT`].
async fn close_within(bus: &Bus, who: &str) -> tidings::Result<()> {
    tokio::time::timeout(CLOSE_LIMIT, bus.close())
        .await
        .unwrap_or_else(|_| {
            panic!("closing {who} did not finish within {CLOSE_LIMIT:?}: close hangs")
        })
}

/// The publishing counters of several buses added up: published,
/// confirmed, publish_failed, returned, buffered.
fn publish_totals(stats: &[Stats]) -> (u64, u64, u64, u64, u64) {
    stats.iter().fold((0, 0, 0, 0, 0), |t, s| {
        (
            t.0 + s.published,
            t.1 + s.confirmed,
            t.2 + s.publish_failed,
            t.3 + s.returned,
            t.4 + s.buffered,
        )
    })
}

/// Publish counters add up: everything accepted was settled one way.
fn assert_publishes_add_up(stats: &[Stats], events: u64) -> (u64, u64) {
    let (published, confirmed, failed, returned, buffered) = publish_totals(stats);
    assert_eq!(published, events, "every publish counted: {stats:?}");
    assert_eq!(
        confirmed + failed + returned,
        published,
        "published == confirmed + publish_failed + returned: {stats:?}"
    );
    assert_eq!(buffered, 0, "nothing left in the buffers: {stats:?}");
    (confirmed, failed)
}

// ---------------------------------------------------------------------------
// 1. Concurrent publishers
// ---------------------------------------------------------------------------

const PUBLISHERS: u64 = 50;
const EVENTS: u64 = 10_000;
const PER_PUBLISHER: u64 = EVENTS / PUBLISHERS;

/// 50 tasks publish 10,000 events (2,000 in a variation) through `buses` buses: even tasks with
/// `publish_confirmed` (each checked), odd ones fire and forget. One
/// listener handles every event once; the publishers' counters add up.
async fn concurrent_publishers(meeting: Meeting, buses: usize) {
    let _cleanup = meeting.cleanup(&[]);
    let events = meeting.scaled(EVENTS);
    let per_publisher = events / PUBLISHERS;
    let tally = Tally::new(events);
    let subscribers = Subscribers::new();
    let t = tally.clone();
    let _g = subscribers.subscribe(move |e: &Tick| t.record(e.id));
    let listener = meeting.builder(&subscribers).connect().await.unwrap();
    let mut publishers = Vec::new();
    for _ in 0..buses {
        publishers.push(meeting.publisher().await);
    }
    let mut tasks = JoinSet::new();
    for task in 0..PUBLISHERS {
        let bus = publishers[usize::try_from(task).unwrap() % buses].clone();
        tasks.spawn(async move {
            let mut failed = Vec::new();
            for n in 0..per_publisher {
                let event = tick(task * per_publisher + n);
                if task % 2 == 0 {
                    if let Err(e) = bus.publish_confirmed(&event).await {
                        failed.push(e.to_string());
                    }
                } else {
                    bus.publish(&event).await.expect("publish was not accepted");
                }
            }
            failed
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        failed.extend(done.expect("a publishing task panicked"));
    }
    assert!(failed.is_empty(), "publish_confirmed failed: {failed:?}");
    tally.wait_all("the listener handling every event").await;
    for (i, bus) in publishers.iter().enumerate() {
        close_within(bus, &format!("publisher {i}")).await.unwrap();
    }
    let stats: Vec<Stats> = publishers.iter().map(Bus::stats).collect();
    let (confirmed, _) = assert_publishes_add_up(&stats, events);
    assert_eq!(confirmed, events, "no broker trouble: all confirmed");
    close_within(&listener, "the listener").await.unwrap();
    tally.assert_each_once("one listener, concurrent publishers");
    let stats = listener.stats();
    assert_eq!(
        (stats.delivered, stats.dispatched, stats.handled),
        (events, events, events),
        "{stats:?}"
    );
}

async fn concurrent_publishers_on_one_bus(meeting: Meeting) {
    concurrent_publishers(meeting, 1).await;
}

async fn concurrent_publishers_on_five_buses(meeting: Meeting) {
    concurrent_publishers(meeting, 5).await;
}

/// The same across a broker restart (a private node): the listener is a
/// group member, so what the broker holds survives; 50 tasks publish with
/// `publish_confirmed` through 5 buses, half of it before the node stops
/// and the other half racing its stop, outage and start. Every publish is
/// confirmed or fails with an error; every confirmed event is handled
/// exactly once (the dedup window drops what was sent again), a failed one
/// at most once; the counters add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_across_a_broker_restart() {
    let node = tokio::task::spawn_blocking(common::PrivateNode::start)
        .await
        .unwrap();
    let props = node
        .props(ExchangeKind::Fanout)
        .with_reconnect_delay(Duration::from_millis(100), Duration::from_millis(500));
    let meeting = Meeting::on_broker(props, configs::base());
    let tally = Tally::new(EVENTS);
    let subscribers = Subscribers::new();
    let t = tally.clone();
    let _g = subscribers.subscribe(move |e: &Tick| t.record(e.id));
    let listener = meeting
        .builder(&subscribers)
        .listen(Listen::group("restart"))
        .connect()
        .await
        .unwrap();
    let mut publishers = Vec::new();
    for _ in 0..5 {
        publishers.push(meeting.publisher().await);
    }
    let (stopping, gate) = tokio::sync::watch::channel(false);
    let settled = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for task in 0..PUBLISHERS {
        let bus = publishers[usize::try_from(task % 5).unwrap()].clone();
        let (mut gate, settled) = (gate.clone(), settled.clone());
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..PER_PUBLISHER {
                if n == PER_PUBLISHER / 2 {
                    let _ = gate.wait_for(|stopping| *stopping).await;
                }
                let id = task * PER_PUBLISHER + n;
                let outcome = bus.publish_confirmed(&tick(id)).await;
                settled.fetch_add(1, Ordering::SeqCst);
                outcomes.push((id, outcome.map_err(|e| e.to_string())));
            }
            outcomes
        });
    }
    progress_until("events flowing before the restart", || {
        (tally.distinct(), tally.distinct() >= 1_000)
    })
    .await;
    let restart = tokio::task::spawn_blocking(move || {
        let mut node = node;
        node.stop();
        // The second halves go into the buffers during the outage.
        stopping.send_replace(true);
        node.start_again();
        node
    });
    // Nothing settles while the node is down: the outage is not a stall
    // (the node's own start has a deadline).
    let _node = restart.await.expect("restarting the node panicked");
    progress_until("the publishes settling after the restart", || {
        let n = settled.load(Ordering::SeqCst);
        (n, n >= EVENTS)
    })
    .await;
    let mut failed = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        for (id, outcome) in done.expect("a publishing task panicked") {
            if let Err(e) = outcome {
                failed.insert(id, e);
            }
        }
    }
    let confirmed_ids: Vec<u64> = (0..EVENTS).filter(|id| !failed.contains_key(id)).collect();
    progress_until("the listener handling every confirmed event", || {
        let handled = confirmed_ids
            .iter()
            .filter(|&&id| tally.count(id) > 0)
            .count() as u64;
        (handled, handled == confirmed_ids.len() as u64)
    })
    .await;
    progress_until("the listener recovering", || {
        let n = listener.stats().reconnects;
        (n, n >= 1)
    })
    .await;
    for (i, bus) in publishers.iter().enumerate() {
        close_within(bus, &format!("publisher {i}")).await.unwrap();
    }
    let stats: Vec<Stats> = publishers.iter().map(Bus::stats).collect();
    let (_, publish_failed) = assert_publishes_add_up(&stats, EVENTS);
    assert_eq!(
        publish_failed,
        failed.len() as u64,
        "each failed publish counted once"
    );
    close_within(&listener, "the listener").await.unwrap();
    let twice: Vec<u64> = (0..EVENTS).filter(|&id| tally.count(id) > 1).collect();
    assert!(
        twice.is_empty(),
        "handled twice despite the dedup window: {} (first {:?})",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    let stats = listener.stats();
    let republished: u64 = publishers.iter().map(|b| b.stats().republished).sum();
    println!(
        "restart: {} failed publishes, {republished} sent again, listener {} handled, {} deduplicated, {} reconnects",
        failed.len(),
        stats.handled,
        stats.deduplicated,
        stats.reconnects
    );
    assert_eq!(stats.handled, tally.total(), "{stats:?}");
    assert!(stats.reconnects >= 1, "the listener reconnected: {stats:?}");
}

// ---------------------------------------------------------------------------
// 2. Churning group members
// ---------------------------------------------------------------------------

const CHURN_EVENTS: u64 = 5_000;
const MAX_MEMBERS: usize = 20;

/// How a member left the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// `Bus::close`.
    Close,
    /// `Listener::cancel` on its group listener while the bus runs on,
    /// then `close`.
    Cancel,
    /// Every handle dropped, without closing.
    Drop,
}

/// Members (each its own bus, at most 20 at once) join a group, handle some
/// events and leave (close, cancel their listener, or are dropped) again
/// and again while 5,000 events (1,000 in a variation) are published; every tenth event's first
/// attempt fails, so events wait in the retry queue while members leave.
///
/// Asserted: every event handled (none lost); no close hangs; nothing
/// dead-lettered (each retried event comes back and succeeds). With dedup
/// on, no member handles an event twice (the dedup window is per bus).
/// Across members an event may be handled twice when its ack was lost
/// with a member: those are counted and printed, and must involve a member
/// that was dropped without closing — `close` and `cancel` acknowledge what
/// was handled before they return.
async fn churning_group_members(meeting: Meeting) {
    let _cleanup = meeting.cleanup(&["churn"]);
    let churn_events = meeting.scaled(CHURN_EVENTS);
    let tally = Tally::new(churn_events);
    // Event id -> the members that handled it, in order.
    let handlers: Arc<Mutex<HashMap<u64, Vec<usize>>>> = Arc::default();
    let first_failures = Arc::new(AtomicU64::new(0));
    let leaves: Arc<Mutex<HashMap<usize, Leave>>> = Arc::default();
    let member_stats: Arc<Mutex<Vec<Stats>>> = Arc::default();
    let all_done = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(AtomicU64::new(0));

    let start_member = |n: usize| {
        let (meeting, tally, handlers) = (meeting.clone(), tally.clone(), handlers.clone());
        let (first_failures, leaves) = (first_failures.clone(), leaves.clone());
        let (member_stats, all_done) = (member_stats.clone(), all_done.clone());
        let joined = joined.clone();
        async move {
            let subscribers = Subscribers::new();
            let (t, h) = (tally.clone(), handlers.clone());
            // Kept for good: a dropped bus's listener stops in the
            // background, and what it still takes goes to the handlers
            // subscribed then (with none, it is acknowledged unhandled).
            let subscription = subscribers.subscribe_with(move |e: &Tick, ctx: &Context| {
                if e.fail_first && ctx.attempt() == 1 {
                    first_failures.fetch_add(1, Ordering::SeqCst);
                    return Err("the first attempt fails");
                }
                h.lock().unwrap().entry(e.id).or_default().push(n);
                t.record(e.id);
                Ok(())
            });
            subscription.forget();
            let leave = [Leave::Close, Leave::Cancel, Leave::Drop][n % 3];
            let builder = meeting
                .builder(&subscribers)
                .retry_delay(Duration::from_millis(50));
            // Only a member that cancels needs its listener's handle; the
            // others join through the builder, which also declares the
            // dead-letter queue (a publish-only bus does not).
            let (bus, listener) = if leave == Leave::Cancel {
                let bus = builder
                    .publish_only()
                    .connect()
                    .await
                    .expect("a member connecting");
                let listener = bus
                    .listen(&Listen::group("churn"))
                    .await
                    .expect("a member joining the group");
                (bus, Some(listener))
            } else {
                let bus = builder
                    .listen(Listen::group("churn"))
                    .connect()
                    .await
                    .expect("a member joining the group");
                (bus, None)
            };
            joined.fetch_add(1, Ordering::SeqCst);
            // Stay until the group as a whole handled a quota more.
            let quota = 50 + (n as u64 * 37) % 250;
            let from = tally.distinct();
            while tally.distinct() < from + quota && !all_done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            leaves.lock().unwrap().insert(n, leave);
            match leave {
                Leave::Close => {
                    close_within(&bus, &format!("member {n}")).await.unwrap();
                }
                Leave::Cancel => {
                    let listener = listener.expect("a cancelling member listens");
                    tokio::time::timeout(CLOSE_LIMIT, listener.cancel())
                        .await
                        .unwrap_or_else(|_| panic!("cancelling member {n}'s listener hangs"))
                        .unwrap();
                    close_within(&bus, &format!("member {n}")).await.unwrap();
                }
                Leave::Drop => {}
            }
            member_stats.lock().unwrap().push(bus.stats());
        }
    };

    // The group queue exists before the first event is published.
    let mut members = JoinSet::new();
    let mut started = 0;
    for _ in 0..8 {
        members.spawn(start_member(started));
        started += 1;
    }
    // A publish before a member declared the group queue would vanish.
    progress_until("the first member joining the group", || {
        let n = joined.load(Ordering::SeqCst);
        (n, n > 0)
    })
    .await;
    let publisher = meeting.publisher().await;
    let publishing = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for id in 0..churn_events {
                let event = Tick {
                    id,
                    fail_first: id % 10 == 0,
                };
                publisher.publish(&event).await.expect("publish accepted");
            }
        })
    };

    let mut cycle = 0usize;
    let (mut last, mut since) = (tally.distinct(), Instant::now());
    while tally.distinct() < churn_events {
        // Between 1 and 20 members, changing as they come and go.
        let target = 1 + (cycle * 7) % MAX_MEMBERS;
        cycle += 1;
        while members.len() < target {
            members.spawn(start_member(started));
            started += 1;
        }
        let ended = tokio::time::timeout(Duration::from_millis(100), members.join_next()).await;
        if let Ok(Some(ended)) = ended {
            ended.expect("a member panicked");
        }
        if members.is_empty() {
            members.spawn(start_member(started));
            started += 1;
        }
        let now = tally.distinct();
        if now != last {
            (last, since) = (now, Instant::now());
        } else {
            assert!(
                since.elapsed() < STALL,
                "churn: no event handled for {STALL:?}; {now} of {churn_events} handled, {} first attempts failed, {started} members started; missing: {:?}",
                first_failures.load(Ordering::SeqCst),
                tally.misses().0
            );
        }
    }
    all_done.store(true, Ordering::SeqCst);
    while let Some(ended) = tokio::time::timeout(STALL, members.join_next())
        .await
        .expect("the last members did not leave")
    {
        ended.expect("a member panicked");
    }
    publishing.await.expect("the publisher panicked");
    close_within(&publisher, "the publisher").await.unwrap();
    let (confirmed, _) = assert_publishes_add_up(&[publisher.stats()], churn_events);
    assert_eq!(confirmed, churn_events);

    let (never, _) = tally.misses();
    assert!(never.is_empty(), "events lost in the churn: {never:?}");
    let leaves = leaves.lock().unwrap().clone();
    let handlers = handlers.lock().unwrap().clone();
    let mut within_member = 0;
    let mut across_members = 0;
    let mut unexplained = Vec::new();
    for (id, members) in &handlers {
        let mut distinct = members.clone();
        distinct.sort_unstable();
        distinct.dedup();
        within_member += members.len() - distinct.len();
        if distinct.len() > 1 {
            across_members += 1;
            let dropped = members[..members.len() - 1]
                .iter()
                .any(|m| leaves.get(m) == Some(&Leave::Drop));
            if !dropped {
                unexplained.push((*id, members.clone()));
            }
        }
    }
    let stats = member_stats.lock().unwrap().clone();
    let (retried, dead_lettered): (u64, u64) = stats
        .iter()
        .fold((0, 0), |t, s| (t.0 + s.retried, t.1 + s.dead_lettered));
    println!(
        "churn ({:?}): {started} members, {} first attempts failed, {retried} retried, {across_members} events handled by two members, {within_member} twice by one",
        meeting.config,
        first_failures.load(Ordering::SeqCst)
    );
    if meeting.config.dedup {
        assert_eq!(
            within_member, 0,
            "the dedup window: no member handles an event twice"
        );
    }
    assert!(
        unexplained.is_empty(),
        "events handled again by another member although every member before had closed or cancelled (acks lost?): {unexplained:?}"
    );
    assert_eq!(dead_lettered, 0, "nothing dead-lettered: {stats:?}");
    assert!(
        first_failures.load(Ordering::SeqCst) >= churn_events / 10,
        "every tenth event failed once"
    );
    if let Some(props) = meeting.props() {
        let conn = tidings::Connection::connect(props).await.unwrap();
        let dead_letters = format!("{}.dead-letter", props.exchange());
        assert_eq!(common::queue_depth(&conn, &dead_letters).await, 0);
        conn.close().await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// 3. Concurrent create and close
// ---------------------------------------------------------------------------

const TOGETHER: usize = 10;

/// 10 buses on one group and exchange are connected at once and closed at
/// once, three times over; then 10 more at once handle 50 events, each
/// once. No connect fails (two declaring the same queues at the same time
/// must not get PRECONDITION_FAILED), and on the broker no connection or
/// channel of theirs is left.
async fn concurrent_create_and_close(meeting: Meeting) {
    let _cleanup = meeting.cleanup(&["together"]);
    let name = common::unique("together-conn");
    let counting = meeting.props().is_some() && common::rabbitmqctl_sees_the_broker();
    if counting {
        assert_eq!(common::broker_connections(&name), Some((0, 0)));
    }
    let tally = Tally::new(50);
    let connect_all = || {
        futures_join_all((0..TOGETHER).map(|i| {
            let subscribers = Subscribers::new();
            let t = tally.clone();
            subscribers
                .subscribe(move |e: &Tick| t.record(e.id))
                .forget();
            meeting
                .named_builder(&subscribers, Some(format!("{name} {i}")))
                .listen(Listen::group("together"))
                .connect()
        }))
    };
    let close_all = |buses: Vec<Bus>| async move {
        let closes = futures_join_all(
            buses
                .iter()
                .map(|bus| close_within(bus, "a bus closing at once with 9 others")),
        );
        for closed in closes.await {
            closed.expect("closing at once");
        }
    };
    for round in 0..3 {
        let buses: Vec<Bus> = connect_all()
            .await
            .into_iter()
            .enumerate()
            .map(|(i, bus)| {
                bus.unwrap_or_else(|e| panic!("round {round}: bus {i} did not connect: {e}"))
            })
            .collect();
        close_all(buses).await;
    }
    let buses: Vec<Bus> = connect_all()
        .await
        .into_iter()
        .map(|bus| bus.expect("connecting at once"))
        .collect();
    let channels_at_start = if counting {
        wait_for_connections(&name, TOGETHER).await
    } else {
        0
    };
    let publisher = meeting.publisher().await;
    for id in 0..50 {
        publisher.publish_confirmed(&tick(id)).await.unwrap();
    }
    tally.wait_all("10 members handling 50 events").await;
    close_within(&publisher, "the publisher").await.unwrap();
    if counting {
        let channels = wait_for_connections(&name, TOGETHER).await;
        assert!(
            channels <= channels_at_start,
            "channels grew from {channels_at_start} to {channels} while handling 50 events"
        );
    }
    close_all(buses).await;
    tally.assert_each_once("a group of 10 connected at once");
    if counting {
        wait_for_connections(&name, 0).await;
    }
}

/// Waits until the broker lists `count` connections named `name`; their
/// channels then.
async fn wait_for_connections(name: &str, count: usize) -> usize {
    let deadline = Instant::now() + STALL;
    loop {
        let (connections, channels) =
            common::broker_connections(name).expect("rabbitmqctl list_connections failed");
        if connections == count {
            return channels;
        }
        assert!(
            Instant::now() < deadline,
            "the broker lists {connections} connections ({channels} channels) named {name:?} after {STALL:?}, not {count}: leaked?"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `join_all` without the futures crate: each future in a task of its own.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future,
{
    let futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut futures: Vec<Option<_>> = futures.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(done) => {
                        *output = Some(done);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------
// 4. Two groups on one exchange; streams end with the bus
// ---------------------------------------------------------------------------

/// Two groups of two members on one exchange: each group handles the whole
/// stream, each event once.
async fn two_groups_each_get_the_full_stream(meeting: Meeting) {
    let _cleanup = meeting.cleanup(&["left", "right"]);
    let n_events = meeting.scaled(1_000);
    let mut members = Vec::new();
    let mut tallies = Vec::new();
    for group in ["left", "right"] {
        let tally = Tally::new(n_events);
        for _ in 0..2 {
            let subscribers = Subscribers::new();
            let t = tally.clone();
            subscribers
                .subscribe(move |e: &Tick| t.record(e.id))
                .forget();
            members.push(
                meeting
                    .builder(&subscribers)
                    .listen(Listen::group(group))
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        tallies.push((group, tally));
    }
    let publisher = meeting.publisher().await;
    let mut tasks = JoinSet::new();
    for task in 0..10 {
        let publisher = publisher.clone();
        tasks.spawn(async move {
            for n in 0..n_events / 10 {
                publisher
                    .publish(&tick(task * (n_events / 10) + n))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    for (group, tally) in &tallies {
        tally
            .wait_all(&format!("group {group} handling the stream"))
            .await;
    }
    close_within(&publisher, "the publisher").await.unwrap();
    for (i, member) in members.iter().enumerate() {
        close_within(member, &format!("member {i}")).await.unwrap();
    }
    for (group, tally) in &tallies {
        tally.assert_each_once(&format!("group {group}"));
    }
}

/// A stream and a poller of a bus's subscribers end once the bus is
/// closed, after what they had buffered, instead of waiting forever.
async fn streams_and_pollers_end_when_the_bus_closes(meeting: Meeting) {
    let _cleanup = meeting.cleanup(&[]);
    let subscribers = Subscribers::new();
    let mut stream = subscribers.stream::<Tick>(16);
    let poller = subscribers.poller::<Tick>(16);
    let bus = meeting.builder(&subscribers).connect().await.unwrap();
    for id in 0..3 {
        bus.publish_confirmed(&tick(id)).await.unwrap();
    }
    let first = tokio::time::timeout(STALL, stream.next())
        .await
        .expect("no event on the stream")
        .expect("the stream ended early")
        .unwrap();
    assert_eq!(first.id, 0);
    // Close stops handling: wait until all three were handled.
    progress_until("the bus handling 3 events", || {
        let n = bus.stats().handled;
        (n, n >= 3)
    })
    .await;
    close_within(&bus, "the bus").await.unwrap();
    let mut rest = Vec::new();
    loop {
        match tokio::time::timeout(STALL, stream.next()).await {
            Ok(Some(event)) => rest.push(event.unwrap().id),
            Ok(None) => break,
            Err(_) => {
                panic!("the stream did not end within {STALL:?} of the bus closing (got {rest:?})")
            }
        }
    }
    assert_eq!(rest, [1, 2], "what was buffered comes before the end");
    let polled = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut got = Vec::new();
        while let Ok(Some(event)) = poller.recv_timeout(STALL) {
            got.push(event.id);
        }
        (got, started.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(polled.0, [0, 1, 2]);
    assert!(
        polled.1 < STALL,
        "the poller waited out its timeout instead of ending with the bus"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_streams_and_pollers_end_when_the_bus_closes() {
    streams_and_pollers_end_when_the_bus_closes(Meeting::memory(configs::base())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_streams_and_pollers_end_when_the_bus_closes() {
    streams_and_pollers_end_when_the_bus_closes(Meeting::amqp(configs::base())).await;
}

// ---------------------------------------------------------------------------
// 5. The matrix: one test per (transport, configuration, case)
// ---------------------------------------------------------------------------

/// Emits the items when the capability list holds `once` (dedup on: the
/// bus promises an event reaches its handlers once per bus).
macro_rules! has_once {
    ([once $($rest:ident)*] $($then:tt)*) => { $($then)* };
    ([$other:ident $($rest:ident)*] $($then:tt)*) => { has_once!([$($rest)*] $($then)*); };
    ([] $($then:tt)*) => {};
}

/// Emits the items when the capabilities hold every need; otherwise
/// nothing: a configuration that cannot support a case has no test for it.
macro_rules! needs {
    ($caps:tt [] $($item:tt)*) => { $($item)* };
    ($caps:tt [once $($more:ident)*] $($item:tt)*) => {
        has_once!($caps needs!($caps [$($more)*] $($item)*););
    };
}

macro_rules! cases {
    ($transport:ident, $config:ident, $caps:tt, { $($case:ident needs [$($need:ident)*]),* $(,)? }) => {
        $(
            needs!($caps [$($need)*]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::$case(crate::Meeting::$transport(crate::configs::$config())).await;
                }
            );
        )*
    };
}

macro_rules! matrix {
    ($cases:tt; $($transport:ident: { $($config:ident $caps:tt),* $(,)? })*) => {
        $(
            mod $transport {
                $(
                    mod $config {
                        cases!($transport, $config, $caps, $cases);
                    }
                )*
            }
        )*
    };
}

matrix! {
    {
        concurrent_publishers_on_one_bus needs [once],
        concurrent_publishers_on_five_buses needs [once],
        churning_group_members needs [],
        concurrent_create_and_close needs [],
        two_groups_each_get_the_full_stream needs [],
    };
    // The memory transport has no prefetch, codec choice or exchange kind.
    memory: {
        base [once],
        dedup_off [],
        concurrency_4 [once],
    }
    amqp: {
        base [once],
        topic [once],
        prefetch_1 [once],
        json [once],
        dedup_off [],
        concurrency_4 [once],
    }
}
