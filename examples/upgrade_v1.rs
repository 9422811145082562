//! **A rolling upgrade, the old build**: `OrderPlaced` with `qty` and an
//! optional `note`, `OrderRefunded` at version 1. Run by
//! `tests/processes/rolling_upgrade.rs` beside `upgrade_v2` (the new build)
//! and `upgrade_retyped` (a breaking change); see `upgrade_shared`.

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
    qty: u32,
    note: Option<String>,
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "upgrade.refunded")]
struct OrderRefunded {
    id: u64,
    cents: u64,
}

fn subscribe(subscribers: &Subscribers) -> Vec<tidings::Subscription> {
    vec![
        subscribers.subscribe(|o: &OrderPlaced| println!("placed {} qty={}", o.id, o.qty)),
        subscribers
            .subscribe(|r: &OrderRefunded| println!("refunded {} cents={} v1", r.id, r.cents)),
    ]
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
                    qty: 3,
                    note: Some("ring twice".into()),
                };
                bus.publish_confirmed(&placed).await?;
                bus.publish_confirmed(&OrderRefunded { id, cents: 250 })
                    .await
            })
        },
    })
}
