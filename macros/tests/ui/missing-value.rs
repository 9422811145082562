use serde::{Deserialize, Serialize};
use tidings::Event;

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name, routing_key = orders)]
struct OrderPlaced {
    id: u64,
}

fn main() {}
