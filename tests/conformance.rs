//! One behavioural suite, run against every transport (as Watermill runs its
//! pub/sub conformance tests against each driver), so the in-memory
//! transport cannot drift from RabbitMQ.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{
    AmqpProps, Bus, BusBuilder, CallOptions, Compression, Context, Decision, ErrorKind, Event,
    ExchangeKind, FaultPlan, Faults, Lagged, Listen, PublishOptions, ReceiptOutcome, Request,
    ServeOptions, Server, Subscribers,
};
use tokio_stream::StreamExt;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "conformance.order_placed")]
struct OrderPlaced {
    id: u64,
    item: String,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(
    name = "conformance.order_shipped",
    routing_key = "conformance.shipping"
)]
struct OrderShipped {
    id: u64,
    carrier: Option<String>,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "conformance.user_event")]
enum UserEvent {
    Joined { name: String },
    Left(String),
}

/// Where the buses of one test meet: a fresh in-memory hub or a fresh topic
/// exchange on the broker.
///
/// With `faults`, every bus of the meeting goes through a [`Faults`]
/// transport that duplicates, reorders and delays deliveries and drops the
/// connection now and then (a seeded schedule): at-least-once delivery and
/// the dedup window must still give each handler each event once.
#[derive(Clone)]
enum Meeting {
    Memory(String, bool),
    Amqp(Box<tidings::AmqpProps>, bool),
}

/// The seed of the fault schedule: `TIDINGS_FAULT_SEED`, else fixed.
fn fault_seed() -> u64 {
    std::env::var("TIDINGS_FAULT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(20)
}

/// Registers `faults-memory://` and `faults-amqp://...` once: the memory
/// and RabbitMQ transports wrapped in a fault injector.
fn register_fault_drivers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tidings::register_driver("faults-memory", |endpoint: tidings::Endpoint| {
            Box::pin(async move {
                let name = endpoint
                    .url
                    .trim_start_matches("faults-memory://")
                    .to_owned();
                let inner = Arc::new(tidings::MemoryTransport::named(&name));
                let faults: Arc<dyn tidings::Transport> =
                    Faults::wrap(inner, FaultPlan::chaos(fault_seed()));
                Ok(faults)
            })
        })
        .unwrap();
        tidings::register_driver("faults-amqp", |endpoint: tidings::Endpoint| {
            Box::pin(async move {
                let url = endpoint.url.trim_start_matches("faults-").to_owned();
                let props = AmqpProps::from_url(&url)?;
                let inner = Arc::new(tidings::AmqpTransport::open(&props, &endpoint).await?);
                let faults: Arc<dyn tidings::Transport> =
                    Faults::wrap(inner, FaultPlan::chaos(fault_seed()));
                Ok(faults)
            })
        })
        .unwrap();
    });
}

impl Meeting {
    fn memory() -> Self {
        Self::Memory(format!("memory://{}", common::unique("hub")), false)
    }

    fn amqp() -> Self {
        Self::Amqp(Box::new(common::props(ExchangeKind::Topic)), false)
    }

    fn faults_memory() -> Self {
        register_fault_drivers();
        Self::Memory(format!("memory://{}", common::unique("hub")), true)
    }

    fn faults_amqp() -> Self {
        register_fault_drivers();
        Self::Amqp(Box::new(common::props(ExchangeKind::Topic)), true)
    }

    /// Whether the transport delivers each message once and in order (the
    /// fault injector duplicates and reorders; the bus still handles each
    /// once).
    fn faithful(&self) -> bool {
        matches!(self, Self::Memory(_, false) | Self::Amqp(_, false))
    }

    /// `seen` as the order to compare with: as it came where the transport
    /// keeps order, sorted where the fault injector reorders (each once
    /// either way).
    fn as_ordered<T: Ord>(&self, mut seen: Vec<T>) -> Vec<T> {
        if !self.faithful() {
            seen.sort();
        }
        seen
    }

    fn builder(&self, subscribers: &Subscribers) -> BusBuilder {
        let builder = match self {
            Self::Memory(url, false) => Bus::builder(url).unwrap(),
            Self::Memory(url, true) => Bus::builder(&format!("faults-{url}")).unwrap(),
            Self::Amqp(props, false) => Bus::with_props(AmqpProps::clone(props)),
            Self::Amqp(props, true) => {
                // The URL carries every setting the tests change.
                let url = format!(
                    "faults-amqp://guest:guest@{}:{}/%2f?exchange={}&kind=topic",
                    props.host(),
                    props.port(),
                    props.exchange()
                );
                Bus::builder(&url).unwrap()
            }
        };
        builder.subscribers(subscribers.clone())
    }

    async fn bus(&self, subscribers: &Subscribers) -> Bus {
        self.builder(subscribers).connect().await.unwrap()
    }

    /// A bus that only publishes.
    async fn publisher(&self) -> Bus {
        self.builder(&Subscribers::new())
            .publish_only()
            .connect()
            .await
            .unwrap()
    }

    fn cleanup(&self) -> Option<common::Cleanup> {
        match self {
            Self::Memory(..) => None,
            Self::Amqp(props, _) => Some(common::Cleanup::new(props)),
        }
    }

    /// Cleans up a group's durable queue as well.
    fn cleanup_group(&self, group: &str) -> Option<common::Cleanup> {
        let cleanup = self.cleanup();
        if let (Some(cleanup), Self::Amqp(props, _)) = (&cleanup, self) {
            cleanup.queue(&format!("{}.{group}", props.exchange()));
        }
        cleanup
    }
}

/// Collects what a handler sees, and waits for a count.
#[derive(Clone)]
struct Seen<T>(Arc<Mutex<Vec<T>>>);

impl<T> Default for Seen<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T: Clone + Send + 'static> Seen<T> {
    fn push(&self, value: T) {
        self.0.lock().unwrap().push(value);
    }

    fn get(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<T> {
        let arrived = common::eventually(Duration::from_secs(20), || {
            self.0.lock().unwrap().len() >= count
        })
        .await;
        let seen = self.get();
        assert!(arrived, "expected {count} events, got {}", seen.len());
        seen
    }
}

async fn broadcast_reaches_every_bus_once_in_order(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let (here, there) = (Subscribers::new(), Subscribers::new());
    let (seen_here, seen_there) = (Seen::default(), Seen::default());
    let (a, b) = (seen_here.clone(), seen_there.clone());
    let _g1 = here.subscribe(move |e: &OrderPlaced| a.push(e.id));
    let _g2 = there.subscribe(move |e: &OrderPlaced| b.push(e.id));
    let publisher = meeting.bus(&here).await;
    let listener = meeting.bus(&there).await;
    for id in 0..200 {
        publisher
            .publish(&OrderPlaced {
                id,
                item: "tea".into(),
            })
            .await
            .unwrap();
    }
    let expected: Vec<u64> = (0..200).collect();
    assert_eq!(meeting.as_ordered(seen_there.wait_for(200).await), expected);
    assert_eq!(
        meeting.as_ordered(seen_here.wait_for(200).await),
        expected,
        "self-delivery is on by default"
    );
    publisher.close().await.unwrap();
    listener.close().await.unwrap();
    assert_eq!(seen_there.get().len(), 200, "no duplicates");
    let stats = publisher.stats();
    assert_eq!(
        (stats.published, stats.confirmed, stats.publish_failed),
        (200, 200, 0)
    );
    assert_eq!(listener.stats().dispatched, 200);
}

