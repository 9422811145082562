use serde::{Deserialize, Serialize};

#[derive(tidings::Event, Serialize, Deserialize, Debug)]
#[event(nmae = "orders.placed")]
struct OrderPlaced {
    id: u64,
}

fn main() {}
