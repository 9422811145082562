//! Signed events through the real broker: a bus that requires signatures
//! dispatches what a signing bus publishes, and dead-letters, with the
//! reason, what a client without the key makes or alters, from raw lapin
//! and from Python's pika (`scripts/pika_signing.py`, which also signs
//! correctly by `docs/signing.md`); a replayed old event is refused as
//! stale; keys rotate with no event lost; a retried signed event still
//! verifies, and so does a compressed one.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tidings::{
    AmqpProps, Bus, Connection, Event, EventType, ExchangeKind, FINGERPRINT_HEADER,
    JSON_CONTENT_TYPE, KEY_ID_HEADER, ORIGIN_HEADER, Queue, REASON_HEADER, RejectReason,
    SENT_AT_HEADER, SIGNATURE_HEADER, Signing, Stats, Subscribers, TAG_HEADER,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "signing.reading")]
struct Reading {
    sensor: String,
    value: i64,
}

const TAG: &str = "signing.reading";
const K1: &[u8] = b"the first secret, 32 bytes long!";
const K2: &[u8] = b"the second secret, also 32 bytes";

fn reading(value: i64) -> Reading {
    Reading {
        sensor: "s".into(),
        value,
    }
}

fn now_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

/// The signature of an event as `docs/signing.md` describes it, written
/// here independently of the library: the domain line, each field as a
/// 4-byte big-endian length and its bytes (absent: 0xFFFFFFFF), the body
/// as an 8-byte big-endian length and its bytes; HMAC-SHA256 in hex.
fn documented_signature(secret: &[u8], fields: [Option<&str>; 10], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(b"tidings-signature-v1\n");
    for field in fields {
        match field {
            Some(value) => {
                mac.update(&u32::try_from(value.len()).unwrap().to_be_bytes());
                mac.update(value.as_bytes());
            }
            None => mac.update(&[0xFF; 4]),
        }
    }
    mac.update(&(body.len() as u64).to_be_bytes());
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A message as a foreign client publishes it.
#[derive(Clone)]
struct Raw {
    body: Vec<u8>,
    content_type: String,
    message_id: String,
    headers: Vec<(String, String)>,
}

impl Raw {
    /// A JSON event signed with `secret` under `key_id`, sent at `sent_at`
    /// (µs), as a well-behaved foreign publisher following
    /// `docs/signing.md` makes it.
    fn signed(value: i64, key_id: &str, secret: &[u8], sent_at: u64) -> Self {
        let body =
            serde_json::to_vec(&serde_json::json!({ TAG: { "sensor": "raw", "value": value } }))
                .unwrap();
        let fingerprint = Reading::schema().fingerprint().to_string();
        let message_id = common::unique("raw");
        let sent_at = sent_at.to_string();
        let signature = documented_signature(
            secret,
            [
                Some(key_id),
                Some(JSON_CONTENT_TYPE),
                Some(TAG),
                None,
                Some(&fingerprint),
                Some(&message_id),
                Some("raw-publisher"),
                Some(&sent_at),
                None,
                None,
            ],
            &body,
        );
        Self {
            body,
            content_type: JSON_CONTENT_TYPE.to_owned(),
            message_id,
            headers: vec![
                (TAG_HEADER.into(), TAG.into()),
                (FINGERPRINT_HEADER.into(), fingerprint),
                (ORIGIN_HEADER.into(), "raw-publisher".into()),
                (SENT_AT_HEADER.into(), sent_at),
                (KEY_ID_HEADER.into(), key_id.into()),
                (SIGNATURE_HEADER.into(), signature),
            ],
        }
    }

    /// A message as it was delivered (a bus's own, captured).
    fn captured(message: &lapin::message::BasicGetMessage) -> Self {
        let properties = &message.delivery.properties;
        let headers = properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .iter()
            // A quorum queue counts deliveries in a header of its own.
            .filter(|(name, _)| name.as_str() != "x-delivery-count")
            .map(|(name, value)| match value {
                AMQPValue::LongString(text) => (name.to_string(), text.to_string()),
                other => panic!("header {name} is {other:?}"),
            })
            .collect();
        Self {
            body: message.delivery.data.clone(),
            content_type: properties.content_type().as_ref().unwrap().to_string(),
            message_id: properties.message_id().as_ref().unwrap().to_string(),
            headers,
        }
    }

    fn set(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.into(), value.into()));
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self
    }

    async fn publish(&self, channel: &lapin::Channel, exchange: &str) {
        let mut table = FieldTable::default();
        for (name, value) in &self.headers {
            table.insert(
                name.as_str().into(),
                AMQPValue::LongString(value.as_str().into()),
            );
        }
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(self.message_id.as_str()))
            .with_content_type(ShortString::from(self.content_type.as_str()))
            .with_headers(table);
        common::raw_publish(channel, exchange, "", &self.body, properties).await;
    }
}

