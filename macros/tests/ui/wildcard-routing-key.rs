use serde::{Deserialize, Serialize};

#[derive(tidings::Event, Serialize, Deserialize, Debug)]
#[event(routing_key = "orders.*")]
struct OrderPlaced {
    id: u64,
}

fn main() {}
