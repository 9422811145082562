use serde::{Deserialize, Serialize};
use tidings::{Event, EventType};

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(name = "orders.placed", routing_key = "orders.eu.placed")]
struct OrderPlaced {
    id: u64,
    item: String,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
struct Tuple(u32, String);

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(routing_key = "heartbeats")]
struct Heartbeat;

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(name = "shipping.status")]
#[event(routing_key = "shipping")]
enum Shipping {
    Packed { parcel: u64 },
    Sent(String),
    Lost,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
struct r#Raw {
    r#type: u8,
}

fn round_trip<T: EventType>(value: T, json: &str) {
    let body = serde_json::to_value(&value).unwrap();
    let event: Box<dyn Event> = Box::new(value);
    assert_eq!(serde_json::to_string(&event).unwrap(), json);
    let back: Box<dyn Event> = serde_json::from_str(json).unwrap();
    assert_eq!(back.tag(), T::TAG);
    assert_eq!(back.routing_key(), T::ROUTING_KEY);
    assert_eq!(back.fingerprint(), T::schema().fingerprint());
    let typed = back.as_any().downcast_ref::<T>().expect("decoded to the derived type");
    assert_eq!(serde_json::to_value(typed).unwrap(), body);
}

fn main() {
    assert_eq!(OrderPlaced::TAG, "orders.placed");
    assert_eq!(OrderPlaced::ROUTING_KEY, "orders.eu.placed");
    assert_eq!(Tuple::TAG, "Tuple");
    assert_eq!(Tuple::ROUTING_KEY, "Tuple");
    assert_eq!(Heartbeat::TAG, "Heartbeat");
    assert_eq!(Heartbeat::ROUTING_KEY, "heartbeats");
    assert_eq!(Shipping::TAG, "shipping.status");
    assert_eq!(Shipping::ROUTING_KEY, "shipping");
    assert_eq!(Raw::TAG, "Raw");

    round_trip(
        OrderPlaced { id: 7, item: "tea".into() },
        r#"{"orders.placed":{"id":7,"item":"tea"}}"#,
    );
    round_trip(Tuple(1, "x".into()), r#"{"Tuple":[1,"x"]}"#);
    round_trip(Heartbeat, r#"{"Heartbeat":null}"#);
    round_trip(Shipping::Packed { parcel: 3 }, r#"{"shipping.status":{"Packed":{"parcel":3}}}"#);
    round_trip(Shipping::Sent("dhl".into()), r#"{"shipping.status":{"Sent":"dhl"}}"#);
    round_trip(Shipping::Lost, r#"{"shipping.status":"Lost"}"#);
    round_trip(Raw { r#type: 2 }, r#"{"Raw":{"type":2}}"#);

    let arc: std::sync::Arc<dyn Event> = std::sync::Arc::new(Heartbeat);
    assert!(arc.into_any_arc().downcast::<Heartbeat>().is_ok());
}
