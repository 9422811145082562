//! Two event types under one tag are reported when a bus starts, not at the
//! first decode. (A binary of its own: the clash poisons its registry.)

use serde::{Deserialize, Serialize};
use tidings::{Bus, ErrorKind, Event};

mod billing {
    #[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug)]
    #[event(name = "clash.invoice")]
    pub(crate) struct Invoice {
        pub(crate) id: u64,
    }
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "clash.invoice")]
struct Invoice {
    number: String,
}

#[tokio::test]
async fn a_duplicate_tag_fails_bus_start_naming_both_types() {
    let err = Bus::connect("memory://duplicate-tags").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    let message = err.to_string();
    assert!(message.contains("\"clash.invoice\""), "{message}");
    assert!(
        message.contains("duplicate_tags::billing::Invoice"),
        "{message}"
    );
    assert!(message.contains("duplicate_tags::Invoice"), "{message}");
    // Both types still exist as types; only the bus refuses to start.
    let _ = (
        billing::Invoice { id: 1 },
        Invoice {
            number: String::new(),
        },
    );
}
