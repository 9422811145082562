//! `PublishOptions`: how one event is published, beyond the event itself.

use std::borrow::Cow;

use super::context::Context;
use crate::error::{Error, ErrorKind, Result};
use crate::headers::is_reserved;

/// **How to publish one event**, for [`Bus::publish_with`](crate::Bus::publish_with):
/// headers of the application's own, the conversation it belongs to, and
/// whether to wait for the broker's confirm.
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

    /// Checks the headers: names neither reserved, empty nor too long.
    pub(crate) fn check(&self) -> Result<()> {
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
