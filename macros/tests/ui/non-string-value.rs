use serde::{Deserialize, Serialize};

#[derive(tidings::Event, Serialize, Deserialize, Debug)]
#[event(name = 42)]
struct OrderPlaced {
    id: u64,
}

fn main() {}
