//! Replay: where a dead letter goes back to, how it goes (confirmed, and
//! mandatory so a missing queue is reported), and what a replay reports.

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation};

use super::letter::DeadLetterMessage;
use crate::amqp::connection::short;
use crate::error::{Error, Result};
use crate::headers::{
    ATTEMPT_HEADER, BODY_DROPPED_HEADER, ERROR_HEADER, QUEUE_HEADER, REASON_HEADER,
    ROUTING_KEY_HEADER, TRIMMED_HEADER,
};

/// The headers of dead-lettering and retries, which a replayed message
/// does not carry: it starts again at attempt 1.
pub(super) const DROPPED_ON_REPLAY: [&str; 7] = [
    ATTEMPT_HEADER,
    REASON_HEADER,
    ERROR_HEADER,
    QUEUE_HEADER,
    ROUTING_KEY_HEADER,
    TRIMMED_HEADER,
    BODY_DROPPED_HEADER,
];

/// **Where a replayed dead letter is sent.**
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReplayTo {
    /// Straight to the queue it was consumed from (`x-tidings-queue`),
    /// through the default exchange: only the listener that failed it gets
    /// it again. The default. A queue that is gone (a broadcast listener's,
    /// deleted with its process) is reported, and the letter stays.
    #[default]
    Queue,
    /// Through the exchange, with its original routing key: every queue
    /// bound to that key gets it again, as when it was first published.
    /// When no queue is bound it is reported, and the letter stays.
    Exchange,
}

/// **What a replay did**: how many dead letters went back, how many were
/// left because they did not match the filter, and which could not be
/// replayed and why (those stay in the dead-letter queue).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Sent back, confirmed by the broker, and removed from the
    /// dead-letter queue.
    pub replayed: u64,
    /// Left in the dead-letter queue because they did not match the filter
    /// (or came after its limit).
    pub not_matching: u64,
    /// Matched but could not be replayed; they stay in the dead-letter queue.
    pub failed: Vec<ReplayFailure>,
}

/// **A dead letter that could not be replayed**, and why; it stays in the
/// dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayFailure {
    /// Its message id, when it has one.
    pub message_id: Option<String>,
    /// What went wrong and what to do, in words.
    pub why: String,
}

/// Why a letter could not be sent.
pub(super) type Refused = String;

