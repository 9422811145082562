//! Calls across a lost connection: a call in flight when the caller's TCP
//! connection is cut fails at once with `ConnectionLost` (or, for an
//! idempotent request, is sent again after recovery and answered).

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use serde::{Deserialize, Serialize};
use tidings::{Bus, ConnectionEvent, ErrorKind, Event, ExchangeKind, Request};
use tokio::sync::Notify;
use tokio_stream::StreamExt;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "faults.rpc.charge")]
struct Charge {
    cents: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "faults.rpc.charged")]
struct Charged {
    cents: u64,
}

impl Request for Charge {
    type Reply = Charged;
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "faults.rpc.lookup")]
struct Lookup {
    key: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "faults.rpc.found")]
struct Found {
    key: u64,
}

impl Request for Lookup {
    type Reply = Found;
    const IDEMPOTENT: bool = true;
}

/// The caller's connection is cut while the server holds the request: the
/// call fails with `ConnectionLost` long before its timeout, and once the
/// connection is back the next call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_connection_is_lost_fails_at_once() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let proxy = Proxy::start(common::broker_addr(&props));
    let server_bus = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    let caller = Bus::with_props(props.clone().with_host("127.0.0.1").with_port(proxy.port()))
        .publish_only()
        .call_timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    let mut events = caller.connection_events();
    assert_eq!(
        events.next().await,
        Some(ConnectionEvent::Connected {
            address: format!("127.0.0.1:{}", proxy.port())
        })
    );
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (s, r) = (started.clone(), release.clone());
    let _server = server_bus
        .serve(move |charge: Arc<Charge>| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                if charge.cents == 1 {
                    s.notify_one();
                    r.notified().await;
                }
                Ok::<_, std::io::Error>(Charged {
                    cents: charge.cents,
                })
            }
        })
        .await
        .unwrap();
    let call = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.call(&Charge { cents: 1 }).await })
    };
    started.notified().await;
    let cut_at = Instant::now();
    // Kept: a dropped proxy stops forwarding, and the caller must reconnect.
    let _proxy = tokio::task::spawn_blocking(move || {
        proxy.cut();
        proxy
    })
    .await
    .unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err}");
    assert!(
        err.to_string().contains("may or may not have been handled"),
        "{err}"
    );
    assert!(
        cut_at.elapsed() < Duration::from_secs(5),
        "took {:?}",
        cut_at.elapsed()
    );
    release.notify_one();
    // Back again: calls are answered.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Ok(Some(ConnectionEvent::Recovered { .. })) => break,
            Ok(Some(_)) => {}
            other => panic!("no recovery: {other:?}"),
        }
    }
    assert_eq!(
        caller.call(&Charge { cents: 5 }).await.unwrap(),
        Charged { cents: 5 }
    );
    caller.close().await.unwrap();
    server_bus.close().await.unwrap();
}

/// An idempotent request whose connection is lost mid-call is sent again
/// once the connection is back, and the call returns the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_call_is_sent_again_after_a_lost_connection() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let proxy = Proxy::start(common::broker_addr(&props));
    let server_bus = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    let caller = Bus::with_props(props.clone().with_host("127.0.0.1").with_port(proxy.port()))
        .publish_only()
        .call_timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let handled = Arc::new(AtomicUsize::new(0));
    let (s, r, h) = (started.clone(), release.clone(), handled.clone());
    let _server = server_bus
        .serve(move |lookup: Arc<Lookup>| {
            let (s, r, h) = (s.clone(), r.clone(), h.clone());
            async move {
                // The first time, hold it until the caller's connection is cut.
                if h.fetch_add(1, Ordering::SeqCst) == 0 {
                    s.notify_one();
                    r.notified().await;
                }
                Ok::<_, std::io::Error>(Found { key: lookup.key })
            }
        })
        .await
        .unwrap();
    let call = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.call(&Lookup { key: 9 }).await })
    };
    started.notified().await;
    // Kept: a dropped proxy stops forwarding, and the caller must reconnect.
    let _proxy = tokio::task::spawn_blocking(move || {
        proxy.cut();
        proxy
    })
    .await
    .unwrap();
    release.notify_one();
    assert_eq!(call.await.unwrap().unwrap(), Found { key: 9 });
    assert_eq!(handled.load(Ordering::SeqCst), 2, "handled once per send");
    caller.close().await.unwrap();
    server_bus.close().await.unwrap();
}
