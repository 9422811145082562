//! Every kind of bad input, through the real broker, from two foreign
//! publishers: raw lapin, and Python's pika (`scripts/pika_bad_input.py`).
//! For each case the receiving bus must dead-letter the message with the
//! expected `x-tidings-reason`, count it under that reason, and go on to
//! dispatch the good event published right after it (gzip-compressed after
//! every other case: a foreign publisher's compressed body is decoded).

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use tidings::{
    AmqpProps, BINCODE_CONTENT_TYPE, Bincode, Bus, Codec, Connection, Event, EventType,
    ExchangeKind, FINGERPRINT_HEADER, JSON_CONTENT_TYPE, Queue, REASON_HEADER, RejectReason,
    Subscribers, TAG_HEADER,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "bad_input_matrix.reading")]
struct Reading {
    sensor: String,
    value: i64,
}

const TAG: &str = "bad_input_matrix.reading";

/// The receiving bus's maximum message size.
const MAX_SIZE: usize = 4096;

/// Each bad input and the reason it must be rejected with. The Python
/// script knows the same names.
const CASES: &[(&str, RejectReason)] = &[
    ("garbage", RejectReason::Decode),
    ("empty", RejectReason::Decode),
    ("truncated_bincode", RejectReason::Decode),
    ("length_bomb", RejectReason::Decode),
    ("unknown_content_type", RejectReason::ContentType),
    ("no_content_type", RejectReason::ContentType),
    ("missing_tag", RejectReason::MissingTag),
    ("unknown_tag", RejectReason::UnknownTag),
    ("unknown_schema", RejectReason::UnknownSchema),
    ("too_large", RejectReason::TooLarge),
    ("json_wrong_types", RejectReason::Decode),
    ("tag_header_integer", RejectReason::BadHeader),
    ("fingerprint_header_integer", RejectReason::BadHeader),
    ("decompression_bomb", RejectReason::DecompressionBomb),
    ("unknown_content_encoding", RejectReason::ContentEncoding),
    ("corrupt_gzip", RejectReason::Decode),
];

/// The `content-encoding` of case `name`'s bad message, if it has one.
fn content_encoding(name: &str) -> Option<&'static str> {
    match name {
        "decompression_bomb" | "corrupt_gzip" => Some("gzip"),
        "unknown_content_encoding" => Some("br"),
        _ => None,
    }
}

/// `body` in gzip.
fn gzip(body: &[u8]) -> Vec<u8> {
    tidings::Compression::Gzip.compress(body).unwrap()
}

/// A gzip body of 64 times the maximum message size in zeros: about 1 KB
/// on the wire (tidings' gzip level 1), far more once decompressed.
fn gzip_bomb() -> Vec<u8> {
    let bomb = gzip(&vec![0; 64 * MAX_SIZE]);
    assert!(
        bomb.len() < MAX_SIZE,
        "the bomb itself fits: {}",
        bomb.len()
    );
    bomb
}

fn fingerprint() -> String {
    Reading::schema().fingerprint().to_string()
}

fn reading(value: i64) -> Reading {
    Reading {
        sensor: "s".into(),
        value,
    }
}

/// `value` in tidings' bincode codec.
fn bincode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let codec: &dyn Codec = &Bincode;
    codec.encode(value).unwrap()
}

/// A valid bincode body of one event, as the bus would send it.
fn valid_bincode(value: i64) -> Vec<u8> {
    bincode(&(Box::new(reading(value)) as Box<dyn Event>))
}

