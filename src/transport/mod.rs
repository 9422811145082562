//! The driver seam: how a bus moves encoded events. `amqp` goes through
//! RabbitMQ; `memory` stays inside the process with the same semantics.

pub(crate) mod amqp;
pub(crate) mod memory;

use std::sync::Arc;

use crate::error::Result;
use crate::event::Fingerprint;

/// The header that carries an event's wire tag.
pub const TAG_HEADER: &str = "x-tidings-tag";
/// The header that carries an event's schema fingerprint (16 hex digits).
pub const FINGERPRINT_HEADER: &str = "x-tidings-fingerprint";

/// An encoded event on its way out.
pub(crate) struct Outgoing {
    pub(crate) body: Vec<u8>,
    pub(crate) tag: &'static str,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) routing_key: &'static str,
    pub(crate) message_id: String,
    /// Sent to this queue by name instead of through the exchange.
    pub(crate) to_queue: Option<String>,
}

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
pub const TRIMMED_HEADER: &str = crate::header_frame::TRIMMED_HEADER;

/// A header as received: absent, a string, or of another AMQP type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header<'a> {
    Absent,
    Text(&'a str),
    WrongType,
}

/// A received message, not yet decoded.
// Made once per delivery and moved, never copied; boxing the large variant
// would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Incoming {
    Amqp(crate::Delivery),
    Memory(Arc<memory::Message>),
}

impl Incoming {
    pub(crate) fn body(&self) -> &[u8] {
        match self {
            Self::Amqp(d) => d.body(),
            Self::Memory(m) => &m.body,
        }
    }

    pub(crate) fn content_type(&self) -> Option<&str> {
        match self {
            Self::Amqp(d) => d.content_type(),
            Self::Memory(m) => Some(m.content_type),
        }
    }

    pub(crate) fn header(&self, name: &str) -> Header<'_> {
        match self {
            Self::Amqp(d) => match (d.header(name), d.header_str(name)) {
                (None, _) => Header::Absent,
                (Some(_), Some(text)) => Header::Text(text),
                (Some(_), None) => Header::WrongType,
            },
            Self::Memory(m) => match name {
                TAG_HEADER => Header::Text(m.tag),
                FINGERPRINT_HEADER => Header::Text(&m.fingerprint),
                _ => Header::Absent,
            },
        }
    }

    /// The routing key the event was published with, also after retries
    /// (which come back from the retry queue under the queue's name).
    pub(crate) fn routing_key(&self) -> &str {
        match self {
            Self::Amqp(d) => d.header_str(ROUTING_KEY_HEADER).unwrap_or(d.routing_key()),
            Self::Memory(m) => &m.routing_key,
        }
    }

    /// Which delivery attempt this is, from 1.
    pub(crate) fn attempt(&self) -> u32 {
        match self {
            Self::Amqp(d) => d
                .header_str(ATTEMPT_HEADER)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1),
            Self::Memory(m) => m.attempt,
        }
    }

    pub(crate) fn message_id(&self) -> Option<&str> {
        match self {
            Self::Amqp(d) => d.message_id(),
            Self::Memory(m) => Some(&m.message_id),
        }
    }

    pub(crate) fn origin(&self) -> Option<&str> {
        match self {
            Self::Amqp(d) => d.origin(),
            Self::Memory(m) => Some(&m.origin),
        }
    }

    pub(crate) fn timestamp(&self) -> Option<u64> {
        match self {
            Self::Amqp(d) => d.timestamp(),
            Self::Memory(m) => Some(m.timestamp),
        }
    }

    pub(crate) fn redelivered(&self) -> bool {
        match self {
            Self::Amqp(d) => d.redelivered(),
            Self::Memory(_) => false,
        }
    }

    pub(crate) async fn ack(&self) -> Result<()> {
        match self {
            Self::Amqp(d) => d.ack().await,
            Self::Memory(_) => Ok(()),
        }
    }

    /// Acknowledges this delivery and every one before it on its channel.
    pub(crate) async fn ack_through(&self) -> Result<()> {
        match self {
            Self::Amqp(d) => d.ack_multiple().await,
            Self::Memory(_) => Ok(()),
        }
    }
}