async fn self_delivery_off_skips_own_events_only(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let (here, there) = (Subscribers::new(), Subscribers::new());
    let (seen_here, seen_there) = (Seen::default(), Seen::default());
    let (a, b) = (seen_here.clone(), seen_there.clone());
    let _g1 = here.subscribe(move |e: &OrderPlaced| a.push(e.id));
    let _g2 = there.subscribe(move |e: &OrderPlaced| b.push(e.id));
    let quiet = meeting
        .builder(&here)
        .self_delivery(false)
        .connect()
        .await
        .unwrap();
    let other = meeting.bus(&there).await;
    quiet
        .publish_confirmed(&OrderPlaced {
            id: 1,
            item: "x".into(),
        })
        .await
        .unwrap();
    other
        .publish_confirmed(&OrderPlaced {
            id: 2,
            item: "y".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        seen_here.wait_for(1).await,
        [2],
        "own event skipped, the other's received"
    );
    let mut there_ids = seen_there.wait_for(2).await;
    there_ids.sort_unstable();
    assert_eq!(there_ids, [1, 2]);
    quiet.close().await.unwrap();
    other.close().await.unwrap();
    assert_eq!(quiet.stats().own_skipped, 1);
    assert_eq!(seen_here.get(), [2]);
}

async fn typed_subscribers_get_only_their_type(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let placed = Seen::default();
    let shipped = Seen::default();
    let users = Seen::default();
    let all = Seen::default();
    let (p, s, u, a) = (placed.clone(), shipped.clone(), users.clone(), all.clone());
    let _g = (
        subscribers.subscribe(move |e: &OrderPlaced| p.push(e.clone())),
        subscribers.subscribe_with(move |e: &OrderShipped, ctx: &Context| {
            s.push((e.clone(), ctx.routing_key().to_owned()))
        }),
        subscribers.subscribe(move |e: &UserEvent| u.push(e.clone())),
        subscribers.subscribe_all(move |e: &dyn Event, _: &Context| a.push(e.tag())),
    );
    let bus = meeting.bus(&subscribers).await;
    bus.publish(&OrderPlaced {
        id: 1,
        item: "tea".into(),
    })
    .await
    .unwrap();
    bus.publish(&OrderShipped {
        id: 1,
        carrier: Some("ups".into()),
    })
    .await
    .unwrap();
    bus.publish(&UserEvent::Joined { name: "ada".into() })
        .await
        .unwrap();
    bus.publish(&UserEvent::Left("bob".into())).await.unwrap();
    assert_eq!(
        meeting.as_ordered(all.wait_for(4).await),
        [
            "conformance.order_placed",
            "conformance.order_shipped",
            "conformance.user_event",
            "conformance.user_event"
        ]
    );
    assert_eq!(
        placed.get(),
        [OrderPlaced {
            id: 1,
            item: "tea".into()
        }]
    );
    assert_eq!(
        shipped.get(),
        [(
            OrderShipped {
                id: 1,
                carrier: Some("ups".into())
            },
            "conformance.shipping".to_owned()
        )]
    );
    let mut users = users.get();
    if !meeting.faithful() && matches!(users.first(), Some(UserEvent::Left(_))) {
        users.reverse();
    }
    assert_eq!(
        users,
        [
            UserEvent::Joined { name: "ada".into() },
            UserEvent::Left("bob".into())
        ]
    );
    bus.close().await.unwrap();
}

async fn dropping_the_guard_unsubscribes(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let kept = Seen::default();
    let dropped = Arc::new(AtomicUsize::new(0));
    let (k, d) = (kept.clone(), dropped.clone());
    let _keep = subscribers.subscribe(move |e: &OrderPlaced| k.push(e.id));
    let guard = subscribers.subscribe(move |_: &OrderPlaced| {
        d.fetch_add(1, Ordering::SeqCst);
    });
    let bus = meeting.bus(&subscribers).await;
    bus.publish(&OrderPlaced {
        id: 1,
        item: String::new(),
    })
    .await
    .unwrap();
    kept.wait_for(1).await;
    drop(guard);
    bus.publish(&OrderPlaced {
        id: 2,
        item: String::new(),
    })
    .await
    .unwrap();
    kept.wait_for(2).await;
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    bus.close().await.unwrap();
}

async fn a_panicking_handler_does_not_stop_the_others(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let s = seen.clone();
    let _g = (
        subscribers.subscribe(|e: &OrderPlaced| {
            if e.id == 1 {
                panic!("handler panics on 1");
            }
        }),
        subscribers.subscribe(|e: &OrderPlaced| {
            if e.id == 2 {
                Err("handler fails on 2")
            } else {
                Ok(())
            }
        }),
        subscribers.subscribe(move |e: &OrderPlaced| s.push(e.id)),
    );
    let bus = meeting.bus(&subscribers).await;
    for id in 1..=3 {
        bus.publish(&OrderPlaced {
            id,
            item: String::new(),
        })
        .await
        .unwrap();
    }
    let seen = seen.wait_for(3).await;
    if !meeting.faithful() {
        // A failed attempt is not remembered by the dedup window, so a
        // duplicate of one runs the handlers again: each event at least
        // once, and the failures at least once each.
        let mut distinct = meeting.as_ordered(seen);
        distinct.dedup();
        assert_eq!(distinct, [1, 2, 3]);
        bus.close().await.unwrap();
        assert!(bus.stats().handler_failures >= 2);
        return;
    }
    assert_eq!(seen, [1, 2, 3]);
    bus.close().await.unwrap();
    let stats = bus.stats();
    assert_eq!(stats.handler_failures, 2);
    assert_eq!(stats.dispatched, 3);
}

async fn async_handlers_run_in_order_with_context(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let s = seen.clone();
    let _g = subscribers.subscribe_async(move |e: Arc<OrderShipped>, ctx: Context| {
        let s = s.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            s.push((
                e.id,
                ctx.routing_key().to_owned(),
                ctx.origin().map(str::to_owned),
                ctx.is_remote(),
            ));
        }
    });
    let bus = meeting.bus(&subscribers).await;
    for id in 0..5 {
        bus.publish(&OrderShipped { id, carrier: None })
            .await
            .unwrap();
    }
    let seen = seen.wait_for(5).await;
    let origin = Some(bus.instance_id().to_owned());
    let expected: Vec<_> = (0..5)
        .map(|id| (id, "conformance.shipping".to_owned(), origin.clone(), true))
        .collect();
    assert_eq!(meeting.as_ordered(seen), expected);
    bus.close().await.unwrap();
}

async fn a_lagging_stream_is_told_and_stays_bounded(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let mut stream = subscribers.stream::<OrderPlaced>(4);
    let counted = Seen::default();
    let c = counted.clone();
    let _g = subscribers.subscribe(move |e: &OrderPlaced| c.push(e.id));
    let bus = meeting.bus(&subscribers).await;
    for id in 0..20 {
        bus.publish(&OrderPlaced {
            id,
            item: String::new(),
        })
        .await
        .unwrap();
    }
    counted.wait_for(20).await; // all dispatched while the stream was not read
    assert_eq!(stream.next().await.unwrap(), Err(Lagged(16)));
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(stream.next().await.unwrap().unwrap().id);
    }
    if meeting.faithful() {
        assert_eq!(got, [16, 17, 18, 19], "the newest events are kept");
    } else {
        // Reordered: the four that came last, each once.
        got.dedup();
        assert_eq!(got.len(), 4, "{got:?}");
    }
    bus.close().await.unwrap();
}

async fn closed_bus_refuses_to_publish(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let bus = meeting.bus(&Subscribers::new()).await;
    let clone = bus.clone();
    bus.close().await.unwrap();
    clone.close().await.expect("closing twice is fine");
    let err = clone
        .publish(&OrderPlaced {
            id: 1,
            item: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.is_closed(), "{err}");
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "conformance.user_joined", routing_key = "users.joined")]
struct UserJoined {
    id: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "conformance.order_paid", routing_key = "orders.paid")]
