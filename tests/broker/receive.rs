//! Receive options through the real broker: a direct exchange with the
//! default listener, a handler's own dead-letter reason on the wire, what a
//! bus dropped without `close` says, the blocking bus closing on a panic,
//! and the global subscribers notified from sync code.

use crate::common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::Proxy;
use serde::{Deserialize, Serialize};
use tidings::{
    Bus, Connection, Context, Decision, ErrorKind, Event, ExchangeKind, Listen, Subscribers,
    blocking,
};
use tracing_subscriber::prelude::*;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "receive.placed", routing_key = "receive.placed")]
struct Placed {
    id: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "receive.shipped", routing_key = "receive.shipped")]
struct Shipped {
    id: u64,
}

/// Only the test of the global subscribers publishes it.
#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "receive.global_ping")]
struct GlobalPing {
    n: u64,
}

#[tokio::test]
async fn a_direct_exchange_binds_the_routing_keys_of_the_subscribed_types() {
    let props = common::props(ExchangeKind::Direct);
    let cleanup = common::Cleanup::new(&props);
    cleanup.queue(&format!("{}.workers", props.exchange()));
    let subscribers = Subscribers::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _g = subscribers.subscribe(move |p: &Placed| s.lock().unwrap().push(p.id));
    // The default (broadcast) listener and a group, neither with keys.
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers.clone())
        .connect()
        .await
        .unwrap();
    let group = Bus::with_props(props.clone())
        .subscribers(Subscribers::new())
        .listen(Listen::group("workers"))
        .connect()
        .await;
    assert_eq!(
        group.unwrap_err().kind(),
        ErrorKind::InvalidConfig,
        "no typed subscriber: no key to bind"
    );
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .mandatory(true)
        .connect()
        .await
        .unwrap();
    publisher
        .publish_confirmed(&Placed { id: 1 })
        .await
        .unwrap();
    let unroutable = publisher.publish_confirmed(&Shipped { id: 2 }).await;
    assert_eq!(
        unroutable.unwrap_err().kind(),
        ErrorKind::Unroutable,
        "no queue is bound to a type nobody subscribed to: the broker filters"
    );
    assert!(common::eventually(Duration::from_secs(10), || !seen.lock().unwrap().is_empty()).await);
    assert_eq!(*seen.lock().unwrap(), [1]);
    publisher.close().await.unwrap();
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_direct_exchange_without_typed_subscribers_says_what_to_do() {
    let props = common::props(ExchangeKind::Direct);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = Subscribers::new();
    let _all = subscribers.subscribe_all(|_: &dyn Event, _: &Context| {});
    let refused = Bus::with_props(props.clone())
        .subscribers(subscribers.clone())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidConfig);
    let message = refused.to_string();
    assert!(
        message.contains("direct exchange") && message.contains("Listen::event"),
        "{message}"
    );
    // Naming the keys works with any subscribers.
    let bus = Bus::with_props(props)
        .subscribers(subscribers)
        .listen(Listen::broadcast().event::<Placed>())
        .connect()
        .await
        .unwrap();
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_handler_dead_letters_with_its_own_reason() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = Subscribers::new();
    let _g = subscribers.subscribe(|p: &Placed| {
        if p.id == 13 {
            Decision::dead_letter("unlucky order")
        } else {
            Decision::Ack
        }
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .connect()
        .await
        .unwrap();
    bus.publish(&Placed { id: 13 }).await.unwrap();
    bus.publish(&Placed { id: 14 }).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let stats = bus.stats();
            stats.dead_lettered == 1 && stats.handled == 1
        })
        .await,
        "{:?}",
        bus.stats()
    );
    let conn = Connection::connect(&props).await.unwrap();
    let queue = bus.dead_letter_queue().unwrap().to_owned();
    // Event 14 was handled after event 13's dead letter was confirmed.
    let letter = common::raw_get(&conn, &queue).await;
    let letter = letter.expect("a dead letter");
    assert_eq!(
        common::header_text(&letter, "x-tidings-reason").as_deref(),
        Some("handler_rejected")
    );
    assert_eq!(
        common::header_text(&letter, "x-tidings-error").as_deref(),
        Some("unlucky order")
    );
    bus.close().await.unwrap();
    conn.close().await.unwrap();
}

