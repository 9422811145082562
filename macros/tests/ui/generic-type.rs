use serde::{Deserialize, Serialize};

#[derive(tidings::Event, Serialize, Deserialize, Debug)]
struct Wrapper<T> {
    value: T,
}

fn main() {}
