use serde::{Deserialize, Serialize};
use tidings::{Event, EventType};

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(name = "pass.named", routing_key = "pass.routing")]
struct Named {
    id: u64,
    tags: Vec<String>,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
struct Tuple(u32, String);

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
struct Unit;

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(name = "pass.enum")]
enum Changed {
    Created { id: u64 },
    Renamed(String),
    Deleted,
}

fn main() {
    assert_eq!((Named::TAG, Named::ROUTING_KEY), ("pass.named", "pass.routing"));
    assert_eq!((Tuple::TAG, Tuple::ROUTING_KEY), ("Tuple", "Tuple"));
    assert_eq!(Unit::TAG, "Unit");
    assert_eq!(Changed::TAG, "pass.enum");
    let event: Box<dyn Event> = Box::new(Changed::Renamed("x".into()));
    let json = serde_json::to_string(&event).unwrap();
    assert_eq!(json, r#"{"pass.enum":{"Renamed":"x"}}"#);
    let back: Box<dyn Event> = serde_json::from_str(&json).unwrap();
    assert_eq!(back.as_any().downcast_ref::<Changed>(), Some(&Changed::Renamed("x".into())));
    let named: Box<dyn Event> = serde_json::from_str(r#"{"pass.named":{"id":1,"tags":[]}}"#).unwrap();
    assert_eq!(named.routing_key(), "pass.routing");
}
