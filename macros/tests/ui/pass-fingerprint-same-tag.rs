// Two types under one tag: a binary of its own, since the clash would poison
// the registry of any other test binary.
use serde::{Deserialize, Serialize};
use tidings::EventType;

mod here {
    #[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
    #[event(name = "shape.order", routing_key = "here")]
    pub struct Order {
        pub id: u64,
        pub items: Vec<String>,
    }
}

mod there {
    // Same shape, other type name, other module, other formatting and
    // routing key: same fingerprint (serde's name of a type is not on the
    // wire, and `#[serde(default)]` only changes what a reader fills).
    #[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
    #[event(name = "shape.order", routing_key = "there")]
    pub struct Renamed {
        /// Docs and attributes are not part of the shape.
        #[serde(default)]
        pub id:    u64,
        pub items: Vec< String >,
    }
}

mod elsewhere {
    // One field type differs: another fingerprint.
    #[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
    #[event(name = "shape.order")]
    pub struct Order {
        pub id: u32,
        pub items: Vec<String>,
    }
}

#[derive(tidings::Event, Serialize, Deserialize, Debug)]
#[event(name = "shape.order")]
enum Order {
    Placed { id: u64 },
}

fn main() {
    assert_eq!(here::Order::schema().fingerprint(), there::Renamed::schema().fingerprint());
    assert_ne!(here::Order::schema().fingerprint(), elsewhere::Order::schema().fingerprint());
    assert_ne!(here::Order::schema().fingerprint(), Order::schema().fingerprint());
    // Pinned: the canonical form
    // `tag=shape.order;version=1;struct{id:u64,items:seq(string)}` hashed
    // with FNV-1a. A change here breaks fingerprints already deployed.
    assert_eq!(here::Order::schema().fingerprint().to_string(), "a90e06ff5047d721");
}
