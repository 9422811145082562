use serde::{Deserialize, Serialize};

#[derive(tidings::Event, Serialize, Deserialize, Debug)]
#[event(name = "")]
struct OrderPlaced {
    id: u64,
}

fn main() {}
