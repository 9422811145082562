//! `PublishOptions`: how one event is published, beyond the event itself.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use super::context::Context;
use crate::codec::Codec;
use crate::compression::Compression;
use crate::error::{Error, ErrorKind, Result};
use crate::headers::is_reserved;
use crate::transport::seam::DeliveryOptions;

/// **How to publish one event**, for [`Bus::publish_with`](crate::Bus::publish_with):
/// one value for everything a single publish may change. Each option left
/// unset keeps the bus's behaviour:
///
/// | option | default |
/// |---|---|
/// | [`header`](Self::header) | none |
/// | [`correlation_id`](Self::correlation_id), [`caused_by`](Self::caused_by) | the handled event's conversation, or a new one |
/// | [`confirm`](Self::confirm) | `false`: returns once buffered |
/// | [`routing_key`](Self::routing_key) | the event type's (`#[event(routing_key)]`, else its tag) |
/// | [`priority`](Self::priority) | none (queues declared with `x-max-priority` order by it; quorum queues ignore it) |
/// | [`expiration`](Self::expiration) | none: kept until consumed |
/// | [`persistent`](Self::persistent) | `true` |
/// | [`mandatory`](Self::mandatory) | the bus's ([`BusBuilder::mandatory`](crate::BusBuilder::mandatory), default `false`) |
/// | [`message_id`](Self::message_id) | `<instance-id>-<n>` |
/// | [`delay`](Self::delay) | none: routed at once |
/// | [`codec`](Self::codec) | the bus's (the props' `codec`, default bincode) |
/// | [`compression`](Self::compression) | the bus's (default none), above its threshold |
///
/// Without options, an event published inside a handler continues the
/// handled event's conversation (its correlation id, and the handled
/// event's message id as its causation id); one published elsewhere starts
/// a conversation of its own.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tidings::Result<()> {
/// use serde::{Deserialize, Serialize};
/// use tidings::{Bus, Context, Event, PublishOptions, Subscribers};
///
/// #[derive(Event, Serialize, Deserialize, Debug, Clone)]
/// #[event(name = "doc.options.invoice_sent")]
/// struct InvoiceSent { id: u64 }
///
/// let subscribers = Subscribers::new();
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let _guard = subscribers.subscribe_with(move |_: &InvoiceSent, ctx: &Context| {
///     tx.send((ctx.header("tenant").map(str::to_owned), ctx.correlation_id().map(str::to_owned)))
///         .unwrap();
/// });
/// let bus = Bus::builder("memory://doc-options")?.subscribers(subscribers).connect().await?;
///
/// let options = PublishOptions::new()
///     .header("tenant", "acme")
///     .correlation_id("checkout-42")
///     .confirm(true);
/// bus.publish_with(&InvoiceSent { id: 1 }, &options).await?;
/// let (tenant, correlation) = rx.recv().await.unwrap();
/// assert_eq!(tenant.as_deref(), Some("acme"));
/// assert_eq!(correlation.as_deref(), Some("checkout-42"));
/// bus.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub(crate) headers: Vec<(Cow<'static, str>, String)>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) causation_id: Option<String>,
    pub(crate) confirm: bool,
    pub(crate) routing_key: Option<String>,
    /// Persistence, priority, expiration, mandatory and delay, as the
    /// transport takes them.
    pub(crate) delivery: DeliveryOptions,
    pub(crate) message_id: Option<String>,
    pub(crate) codec: Option<Arc<dyn Codec>>,
    /// The algorithm, and the threshold if one was given.
    pub(crate) compression: Option<(Compression, Option<usize>)>,
}

impl PublishOptions {
    /// No options: what [`Bus::publish`](crate::Bus::publish) does.
    pub(crate) const NONE: Self = Self {
        headers: Vec::new(),
        correlation_id: None,
        causation_id: None,
        confirm: false,
        routing_key: None,
        delivery: DeliveryOptions::DEFAULT,
        message_id: None,
        codec: None,
        compression: None,
    };
}

/// The longest header name AMQP carries.
const MAX_NAME: usize = 255;

impl PublishOptions {
    /// No headers, the conversation of the event being handled (if any),
    /// no waiting for the confirm.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// **Adds a string header**, which receivers read with
    /// [`Context::header`]. Names tidings uses itself (`x-tidings-*`,
    /// `x-origin`, `x-correlation-id`, `x-causation-id`, `traceparent`,
    /// `tracestate`) are refused when publishing; use
    /// [`correlation_id`](Self::correlation_id) and
    /// [`caused_by`](Self::caused_by) for those.
    #[must_use]
    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// **Puts the event in this conversation** instead of the one of the
    /// event being handled (or a new one).
    #[must_use]
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// **Marks the event as caused by the one `context` describes**: its
    /// conversation, and its message id as the causation id. For a task a
    /// handler spawned, where [`Context::current`] is not set.
    #[must_use]
    pub fn caused_by(mut self, context: &Context) -> Self {
        self.correlation_id = context.correlation_id().map(str::to_owned);
        self.causation_id = context.message_id().map(str::to_owned);
        self
    }

    /// Whether [`publish_with`](crate::Bus::publish_with) returns only after
    /// the broker's confirm (default `false`: once the event is in the
    /// publish buffer).
    #[must_use]
    pub fn confirm(mut self, on: bool) -> Self {
        self.confirm = on;
        self
    }

    /// **Routes this event with another routing key** than its type's:
    /// receivers bound to that key (or a pattern matching it) get it, and
    /// decode it by its tag header as usual; [`Context::routing_key`] is
    /// the key given here. At most 255 bytes.
    #[must_use]
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// **The AMQP priority** (0 to 255; RabbitMQ uses 0 to the queue's
    /// `x-max-priority`, at most 255). Only a classic queue declared with
    /// `x-max-priority` delivers higher priorities first; other queues,
    /// and quorum queues always, ignore it.
    #[must_use]
    pub fn priority(mut self, priority: u8) -> Self {
        self.delivery.priority = Some(priority);
        self
    }

    /// **Lets the broker drop the event** if it waits in a queue longer
    /// than this (the AMQP `expiration`, in milliseconds). An expired
    /// event is dropped, not dead-lettered by tidings.
    #[must_use]
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.delivery.expiration = Some(ttl);
        self
    }

    /// Whether the broker writes the event to disk (default `true`: bus
    /// events survive a broker restart in durable queues). `false` is
    /// faster and loses the event with a broker restart.
    #[must_use]
    pub fn persistent(mut self, on: bool) -> Self {
        self.delivery.persistent = on;
        self
    }

    /// **Whether an event no queue takes fails** with
    /// [`ErrorKind::Unroutable`] (with [`confirm`](Self::confirm), else
    /// counted in [`Stats::returned`](crate::Stats::returned)), for this
    /// event, whatever the bus's [`mandatory`](crate::BusBuilder::mandatory).
    /// With a [`delay`](Self::delay) it checks the delay queue only.
    #[must_use]
    pub fn mandatory(mut self, on: bool) -> Self {
        self.delivery.mandatory = Some(on);
        self
    }

    /// **Uses this message id** instead of `<instance-id>-<n>`. Receivers
    /// drop an event whose origin and id they handled lately (the dedup
    /// window), so an id that names the business fact (`invoice-42-sent`)
    /// makes a re-publish harmless. 1 to 255 bytes.
    #[must_use]
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// **Delivers the event after this delay** (at least 1 ms, at most
    /// about 49 days). On RabbitMQ it waits in the delay queue
    /// `<exchange>.delay.<ms>` (with the fanout exchange of the same name
    /// in front of it), a queue whose messages expire after the delay and
    /// are dead-lettered to the exchange with their own routing key: the
    /// mechanism of retries, no plugin. One queue per delay, so a short
    /// delay never waits behind a long one; unused for ten minutes longer
    /// than its delay, the broker deletes it. On `memory://` the event is
    /// routed after the delay. A signed event's send time is the publish,
    /// so a receiver's signing window must cover the delay. The delay queue
    /// is declared (again) at most once a minute, on the publishing path:
    /// a delayed publish needs the broker then, where a plain one waits in
    /// the publish buffer through an outage.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delivery.delay = Some(delay);
        self
    }

    /// **Encodes this event with `codec`** instead of the bus's. Receivers
    /// pick the decoder by the `content-type`, and every bus reads
    /// bincode and JSON whatever it sends, so a JSON event reaches a
    /// bincode bus.
    #[must_use]
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.codec = Some(Arc::new(codec));
        self
    }

    /// **Compresses this event** with `compression` if its body is at
    /// least the bus's threshold long (see
    /// [`BusBuilder::compression`](crate::BusBuilder::compression));
    /// [`Compression::None`] sends it plain whatever the bus does.
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = Some((compression, None));
        self
    }

    /// **Compresses this event** with `compression` if its body is at
    /// least `threshold` bytes long (0: always).
    #[must_use]
    pub fn compression_above(mut self, compression: Compression, threshold: usize) -> Self {
        self.compression = Some((compression, Some(threshold)));
        self
    }

    /// Checks the options: header names neither reserved, empty nor too
    /// long; routing key and message id short enough; the delay in range;
    /// the compression built.
    pub(crate) fn check(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::new(ErrorKind::InvalidConfig, message));
        if let Some(key) = &self.routing_key
            && key.len() > MAX_NAME
        {
            return invalid(format!(
                "a routing key is at most {MAX_NAME} bytes long, not {}",
                key.len()
            ));
        }
        if let Some(id) = &self.message_id
            && (id.is_empty() || id.len() > MAX_NAME)
        {
            return invalid(format!(
                "a message id must be 1 to {MAX_NAME} bytes long, not {}",
                id.len()
            ));
        }
        if let Some(delay) = self.delivery.delay
            && (delay < Duration::from_millis(1) || delay.as_millis() > u128::from(u32::MAX))
        {
            return invalid(format!(
                "a delay must be 1 ms to {} ms (about 49 days), not {delay:?}",
                u32::MAX
            ));
        }
        if let Some((compression, _)) = self.compression {
            compression.check_built()?;
        }
        for (name, _) in &self.headers {
            if is_reserved(name) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "header {name:?} is one tidings sets itself; choose another name (correlation and causation have their own options)"
                    ),
                ));
            }
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "a header name must be 1 to {MAX_NAME} bytes long, not {}",
                        name.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}