/// A bus that requires signed events, what its subscriber saw, and a
/// consumer of its dead letters.
struct Receiver {
    bus: Bus,
    seen: Arc<Mutex<Vec<i64>>>,
    dead: tidings::Consumer,
    conn: Connection,
    _guard: tidings::Subscription,
}

impl Receiver {
    async fn start(props: &AmqpProps, signing: Signing) -> Self {
        let subscribers = Subscribers::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let guard = subscribers.subscribe(move |r: &Reading| s.lock().unwrap().push(r.value));
        let bus = Bus::with_props(props.clone())
            .subscribers(subscribers)
            .signing(signing)
            .connect()
            .await
            .unwrap();
        let conn = Connection::connect(props).await.unwrap();
        let dead = conn
            .consumer(&Queue::existing(bus.dead_letter_queue().unwrap()))
            .await
            .unwrap();
        Self {
            bus,
            seen,
            dead,
            conn,
            _guard: guard,
        }
    }

    async fn saw(&self, value: i64) -> bool {
        common::eventually(Duration::from_secs(10), || {
            self.seen.lock().unwrap().contains(&value)
        })
        .await
    }

    /// After a bad message `bad_id` and then the good event `value`: the
    /// good one was dispatched, the bad one dead-lettered with `reason`
    /// and counted under it. Returns what was wrong.
    async fn check(
        &mut self,
        name: &str,
        reason: RejectReason,
        bad_id: &str,
        value: i64,
        before: &Stats,
    ) -> Vec<String> {
        let mut wrong = Vec::new();
        assert!(
            self.saw(value).await,
            "{name}: the good event {value} was not dispatched within 10 s; saw {:?}",
            self.seen.lock().unwrap()
        );
        let after = self.bus.stats();
        let counted: Vec<String> = RejectReason::ALL
            .iter()
            .filter(|r| after.rejected(**r) != before.rejected(**r))
            .map(|r| format!("{r}+{}", after.rejected(*r) - before.rejected(*r)))
            .collect();
        if counted != [format!("{reason}+1")] {
            wrong.push(format!("{name}: expected {reason}+1, counted {counted:?}"));
        }
        if after.dispatched - before.dispatched != 1 {
            wrong.push(format!(
                "{name}: dispatched +{}, expected +1",
                after.dispatched - before.dispatched
            ));
        }
        let letter = common::next_delivery(&mut self.dead).await;
        if letter.message_id() != Some(bad_id)
            || letter.header_str(REASON_HEADER) != Some(reason.as_str())
        {
            wrong.push(format!(
                "{name}: dead letter {:?} with reason {:?} ({:?}), expected {bad_id:?} with {reason}",
                letter.message_id(),
                letter.header_str(REASON_HEADER),
                letter.header_str(tidings::ERROR_HEADER),
            ));
        }
        letter.ack().await.unwrap();
        wrong
    }

    async fn close(self) {
        self.bus.close().await.unwrap();
        self.conn.close().await.unwrap();
    }
}

/// A bus that signs with `signing` and only publishes.
async fn publisher(props: &AmqpProps, signing: Signing) -> Bus {
    Bus::with_props(props.clone())
        .publish_only()
        .signing(signing)
        .connect()
        .await
        .unwrap()
}

fn receiving_keys() -> Signing {
    Signing::new()
        .with_key("k1", K1)
        .unwrap()
        .require_signed(true)
        .with_max_age(Duration::from_secs(60))
}

