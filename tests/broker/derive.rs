//! What `#[derive(Event)]` generates, seen at run time: tags, routing keys,
//! fingerprints and the registry. (Two types under one tag are compared in
//! `macros/tests/ui/pass-fingerprint-same-tag.rs`, a binary of its own, because the
//! clash would make `registered_events()` fail here.)

use serde::{Deserialize, Serialize};
use tidings::{Event, EventType, Fingerprint, registered_events};

#[derive(Event, Serialize, Deserialize, Debug)]
struct OrderPlaced {
    id: u64,
    item: String,
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "orders.shipped")]
struct OrderShipped(u64);

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(routing_key = "orders.eu.cancelled")]
struct OrderCancelled;

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "orders.status", routing_key = "orders.eu.status")]
enum OrderStatus {
    Packed { parcel: u64 },
    Lost,
}

mod v2 {
    /// `OrderPlaced`'s shape with one field type changed.
    #[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
    #[event(name = "v2.OrderPlaced")]
    pub(super) struct OrderPlaced {
        id: u64,
        item: Vec<String>,
    }

    /// Same shape as `v2::OrderPlaced`, under another tag.
    #[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
    #[event(name = "v2.OrderPlacedCopy")]
    pub(super) struct OrderPlacedCopy {
        id: u64,
        item: Vec<String>,
    }
}

#[test]
fn the_tag_defaults_to_the_type_name_and_the_routing_key_to_the_tag() {
    assert_eq!(OrderPlaced::TAG, "OrderPlaced");
    assert_eq!(OrderPlaced::ROUTING_KEY, "OrderPlaced");
    assert_eq!(OrderShipped::TAG, "orders.shipped");
    assert_eq!(OrderShipped::ROUTING_KEY, "orders.shipped");
}

#[test]
fn attributes_override_the_defaults() {
    assert_eq!(OrderCancelled::TAG, "OrderCancelled");
    assert_eq!(OrderCancelled::ROUTING_KEY, "orders.eu.cancelled");
    assert_eq!(OrderStatus::TAG, "orders.status");
    assert_eq!(OrderStatus::ROUTING_KEY, "orders.eu.status");
}

#[test]
fn the_trait_object_agrees_with_the_constants() {
    let events: [(Box<dyn Event>, &str, &str, Fingerprint); 3] = [
        (
            Box::new(OrderPlaced {
                id: 1,
                item: "tea".into(),
            }),
            OrderPlaced::TAG,
            OrderPlaced::ROUTING_KEY,
            OrderPlaced::schema().fingerprint(),
        ),
        (
            Box::new(OrderCancelled),
            OrderCancelled::TAG,
            OrderCancelled::ROUTING_KEY,
            OrderCancelled::schema().fingerprint(),
        ),
        (
            Box::new(OrderStatus::Packed { parcel: 2 }),
            OrderStatus::TAG,
            OrderStatus::ROUTING_KEY,
            OrderStatus::schema().fingerprint(),
        ),
    ];
    for (event, tag, routing_key, fingerprint) in events {
        assert_eq!(event.tag(), tag);
        assert_eq!(event.routing_key(), routing_key);
        assert_eq!(event.fingerprint(), fingerprint);
    }
    assert!(matches!(OrderStatus::Lost, OrderStatus::Lost));
}

#[test]
fn the_fingerprint_follows_the_shape() {
    // A field type differs (and the tag): different fingerprints.
    assert_ne!(
        OrderPlaced::schema().fingerprint(),
        v2::OrderPlaced::schema().fingerprint()
    );
    // Same shape, different tag: the tag is part of the fingerprint.
    assert_ne!(
        v2::OrderPlaced::schema().fingerprint(),
        v2::OrderPlacedCopy::schema().fingerprint()
    );
}

#[test]
fn every_derived_type_is_registered_under_its_tag() {
    let events = registered_events().expect("no duplicate tags in this binary");
    for (tag, type_name, fingerprint) in [
        (
            "OrderPlaced",
            "broker::derive::OrderPlaced",
            OrderPlaced::schema().fingerprint(),
        ),
        (
            "orders.shipped",
            "broker::derive::OrderShipped",
            OrderShipped::schema().fingerprint(),
        ),
        (
            "OrderCancelled",
            "broker::derive::OrderCancelled",
            OrderCancelled::schema().fingerprint(),
        ),
        (
            "orders.status",
            "broker::derive::OrderStatus",
            OrderStatus::schema().fingerprint(),
        ),
        (
            "v2.OrderPlaced",
            "broker::derive::v2::OrderPlaced",
            v2::OrderPlaced::schema().fingerprint(),
        ),
    ] {
        let registration = events
            .get(tag, 1)
            .unwrap_or_else(|| panic!("{tag} is not registered"));
        assert_eq!(registration.tag(), tag);
        assert_eq!(registration.type_name(), type_name);
        assert_eq!(registration.fingerprint(), fingerprint);
    }
}
