use serde::{Deserialize, Serialize};

#[derive(tidings::Event, Serialize, Deserialize, Debug)]
#[event(name = "", routing_key = "#", colour = "blue")]
struct OrderPlaced<T> {
    id: T,
}

fn main() {}
