//! Least privilege on a private node: a user without `configure`
//! permission cannot declare the topology, and says which permission it
//! lacks on what; with passive declarations it runs on a topology an
//! administrator declared, and a missing queue is named.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, ErrorKind, Event, ExchangeKind, Listen, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "least_privilege.order")]
struct Order {
    id: u64,
}

const VHOST: &str = "tidings-test.least-privilege";
const USER: &str = "tidings-test.app";
const PASSWORD: &str = "app-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_configure_permission_runs_passively_on_a_declared_topology() {
    let node = tokio::task::spawn_blocking(|| {
        let node = common::PrivateNode::start();
        node.ctl(&["add_vhost", VHOST]);
        node.ctl(&["set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"]);
        node.ctl(&["add_user", USER, PASSWORD]);
        // Read and write everything, configure nothing.
        node.ctl(&["set_permissions", "-p", VHOST, USER, "^$", ".*", ".*"]);
        node
    })
    .await
    .unwrap();
    let admin = node.props(ExchangeKind::Fanout).with_vhost(VHOST);
    let app = admin.clone().with_credentials(USER, PASSWORD);

    // The administrator declares the topology: the exchange, the dead
    // letters, the group's queue, and (by publishing once) the schema
    // stream.
    let declared = Bus::with_props(admin.clone())
        .subscribers(Subscribers::new())
        .listen(Listen::group("workers"))
        .connect()
        .await
        .unwrap();
    declared.close().await.unwrap();
    let publisher = Bus::with_props(admin.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    publisher.publish_confirmed(&Order { id: 0 }).await.unwrap();
    publisher.close().await.unwrap();

    // Without passive declarations the user is refused, and told why.
    let err = Bus::with_props(app.clone())
        .subscribers(Subscribers::new())
        .listen(Listen::group("workers"))
        .connect()
        .await
        .unwrap_err();
    let text = err.to_string();
    eprintln!("without passive: {text}");
    assert_eq!(err.kind(), ErrorKind::Broker, "{text}");
    for needed in [
        "configure",
        &format!("exchange {:?}", admin.exchange()),
        "passive",
    ] {
        assert!(text.contains(needed), "{needed:?} not in: {text}");
    }

    // Passively, it runs: publishes, and receives through the group.
    let passive = app.clone().with_passive(true);
    let subscribers = Subscribers::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _guard = subscribers.subscribe(move |o: &Order| {
        s.lock().unwrap().push(o.id);
        if o.id == 99 {
            return Err("order 99 always fails");
        }
        Ok(())
    });
    let bus = Bus::with_props(passive.clone())
        .subscribers(subscribers)
        .listen(Listen::group("workers"))
        .connect()
        .await
        .unwrap();
    for id in 1..=3 {
        bus.publish_confirmed(&Order { id }).await.unwrap();
    }
    assert!(
        common::eventually(Duration::from_secs(10), || seen.lock().unwrap().len() == 4).await,
        "saw {:?}",
        seen.lock().unwrap()
    );
    // The event the administrator published waited in the group's queue.
    assert_eq!(*seen.lock().unwrap(), [0, 1, 2, 3]);

    // A failing handler's retry queue was not declared by the
    // administrator and cannot be by this user: the event goes to the dead
    // letters with why, once, instead of being requeued in a loop.
    bus.publish_confirmed(&Order { id: 99 }).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || bus.stats().dead_lettered == 1).await,
        "{:?}",
        bus.stats()
    );
    let stats = bus.stats();
    assert_eq!((stats.retried, stats.handler_failures), (0, 1), "{stats:?}");
    let tries = seen.lock().unwrap().iter().filter(|id| **id == 99).count();
    assert_eq!(tries, 1, "handled once, not looped");

    // A queue nobody declared is named, with what to do.
    let err = bus.listen(&Listen::group("nobody")).await.unwrap_err();
    let text = err.to_string();
    eprintln!("missing queue: {text}");
    let missing = format!("queue \"{}.nobody\" does not exist", admin.exchange());
    assert!(text.contains(&missing), "{missing:?} not in: {text}");
    assert!(text.contains("administrator"), "{text}");

    // A broadcast listener's queue belongs to its connection and must be
    // declared: without configure permission on it, that is said.
    let err = bus.listen(&Listen::broadcast()).await.unwrap_err();
    let text = err.to_string();
    eprintln!("broadcast: {text}");
    assert!(
        text.contains("configure") && text.contains(&format!("queue \"{}.", admin.exchange())),
        "{text}"
    );
    // The bus goes on after the refusals.
    bus.publish_confirmed(&Order { id: 4 }).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || seen
            .lock()
            .unwrap()
            .contains(&4))
        .await,
        "saw {:?}",
        seen.lock().unwrap()
    );
    bus.close().await.unwrap();

    // An exchange nobody declared is named too.
    let err =
        Bus::with_props(passive.with_exchange(common::unique("missing"), ExchangeKind::Fanout))
            .subscribers(Subscribers::new())
            .publish_only()
            .connect()
            .await
            .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("does not exist") && text.contains("tidings-test.missing"),
        "{text}"
    );
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
}

#[test]
fn passive_is_a_url_key_and_shows_in_the_url() {
    let props =
        AmqpProps::from_url("amqp://app:pw@broker/%2f?exchange=orders&passive=true").unwrap();
    assert!(props.passive());
    assert!(props.redacted_url().contains("passive=true"));
    let err = AmqpProps::from_url("amqp://broker/?passive=yes").unwrap_err();
    assert!(err.to_string().contains("use true or false"), "{err}");
}
