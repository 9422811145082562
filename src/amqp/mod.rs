//! **The AMQP core**, usable on its own (zamqp's layer): props and URLs, a
//! recovering connection with its topology, queues, a confirming producer
//! over a bounded outbox, consumers and deliveries, and a consumer thread.
//! It knows nothing of events, buses or transports.

pub(crate) mod connection;
pub(crate) mod connection_event;
pub(crate) mod consumer;
pub(crate) mod consumer_thread;
pub(crate) mod delivery;
pub(crate) mod header_frame;
pub(crate) mod outbox;
pub(crate) mod producer;
pub(crate) mod props;
pub(crate) mod queue;
pub(crate) mod recovery;
pub(crate) mod rpc;
pub(crate) mod stream;
pub(crate) mod topology;
