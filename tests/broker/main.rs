//! Integration tests against the shared broker (127.0.0.1:5672, or AMQP_URL), one binary so the suite links once.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod bad_input_matrix;
mod blocking;
mod confirms;
mod contract;
mod dead_letter_replay;
mod dead_letters;
mod dedup;
mod derive;
mod flow;
mod handler_timeout;
mod hosts;
mod proxy;
mod publish_options;
mod python_wire;
mod queue_types;
mod receive;
mod rejections;
mod roundtrip;
mod rpc_bad_reply;
mod schema_store;
mod send_sync;
mod settlement;
mod signing;
mod spans;
mod stream_replay;
mod versions;