struct OrderPaid {
    id: u64,
}

async fn a_group_shares_the_work_each_event_once(meeting: Meeting) {
    let _cleanup = meeting.cleanup_group("billing");
    let publisher = meeting.publisher().await;
    let all = Seen::default();
    let mut members = Vec::new();
    let mut shares = Vec::new();
    for _ in 0..3 {
        let subscribers = Subscribers::new();
        let (share, total) = (Seen::default(), all.clone());
        let s = share.clone();
        subscribers
            .subscribe(move |e: &OrderPaid| {
                s.push(e.id);
                total.push(e.id);
            })
            .forget();
        let member = meeting
            .builder(&subscribers)
            .listen(Listen::group("billing"))
            .connect()
            .await
            .unwrap();
        members.push(member);
        shares.push(share);
    }
    for id in 0..3000 {
        publisher.publish(&OrderPaid { id }).await.unwrap();
    }
    let mut ids = all.wait_for(3000).await;
    for member in &members {
        member.close().await.unwrap();
    }
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..3000).collect::<Vec<_>>(),
        "every event handled exactly once across the group"
    );
    let counts: Vec<usize> = shares.iter().map(|s| s.get().len()).collect();
    println!("3,000 events over 3 members: {counts:?}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "every member handled a share: {counts:?}"
    );
    publisher.close().await.unwrap();
}

async fn a_group_gets_what_was_published_while_it_was_down(meeting: Meeting) {
    let _cleanup = meeting.cleanup_group("late");
    let publisher = meeting.publisher().await;
    let first = meeting
        .builder(&Subscribers::new())
        .listen(Listen::group("late"))
        .connect()
        .await
        .unwrap();
    first.close().await.unwrap(); // the group queue now exists, with no member
    for id in 0..50 {
        publisher
            .publish_confirmed(&OrderPaid { id })
            .await
            .unwrap();
    }
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let s = seen.clone();
    let _g = subscribers.subscribe(move |e: &OrderPaid| s.push(e.id));
    let second = meeting
        .builder(&subscribers)
        .listen(Listen::group("late"))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        meeting.as_ordered(seen.wait_for(50).await),
        (0..50).collect::<Vec<_>>()
    );
    second.close().await.unwrap();
    publisher.close().await.unwrap();
}

async fn routing_keys_filter_what_a_listener_receives(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let s = seen.clone();
    let _g = subscribers.subscribe_all(move |e: &dyn Event, ctx: &Context| {
        s.push((e.tag(), ctx.routing_key().to_owned()))
    });
    let orders = meeting
        .builder(&subscribers)
        .listen(Listen::broadcast().pattern("orders.*"))
        .connect()
        .await
        .unwrap();
    let publisher = meeting.publisher().await;
    for id in 0..10 {
        publisher.publish(&UserJoined { id }).await.unwrap();
        publisher.publish(&OrderPaid { id }).await.unwrap();
    }
    publisher
        .publish_confirmed(&OrderPaid { id: 10 })
        .await
        .unwrap();
    let seen = seen.wait_for(11).await;
    assert!(
        seen.iter()
            .all(|(tag, key)| *tag == "conformance.order_paid" && key == "orders.paid"),
        "{seen:?}"
    );
    orders.close().await.unwrap();
    // Counted where messages arrive from the transport: the filtering
    // happened before this process.
    let delivered = orders.stats().delivered;
    if meeting.faithful() {
        assert_eq!(delivered, 11);
    } else {
        assert!(delivered >= 11, "{delivered} deliveries");
    }
    publisher.close().await.unwrap();
}