/// A bincode event body whose `sensor` string claims 2^40 bytes: bincode 2
/// writes a length of 2^32 or more as 0xFD and a u64, little endian.
fn length_bomb() -> Vec<u8> {
    // Everything before the `sensor` length: the encoding of an empty
    // sensor and a zero value ends in the length 0 and the value 0.
    let empty = bincode(
        &(Box::new(Reading {
            sensor: String::new(),
            value: 0,
        }) as Box<dyn Event>),
    );
    let prefix = &empty[..empty.len() - 2];
    let ab = bincode(
        &(Box::new(Reading {
            sensor: "ab".into(),
            value: 0,
        }) as Box<dyn Event>),
    );
    assert_eq!(
        ab,
        [prefix, &[2, b'a', b'b', 0]].concat(),
        "the bincode layout this test builds the bomb on"
    );
    let mut bomb = prefix.to_vec();
    bomb.push(0xFD);
    bomb.extend_from_slice(&(1u64 << 40).to_le_bytes());
    bomb.extend_from_slice(b"aaaaaaaaaaaa");
    bomb
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// The bad message of case `name`: body, content type, headers.
fn bad_message(
    name: &str,
) -> (
    Vec<u8>,
    Option<&'static str>,
    Vec<(&'static str, AMQPValue)>,
) {
    let ours = fingerprint();
    let good_headers = vec![(TAG_HEADER, text(TAG)), (FINGERPRINT_HEADER, text(&ours))];
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let bincode = Some(BINCODE_CONTENT_TYPE);
    let valid = valid_bincode(1);
    match name {
        "garbage" => (vec![0xFF; 9], bincode, good_headers),
        "empty" => (Vec::new(), bincode, good_headers),
        "truncated_bincode" => (valid[..valid.len() - 3].to_vec(), bincode, good_headers),
        "length_bomb" => (length_bomb(), bincode, good_headers),
        "unknown_content_type" => (
            b"(dp0\n.".to_vec(),
            Some("application/python-pickle"),
            good_headers,
        ),
        "no_content_type" => (
            json(serde_json::json!({ TAG: { "sensor": "x", "value": 1 } })),
            None,
            good_headers,
        ),
        "missing_tag" => (valid, bincode, vec![(FINGERPRINT_HEADER, text(&ours))]),
        "unknown_tag" => (
            json(serde_json::json!({ "nobody.knows": { "sensor": "x", "value": 1 } })),
            Some(JSON_CONTENT_TYPE),
            vec![
                (TAG_HEADER, text("nobody.knows")),
                (FINGERPRINT_HEADER, text(&ours)),
            ],
        ),
        "unknown_schema" => (
            valid,
            bincode,
            vec![
                (TAG_HEADER, text(TAG)),
                (FINGERPRINT_HEADER, text("0123456789abcdef")),
            ],
        ),
        "too_large" => (
            json(serde_json::json!({ TAG: { "sensor": "x".repeat(2 * MAX_SIZE), "value": 1 } })),
            Some(JSON_CONTENT_TYPE),
            good_headers,
        ),
        "json_wrong_types" => (
            json(serde_json::json!({ TAG: { "sensor": 5, "value": "x" } })),
            Some(JSON_CONTENT_TYPE),
            good_headers,
        ),
        "tag_header_integer" => (
            valid,
            bincode,
            vec![
                (TAG_HEADER, AMQPValue::LongLongInt(7)),
                (FINGERPRINT_HEADER, text(&ours)),
            ],
        ),
        "fingerprint_header_integer" => (
            valid,
            bincode,
            vec![
                (TAG_HEADER, text(TAG)),
                (FINGERPRINT_HEADER, AMQPValue::LongLongInt(7)),
            ],
        ),
        "decompression_bomb" => (gzip_bomb(), bincode, good_headers),
        "unknown_content_encoding" => (valid, bincode, good_headers),
        "corrupt_gzip" => (
            vec![0x1f, 0x8b, 8, 0, 0xFF, 0xFF, 0xFF],
            bincode,
            good_headers,
        ),
        other => panic!("no such case {other:?}"),
    }
}

/// A bus listening on a fresh fanout exchange, what its subscriber saw, and
/// a consumer of its dead-letter queue.
struct Receiver {
    bus: Bus,
    seen: Arc<Mutex<Vec<i64>>>,
    dead: tidings::Consumer,
    conn: Connection,
    _guard: tidings::Subscription,
}

impl Receiver {
    async fn start(props: &AmqpProps) -> Self {
        let subscribers = Subscribers::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let guard = subscribers.subscribe(move |r: &Reading| s.lock().unwrap().push(r.value));
        let bus = Bus::with_props(props.clone())
            .subscribers(subscribers)
            .unknown_events(tidings::UnknownEvents::DeadLetter)
            // An event whose writer's schema is in no store is retried
            // (the schema may be on its way); one attempt dead-letters it.
            .max_attempts(1)
            .connect()
            .await
            .unwrap();
        let conn = Connection::connect(props).await.unwrap();
        let dlq = bus
            .dead_letter_queue()
            .expect("an amqp bus has a dead-letter queue");
        let dead = conn.consumer(&Queue::existing(dlq)).await.unwrap();
        Self {
            bus,
            seen,
            dead,
            conn,
            _guard: guard,
        }
    }

    /// After case `name` was published (its bad message with id `bad_id`,
    /// then the good event `value`), checks all three outcomes; returns
    /// what was wrong.
    async fn check(
        &mut self,
        name: &str,
        reason: RejectReason,
        bad_id: &str,
        value: i64,
        before: tidings::Stats,
    ) -> Vec<String> {
        let mut wrong = Vec::new();
        let arrived = common::eventually(Duration::from_secs(10), || {
            self.seen.lock().unwrap().contains(&value)
        })
        .await;
        let seen = self.seen.lock().unwrap().clone();
        assert!(
            arrived,
            "{name}: the good event {value} after the bad message was not dispatched within 10 s; \
             dispatched so far: {seen:?}"
        );
        if seen.last() != Some(&value) || seen.iter().filter(|&&v| v == value).count() != 1 {
            wrong.push(format!(
                "{name}: dispatched {seen:?}, expected {value} once, last"
            ));
        }
        let after = self.bus.stats();
        let counted = after.rejected(reason) - before.rejected(reason);
        if counted != 1 || after.rejected_total() - before.rejected_total() != 1 {
            let by_reason: Vec<String> = RejectReason::ALL
                .iter()
                .filter(|r| after.rejected(**r) != before.rejected(**r))
                .map(|r| format!("{r}+{}", after.rejected(*r) - before.rejected(*r)))
                .collect();
            wrong.push(format!(
                "{name}: expected rejected({reason})+1, counted {by_reason:?}"
            ));
        }
        if after.dispatched - before.dispatched != 1 {
            wrong.push(format!(
                "{name}: dispatched went up by {}, expected 1",
                after.dispatched - before.dispatched
            ));
        }
        let letter = common::next_delivery(&mut self.dead).await;
        if letter.message_id() != Some(bad_id) {
            wrong.push(format!(
                "{name}: next dead letter is {:?}, expected {bad_id:?}",
                letter.message_id()
            ));
        }
        let got = letter.header_str(REASON_HEADER);
        if got != Some(reason.as_str()) {
            wrong.push(format!(
                "{name}: dead letter's {REASON_HEADER} is {got:?}, expected {:?} (error: {:?})",
                reason.as_str(),
                letter.header_str(tidings::ERROR_HEADER)
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

/// The broker's URL for pika: without query keys, which are tidings' own.
fn plain_url() -> String {
    let mut url = url::Url::parse(&common::broker_url()).expect("AMQP_URL is not a URL");
    url.set_query(None);
    url.to_string()
}

fn props() -> AmqpProps {
    common::props(ExchangeKind::Fanout).with_max_message_size(MAX_SIZE)
}

#[tokio::test]
async fn every_bad_input_from_raw_lapin_is_dead_lettered_counted_and_passed_over() {
    let started = Instant::now();
    let props = props();
    let _cleanup = common::Cleanup::new(&props);
    let mut receiver = Receiver::start(&props).await;
    let publisher = Connection::connect(&props).await.unwrap();
    let channel = publisher.channel().await.unwrap();
    let publish =
        |body: Vec<u8>, content_type: Option<&str>, encoding: Option<&str>, headers, id: String| {
            let mut table = FieldTable::default();
            for (name, value) in headers {
                let name: &str = name;
                let value: AMQPValue = value;
                table.insert(name.into(), value);
            }
            let mut properties = BasicProperties::default()
                .with_message_id(id.into())
                .with_headers(table);
            if let Some(content_type) = content_type {
                properties = properties.with_content_type(content_type.into());
            }
            if let Some(encoding) = encoding {
                properties = properties.with_content_encoding(encoding.into());
            }
            let channel = channel.clone();
            let exchange = props.exchange().to_owned();
            async move { common::raw_publish(&channel, &exchange, "", &body, properties).await }
        };

    let mut wrong = Vec::new();
    for (seq, (name, reason)) in CASES.iter().enumerate() {
        let value = i64::try_from(seq).unwrap();
        let before = receiver.bus.stats();
        let (body, content_type, headers) = bad_message(name);
        let bad_id = common::unique(&format!("bad-{name}"));
        publish(
            body,
            content_type,
            content_encoding(name),
            headers,
            bad_id.clone(),
        )
        .await;
        // The good event, on the same channel: it is queued after the bad
        // one; gzip-compressed after every other case.
        let good_headers = vec![
            (TAG_HEADER, text(TAG)),
            (FINGERPRINT_HEADER, text(&fingerprint())),
        ];
        let (good, encoding) = if seq % 2 == 1 {
            (gzip(&valid_bincode(value)), Some("gzip"))
        } else {
            (valid_bincode(value), None)
        };
        publish(
            good,
            Some(BINCODE_CONTENT_TYPE),
            encoding,
            good_headers,
            common::unique("good"),
        )
        .await;
        wrong.extend(receiver.check(name, *reason, &bad_id, value, before).await);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let stats = receiver.bus.stats();
    assert_eq!(stats.rejected_total(), CASES.len() as u64);
    assert_eq!(stats.dead_lettered, CASES.len() as u64);
    publisher.close().await.unwrap();
    receiver.close().await;
    eprintln!(
        "raw lapin matrix: {} cases in {:?}",
        CASES.len(),
        started.elapsed()
    );
}

#[tokio::test]
async fn every_bad_input_from_python_pika_is_dead_lettered_counted_and_passed_over() {
    let started = Instant::now();
    let props = props();
    let _cleanup = common::Cleanup::new(&props);
    let python = common::python::python_with_pika();
    let ready = started.elapsed();
    let mut receiver = Receiver::start(&props).await;

    let valid = valid_bincode(1);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut script = tokio::process::Command::new(&python)
        .arg(common::python::script("pika_bad_input.py"))
        .args([
            plain_url(),
            props.exchange().to_owned(),
            TAG.to_owned(),
            fingerprint(),
            hex(&valid),
            hex(&length_bomb()),
            MAX_SIZE.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start scripts/pika_bad_input.py");
    let mut to_script = script.stdin.take().unwrap();
    let mut from_script = BufReader::new(script.stdout.take().unwrap()).lines();

    let mut wrong = Vec::new();
    for (seq, (name, reason)) in CASES.iter().enumerate() {
        let before = receiver.bus.stats();
        to_script
            .write_all(format!("{name} {seq}\n").as_bytes())
            .await
            .unwrap();
        to_script.flush().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), from_script.next_line())
            .await
            .unwrap_or_else(|_| panic!("{name}: pika_bad_input.py did not answer within 10 s"))
            .unwrap();
        let Some(bad_id) = answer.as_deref().and_then(|a| a.strip_prefix("ok ")) else {
            let status = script.wait().await.unwrap();
            panic!("{name}: pika_bad_input.py answered {answer:?} and exited with {status}");
        };
        let value = i64::try_from(seq).unwrap();
        wrong.extend(receiver.check(name, *reason, bad_id, value, before).await);
    }
    drop(to_script);
    let status = tokio::time::timeout(Duration::from_secs(10), script.wait())
        .await
        .expect("pika_bad_input.py did not exit within 10 s of its input ending")
        .unwrap();
    assert!(status.success(), "pika_bad_input.py exited with {status}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let stats = receiver.bus.stats();
    assert_eq!(stats.rejected_total(), CASES.len() as u64);
    assert_eq!(stats.dead_lettered, CASES.len() as u64);
    receiver.close().await;
    eprintln!(
        "pika matrix: {} cases in {:?} (python ready after {ready:?})",
        CASES.len(),
        started.elapsed()
    );
}

/// The bodies the script gets are the ones this file builds.
#[test]
fn the_bomb_claims_two_to_the_forty_bytes() {
    let bomb = length_bomb();
    let at = bomb.iter().rposition(|&b| b == 0xFD).unwrap();
    let claimed = u64::from_le_bytes(bomb[at + 1..at + 9].try_into().unwrap());
    assert_eq!(claimed, 1 << 40);
    let map: BTreeMap<&str, Reading> = BTreeMap::from([(TAG, reading(1))]);
    assert_eq!(
        bincode(&map),
        valid_bincode(1),
        "an event encodes as a one-entry map from tag to fields"
    );
}