#[tokio::test]
async fn forged_altered_unsigned_and_replayed_events_from_raw_lapin_are_refused_with_their_reason()
{
    let props = common::props(ExchangeKind::Fanout);
    let cleanup = common::Cleanup::new(&props);
    let mut receiver = Receiver::start(&props, receiving_keys()).await;
    let bus = publisher(&props, Signing::new().with_signing_key("k1", K1).unwrap()).await;
    let conn = Connection::connect(&props).await.unwrap();
    let channel = common::confirming_channel(&conn).await;

    // A genuine signed event, dispatched; a copy of it captured by a queue
    // of the test's own, as an eavesdropper on the exchange would.
    let capture = common::unique("capture");
    cleanup.queue(&capture);
    conn.declare_queue(&Queue::durable(&capture)).await.unwrap();
    bus.publish_confirmed(&reading(0)).await.unwrap();
    assert!(receiver.saw(0).await, "the signed event was not dispatched");
    let genuine = Raw::captured(&common::raw_get(&conn, &capture).await.unwrap());
    assert!(
        genuine.headers.iter().any(|(n, _)| n == SIGNATURE_HEADER),
        "a signing bus's event carries {SIGNATURE_HEADER}"
    );
    conn.delete_queue(&capture).await.unwrap();

    // Sent verbatim again, within the window: the dedup window drops it.
    let before = receiver.bus.stats();
    genuine.publish(&channel, props.exchange()).await;
    assert!(
        common::eventually(Duration::from_secs(10), || receiver
            .bus
            .stats()
            .deduplicated
            == before.deduplicated + 1)
        .await,
        "a verbatim replay was not deduplicated: {:?}",
        receiver.bus.stats()
    );
    assert_eq!(receiver.bus.stats().rejected_total(), 0);

    let other_body =
        serde_json::to_vec(&serde_json::json!({ TAG: { "sensor": "x", "value": 666 } })).unwrap();
    let ten_minutes_ago = now_us() - 600_000_000;
    let cases: Vec<(&str, Raw, RejectReason)> = vec![
        (
            "other_body",
            Raw {
                body: other_body,
                content_type: JSON_CONTENT_TYPE.into(),
                ..genuine.clone()
            },
            RejectReason::BadSignature,
        ),
        (
            "other_origin",
            genuine.clone().set(ORIGIN_HEADER, "billing-service"),
            RejectReason::BadSignature,
        ),
        (
            "other_sent_at",
            genuine.clone().set(SENT_AT_HEADER, &now_us().to_string()),
            RejectReason::BadSignature,
        ),
        (
            "made_up_signature",
            genuine.clone().set(SIGNATURE_HEADER, &"ab".repeat(32)),
            RejectReason::BadSignature,
        ),
        (
            "not_hex_signature",
            genuine.clone().set(SIGNATURE_HEADER, "forged"),
            RejectReason::BadSignature,
        ),
        (
            "signed_with_another_secret",
            Raw::signed(666, "k1", K2, now_us()),
            RejectReason::BadSignature,
        ),
        (
            "unsigned",
            genuine
                .clone()
                .without(SIGNATURE_HEADER)
                .without(KEY_ID_HEADER),
            RejectReason::Unsigned,
        ),
        (
            "unknown_key_id",
            genuine.clone().set(KEY_ID_HEADER, "k9"),
            RejectReason::UnknownKey,
        ),
        (
            "no_key_id",
            genuine.clone().without(KEY_ID_HEADER),
            RejectReason::UnknownKey,
        ),
        (
            "replayed_from_ten_minutes_ago",
            Raw::signed(666, "k1", K1, ten_minutes_ago),
            RejectReason::Stale,
        ),
    ];
    let mut wrong = Vec::new();
    for (seq, (name, mut bad, reason)) in cases.into_iter().enumerate() {
        let value = i64::try_from(seq).unwrap() + 1;
        let before = receiver.bus.stats();
        // An id of its own, to tell its dead letter from the others'.
        if bad.message_id == genuine.message_id {
            bad.message_id = common::unique(name);
        }
        bad.publish(&channel, props.exchange()).await;
        bus.publish_confirmed(&reading(value)).await.unwrap();
        wrong.extend(
            receiver
                .check(name, reason, &bad.message_id, value, &before)
                .await,
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A fresh event signed by the documented bytes, by a client that holds
    // the key, is dispatched: the description is exact.
    Raw::signed(1000, "k1", K1, now_us())
        .publish(&channel, props.exchange())
        .await;
    assert!(
        receiver.saw(1000).await,
        "the documented signature was refused"
    );
    let stats = receiver.bus.stats();
    assert_eq!(stats.rejected(RejectReason::BadSignature), 6, "{stats:?}");
    assert_eq!(stats.rejected(RejectReason::Unsigned), 1);
    assert_eq!(stats.rejected(RejectReason::UnknownKey), 2);
    assert_eq!(stats.rejected(RejectReason::Stale), 1);
    assert!(!receiver.seen.lock().unwrap().contains(&666));
    conn.close().await.unwrap();
    bus.close().await.unwrap();
    receiver.close().await;
}

#[tokio::test]
async fn forged_and_replayed_events_from_python_pika_are_refused_and_its_signed_ones_dispatched() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let python = common::python::python_with_pika();
    let mut receiver = Receiver::start(&props, receiving_keys()).await;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut url = url::Url::parse(&common::broker_url()).unwrap();
    url.set_query(None);
    let mut script = tokio::process::Command::new(&python)
        .arg(common::python::script("pika_signing.py"))
        .args([
            url.to_string(),
            props.exchange().to_owned(),
            TAG.to_owned(),
            Reading::schema().fingerprint().to_string(),
            "k1".to_owned(),
            hex(K1),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start scripts/pika_signing.py");
    let mut to_script = script.stdin.take().unwrap();
    let mut from_script = BufReader::new(script.stdout.take().unwrap()).lines();
    let mut ask = async |line: String| -> String {
        to_script.write_all(line.as_bytes()).await.unwrap();
        to_script.write_all(b"\n").await.unwrap();
        to_script.flush().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), from_script.next_line())
            .await
            .unwrap_or_else(|_| panic!("{line}: pika_signing.py did not answer within 10 s"))
            .unwrap();
        answer
            .as_deref()
            .and_then(|a| a.strip_prefix("ok "))
            .unwrap_or_else(|| panic!("{line}: pika_signing.py answered {answer:?}"))
            .to_owned()
    };

    // Each bad message, then a correctly signed one (`signed SEQ`), which
    // must be dispatched after it.
    let cases = [
        ("forged", RejectReason::BadSignature),
        ("tampered", RejectReason::BadSignature),
        ("unsigned", RejectReason::Unsigned),
        ("unknown_key", RejectReason::UnknownKey),
        ("stale", RejectReason::Stale),
    ];
    let mut wrong = Vec::new();
    for (seq, (name, reason)) in cases.into_iter().enumerate() {
        let value = i64::try_from(seq).unwrap();
        let before = receiver.bus.stats();
        let bad_id = ask(format!("{name} {value}")).await;
        ask(format!("signed {value}")).await;
        wrong.extend(receiver.check(name, reason, &bad_id, value, &before).await);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    drop(to_script);
    let status = tokio::time::timeout(Duration::from_secs(10), script.wait())
        .await
        .expect("pika_signing.py did not exit within 10 s of its input ending")
        .unwrap();
    assert!(status.success(), "pika_signing.py exited with {status}");
    let stats = receiver.bus.stats();
    assert_eq!(stats.rejected_total(), cases.len() as u64, "{stats:?}");
    assert_eq!(stats.dead_lettered, cases.len() as u64);
    assert_eq!(
        *receiver.seen.lock().unwrap(),
        (0..cases.len() as i64).collect::<Vec<_>>()
    );
    receiver.close().await;
}

#[tokio::test]
async fn keys_rotate_while_events_flow_and_none_is_lost() {
    const EVENTS: i64 = 600;
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    // Two processes' keyrings: the receiver's and the publisher's.
    let receiving = receiving_keys();
    let mut receiver = Receiver::start(&props, receiving.clone()).await;
    let signing = Signing::new().with_signing_key("k1", K1).unwrap();
    let bus = publisher(&props, signing.clone()).await;

    for value in 0..EVENTS {
        match value {
            // Step 1: every receiver accepts the new key.
            200 => receiving.add_key("k2", K2).unwrap(),
            // Step 2: the publisher signs with it (events signed with k1
            // are still in flight).
            300 => {
                signing.add_key("k2", K2).unwrap();
                signing.sign_with("k2").unwrap();
            }
            _ => {}
        }
        bus.publish(&reading(value)).await.unwrap();
    }
    bus.close().await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(20), || {
            receiver.seen.lock().unwrap().len() == EVENTS as usize
        })
        .await,
        "{} of {EVENTS} events arrived",
        receiver.seen.lock().unwrap().len()
    );
    // Step 3: once nothing signed with k1 can be in a queue, drop it.
    signing.remove_key("k1").unwrap();
    receiving.remove_key("k1").unwrap();
    assert_eq!(receiving.key_ids(), ["k2"]);
    let stats = receiver.bus.stats();
    assert_eq!(stats.rejected_total(), 0, "{stats:?}");
    assert_eq!(
        *receiver.seen.lock().unwrap(),
        (0..EVENTS).collect::<Vec<_>>(),
        "every event, once, in order"
    );

    // An event signed with the dropped key is refused from now on; one
    // signed with the new key passes.
    let conn = Connection::connect(&props).await.unwrap();
    let channel = common::confirming_channel(&conn).await;
    let old = Raw::signed(EVENTS, "k1", K1, now_us());
    let before = receiver.bus.stats();
    old.publish(&channel, props.exchange()).await;
    Raw::signed(EVENTS + 1, "k2", K2, now_us())
        .publish(&channel, props.exchange())
        .await;
    let wrong = receiver
        .check(
            "dropped_key",
            RejectReason::UnknownKey,
            &old.message_id,
            EVENTS + 1,
            &before,
        )
        .await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    conn.close().await.unwrap();
    receiver.close().await;
}

