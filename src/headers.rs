//! **The names of the headers tidings reads and writes**, in one place:
//! what a publisher in another language must send (`TAG`,
//! `FINGERPRINT`, `ORIGIN` and a content type), and what a dead letter or
//! a retry carries; and [`to_json`], to show a message's headers.

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable};

/// The header that carries an event's wire tag.
pub const TAG_HEADER: &str = "x-tidings-tag";
/// The header that carries an event's schema fingerprint (16 hex digits).
pub const FINGERPRINT_HEADER: &str = "x-tidings-fingerprint";
/// The header that carries an event's version, when it is not 1.
pub const VERSION_HEADER: &str = "x-tidings-version";
/// The header that carries the publisher's instance id.
pub const ORIGIN_HEADER: &str = "x-origin";
/// The header that counts delivery attempts across retries.
pub const ATTEMPT_HEADER: &str = "x-tidings-attempt";
/// Dead-letter header: why the message was dead-lettered.
pub const REASON_HEADER: &str = "x-tidings-reason";
/// Dead-letter header: the last handler error, or what could not be decoded.
pub const ERROR_HEADER: &str = "x-tidings-error";
/// Dead-letter header: the routing key the message was published with.
pub const ROUTING_KEY_HEADER: &str = "x-tidings-routing-key";
/// Dead-letter header: the queue the message was consumed from.
pub const QUEUE_HEADER: &str = "x-tidings-queue";
/// Dead-letter header: the size of the body, dropped because it was over
/// the maximum message size (the dead letter has an empty body).
pub const BODY_DROPPED_HEADER: &str = "x-tidings-body-dropped";
/// Dead-letter and retry header: the foreign headers dropped so that the
/// message fits the broker's frame limit, comma-separated.
pub const TRIMMED_HEADER: &str = "x-tidings-trimmed";
/// The conversation an event belongs to: the message id of the event that
/// started it. Absent when the event starts its own conversation (its
/// correlation id is then its message id).
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// The message id of the event whose handler published this one; absent
/// at the start of a conversation.
pub const CAUSATION_HEADER: &str = "x-causation-id";
/// When the event was published, in microseconds since the Unix epoch (a
/// decimal string): the start of the end-to-end latency a receiver
/// measures. Optional.
pub const SENT_AT_HEADER: &str = "x-tidings-sent-at";
/// A reply from a server whose handler failed: what it said (the reply
/// has an empty body).
pub const REPLY_ERROR_HEADER: &str = "x-tidings-reply-error";
/// With [`REPLY_ERROR_HEADER`]: the type of the server's error.
pub const REPLY_ERROR_TYPE_HEADER: &str = "x-tidings-reply-error-type";
/// On a published event: the publisher waits for receipts, sent to the
/// message's `reply-to` by every bus that handled it.
pub const RECEIPT_HEADER: &str = "x-tidings-receipt";
/// On a receipt: `handled`, or `failed` with [`ERROR_HEADER`].
pub const OUTCOME_HEADER: &str = "x-tidings-outcome";
/// The id of the key an event is signed with (see [`Signing`](crate::Signing)).
pub const KEY_ID_HEADER: &str = "x-tidings-key-id";
/// An event's signature: HMAC-SHA256 in 64 lowercase hex digits over the
/// bytes `docs/signing.md` describes (see [`Signing`](crate::Signing)).
pub const SIGNATURE_HEADER: &str = "x-tidings-signature";
/// W3C trace context: the publishing span (`00-<trace>-<span>-<flags>`),
/// sent with the `opentelemetry` feature.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// W3C trace context: vendor-specific trace state, with `traceparent`.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Whether a header is one tidings sets itself (an application header may
/// not use the name): `x-tidings-*`, the origin, correlation, causation and
/// trace context; in any case.
#[must_use]
pub fn is_reserved(name: &str) -> bool {
    const PREFIX: &str = "x-tidings-";
    name.get(..PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(PREFIX))
        || [
            ORIGIN_HEADER,
            CORRELATION_HEADER,
            CAUSATION_HEADER,
            TRACEPARENT_HEADER,
            TRACESTATE_HEADER,
        ]
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
}

/// **A message's headers as JSON values**, for showing them: strings,
/// numbers, booleans, arrays, and nested tables as objects; no headers, an
/// empty map.
#[must_use]
pub fn to_json(headers: Option<&FieldTable>) -> BTreeMap<String, serde_json::Value> {
    headers
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.to_string(), json_of(value)))
                .collect()
        })
        .unwrap_or_default()
}

/// An AMQP field value as JSON.
fn json_of(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        AMQPValue::Boolean(v) => Json::Bool(*v),
        AMQPValue::ShortShortInt(v) => Json::from(*v),
        AMQPValue::ShortShortUInt(v) => Json::from(*v),
        AMQPValue::ShortInt(v) => Json::from(*v),
        AMQPValue::ShortUInt(v) => Json::from(*v),
        AMQPValue::LongInt(v) => Json::from(*v),
        AMQPValue::LongUInt(v) => Json::from(*v),
        AMQPValue::LongLongInt(v) => Json::from(*v),
        AMQPValue::Timestamp(v) => Json::from(*v),
        AMQPValue::Float(v) => Json::from(*v),
        AMQPValue::Double(v) => Json::from(*v),
        AMQPValue::DecimalValue(v) => {
            Json::from(f64::from(v.value) / 10f64.powi(i32::from(v.scale)))
        }
        AMQPValue::ShortString(v) => Json::String(v.to_string()),
        AMQPValue::LongString(v) => {
            Json::String(String::from_utf8_lossy(v.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(v) => {
            Json::Array(v.as_slice().iter().map(|b| Json::from(*b)).collect())
        }
        AMQPValue::FieldArray(v) => Json::Array(v.as_slice().iter().map(json_of).collect()),
        AMQPValue::FieldTable(v) => Json::Object(
            v.inner()
                .iter()
                .map(|(name, value)| (name.to_string(), json_of(value)))
                .collect(),
        ),
        AMQPValue::Void => Json::Null,
    }
}

/// A message id unique across processes, `<instance-id>-<sequence>`,
/// written without the formatting machinery and in one allocation.
pub(crate) fn message_id(instance_id: &str, sequence: u64) -> String {
    let mut id = String::with_capacity(instance_id.len() + 21);
    id.push_str(instance_id);
    id.push('-');
    push_decimal(&mut id, sequence);
    id
}

/// Appends `value` in decimal to `out`, as `to_string` writes it, without
/// the formatting machinery.
pub(crate) fn push_decimal(out: &mut String, value: u64) {
    out.push_str(itoa::Buffer::new().format(value));
}

#[cfg(test)]
mod tests {
    use super::{message_id, push_decimal};

    #[test]
    fn message_ids_are_the_instance_and_the_sequence() {
        assert_eq!(message_id("a1b2", 0), "a1b2-0");
        assert_eq!(message_id("a1b2", 7), "a1b2-7");
        assert_eq!(message_id("x", 1_234_567_890), "x-1234567890");
        assert_eq!(message_id("x", u64::MAX), format!("x-{}", u64::MAX));
    }

    #[test]
    fn decimals_are_written_as_to_string_does() {
        for value in [0, 9, 10, 99, 100, 1_765_000_000_123_456, u64::MAX] {
            let mut out = String::from("<");
            push_decimal(&mut out, value);
            assert_eq!(out, format!("<{value}"));
        }
    }
}