async fn a_failing_handler_is_retried_with_the_attempt_count(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let attempts = Seen::default();
    let a = attempts.clone();
    let _g = subscribers.subscribe_with(move |e: &OrderPaid, ctx: &Context| {
        a.push((e.id, ctx.attempt()));
        if e.id == 1 && ctx.attempt() < 3 {
            Err("not yet")
        } else {
            Ok(())
        }
    });
    let bus = meeting
        .builder(&subscribers)
        .retry_delay(Duration::from_millis(20))
        .max_attempts(5)
        .connect()
        .await
        .unwrap();
    bus.publish(&OrderPaid { id: 1 }).await.unwrap();
    bus.publish(&OrderPaid { id: 2 }).await.unwrap();
    let seen = attempts.wait_for(4).await;
    if !meeting.faithful() {
        // Duplicated and reordered: event 1 still reaches its third
        // attempt, and event 2 is handled at its first.
        common::eventually(Duration::from_secs(20), || attempts.get().contains(&(1, 3))).await;
        let seen = attempts.get();
        assert!(seen.contains(&(1, 3)) && seen.contains(&(2, 1)), "{seen:?}");
        bus.close().await.unwrap();
        return;
    }
    // The second event was not held up behind the first one's retries.
    assert_eq!(seen[1], (2, 1), "{seen:?}");
    assert_eq!(
        seen.iter()
            .filter(|(id, _)| *id == 1)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    bus.close().await.unwrap();
    let stats = bus.stats();
    assert_eq!(
        (stats.retried, stats.dead_lettered, stats.handler_failures),
        (2, 0, 2)
    );
}

async fn a_cancelled_listener_stops_while_another_goes_on(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let s = seen.clone();
    let _g = subscribers.subscribe_all(move |e: &dyn Event, _: &Context| s.push(e.tag()));
    let bus = meeting
        .builder(&subscribers)
        .publish_only()
        .connect()
        .await
        .unwrap();
    let orders = bus
        .listen(&Listen::broadcast().event::<OrderPaid>())
        .await
        .unwrap();
    let _users = bus
        .listen(&Listen::broadcast().event::<UserJoined>())
        .await
        .unwrap();
    bus.publish(&OrderPaid { id: 1 }).await.unwrap();
    bus.publish(&UserJoined { id: 1 }).await.unwrap();
    seen.wait_for(2).await;
    orders.cancel().await.unwrap();
    bus.publish(&OrderPaid { id: 2 }).await.unwrap();
    bus.publish(&UserJoined { id: 2 }).await.unwrap();
    let seen = seen.wait_for(3).await;
    assert_eq!(seen[2], "conformance.user_joined");
    bus.close().await.unwrap();
    assert_eq!(
        bus.stats().dispatched,
        3,
        "nothing more arrived for the cancelled listener"
    );
}

async fn send_to_reaches_one_named_queue(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let inbox = common::unique("inbox");
    let (mine, others) = (Subscribers::new(), Subscribers::new());
    let (seen_mine, seen_others) = (Seen::default(), Seen::default());
    let (a, b) = (seen_mine.clone(), seen_others.clone());
    let _g1 = mine.subscribe(move |e: &OrderPaid| a.push(e.id));
    let _g2 = others.subscribe(move |e: &OrderPaid| b.push(e.id));
    let receiver = meeting
        .builder(&mine)
        .listen(Listen::queue(&inbox))
        .connect()
        .await
        .unwrap();
    let bystander = meeting.bus(&others).await;
    let sender = meeting.publisher().await;
    sender.send_to(&inbox, &OrderPaid { id: 7 }).await.unwrap();
    let missing = sender
        .send_to(&common::unique("nobody"), &OrderPaid { id: 9 })
        .await
        .unwrap_err();
    assert_eq!(
        missing.kind(),
        tidings::ErrorKind::Unroutable,
        "a queue nobody declared: {missing}"
    );
    assert_eq!(sender.stats().returned, 1, "{:?}", sender.stats());
    sender
        .publish_confirmed(&OrderPaid { id: 8 })
        .await
        .unwrap();
    assert_eq!(seen_mine.wait_for(1).await, [7]);
    assert_eq!(
        seen_others.wait_for(1).await,
        [8],
        "the bystander only gets the broadcast"
    );
    for bus in [receiver, bystander, sender] {
        bus.close().await.unwrap();
    }
    assert_eq!(
        seen_mine.get(),
        [7],
        "the named queue is not bound to the exchange"
    );
    if let Meeting::Amqp(props, _) = &meeting {
        let conn = tidings::Connection::connect(props).await.unwrap();
        conn.delete_queue(&inbox).await.unwrap();
        conn.close().await.unwrap();
    }
}

/// What a handler saw of an event's context.
#[derive(Debug, Clone, PartialEq)]
struct Seen3 {
    message_id: Option<String>,
    correlation: Option<String>,
    causation: Option<String>,
    tenant: Option<String>,
}

impl Seen3 {
    fn of(ctx: &Context) -> Self {
        Self {
            message_id: ctx.message_id().map(str::to_owned),
            correlation: ctx.correlation_id().map(str::to_owned),
            causation: ctx.causation_id().map(str::to_owned),
            tenant: ctx.header("tenant").map(str::to_owned),
        }
    }
}

/// Application headers reach the handlers; an event published inside a
/// handler continues the handled event's conversation (its correlation
/// id, the handled event's message id as causation); an explicit
/// correlation id starts one of the caller's choosing; tidings' own header
/// names are refused.
async fn headers_and_the_conversation_cross_with_the_event(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let placed = Seen::default();
    let shipped = Seen::default();
    let bus_slot: Arc<std::sync::OnceLock<Bus>> = Arc::default();
    let (p, slot) = (placed.clone(), bus_slot.clone());
    let _g1 = subscribers.subscribe_async(move |e: Arc<OrderPlaced>, ctx: Context| {
        let (p, slot) = (p.clone(), slot.clone());
        async move {
            p.push(Seen3::of(&ctx));
            assert_eq!(
                Context::current().and_then(|c| c.message_id().map(str::to_owned)),
                ctx.message_id().map(str::to_owned),
                "Context::current inside a handler is the handled event's"
            );
            let bus = slot.get().expect("the bus is set before publishing");
            bus.publish(&OrderShipped {
                id: e.id,
                carrier: None,
            })
            .await
            .unwrap();
        }
    });
    let s = shipped.clone();
    let _g2 = subscribers.subscribe_with(move |_: &OrderShipped, ctx: &Context| {
        s.push(Seen3::of(ctx));
    });
    let bus = meeting.bus(&subscribers).await;
    bus_slot.set(bus.clone()).unwrap();

    let refused = bus
        .publish_with(
            &OrderPlaced {
                id: 0,
                item: "x".into(),
            },
            &PublishOptions::new().header("x-correlation-id", "forged"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.kind(),
        tidings::ErrorKind::InvalidConfig,
        "{refused}"
    );

    let tenant = PublishOptions::new().header("tenant", "acme").confirm(true);
    bus.publish_with(
        &OrderPlaced {
            id: 1,
            item: "tea".into(),
        },
        &tenant,
    )
    .await
    .unwrap();
    let first = placed.wait_for(1).await.remove(0);
    assert_eq!(first.tenant.as_deref(), Some("acme"));
    assert!(first.message_id.is_some());
    assert_eq!(first.correlation, first.message_id, "a new conversation");
    assert_eq!(first.causation, None);
    let reaction = shipped.wait_for(1).await.remove(0);
    assert_eq!(reaction.correlation, first.message_id);
    assert_eq!(reaction.causation, first.message_id);
    assert_eq!(
        reaction.tenant, None,
        "headers are the publisher's, per event"
    );

    let chosen = PublishOptions::new().correlation_id("checkout-7");
    bus.publish_with(
        &OrderPlaced {
            id: 2,
            item: "cake".into(),
        },
        &chosen,
    )
    .await
    .unwrap();
    let second = placed.wait_for(2).await.remove(1);
    assert_eq!(second.correlation.as_deref(), Some("checkout-7"));
    let reaction = shipped.wait_for(2).await.remove(1);
    assert_eq!(reaction.correlation.as_deref(), Some("checkout-7"));
    assert_eq!(reaction.causation, second.message_id);
    bus.close().await.unwrap();
}

/// A connected bus is ready and live with its listener consuming; a
/// cancelled listener is no longer listed; a closed bus is neither.
async fn health_tells_connected_consuming_and_closed(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let bus = meeting.bus(&subscribers).await;
    let health = bus.health();
    assert!(health.is_ready(), "{health:?}");
    assert!(health.is_live(), "{health:?}");
    assert_eq!(health.listeners.len(), 1, "{health:?}");
    assert!(health.listeners[0].consuming);
    assert_eq!(health.last_error, None);
    let extra = bus.listen(&Listen::broadcast()).await.unwrap();
    assert_eq!(bus.health().listeners.len(), 2);
    extra.cancel().await.unwrap();
    assert_eq!(
        bus.health().listeners.len(),
        1,
        "a cancelled listener is not listed"
    );
    bus.close().await.unwrap();
    let health = bus.health();
    assert!(
        !health.is_ready() && !health.is_live() && health.closed,
        "{health:?}"
    );
}

// Request and reply.

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "conformance.rpc.add")]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "conformance.rpc.sum")]
struct Sum {
    value: i64,
    by: String,
}

impl Request for Add {
    type Reply = Sum;
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "conformance.rpc.slow")]
struct Slow {
    millis: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "conformance.rpc.done")]
struct Done;

impl Request for Slow {
    type Reply = Done;
}

#[derive(Debug)]
struct OutOfStock(String);

impl std::fmt::Display for OutOfStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "out of stock: {}", self.0)
    }
}

/// A server of `Add` that says who it is and counts what it handled.
async fn adder(bus: &Bus, options: ServeOptions, name: &str, count: Arc<AtomicUsize>) -> Server {
    let name = name.to_owned();
    bus.serve_with(options, move |add: Arc<Add>| {
        let (name, count) = (name.clone(), count.clone());
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            Ok::<_, OutOfStock>(Sum {
                value: add.a + add.b,
                by: name,
            })
        }
    })
    .await
    .unwrap()
}

async fn rpc_bus(meeting: &Meeting) -> Bus {
    meeting.publisher().await
}

async fn a_call_gets_the_typed_reply(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let (server_bus, caller) = (rpc_bus(&meeting).await, rpc_bus(&meeting).await);
    let _server = adder(&server_bus, ServeOptions::new(), "s", Arc::default()).await;
    let sum = caller.call(&Add { a: 40, b: 2 }).await.unwrap();
    assert_eq!(
        sum,
        Sum {
            value: 42,
            by: "s".into()
        }
    );
    caller.close().await.unwrap();
    server_bus.close().await.unwrap();
}

async fn a_hundred_concurrent_calls_are_matched(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let (server_bus, caller) = (rpc_bus(&meeting).await, rpc_bus(&meeting).await);
    let _server = adder(&server_bus, ServeOptions::new(), "s", Arc::default()).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..100i64 {
        let caller = caller.clone();
        calls.spawn(async move { (n, caller.call(&Add { a: n, b: 1000 }).await) });
    }
    let mut answered = 0;
    while let Some(done) = calls.join_next().await {
        let (n, sum) = done.unwrap();
        assert_eq!(sum.unwrap().value, n + 1000, "call {n} got another's reply");
        answered += 1;
    }
    assert_eq!(answered, 100);
    caller.close().await.unwrap();
    server_bus.close().await.unwrap();
}

