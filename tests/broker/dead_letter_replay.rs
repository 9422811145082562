//! Dead-letter tooling against the broker: what a bus dead-lettered is
//! listed with why, replayed once the cause is fixed (each event handled
//! exactly once, with its message id and origin), filtered, and purged.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use tidings::{
    Bus, Connection, Context, DeadLetterFilter, DeadLetters, ErrorKind, Event, ExchangeKind,
    Listen, ReplayTo, Subscribers, UnknownEvents,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "dead_letter_replay.invoice")]
struct Invoice {
    id: u64,
    cents: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "dead_letter_replay.refund")]
struct Refund {
    id: u64,
}

/// Waits until the dead-letter queue holds `count` letters; fails the test
/// after 10 s.
async fn until_count(dead_letters: &DeadLetters, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = dead_letters.count().await.unwrap();
        if now == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the dead-letter queue holds {now} letters, not {count}, after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn replayed_to_their_queue_failed_events_are_handled_once_with_id_and_origin() {
    let props = common::props(ExchangeKind::Topic);
    let cleanup = common::Cleanup::new(&props);
    cleanup.queue(&format!("{}.billing", props.exchange()));
    let fixed = Arc::new(AtomicBool::new(false));
    // (message id, origin, attempt, invoice id) of each handled event.
    let handled = Arc::new(Mutex::new(Vec::new()));
    let subscribers = Subscribers::new();
    let (f, h) = (fixed.clone(), handled.clone());
    let _g = subscribers.subscribe_with(move |invoice: &Invoice, ctx: &Context| {
        if !f.load(Ordering::SeqCst) {
            return Err(format!("ledger offline for invoice {}", invoice.id));
        }
        h.lock().unwrap().push((
            ctx.message_id().map(str::to_owned),
            ctx.origin().map(str::to_owned),
            ctx.attempt(),
            invoice.id,
        ));
        Ok(())
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .listen(Listen::group("billing"))
        .max_attempts(1)
        .connect()
        .await
        .unwrap();
    for id in 0..10 {
        bus.publish_confirmed(&Invoice {
            id,
            cents: 100 * id,
        })
        .await
        .unwrap();
    }

    let dead_letters = DeadLetters::open(&props).await.unwrap();
    assert_eq!(
        dead_letters.queue(),
        format!("{}.dead-letter", props.exchange())
    );
    until_count(&dead_letters, 10).await;
    let letters = dead_letters.list(&DeadLetterFilter::new()).await.unwrap();
    assert_eq!(letters.len(), 10);
    // Listing takes nothing away, and keeps the order.
    assert_eq!(dead_letters.count().await.unwrap(), 10);
    let again = dead_letters.list(&DeadLetterFilter::new()).await.unwrap();
    let ids = |letters: &[tidings::DeadLetterMessage]| -> Vec<Option<String>> {
        letters
            .iter()
            .map(|l| l.message_id().map(str::to_owned))
            .collect()
    };
    assert_eq!(ids(&letters), ids(&again));
    for (n, letter) in letters.iter().enumerate() {
        let n = n as u64;
        assert_eq!(letter.reason(), Some("handler_failed"), "{letter:?}");
        let error = letter.error().unwrap_or_default();
        assert!(
            error.contains(&format!("ledger offline for invoice {n}")),
            "{error}"
        );
        assert_eq!(letter.attempt(), Some(1));
        assert_eq!(letter.tag(), Some("dead_letter_replay.invoice"));
        assert_eq!(letter.version(), 1);
        assert_eq!(letter.origin(), Some(bus.instance_id()));
        assert_eq!(
            letter.queue(),
            Some(format!("{}.billing", props.exchange()).as_str())
        );
        assert_eq!(letter.routing_key(), Some("dead_letter_replay.invoice"));
        assert_eq!(letter.content_type(), Some("application/x-bincode"));
        assert!(letter.message_id().is_some());
        let age = SystemTime::now()
            .duration_since(letter.timestamp().expect("a timestamp"))
            .unwrap_or_default();
        assert!(age < Duration::from_secs(60), "{age:?}");
        assert!(!letter.body_dropped());
        assert_eq!(letter.body_size(), letter.body().len());
        assert_eq!(
            letter.headers().get("x-tidings-reason"),
            Some(&serde_json::json!("handler_failed"))
        );
        // Decoded: this process knows the type.
        let invoice = letter
            .event()
            .and_then(|e| e.as_any().downcast_ref::<Invoice>());
        assert_eq!(
            invoice,
            Some(&Invoice {
                id: n,
                cents: 100 * n
            })
        );
        assert_eq!(
            letter.json(),
            Some(&serde_json::json!({"dead_letter_replay.invoice": {"id": n, "cents": 100 * n}}))
        );
        assert_eq!(letter.body_note(), None);
    }
    let first = letters[0].message_id().unwrap();
    let found = dead_letters
        .find(first)
        .await
        .unwrap()
        .expect("found by id");
    assert_eq!(found.message_id(), Some(first));

    // Fixed: every letter goes back to the group's queue.
    fixed.store(true, Ordering::SeqCst);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let dead_letters = dead_letters.with_progress(move |p| s.lock().unwrap().push(*p));
    let report = dead_letters
        .replay(ReplayTo::Queue, &DeadLetterFilter::new())
        .await
        .unwrap();
    assert_eq!(report.replayed, 10, "{report:?}");
    assert_eq!(report.not_matching, 0);
    assert!(report.failed.is_empty(), "{report:?}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 10);
        let last = seen.last().unwrap();
        assert_eq!((last.examined, last.total, last.taken), (10, 10, 10));
    }
    assert!(
        common::eventually(Duration::from_secs(10), || handled.lock().unwrap().len()
            >= 10)
        .await,
        "the replayed events were not handled: {:?}",
        handled.lock().unwrap()
    );
    // Closing waits for what is in flight: anything handled twice shows.
    bus.close().await.unwrap();
    let handled = handled.lock().unwrap().clone();
    let mut per_id: HashMap<String, u32> = HashMap::new();
    for (message_id, origin, attempt, _) in &handled {
        *per_id.entry(message_id.clone().unwrap()).or_default() += 1;
        assert_eq!(origin.as_deref(), Some(bus.instance_id()));
        assert_eq!(*attempt, 1, "the attempt count starts again");
    }
    assert_eq!(per_id.len(), 10, "{handled:?}");
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    let mut expected: Vec<String> = ids(&letters).into_iter().flatten().collect();
    let mut got: Vec<String> = per_id.into_keys().collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "the message ids are kept");
    let mut invoices: Vec<u64> = handled.iter().map(|h| h.3).collect();
    invoices.sort_unstable();
    assert_eq!(invoices, (0..10).collect::<Vec<_>>());
    assert_eq!(dead_letters.count().await.unwrap(), 0);
    dead_letters.close().await.unwrap();
}

#[tokio::test]
async fn filters_pick_by_reason_tag_time_and_id_and_purge_removes_what_they_pick() {
    let props = common::props(ExchangeKind::Topic).with_max_message_size(256);
    let _cleanup = common::Cleanup::new(&props);
    let refunds_fixed = Arc::new(AtomicBool::new(false));
    let refunded = Arc::new(Mutex::new(Vec::new()));
    let subscribers = Subscribers::new();
    let _g1 = subscribers.subscribe(|i: &Invoice| Err::<(), _>(format!("no ledger {}", i.id)));
    let (f, r) = (refunds_fixed.clone(), refunded.clone());
    let _g2 = subscribers.subscribe(move |refund: &Refund| {
        if !f.load(Ordering::SeqCst) {
            return Err("bank offline".to_owned());
        }
        r.lock().unwrap().push(refund.id);
        Ok(())
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .unknown_events(UnknownEvents::DeadLetter)
        .max_attempts(1)
        .connect()
        .await
        .unwrap();
    for id in 0..3 {
        bus.publish_confirmed(&Invoice { id, cents: 1 })
            .await
            .unwrap();
    }
    for id in 0..2 {
        bus.publish_confirmed(&Refund { id }).await.unwrap();
    }
    // Two a bus cannot read: an unknown tag, and a body over the maximum
    // message size (dead-lettered without it).
    let conn = Connection::connect(&props).await.unwrap();
    let channel = common::confirming_channel(&conn).await;
    let foreign = |tag: &str, id: &str| {
        let mut headers = FieldTable::default();
        headers.insert("x-tidings-tag".into(), AMQPValue::LongString(tag.into()));
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(id.into())
            .with_timestamp(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            )
            .with_headers(headers)
    };
    common::raw_publish(
        &channel,
        props.exchange(),
        "nobody.knows",
        br#"{"nobody.knows":{}}"#,
        foreign("nobody.knows", "unknown-1"),
    )
    .await;
    let big = format!(
        r#"{{"dead_letter_replay.refund":{{"id":9,"pad":"{}"}}}}"#,
        "x".repeat(400)
    );
    common::raw_publish(
        &channel,
        props.exchange(),
        "dead_letter_replay.refund",
        big.as_bytes(),
        foreign("dead_letter_replay.refund", "big-1"),
    )
    .await;

    let dead_letters = DeadLetters::open(&props).await.unwrap();
    until_count(&dead_letters, 7).await;
    let list = |filter: DeadLetterFilter| {
        let dead_letters = &dead_letters;
        async move {
            dead_letters
                .list(&filter)
                .await
                .unwrap()
                .iter()
                .map(|l| {
                    format!(
                        "{}:{}",
                        l.reason().unwrap_or("?"),
                        l.tag()
                            .unwrap_or("?")
                            .trim_start_matches("dead_letter_replay.")
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let reasons = list(DeadLetterFilter::new()).await;
    assert_eq!(reasons.len(), 7, "{reasons:?}");
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "handler_failed:invoice")
            .count(),
        3,
        "{reasons:?}"
    );
    assert_eq!(
        list(DeadLetterFilter::new().tag("dead_letter_replay.refund"))
            .await
            .len(),
        3,
        "two failed refunds and the oversized one"
    );
    assert_eq!(
        list(
            DeadLetterFilter::new()
                .reason("handler_failed")
                .tag("dead_letter_replay.refund")
        )
        .await,
        ["handler_failed:refund", "handler_failed:refund"]
    );
    assert_eq!(
        list(DeadLetterFilter::new().reason("unknown_tag")).await,
        ["unknown_tag:nobody.knows"]
    );
    assert_eq!(list(DeadLetterFilter::new().limit(2)).await.len(), 2);
    let hour = Duration::from_secs(3600);
    assert!(
        list(DeadLetterFilter::new().since(SystemTime::now() + hour))
            .await
            .is_empty()
    );
    assert_eq!(
        list(DeadLetterFilter::new().until(SystemTime::now() + hour))
            .await
            .len(),
        7
    );
    assert!(
        list(DeadLetterFilter::new().until(SystemTime::now() - hour))
            .await
            .is_empty()
    );

    // The oversized one tells what happened but cannot go back.
    let big_size = big.len();
    let big = dead_letters
        .find("big-1")
        .await
        .unwrap()
        .expect("the oversized letter");
    assert_eq!(big.reason(), Some("too_large"));
    assert!(big.body_dropped());
    assert_eq!(big.body_size(), big_size);
    assert!(big.body().is_empty());
    assert!(
        big.body_note().unwrap().contains("dropped"),
        "{:?}",
        big.body_note()
    );
    let report = dead_letters
        .replay(
            ReplayTo::Exchange,
            &DeadLetterFilter::new().message_id("big-1"),
        )
        .await
        .unwrap();
    assert_eq!((report.replayed, report.not_matching), (0, 6), "{report:?}");
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].message_id.as_deref(), Some("big-1"));
    assert!(report.failed[0].why.contains("dropped"), "{report:?}");
    // An unknown tag is shown as its JSON, not decoded.
    let unknown = dead_letters.find("unknown-1").await.unwrap().unwrap();
    assert!(unknown.event().is_none());
    assert_eq!(
        unknown.json(),
        Some(&serde_json::json!({"nobody.knows": {}}))
    );

    // Refunds fixed: replay only them, through the exchange.
    refunds_fixed.store(true, Ordering::SeqCst);
    let report = dead_letters
        .replay(
            ReplayTo::Exchange,
            &DeadLetterFilter::new()
                .reason("handler_failed")
                .tag("dead_letter_replay.refund"),
        )
        .await
        .unwrap();
    assert_eq!((report.replayed, report.not_matching), (2, 5), "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(
        common::eventually(Duration::from_secs(10), || refunded.lock().unwrap().len()
            == 2)
        .await,
        "the replayed refunds were not handled"
    );
    assert_eq!(
        list(DeadLetterFilter::new()).await,
        [
            "handler_failed:invoice",
            "handler_failed:invoice",
            "handler_failed:invoice",
            "unknown_tag:nobody.knows",
            "too_large:refund"
        ],
        "the others stay, in order"
    );

    // Broadcast queues go with their bus: a replay to one says so.
    bus.close().await.unwrap();
    let report = dead_letters
        .replay(
            ReplayTo::Queue,
            &DeadLetterFilter::new().reason("handler_failed"),
        )
        .await
        .unwrap();
    assert_eq!(report.replayed, 0);
    assert_eq!(report.failed.len(), 3, "{report:?}");
    assert!(
        report.failed[0].why.contains("no longer exists"),
        "{report:?}"
    );
    assert_eq!(dead_letters.count().await.unwrap(), 5);

    let purged = dead_letters
        .purge(&DeadLetterFilter::new().reason("unknown_tag"))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(dead_letters.count().await.unwrap(), 4);
    assert_eq!(
        dead_letters.purge(&DeadLetterFilter::new()).await.unwrap(),
        4
    );
    assert_eq!(dead_letters.count().await.unwrap(), 0);
    dead_letters.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn opening_the_dead_letters_of_an_exchange_no_bus_used_says_so() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let err = DeadLetters::open(&props).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    let message = err.to_string();
    assert!(message.contains("no dead-letter queue"), "{message}");
    assert!(message.contains(props.exchange()), "{message}");
}
