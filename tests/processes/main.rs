//! Tests that run the examples as separate processes.

#[path = "../common/mod.rs"]
mod common;

mod bench_counts;
mod exit_during_reconnect;
mod receipts;
mod rolling_upgrade;
mod three_processes;
