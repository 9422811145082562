//! **A rolling upgrade gone wrong**: this build changes the type of
//! `OrderPlaced::qty` to a string without a new version. Receivers refuse
//! its events, naming the field, and count them; none is misread. See
//! `upgrade_v1` and `upgrade_shared`.

#[path = "logging/mod.rs"]
mod logging;

#[path = "upgrade_shared/mod.rs"]
mod upgrade_shared;

use serde::{Deserialize, Serialize};
use tidings::{Event, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "upgrade.placed")]
struct OrderPlaced {
    id: u64,
    item: String,
    qty: String,
    note: Option<String>,
}

fn subscribe(subscribers: &Subscribers) -> Vec<tidings::Subscription> {
    vec![subscribers.subscribe(|o: &OrderPlaced| println!("placed {} qty={}", o.id, o.qty))]
}

fn main() -> tidings::Result<()> {
    logging::init();
    upgrade_shared::main(upgrade_shared::Build {
        subscribe,
        publish: |bus, id| {
            Box::pin(async move {
                let placed = OrderPlaced {
                    id,
                    item: "tea".into(),
                    qty: "three".into(),
                    note: None,
                };
                bus.publish_confirmed(&placed).await
            })
        },
    })
}