/// Runs a future to its end from inside a sync closure of a test (on a
/// thread of its own, with a runtime of its own).
fn futures_block<F: std::future::Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(future)
            })
            .join()
            .unwrap()
    })
}

/// What tidings logs at ERROR, seen by a tracing layer.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Errors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::ERROR || !meta.target().starts_with("tidings") {
            return;
        }
        let mut text = String::new();
        event.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                let _ = write!(text, " {}={value:?}", field.name());
            },
        );
        self.0.lock().unwrap().push(text);
    }
}

#[tokio::test]
async fn a_bus_dropped_with_unconfirmed_events_says_how_many_at_error() {
    let errors = Errors::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(errors.clone()));
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let proxy = Proxy::start(common::broker_addr(&props));
    let through = props.clone().with_host("127.0.0.1").with_port(proxy.port());
    let bus = Bus::with_props(through)
        .publish_only()
        .connect()
        .await
        .unwrap();
    // The broker is unreachable: what is published waits in the buffer.
    proxy.set_refusing(true);
    proxy.cut();
    for id in 0..3 {
        bus.publish(&Placed { id }).await.unwrap();
    }
    assert_eq!(bus.stats().buffered, 3);
    drop(bus);
    let logged = errors.0.lock().unwrap().clone();
    assert!(
        logged
            .iter()
            .any(|line| line.contains("unconfirmed=3") && line.contains("close()")),
        "{logged:?}"
    );
    // A bus closed properly logs nothing of the kind.
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let bus = Bus::with_props(props)
        .publish_only()
        .connect()
        .await
        .unwrap();
    bus.publish(&Placed { id: 9 }).await.unwrap();
    bus.close().await.unwrap();
    drop(bus);
    assert_eq!(errors.0.lock().unwrap().len(), logged.len());
}

#[test]
fn a_blocking_bus_closes_and_flushes_when_its_thread_panics() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = Subscribers::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _g = subscribers.subscribe(move |p: &Placed| s.lock().unwrap().push(p.id));
    let listener =
        blocking::Bus::connect(Bus::with_props(props.clone()).subscribers(subscribers)).unwrap();
    let publisher_props = props.clone();
    let panicked = std::thread::spawn(move || {
        let publisher =
            blocking::Bus::connect(Bus::with_props(publisher_props).publish_only()).unwrap();
        for id in 0..200 {
            publisher.publish(&Placed { id }).unwrap();
        }
        panic!("the publishing thread panics before close()");
    })
    .join();
    assert!(panicked.is_err());
    let arrived = futures_block(common::eventually(Duration::from_secs(10), || {
        seen.lock().unwrap().len() == 200
    }));
    assert!(
        arrived,
        "{} of 200 arrived: the dropped bus did not flush",
        seen.lock().unwrap().len()
    );
    listener.close().unwrap();
}

#[test]
fn the_global_subscribers_are_notified_from_sync_code_and_by_a_bus() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _g = Subscribers::global().subscribe(move |p: &GlobalPing| {
        s.lock().unwrap().push(p.n);
        if p.n == 0 {
            Err("zero is refused")
        } else {
            Ok(())
        }
    });
    let dispatch = Subscribers::global().notify_blocking(GlobalPing { n: 1 });
    assert_eq!((dispatch.handled(), dispatch.is_ok()), (1, true));
    let dispatch = Subscribers::global().notify_blocking(GlobalPing { n: 0 });
    assert!(!dispatch.is_ok(), "a failing handler is reported");
    assert_eq!(dispatch.failures().len(), 1);
    assert_eq!(*seen.lock().unwrap(), [1, 0]);
    // A bus given no subscribers dispatches to the global ones.
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let bus = blocking::Bus::connect(Bus::with_props(props)).unwrap();
    bus.publish_confirmed(&GlobalPing { n: 2 }).unwrap();
    let arrived = futures_block(common::eventually(Duration::from_secs(10), || {
        seen.lock().unwrap().contains(&2)
    }));
    assert!(arrived, "{:?}", seen.lock().unwrap());
    bus.close().unwrap();
}