async fn two_servers_share_the_load(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let (one, two, caller) = (
        rpc_bus(&meeting).await,
        rpc_bus(&meeting).await,
        rpc_bus(&meeting).await,
    );
    let (count_one, count_two) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let _s1 = adder(
        &one,
        ServeOptions::new().concurrency(1),
        "one",
        count_one.clone(),
    )
    .await;
    let _s2 = adder(
        &two,
        ServeOptions::new().concurrency(1),
        "two",
        count_two.clone(),
    )
    .await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..200i64 {
        let caller = caller.clone();
        calls.spawn(async move { caller.call(&Add { a: n, b: 0 }).await.unwrap().by });
    }
    let mut by = std::collections::HashMap::<String, usize>::new();
    while let Some(done) = calls.join_next().await {
        *by.entry(done.unwrap()).or_default() += 1;
    }
    assert_eq!(by.values().sum::<usize>(), 200);
    assert!(by.get("one").copied().unwrap_or(0) > 0, "{by:?}");
    assert!(by.get("two").copied().unwrap_or(0) > 0, "{by:?}");
    let handled = count_one.load(Ordering::SeqCst) + count_two.load(Ordering::SeqCst);
    if meeting.faithful() {
        assert_eq!(handled, 200, "each call handled once");
    } else {
        assert!(handled >= 200, "duplicated deliveries are handled again");
    }
    for bus in [caller, one, two] {
        bus.close().await.unwrap();
    }
}

async fn a_server_is_called_by_name(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let (a, b, caller) = (
        rpc_bus(&meeting).await,
        rpc_bus(&meeting).await,
        rpc_bus(&meeting).await,
    );
    let _sa = adder(&a, ServeOptions::new().name("a"), "a", Arc::default()).await;
    let _sb = adder(
        &b,
        ServeOptions::new().name("b").shared(false),
        "b",
        Arc::default(),
    )
    .await;
    for n in 0..20 {
        let to_b = CallOptions::new().server("b");
        assert_eq!(
            caller
                .call_with(&Add { a: n, b: 0 }, &to_b)
                .await
                .unwrap()
                .by,
            "b"
        );
        let to_a = CallOptions::new().server("a");
        assert_eq!(
            caller
                .call_with(&Add { a: n, b: 0 }, &to_a)
                .await
                .unwrap()
                .by,
            "a"
        );
        // b serves its name only: the shared queue is a's.
        assert_eq!(caller.call(&Add { a: n, b: 0 }).await.unwrap().by, "a");
    }
    let nobody = CallOptions::new().server("c");
    let err = caller
        .call_with(&Add { a: 1, b: 1 }, &nobody)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoResponder, "{err}");
    for bus in [caller, a, b] {
        bus.close().await.unwrap();
    }
}

async fn no_server_fails_at_once_with_no_responder(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let caller = rpc_bus(&meeting).await;
    // The first call opens the reply channel; time a later one too.
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let err = caller.call(&Add { a: 1, b: 2 }).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoResponder, "{err}");
        assert!(
            err.to_string()
                .contains("no server for conformance.rpc.add"),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "took {:?}",
            started.elapsed()
        );
    }
    // A server that stopped leaves no queue behind to swallow calls.
    let server_bus = rpc_bus(&meeting).await;
    let server = adder(&server_bus, ServeOptions::new(), "s", Arc::default()).await;
    assert_eq!(caller.call(&Add { a: 1, b: 2 }).await.unwrap().value, 3);
    server.stop().await;
    let started = std::time::Instant::now();
    let err = caller.call(&Add { a: 1, b: 2 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoResponder, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "took {:?}",
        started.elapsed()
    );
    caller.close().await.unwrap();
    server_bus.close().await.unwrap();
}

async fn a_failing_server_is_a_remote_error(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let (server_bus, caller) = (rpc_bus(&meeting).await, rpc_bus(&meeting).await);
    let _server = server_bus
        .serve(|add: Arc<Add>| async move {
            if add.a < 0 {
                panic!("secret internals {}", add.a);
            }
            Err::<Sum, _>(OutOfStock(format!("sku {}", add.a)))
        })
        .await
        .unwrap();
    let err = caller.call(&Add { a: 7, b: 0 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote, "{err}");
    assert!(err.to_string().contains("out of stock: sku 7"), "{err}");
    assert!(
        err.remote_type().unwrap().ends_with("OutOfStock"),
        "{err:?}"
    );
    let err = caller.call(&Add { a: -1, b: 0 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote, "{err}");
    assert_eq!(err.remote_type(), Some("panic"));
    assert!(
        !err.to_string().contains("secret"),
        "a panic's payload leaked: {err}"
    );
    // The server goes on.
    let err = caller.call(&Add { a: 8, b: 0 }).await.unwrap_err();
    assert!(err.to_string().contains("sku 8"), "{err}");
    caller.close().await.unwrap();
    server_bus.close().await.unwrap();
}

async fn serve_slow(bus: &Bus) -> Server {
    bus.serve(|slow: Arc<Slow>| async move {
        tokio::time::sleep(Duration::from_millis(slow.millis)).await;
        Ok::<_, OutOfStock>(Done)
    })
    .await
    .unwrap()
}

async fn a_call_times_out_and_the_late_reply_is_counted(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let (server_bus, caller) = (rpc_bus(&meeting).await, rpc_bus(&meeting).await);
    let _server = serve_slow(&server_bus).await;
    let started = std::time::Instant::now();
    let quick = CallOptions::new().timeout(Duration::from_millis(100));
    let err = caller
        .call_with(&Slow { millis: 400 }, &quick)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(300),
        "{took:?}"
    );
    assert!(
        common::eventually(Duration::from_secs(5), || caller.stats().late_replies >= 1).await,
        "the late reply was not counted"
    );
    // The bus still calls.
    assert_eq!(caller.call(&Slow { millis: 1 }).await.unwrap(), Done);
    caller.close().await.unwrap();
    server_bus.close().await.unwrap();
}

async fn dropping_a_call_cancels_it(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let (server_bus, caller) = (rpc_bus(&meeting).await, rpc_bus(&meeting).await);
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (s, r) = (started.clone(), release.clone());
    let _server = server_bus
        .serve(move |_: Arc<Slow>| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.notify_one();
                r.notified().await;
                Ok::<_, OutOfStock>(Done)
            }
        })
        .await
        .unwrap();
    let call = caller.call(&Slow { millis: 0 });
    tokio::select! {
        _ = call => panic!("the call finished before the server answered"),
        () = started.notified() => {}
    }
    // The call future is dropped: the reply that comes is late.
    release.notify_one();
    assert!(
        common::eventually(Duration::from_secs(5), || caller.stats().late_replies >= 1).await,
        "the reply to a dropped call was not dropped and counted"
    );
    caller.close().await.unwrap();
    server_bus.close().await.unwrap();
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "conformance.rpc.flush_cache")]
struct FlushCache {
    generation: u64,
}

