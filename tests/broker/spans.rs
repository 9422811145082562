//! Per-message spans, as a `tracing` subscriber sees them: a `publish`
//! span per event and a `handle` span per delivery with the tag, message
//! id, origin, attempt and queue, the handler's own logs inside it, and
//! the outcome as an event.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{Bus, Event, ExchangeKind, Subscribers};

use crate::common;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "spans.checked")]
struct Checked {
    id: u64,
}

/// Formatted log lines, shared with the test.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn each_message_has_a_span_with_the_handler_logs_inside() {
    let props = common::props(ExchangeKind::Fanout);
    common::require_broker(&props);
    let _cleanup = common::Cleanup::new(&props);
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    // A `#[tokio::test]` runs the bus's tasks on this thread too.
    let _default = tracing::subscriber::set_default(subscriber);

    let subscribers = Subscribers::new();
    let _guard = subscribers.subscribe(|c: &Checked| {
        tracing::info!(id = c.id, "inside the handler");
    });
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .connect()
        .await
        .unwrap();
    bus.publish_confirmed(&Checked { id: 7 }).await.unwrap();
    let handled = common::eventually(Duration::from_secs(10), || bus.stats().handled == 1).await;
    assert!(handled, "{:?}", bus.stats());
    bus.close().await.unwrap();

    let text = lines.text();
    let message_id = format!("{}-0", bus.instance_id());
    let inside = text
        .lines()
        .find(|l| l.contains("inside the handler"))
        .unwrap_or_else(|| panic!("the handler's log is missing:\n{text}"));
    for field in [
        "handle{".to_owned(),
        "tag=spans.checked".to_owned(),
        format!("message_id={message_id}"),
        format!("origin={}", bus.instance_id()),
        "attempt=1".to_owned(),
        format!("queue={}.", props.exchange()),
    ] {
        assert!(inside.contains(&field), "{field} is not in {inside:?}");
    }
    assert!(
        text.lines().any(|l| l.contains("publish{")
            && l.contains("tag=spans.checked")
            && l.contains(&format!("message_id={message_id}"))
            && l.contains("accepted for publishing")),
        "no publish span:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("handle{") && l.contains("outcome=\"acked\"")),
        "no outcome event:\n{text}"
    );
}