/// The properties to replay `letter` with: the same, less the headers of
/// dead-lettering and retries, so the attempt count starts again; message
/// id, origin, tag, fingerprint, version, content type, timestamp and
/// persistence kept.
fn replay_properties(letter: &DeadLetterMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(table) = letter.properties.headers() {
        for (name, value) in table.inner() {
            if !DROPPED_ON_REPLAY.contains(&name.as_str()) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    letter.properties.clone().with_headers(headers)
}

/// Where `letter` goes for `to`: exchange and routing key.
pub(super) fn destination(
    letter: &DeadLetterMessage,
    to: ReplayTo,
    exchange: &str,
) -> std::result::Result<(ShortString, ShortString), Refused> {
    if letter.body_dropped() {
        return Err(format!(
            "its body ({} bytes, over the maximum message size) was dropped when it was dead-lettered, so it cannot be replayed; it stays for inspection (purge it when done)",
            letter.body_size()
        ));
    }
    let (exchange, key) = match to {
        ReplayTo::Queue => {
            let queue = letter.queue().ok_or_else(|| {
                format!("it has no {QUEUE_HEADER} header naming the queue it came from; replay it to the exchange instead")
            })?;
            ("", queue)
        }
        ReplayTo::Exchange => {
            let key = letter.routing_key().ok_or_else(|| {
                format!("it has no {ROUTING_KEY_HEADER} header naming its routing key; replay it to its queue instead")
            })?;
            (exchange, key)
        }
    };
    let checked = |name: &str| short(name).map_err(|e| e.to_string());
    Ok((checked(exchange)?, checked(key)?))
}

/// Sends `letter` and waits for the broker's confirm: `Ok(Err(..))` when
/// the broker did not take it (returned or nacked), `Err` when the channel
/// failed.
pub(super) async fn send(
    channel: &lapin::Channel,
    letter: &DeadLetterMessage,
    (exchange, key): (ShortString, ShortString),
) -> Result<std::result::Result<(), Refused>> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let to = if exchange.as_str().is_empty() {
        format!("queue {:?}", key.as_str())
    } else {
        format!(
            "exchange {:?} with routing key {:?}",
            exchange.as_str(),
            key.as_str()
        )
    };
    let confirmation = channel
        .basic_publish(
            exchange,
            key,
            options,
            letter.body(),
            replay_properties(letter),
        )
        .await
        .map_err(|e| Error::amqp(&format!("replaying a dead letter to {to}"), e))?
        .await
        .map_err(|e| Error::amqp(&format!("replaying a dead letter to {to}"), e))?;
    Ok(match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => Err(format!(
            "the broker returned it from {to} ({}): {}",
            returned.reply_text.as_str(),
            if to.starts_with("queue") {
                "the queue no longer exists; replay it to the exchange instead, or start the listener that declares the queue"
            } else {
                "no queue is bound to that routing key; start a listener for it first"
            }
        )),
        Confirmation::Nack(None) => Err(format!(
            "the broker refused it at {to} (nack); try again later"
        )),
    })
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;
    use crate::headers::{FINGERPRINT_HEADER, ORIGIN_HEADER, TAG_HEADER};

    fn letter(extra: &[(&str, &str)]) -> DeadLetterMessage {
        let mut headers = FieldTable::default();
        for (name, value) in [
            (TAG_HEADER, "orders.placed"),
            (FINGERPRINT_HEADER, "00000000000000ff"),
            (ORIGIN_HEADER, "instance-1"),
            (REASON_HEADER, "handler_failed"),
            (ERROR_HEADER, "boom"),
            (ATTEMPT_HEADER, "5"),
            (ROUTING_KEY_HEADER, "orders.eu"),
            (QUEUE_HEADER, "orders.billing"),
            (TRIMMED_HEADER, "x-big"),
            ("x-tenant", "acme"),
        ]
        .iter()
        .chain(extra)
        {
            headers.insert((*name).into(), AMQPValue::LongString((*value).into()));
        }
        let properties = BasicProperties::default()
            .with_message_id("instance-1-7".into())
            .with_content_type("application/json".into())
            .with_timestamp(1_700_000_000)
            .with_delivery_mode(2)
            .with_headers(headers);
        DeadLetterMessage::new(properties, b"{}".to_vec())
    }

    #[test]
    fn a_replay_starts_again_and_keeps_what_the_event_came_with() {
        let replayed = replay_properties(&letter(&[]));
        let headers = replayed.headers().clone().unwrap_or_default();
        let names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [ORIGIN_HEADER, "x-tenant", FINGERPRINT_HEADER, TAG_HEADER],
            "dead-letter and retry headers are gone, the rest kept"
        );
        assert_eq!(
            replayed.message_id().as_ref().map(|s| s.as_str()),
            Some("instance-1-7")
        );
        assert_eq!(replayed.timestamp(), &Some(1_700_000_000));
        assert_eq!(replayed.delivery_mode(), &Some(2));
        assert_eq!(
            replayed.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
    }

    #[test]
    fn destinations_follow_the_headers() {
        let letter = letter(&[]);
        let (exchange, key) = destination(&letter, ReplayTo::Queue, "orders").unwrap();
        assert_eq!((exchange.as_str(), key.as_str()), ("", "orders.billing"));
        let (exchange, key) = destination(&letter, ReplayTo::Exchange, "orders").unwrap();
        assert_eq!((exchange.as_str(), key.as_str()), ("orders", "orders.eu"));
    }

    #[test]
    fn a_letter_without_its_body_or_its_queue_is_not_replayed() {
        let dropped = letter(&[(BODY_DROPPED_HEADER, "9000000")]);
        assert!(dropped.body_dropped());
        assert_eq!(dropped.body_size(), 9_000_000);
        let why = destination(&dropped, ReplayTo::Queue, "orders").unwrap_err();
        assert!(
            why.contains("9000000 bytes") && why.contains("dropped"),
            "{why}"
        );

        let mut bare = letter(&[]);
        bare.properties = BasicProperties::default();
        let why = destination(&bare, ReplayTo::Queue, "orders").unwrap_err();
        assert!(why.contains("replay it to the exchange instead"), "{why}");
        let why = destination(&bare, ReplayTo::Exchange, "orders").unwrap_err();
        assert!(why.contains("replay it to its queue instead"), "{why}");
    }
}