/// Three buses handle `FlushCache`, one of them is closed (in-process
/// stand-in for a stopped process), one fails: the receipts name exactly
/// the two that are up, with their outcomes, within the wait.
async fn receipts_list_the_buses_that_handled_a_broadcast(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let publisher = rpc_bus(&meeting).await;
    let mut buses = Vec::new();
    let mut guards = Vec::new();
    for n in 0..3u64 {
        let subscribers = Subscribers::new();
        guards.push(subscribers.subscribe(move |e: &FlushCache| {
            if n == 1 && e.generation == 2 {
                Err("cache is locked")
            } else {
                Ok(())
            }
        }));
        buses.push(
            meeting
                .builder(&subscribers)
                .max_attempts(1)
                .connect()
                .await
                .unwrap(),
        );
    }
    let stopped = buses.pop().unwrap();
    stopped.close().await.unwrap();
    let started = std::time::Instant::now();
    let receipts = publisher
        .publish_with_receipts(&FlushCache { generation: 1 }, Duration::from_millis(1500))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(2500), "waited {waited:?}");
    let mut up: Vec<&str> = buses.iter().map(Bus::instance_id).collect();
    up.sort_unstable();
    assert_eq!(receipts.handled_by(), up, "{receipts:?}");
    assert_eq!(receipts.receipts.len(), 2, "{receipts:?}");
    assert!(
        receipts
            .receipts
            .iter()
            .all(|r| r.instance_id != stopped.instance_id())
    );
    // A failing handler answers with its error.
    let receipts = publisher
        .publish_with_receipts(&FlushCache { generation: 2 }, Duration::from_millis(1500))
        .await
        .unwrap();
    let failed: Vec<_> = receipts
        .receipts
        .iter()
        .filter_map(|r| match &r.outcome {
            ReceiptOutcome::Failed(why) => Some((r.instance_id.as_str(), why.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{receipts:?}");
    assert_eq!(failed[0].0, buses[1].instance_id());
    assert!(failed[0].1.contains("cache is locked"), "{failed:?}");
    assert_eq!(receipts.handled_by(), vec![buses[0].instance_id()]);
    publisher.close().await.unwrap();
    for bus in buses {
        bus.close().await.unwrap();
    }
}

/// A stream listener (`Listen::stream`): a reader that stops and comes
/// back handles what was published meanwhile, once; a new reader starting
/// at the beginning gets the whole history, one starting now only what
/// comes after.
async fn a_stream_reader_catches_up_and_new_readers_start_where_told(meeting: Meeting) {
    let cleanup = meeting.cleanup_group("replay");
    if let (Some(cleanup), Meeting::Amqp(props, _)) = (&cleanup, &meeting) {
        cleanup.queue(&format!("{}.replay.offset.c1", props.exchange()));
    }
    let reader = |start| {
        let subscribers = Subscribers::new();
        let seen = Seen::default();
        let s = seen.clone();
        let guard = subscribers.subscribe(move |e: &OrderPaid| s.push(e.id));
        let listen = Listen::stream("replay").start(start);
        (subscribers, seen, guard, listen)
    };
    let publisher = meeting.publisher().await;
    let (subscribers, seen, _g1, listen) = reader(tidings::StreamStart::Beginning);
    let first = meeting
        .builder(&subscribers)
        .listen(listen.consumer("c1"))
        .connect()
        .await
        .unwrap();
    for id in 0..20 {
        publisher
            .publish_confirmed(&OrderPaid { id })
            .await
            .unwrap();
    }
    assert_eq!(
        meeting.as_ordered(seen.wait_for(20).await),
        (0..20).collect::<Vec<_>>()
    );
    first.close().await.unwrap();
    for id in 20..50 {
        publisher
            .publish_confirmed(&OrderPaid { id })
            .await
            .unwrap();
    }
    let (subscribers, again, _g2, listen) = reader(tidings::StreamStart::Beginning);
    let second = meeting
        .builder(&subscribers)
        .listen(listen.consumer("c1"))
        .connect()
        .await
        .unwrap();
    let (subscribers, whole, _g3, listen) = reader(tidings::StreamStart::Beginning);
    let everything = meeting
        .builder(&subscribers)
        .listen(listen)
        .connect()
        .await
        .unwrap();
    let (subscribers, fresh, _g4, listen) = reader(tidings::StreamStart::Now);
    let now = meeting
        .builder(&subscribers)
        .listen(listen)
        .connect()
        .await
        .unwrap();
    // A marker: once a reader has it, nothing else is coming.
    publisher
        .publish_confirmed(&OrderPaid { id: 999 })
        .await
        .unwrap();
    let with_marker = |ids: std::ops::Range<u64>| ids.chain([999]).collect::<Vec<_>>();
    assert_eq!(
        meeting.as_ordered(again.wait_for(31).await),
        with_marker(20..50)
    );
    assert_eq!(
        meeting.as_ordered(whole.wait_for(51).await),
        with_marker(0..50)
    );
    assert_eq!(fresh.wait_for(1).await, [999]);
    for bus in [second, everything, now, publisher] {
        bus.close().await.unwrap();
    }
    assert_eq!(meeting.as_ordered(again.get()), with_marker(20..50));
    assert_eq!(meeting.as_ordered(whole.get()), with_marker(0..50));
    assert_eq!(fresh.get(), [999]);
}

/// The algorithms this build compresses with.
fn built_compressions() -> Vec<Compression> {
    [Compression::Gzip, Compression::Zstd, Compression::Lz4]
        .into_iter()
        .filter(|c| c.is_built())
        .collect()
}

/// An event of about 10 KB of JSON-ish text: compressible.
fn large_order(id: u64) -> OrderPlaced {
    OrderPlaced {
        id,
        item: format!("{{\"sku\":\"tea-{id}\",\"note\":\"green, loose leaf\"}}").repeat(200),
    }
}

/// Compressed per bus (above the threshold; a small event stays plain)
/// and per publish with each algorithm this build has: every event
/// arrives whole at a bus that does not compress itself.
async fn compressed_events_round_trip_with_every_algorithm(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let there = Subscribers::new();
    let seen = Seen::default();
    let s = seen.clone();
    let _g = there.subscribe(move |e: &OrderPlaced| s.push(e.clone()));
    let listener = meeting.bus(&there).await;
    let publisher = meeting
        .builder(&Subscribers::new())
        .compression(Compression::Gzip)
        .publish_only()
        .connect()
        .await
        .unwrap();
    let mut sent = vec![
        large_order(0),
        OrderPlaced {
            id: 1,
            item: "small: under the threshold".into(),
        },
    ];
    for event in &sent {
        publisher.publish_confirmed(event).await.unwrap();
    }
    for (n, algorithm) in built_compressions().into_iter().enumerate() {
        let event = large_order(10 + n as u64);
        let options = PublishOptions::new().compression(algorithm).confirm(true);
        publisher.publish_with(&event, &options).await.unwrap();
        sent.push(event);
    }
    // Compression off for one event of a compressing bus.
    let plain = large_order(99);
    publisher
        .publish_with(
            &plain,
            &PublishOptions::new()
                .compression(Compression::None)
                .confirm(true),
        )
        .await
        .unwrap();
    sent.push(plain);
    // 5 MiB that would compress to a few KiB: refused, since receivers
    // refuse what decompresses past their maximum size (4 MiB).
    let huge = OrderPlaced {
        id: 5,
        item: "z".repeat(5 << 20),
    };
    let refused = publisher.publish(&huge).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::MessageTooLarge, "{refused}");
    let mut got = seen.wait_for(sent.len()).await;
    got.sort_by_key(|e| e.id);
    sent.sort_by_key(|e| e.id);
    assert_eq!(got, sent);
    assert_eq!(listener.stats().rejected_total(), 0);
    publisher.close().await.unwrap();
    listener.close().await.unwrap();
}

/// One options value changes one publish: another routing key (received
/// by a listener bound to it, with that key in its context), a message id
/// of the application's, JSON on a bincode bus, a delay, mandatory.
async fn publish_options_route_name_encode_and_delay_one_event(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let s = seen.clone();
    let _g = subscribers.subscribe_with(move |e: &OrderPlaced, ctx: &Context| {
        s.push((
            e.id,
            ctx.routing_key().to_owned(),
            ctx.message_id().map(str::to_owned),
            std::time::Instant::now(),
        ))
    });
    let listener = meeting
        .builder(&subscribers)
        .listen(Listen::broadcast().pattern("custom.*"))
        .connect()
        .await
        .unwrap();
    let publisher = meeting.publisher().await;
    let order = |id| OrderPlaced {
        id,
        item: "tea".into(),
    };
    // Its own routing key would reach no listener.
    publisher
        .publish_with(
            &order(1),
            &PublishOptions::new()
                .routing_key("custom.placed")
                .message_id("order-1-placed")
                .codec(tidings::Json)
                .confirm(true),
        )
        .await
        .unwrap();
    let first = seen.wait_for(1).await.remove(0);
    assert_eq!(first.0, 1);
    assert_eq!(first.1, "custom.placed");
    assert_eq!(first.2.as_deref(), Some("order-1-placed"));

    let delay = Duration::from_millis(400);
    let published = std::time::Instant::now();
    publisher
        .publish_with(
            &order(2),
            &PublishOptions::new()
                .routing_key("custom.later")
                .delay(delay)
                .confirm(true),
        )
        .await
        .unwrap();
    let second = seen.wait_for(2).await.remove(1);
    assert_eq!((second.0, second.1.as_str()), (2, "custom.later"));
    assert!(
        second.3.duration_since(published) >= delay,
        "delivered after {:?}, before the delay of {delay:?}",
        second.3.duration_since(published)
    );

    let unroutable = publisher
        .publish_with(
            &order(3),
            &PublishOptions::new()
                .routing_key("nobody.listens")
                .mandatory(true)
                .confirm(true),
        )
        .await
        .unwrap_err();
    assert_eq!(unroutable.kind(), ErrorKind::Unroutable, "{unroutable}");
    let too_long = publisher
        .publish_with(
            &order(4),
            &PublishOptions::new().routing_key("k".repeat(256)),
        )
        .await
        .unwrap_err();
    assert_eq!(too_long.kind(), ErrorKind::InvalidConfig, "{too_long}");
    assert_eq!(listener.stats().rejected_total(), 0);
    publisher.close().await.unwrap();
    listener.close().await.unwrap();
}

/// Handlers decide: retry after their own delay, requeue now, dead-letter
/// with their reason, or ack; of two handlers of one event the strictest
/// wins.
async fn handlers_decide_how_a_delivery_settles(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let requeued = Arc::new(AtomicUsize::new(0));
    let (s, r) = (seen.clone(), requeued.clone());
    let _decides = subscribers.subscribe_with(move |e: &OrderPaid, ctx: &Context| {
        s.push((e.id, ctx.attempt()));
        match e.id {
            1 if ctx.attempt() == 1 => Decision::RetryAfter(Duration::from_millis(30)),
            2 if r.fetch_add(1, Ordering::SeqCst) == 0 => Decision::Requeue,
            3 | 5 => Decision::dead_letter("not ours"),
            _ => Decision::Ack,
        }
    });
    // A second handler that acks all but 5, where it fails: the first
    // one's decisions are stricter and win (a dead letter beats a failure).
    let _acks = subscribers.subscribe(|e: &OrderPaid| match e.id {
        5 => Err(std::io::Error::other("five fails")),
        _ => Ok(Decision::Ack),
    });
    let bus = meeting
        .builder(&subscribers)
        .retry_delay(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    for id in 1..=5 {
        bus.publish(&OrderPaid { id }).await.unwrap();
    }
    let done = common::eventually(Duration::from_secs(20), || {
        let seen = seen.get();
        seen.contains(&(1, 2))
            && seen.iter().filter(|(id, _)| *id == 2).count() >= 2
            && seen.contains(&(3, 1))
            && seen.contains(&(4, 1))
            && bus.stats().dead_lettered >= 2
    })
    .await;
    assert!(done, "{:?} {:?}", seen.get(), bus.stats());
    // The handler's 30 ms, not the bus's 60 s backoff: (1, 2) came.
    let seen = seen.get();
    assert!(
        seen.iter()
            .filter(|(id, _)| *id == 2)
            .all(|&(_, attempt)| attempt == 1),
        "a requeue does not raise the attempt: {seen:?}"
    );
    bus.close().await.unwrap();
    let stats = bus.stats();
    if meeting.faithful() {
        let mut ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 1, 2, 2, 3, 4, 5], "{seen:?}");
        assert_eq!(
            (
                stats.retried,
                stats.dead_lettered,
                stats.handled,
                stats.handler_failures,
                stats.requeued
            ),
            (1, 2, 3, 1, 1),
            "{stats:?}"
        );
    }
}

/// `concurrency(n)`: up to n deliveries at once, and each event reaches
/// the handlers once, also when the fault injector delivers duplicates
/// at the same time.
async fn concurrent_handlers_see_each_event_once(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, r, m) = (seen.clone(), running.clone(), most.clone());
    let _g = subscribers.subscribe_async(move |e: Arc<OrderPaid>, _: Context| {
        let (s, r, m) = (s.clone(), r.clone(), m.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.push(e.id);
            r.fetch_sub(1, Ordering::SeqCst);
        }
    });
    let bus = meeting
        .builder(&subscribers)
        .concurrency(8)
        .connect()
        .await
        .unwrap();
    for id in 0..120 {
        bus.publish(&OrderPaid { id }).await.unwrap();
    }
    let mut ids = seen.wait_for(120).await;
    bus.close().await.unwrap();
    ids.sort_unstable();
    assert_eq!(ids, (0..120).collect::<Vec<_>>(), "each once");
    let most = most.load(Ordering::SeqCst);
    assert!((2..=8).contains(&most), "{most} handlers at once");
}