#[tokio::test]
async fn a_signed_event_retried_after_a_failed_handler_still_verifies() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let subscribers = Subscribers::new();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = attempts.clone();
    let _guard = subscribers.subscribe_with(move |r: &Reading, context: &tidings::Context| {
        let mut attempts = a.lock().unwrap();
        attempts.push(context.attempt());
        if attempts.len() < 3 {
            Err(format!(
                "failing attempt {} of {}",
                context.attempt(),
                r.value
            ))
        } else {
            Ok(())
        }
    });
    let receiver = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .signing(receiving_keys())
        .retry_delay(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let bus = publisher(&props, Signing::new().with_signing_key("k1", K1).unwrap()).await;
    bus.publish_confirmed(&reading(7)).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || receiver.stats().handled == 1).await,
        "not handled: {:?}",
        receiver.stats()
    );
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    assert_eq!(receiver.stats().rejected_total(), 0);
    bus.close().await.unwrap();
    receiver.close().await.unwrap();
}

/// The signature covers the body as sent, compressed: a bus that signs
/// and compresses every body is verified (before decompression) and
/// handled by one that requires signatures.
#[tokio::test]
async fn a_compressed_signed_event_verifies() {
    let props = common::props(ExchangeKind::Fanout);
    let _cleanup = common::Cleanup::new(&props);
    let receiver = Receiver::start(&props, receiving_keys()).await;
    let bus = Bus::with_props(props.clone())
        .publish_only()
        .signing(Signing::new().with_signing_key("k1", K1).unwrap())
        .compression(tidings::Compression::Gzip)
        .compression_threshold(0)
        .connect()
        .await
        .unwrap();
    bus.publish_confirmed(&reading(11)).await.unwrap();
    assert!(receiver.saw(11).await, "{:?}", receiver.bus.stats());
    assert_eq!(receiver.bus.stats().rejected_total(), 0);
    bus.close().await.unwrap();
    receiver.close().await;
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "signing.quote")]
struct Quote {
    sku: String,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "signing.quoted")]
