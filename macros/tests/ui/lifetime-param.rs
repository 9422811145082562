use serde::{Deserialize, Serialize};

#[derive(tidings::Event, Serialize, Deserialize, Debug)]
struct Borrowed<'a> {
    #[serde(borrow)]
    name: &'a str,
}

fn main() {}