/// A batch handler gets up to `max` events at once and settles them
/// together: when it fails, every event of the batch comes back.
async fn a_batch_handler_settles_its_events_together(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let batches: Seen<Vec<u64>> = Seen::default();
    let failed_once = Arc::new(AtomicUsize::new(0));
    let (b, f) = (batches.clone(), failed_once.clone());
    let _g = subscribers.subscribe_batch(
        5,
        Duration::from_millis(100),
        move |events: Vec<Arc<OrderPaid>>| {
            let (b, f) = (b.clone(), f.clone());
            async move {
                let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
                b.push(ids.clone());
                // The first batch with event 7 in it fails, once.
                if ids.contains(&7) && f.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err("the database is away");
                }
                Ok(())
            }
        },
    );
    let bus = meeting
        .builder(&subscribers)
        .retry_delay(Duration::from_millis(20))
        .connect()
        .await
        .unwrap();
    for id in 0..12 {
        bus.publish(&OrderPaid { id }).await.unwrap();
    }
    let all_handled = common::eventually(Duration::from_secs(20), || {
        let batches = batches.get();
        let failed = batches.iter().find(|b| b.contains(&7)).cloned();
        failed.is_some_and(|failed| {
            // Each event of the failed batch was seen again.
            failed
                .iter()
                .all(|id| batches.iter().flatten().filter(|seen| *seen == id).count() >= 2)
        }) && (0..12).all(|id| batches.iter().flatten().any(|seen| *seen == id))
    })
    .await;
    let seen = batches.get();
    assert!(all_handled, "{seen:?}");
    assert!(seen.iter().all(|b| (1..=5).contains(&b.len())), "{seen:?}");
    bus.close().await.unwrap();
    if meeting.faithful() {
        let failed = seen.iter().find(|b| b.contains(&7)).unwrap();
        let stats = bus.stats();
        assert_eq!(stats.retried, failed.len() as u64, "{seen:?} {stats:?}");
        assert_eq!(
            seen.iter().map(Vec::len).sum::<usize>(),
            12 + failed.len(),
            "the others once: {seen:?}"
        );
        assert!(seen.iter().any(|b| b.len() > 1), "batched: {seen:?}");
    }
}

