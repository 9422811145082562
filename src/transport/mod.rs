//! The transport seam: how a bus moves encoded events. `amqp` goes through
//! RabbitMQ, `memory` stays inside the process with the same semantics,
//! `faults` wraps either to inject outages, and `drivers` opens each by
//! URL scheme. `schema_stream` keeps event schemas on the broker;
//! `amqp_stream` reads a stream listener's RabbitMQ stream, `replay` holds
//! its settings.

pub(crate) mod amqp;
pub(crate) mod amqp_stream;
mod declared;
pub(crate) mod drivers;
pub(crate) mod faults;
pub(crate) mod listen;

pub(crate) mod memory;
pub(crate) mod memory_stream;
pub(crate) mod replay;
pub(crate) mod schema_stream;
pub(crate) mod seam;

/// A received message with these contents (for tests and benchmarks of
/// the decode path).
pub(crate) fn test_message(
    body: Vec<u8>,
    content_type: &'static str,
    tag: &'static str,
    fingerprint: String,
) -> Box<dyn seam::Received> {
    memory::test_message(body, content_type, tag, fingerprint)
}

/// A transport for tests and benchmarks of the decode path: a memory one,
/// whose schema store answers at once.
pub(crate) fn test_transport() -> Box<dyn seam::Transport> {
    Box::new(memory::MemoryTransport::named("test"))
}

pub(crate) use crate::runtime::lock;
