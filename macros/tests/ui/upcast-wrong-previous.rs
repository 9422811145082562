// `upcast_from` must name the version just before, of the same tag, and
// the new version must be `From` the old one.
#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
#[event(name = "orders.cancelled")]
struct Cancelled {
    id: u64,
}

#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
#[event(name = "orders.refunded", version = 2, upcast_from = Cancelled)]
struct Refunded {
    id: u64,
}

impl From<Cancelled> for Refunded {
    fn from(c: Cancelled) -> Self {
        Self { id: c.id }
    }
}

#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
#[event(name = "orders.cancelled", version = 2, upcast_from = Cancelled)]
struct CancelledV2 {
    id: u64,
}

fn main() {}