/// An application's own error, which a scope's body returns.
#[derive(Debug)]
enum AppError {
    Bus(#[allow(dead_code)] tidings::Error),
    Body(&'static str),
}

impl From<tidings::Error> for AppError {
    fn from(e: tidings::Error) -> Self {
        Self::Bus(e)
    }
}

/// `Bus::scope` closes its bus when the body fails or panics, after what
/// it published is flushed.
async fn a_scoped_bus_closes_on_error_and_panic(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let s = seen.clone();
    let _g = subscribers.subscribe(move |e: &OrderPaid| s.push(e.id));
    let listener = meeting.bus(&subscribers).await;
    let kept: Arc<Mutex<Option<Bus>>> = Arc::default();
    let k = kept.clone();
    let failed = Bus::scope(
        meeting.builder(&Subscribers::new()).publish_only(),
        |bus| async move {
            *k.lock().unwrap() = Some(bus.clone());
            bus.publish(&OrderPaid { id: 1 }).await?;
            Err::<(), _>(AppError::Body("the body failed"))
        },
    )
    .await;
    assert!(
        matches!(failed, Err(AppError::Body("the body failed"))),
        "{failed:?}"
    );
    let smuggled = kept.lock().unwrap().take().unwrap();
    assert_eq!(
        smuggled
            .publish(&OrderPaid { id: 9 })
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Closed,
        "closed when the body failed"
    );
    assert_eq!(smuggled.stats().confirmed, 1, "flushed before closing");

    let k = kept.clone();
    let builder = meeting.builder(&Subscribers::new()).publish_only();
    let panicked = tokio::spawn(async move {
        Bus::scope(builder, |bus| async move {
            *k.lock().unwrap() = Some(bus.clone());
            bus.publish(&OrderPaid { id: 2 }).await?;
            if bus.instance_id().is_empty() {
                return Ok::<(), AppError>(());
            }
            panic!("the body panicked");
        })
        .await
    })
    .await;
    assert!(panicked.unwrap_err().is_panic(), "the panic goes on");
    let smuggled = kept.lock().unwrap().take().unwrap();
    assert!(smuggled.health().closed, "closed when the body panicked");
    assert_eq!(smuggled.stats().confirmed, 1, "flushed before closing");
    let mut ids = seen.wait_for(2).await;
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, [1, 2]);
    listener.close().await.unwrap();
}

/// A long handler that says it is still alive is not failed by the
/// handler timeout; one that does not say so is.
async fn keep_alive_extends_the_handler_timeout(meeting: Meeting) {
    let _cleanup = meeting.cleanup();
    let subscribers = Subscribers::new();
    let finished = Seen::default();
    let f = finished.clone();
    let _g = subscribers.subscribe_async(move |e: Arc<OrderPaid>, ctx: Context| {
        let f = f.clone();
        async move {
            for _ in 0..6 {
                if e.id == 1 {
                    ctx.keep_alive(Duration::from_millis(300));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            f.push((e.id, ctx.attempt()));
        }
    });
    let bus = meeting
        .builder(&subscribers)
        .handler_timeout(Duration::from_millis(120))
        .max_attempts(1)
        .connect()
        .await
        .unwrap();
    bus.publish(&OrderPaid { id: 1 }).await.unwrap();
    bus.publish(&OrderPaid { id: 2 }).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(20), || {
            bus.stats().handler_timeouts >= 1 && !finished.get().is_empty()
        })
        .await,
        "{:?} {:?}",
        finished.get(),
        bus.stats()
    );
    bus.close().await.unwrap();
    assert!(
        finished.get().iter().all(|(id, _)| *id == 1),
        "only the one that kept alive finished: {:?}",
        finished.get()
    );
    if meeting.faithful() {
        let stats = bus.stats();
        assert_eq!(
            (stats.handled, stats.handler_timeouts, stats.dead_lettered),
            (1, 1, 1),
            "{stats:?}"
        );
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Meeting::memory()).await;
                }
            )*
        }
        mod amqp {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Meeting::amqp()).await;
                }
            )*
        }
        mod faults_memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Meeting::faults_memory()).await;
                }
            )*
        }
        mod faults_amqp {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Meeting::faults_amqp()).await;
                }
            )*
        }
    };
}

conformance!(
    broadcast_reaches_every_bus_once_in_order,
    self_delivery_off_skips_own_events_only,
    typed_subscribers_get_only_their_type,
    dropping_the_guard_unsubscribes,
    a_panicking_handler_does_not_stop_the_others,
    async_handlers_run_in_order_with_context,
    a_lagging_stream_is_told_and_stays_bounded,
    closed_bus_refuses_to_publish,
    a_group_shares_the_work_each_event_once,
    a_group_gets_what_was_published_while_it_was_down,
    routing_keys_filter_what_a_listener_receives,
    a_failing_handler_is_retried_with_the_attempt_count,
    a_cancelled_listener_stops_while_another_goes_on,
    send_to_reaches_one_named_queue,
    headers_and_the_conversation_cross_with_the_event,
    health_tells_connected_consuming_and_closed,
    a_call_gets_the_typed_reply,
    a_hundred_concurrent_calls_are_matched,
    two_servers_share_the_load,
    a_server_is_called_by_name,
    no_server_fails_at_once_with_no_responder,
    a_failing_server_is_a_remote_error,
    a_call_times_out_and_the_late_reply_is_counted,
    dropping_a_call_cancels_it,
    receipts_list_the_buses_that_handled_a_broadcast,
    a_stream_reader_catches_up_and_new_readers_start_where_told,
    compressed_events_round_trip_with_every_algorithm,
    publish_options_route_name_encode_and_delay_one_event,
    handlers_decide_how_a_delivery_settles,
    concurrent_handlers_see_each_event_once,
    a_batch_handler_settles_its_events_together,
    a_scoped_bus_closes_on_error_and_panic,
    keep_alive_extends_the_handler_timeout,
);

/// The fault injector on its own: with chaos on, each of 500 events is
/// handled once although deliveries were duplicated, reordered and
/// redelivered after dropped connections; refused publishes fail their
/// caller and are counted.
#[tokio::test]
async fn the_fault_injector_injects_and_the_bus_absorbs_it() {
    let hub = common::unique("chaos");
    let inner = Arc::new(tidings::MemoryTransport::named(&hub));
    let faults = Faults::wrap(inner, FaultPlan::chaos(fault_seed()));
    let subscribers = Subscribers::new();
    let seen = Seen::default();
    let s = seen.clone();
    let _g = subscribers.subscribe(move |e: &OrderPaid| s.push(e.id));
    let bus = Bus::with_transport(faults.clone())
        .subscribers(subscribers)
        .connect()
        .await
        .unwrap();
    for id in 0..500 {
        bus.publish(&OrderPaid { id }).await.unwrap();
    }
    faults.drop_connection();
    let mut ids = seen.wait_for(500).await;
    bus.close().await.unwrap();
    ids.sort_unstable();
    assert_eq!(ids, (0..500).collect::<Vec<_>>(), "each handled once");
    let injected = faults.stats();
    assert!(
        injected.duplicated > 0 && injected.reordered > 0 && injected.connection_drops > 1,
        "{injected:?}"
    );
    assert!(bus.stats().deduplicated > 0, "{:?}", bus.stats());

    let refusing = Faults::wrap(
        Arc::new(tidings::MemoryTransport::named(&hub)),
        FaultPlan::seeded(fault_seed()).refuse_publishes(0.5),
    );
    let bus = Bus::with_transport(refusing.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    let mut refused = 0;
    for id in 0..100 {
        if let Err(e) = bus.publish_confirmed(&OrderPaid { id }).await {
            assert_eq!(e.kind(), tidings::ErrorKind::Refused, "{e}");
            refused += 1;
        }
    }
    assert!(
        (20..80).contains(&refused),
        "{refused} of 100 refused at p = 0.5"
    );
    assert_eq!(refusing.stats().refused, refused);
    assert_eq!(bus.stats().publish_failed, refused);
    bus.close().await.unwrap();
}