struct Quoted {
    cents: u64,
}

impl tidings::Request for Quote {
    type Reply = Quoted;
}

/// A server that requires signatures answers only signed requests: an
/// unsigned call gets a remote error saying why, counted; a signed one its
/// reply.
#[tokio::test]
async fn a_server_that_requires_signatures_refuses_unsigned_requests() {
    let props = common::props(ExchangeKind::Topic);
    common::require_broker(&props);
    let _cleanup = common::Cleanup::new(&props);
    let server = Bus::with_props(props.clone())
        .publish_only()
        .signing(receiving_keys())
        .connect()
        .await
        .unwrap();
    let _serving = server
        .serve(|q: Arc<Quote>| async move {
            Ok::<_, std::io::Error>(Quoted {
                cents: q.sku.len() as u64,
            })
        })
        .await
        .unwrap();
    let unsigned = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    let err = unsigned
        .call(&Quote { sku: "tea".into() })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tidings::ErrorKind::Remote, "{err}");
    assert!(err.to_string().contains("unsigned"), "{err}");
    assert_eq!(server.stats().rejected(RejectReason::Unsigned), 1);
    let signed = publisher(&props, Signing::new().with_signing_key("k1", K1).unwrap()).await;
    let reply = signed.call(&Quote { sku: "cake".into() }).await.unwrap();
    assert_eq!(reply.cents, 4);
    for bus in [signed, unsigned, server] {
        bus.close().await.unwrap();
    }
}
