//! A handler that overruns the handler timeout fails its attempt: retried,
//! then dead-lettered, on both transports.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{Bus, Context, Event, ExchangeKind, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "timeout.job")]
struct Job {
    slow: bool,
}

async fn overrun_is_a_failure(url: String) {
    let subscribers = Subscribers::new();
    let (attempts, done) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (a, d) = (attempts.clone(), done.clone());
    let _guard = subscribers.subscribe_async(move |job: Arc<Job>, _ctx: Context| {
        let (a, d) = (a.clone(), d.clone());
        async move {
            if job.slow {
                a.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            d.fetch_add(1, Ordering::Relaxed);
        }
    });
    let bus = Bus::builder(&url)
        .unwrap()
        .subscribers(subscribers)
        .handler_timeout(Duration::from_millis(100))
        .max_attempts(2)
        .retry_delay(Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    bus.publish(&Job { slow: true }).await.unwrap();
    bus.publish(&Job { slow: false }).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || bus.stats().dead_lettered == 1).await,
        "the overrunning event was not dead-lettered: {:?}",
        bus.stats()
    );
    let stats = bus.stats();
    assert_eq!(attempts.load(Ordering::Relaxed), 2, "tried twice");
    assert_eq!(
        done.load(Ordering::Relaxed),
        1,
        "only the quick job finished"
    );
    assert_eq!(
        (stats.handler_timeouts, stats.retried, stats.handled),
        (2, 1, 1),
        "{stats:?}"
    );
    bus.close().await.unwrap();
}

#[tokio::test]
async fn memory() {
    overrun_is_a_failure("memory://handler-timeout".to_owned()).await;
}

#[tokio::test]
async fn amqp() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let url = format!(
        "{}?exchange={}",
        common::broker_url().split('?').next().unwrap(),
        props.exchange()
    );
    overrun_is_a_failure(url).await;
}
