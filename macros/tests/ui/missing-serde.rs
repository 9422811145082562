#[derive(tidings::Event, Debug)]
struct OrderPlaced {
    id: u64,
}

fn main() {}
