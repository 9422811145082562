use serde::{Deserialize, Serialize};

#[derive(tidings::Event, Serialize, Deserialize, Debug)]
#[event(name = "orders placed")]
struct OrderPlaced {
    id: u64,
}

fn main() {}
