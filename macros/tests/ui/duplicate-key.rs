use serde::{Deserialize, Serialize};

#[derive(tidings::Event, Serialize, Deserialize, Debug)]
#[event(name = "a", name = "b")]
struct OrderPlaced {
    id: u64,
}

fn main() {}
