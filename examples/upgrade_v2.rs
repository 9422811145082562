//! **A rolling upgrade, the new build**: `OrderPlaced` renames `qty` to
//! `quantity` (with `#[serde(alias = "qty")]`), drops the optional `note`
//! and adds an optional `gift`: compatible both ways. `OrderRefunded`
//! changes incompatibly, so it is version 2 and upcasts from version 1.
//! See `upgrade_v1` and `upgrade_shared`.

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
    #[serde(alias = "qty")]
    quantity: u32,
    gift: Option<String>,
}

/// Version 1, as the old build publishes it.
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "upgrade.refunded")]
struct OrderRefundedV1 {
    id: u64,
    cents: u64,
}

#[derive(Serialize, Deserialize, Debug)]
struct Money {
    cents: u64,
    currency: String,
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "upgrade.refunded", version = 2, upcast_from = OrderRefundedV1)]
struct OrderRefunded {
    id: u64,
    amount: Money,
}

impl From<OrderRefundedV1> for OrderRefunded {
    fn from(old: OrderRefundedV1) -> Self {
        Self {
            id: old.id,
            amount: Money {
                cents: old.cents,
                currency: "EUR".into(),
            },
        }
    }
}

fn subscribe(subscribers: &Subscribers) -> Vec<tidings::Subscription> {
    vec![
        subscribers.subscribe(|o: &OrderPlaced| println!("placed {} qty={}", o.id, o.quantity)),
        subscribers.subscribe(|r: &OrderRefunded| {
            println!("refunded {} cents={} v2", r.id, r.amount.cents)
        }),
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
                    quantity: 3,
                    gift: Some("bow".into()),
                };
                bus.publish_confirmed(&placed).await?;
                let refunded = OrderRefunded {
                    id,
                    amount: Money {
                        cents: 250,
                        currency: "EUR".into(),
                    },
                };
                bus.publish_confirmed(&refunded).await
            })
        },
    })
}
