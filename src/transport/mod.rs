//! The transport seam: how a bus moves encoded events. `amqp` goes through
//! RabbitMQ, `memory` stays inside the process with the same semantics,
//! `faults` wraps either to inject outages, and `drivers` opens each by
//! URL scheme.

pub(crate) mod amqp;
pub(crate) mod drivers;
pub(crate) mod listen;

pub(crate) mod memory;
pub(crate) mod seam;
