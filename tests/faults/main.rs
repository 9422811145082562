//! Fault tests on private RabbitMQ nodes the tests start, stop and configure (never the shared broker).

#[path = "../common/mod.rs"]
mod common;

mod blocked;
mod cluster;
mod defects;
mod health;
mod least_privilege;
mod private_node;
mod recovery;
mod rpc;
mod stream_resume;
mod tls;
