// A version must be a whole number from 1; `upcast_from` needs a version
// after the first.
#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
#[event(name = "orders.placed", version = 0)]
struct Zero {
    id: u64,
}

#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
#[event(name = "orders.shipped", version = "2")]
struct Text {
    id: u64,
}

#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
#[event(name = "orders.paid")]
struct PaidV1 {
    id: u64,
}

#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
#[event(name = "orders.paid", upcast_from = PaidV1)]
struct Paid {
    id: u64,
}

fn main() {}
