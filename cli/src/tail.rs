//! `tidings tail`: every message that crosses the exchange, as it comes.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use tidings::headers::{ORIGIN_HEADER, TAG_HEADER, VERSION_HEADER};
use tidings::{Delivery, JSON_CONTENT_TYPE, Queue};
use tokio_stream::StreamExt;

use crate::args::Tail;
use crate::broker::Broker;
use crate::print::{Shown, header_text};

pub(crate) async fn run(broker: &Broker, tail: &Tail) -> tidings::Result<ExitCode> {
    let conn = broker.connect_to_exchange().await?;
    let keys = if tail.bind.is_empty() {
        vec!["#".to_owned()]
    } else {
        tail.bind.clone()
    };
    let queue = keys
        .iter()
        .fold(Queue::exclusive(), |queue, key| queue.bind(key.clone()));
    let mut deliveries = conn.consumer(&queue).await?;
    eprintln!(
        "tidings: tailing exchange {:?} through queue {:?} bound with {keys:?}; Ctrl-C stops",
        broker.exchange(),
        deliveries.queue()
    );
    let mut seen = 0;
    while tail.count.is_none_or(|count| seen < count) {
        let delivery = tokio::select! {
            next = deliveries.next() => next,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(delivery) = delivery else {
            eprintln!("tidings: the broker ended the subscription");
            break;
        };
        let delivery = delivery?;
        let shown = shown(&delivery);
        if tail.json {
            println!("{}", shown.json());
        } else {
            println!("{}", shown.text());
        }
        delivery.ack().await?;
        seen += 1;
    }
    let _ = deliveries.cancel().await;
    conn.close().await?;
    Ok(ExitCode::SUCCESS)
}

fn shown(delivery: &Delivery) -> Shown {
    let table = delivery.properties().headers().as_ref();
    let is_json = delivery.content_type().is_some_and(|t| {
        t.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case(JSON_CONTENT_TYPE)
    });
    let (body, note) = if is_json {
        // Decompressed by its content-encoding, bounded, as a bus reads it.
        match delivery.decode::<serde_json::Value>() {
            Ok(body) => (Some(body), None),
            Err(e) => (None, Some(format!("not valid JSON: {e}"))),
        }
    } else {
        (
            None,
            Some(
                delivery
                    .content_type()
                    .unwrap_or("no content type")
                    .to_owned(),
            ),
        )
    };
    Shown {
        tag: header_text(table, TAG_HEADER),
        version: header_text(table, VERSION_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        routing_key: Some(delivery.routing_key().to_owned()),
        message_id: delivery.message_id().map(str::to_owned),
        origin: header_text(table, ORIGIN_HEADER),
        timestamp: delivery
            .timestamp()
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs))),
        content_type: delivery.content_type().map(str::to_owned),
        headers: tidings::headers::to_json(table),
        size: delivery.body().len(),
        body,
        note,
        extra: Vec::new(),
    }
}
