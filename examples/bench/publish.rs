//! The publishing side of a throughput row, in the bench's own process.
//! Each returns the Unix-nanosecond time when the last publish returned.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation};
use tidings::Bus;

use crate::{Error, Payload, WINDOW, now_nanos};

type InFlight<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// Keeps up to `WINDOW` futures in flight and awaits them in order. Each
/// future is polled once as soon as it is made (with a no-op waker), so
/// that it takes its place in line then: lapin's `basic_publish` assigns
/// the delivery tag and queues the frames on its first poll, and a tidings
/// publish encodes the event and enters the bus's buffer on its first poll.
struct Window<'a> {
    in_flight: VecDeque<InFlight<'a>>,
}

impl<'a> Window<'a> {
    fn new() -> Self {
        Self {
            in_flight: VecDeque::with_capacity(WINDOW),
        }
    }

    async fn push(&mut self, mut future: InFlight<'a>) -> Result<(), Error> {
        if self.in_flight.len() == WINDOW
            && let Some(oldest) = self.in_flight.pop_front()
        {
            oldest.await?;
        }
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(result) => result,
            Poll::Pending => {
                self.in_flight.push_back(future);
                Ok(())
            }
        }
    }

    async fn drain(&mut self) -> Result<(), Error> {
        while let Some(oldest) = self.in_flight.pop_front() {
            oldest.await?;
        }
        Ok(())
    }
}

/// A raw body: the sequence number, then `data`.
fn raw_body(seq: u64, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(data.len() + 8);
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(data);
    body
}

fn acked(confirmation: Confirmation) -> Result<(), Error> {
    if confirmation.is_ack() {
        Ok(())
    } else {
        Err(format!("the broker did not ack a publish: {confirmation:?}").into())
    }
}

/// Raw lapin. Naive: one publish at a time (and, when `confirmed`, its
/// confirm awaited before the next). Tuned: `WINDOW` publishes in flight,
/// their confirms (when `confirmed`) awaited in order. `like`: what of a
/// tidings event's properties and headers each publish carries.
pub(crate) async fn raw(
    channel: &lapin::Channel,
    exchange: &str,
    events: u64,
    data: &[u8],
    confirmed: bool,
    tuned: bool,
    like_tidings: Like,
) -> Result<u64, Error> {
    if confirmed {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    let publish = move |seq: u64| async move {
        let body = raw_body(seq, data);
        // Persistent, as tidings publishes: a durable (group) queue
        // writes it to disk before the broker confirms it.
        let properties = BasicProperties::default().with_delivery_mode(2);
        let properties = tidings_like(properties, seq, like_tidings);
        let confirm = channel
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?;
        if confirmed {
            acked(confirm.await?)?;
        }
        Ok::<_, Error>(())
    };
    if tuned {
        let mut window = Window::new();
        for seq in 0..events {
            window.push(Box::pin(publish(seq))).await?;
        }
        window.drain().await?;
    } else {
        for seq in 0..events {
            publish(seq).await?;
        }
    }
    Ok(now_nanos())
}

/// What of a tidings event's properties and headers the raw rows carry
/// (`TIDINGS_BENCH_RAW_PROPERTIES`): `tidings` all of them (WIRE.md:
/// content type, message id, timestamp and app id; the tag, fingerprint,
/// origin and sent-at headers), `properties` or `headers` one half, unset
/// neither. So that a profile can tell what lapin spends on them from what
/// tidings spends (`docs/perf/FINDINGS.md`).
#[derive(Clone, Copy)]
pub(crate) struct Like {
    properties: bool,
    headers: bool,
}

impl Like {
    /// All of them (the row "raw lapin tuned + meta").
    pub(crate) const TIDINGS: Self = Self {
        properties: true,
        headers: true,
    };

    /// As `TIDINGS_BENCH_RAW_PROPERTIES` says.
    pub(crate) fn from_env() -> Self {
        let what = std::env::var("TIDINGS_BENCH_RAW_PROPERTIES").unwrap_or_default();
        Self {
            properties: matches!(what.as_str(), "tidings" | "properties"),
            headers: matches!(what.as_str(), "tidings" | "headers"),
        }
    }
}

/// `properties` with what `like` asks for added (nothing at all, not even
/// a clock reading, in the plain raw rows).
fn tidings_like(properties: BasicProperties, seq: u64, like: Like) -> BasicProperties {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    const ORIGIN: &str = "0b5e7c2a-3f41-4d5e-9a61-2c7d8e9f0a1b";
    if !like.properties && !like.headers {
        return properties;
    }
    let now = crate::now_nanos();
    let mut properties = properties;
    if like.properties {
        properties = properties
            .with_content_type("application/x-bincode".into())
            .with_message_id(format!("{ORIGIN}-{seq}").into())
            .with_timestamp(now / 1_000_000_000)
            .with_app_id("tidings".into());
    }
    if like.headers {
        let mut headers = FieldTable::default();
        let mut text = |name: &str, value: String| {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        };
        text("x-tidings-tag", "bench.payload".to_owned());
        text("x-tidings-fingerprint", "0123456789abcdef".to_owned());
        text("x-origin", ORIGIN.to_owned());
        text("x-tidings-sent-at", (now / 1000).to_string());
        properties = properties.with_headers(headers);
    }
    properties
}

/// tidings. Fire and forget: `publish` one after the other (the bus tracks
/// confirms in the background). Confirmed: `publish_confirmed` with
/// `WINDOW` in flight, awaited in order.
pub(crate) async fn bus(
    publisher: &Bus,
    events: u64,
    data: &str,
    confirmed: bool,
) -> Result<u64, Error> {
    if confirmed {
        let mut window = Window::new();
        for seq in 0..events {
            let event = Payload {
                seq,
                data: data.to_owned(),
            };
            window
                .push(Box::pin(async move {
                    Ok(publisher.publish_confirmed(&event).await?)
                }))
                .await?;
        }
        window.drain().await?;
    } else {
        for seq in 0..events {
            publisher
                .publish(&Payload {
                    seq,
                    data: data.to_owned(),
                })
                .await?;
        }
    }
    Ok(now_nanos())
}
