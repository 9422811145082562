//! Broadcast receipts: an event published with a request for receipts,
//! and the answers of the buses that handled it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{Instrument, debug};

use crate::bus::Bus;
use crate::bus::publish_options::PublishOptions;
use crate::error::{ErrorKind, Result};
use crate::event::Event;
use crate::headers::{ERROR_HEADER, OUTCOME_HEADER, RECEIPT_HEADER};
use crate::schema::Fingerprint;
use crate::transport::seam::{Header, Outgoing, Received, Transport};

/// The tag of a receipt message (it carries no event).
const RECEIPT_TAG: &str = "tidings.receipt";

/// **Which buses handled a broadcast**, from
/// [`Bus::publish_with_receipts`]: one [`Receipt`] per bus that answered
/// within the wait, in the order they came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipts {
    /// One per bus, the last it sent.
    pub receipts: Vec<Receipt>,
}

impl Receipts {
    /// The instance ids of the buses whose handlers all succeeded, sorted.
    #[must_use]
    pub fn handled_by(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .receipts
            .iter()
            .filter(|r| r.outcome == ReceiptOutcome::Handled)
            .map(|r| r.instance_id.as_str())
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// **One bus's answer** to a broadcast with receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The bus's [instance id](Bus::instance_id).
    pub instance_id: String,
    /// Whether its handlers succeeded.
    pub outcome: ReceiptOutcome,
    /// When the receipt came.
    pub at: SystemTime,
}

/// **What a bus did with the event.**
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptOutcome {
    /// Its handlers all succeeded.
    Handled,
    /// A handler failed (the event is retried or dead-lettered there): why.
    Failed(String),
}

impl Bus {
    /// **Publishes an event and collects receipts** from every bus that
    /// handles it, for `wait`: which instances handled it, with what
    /// outcome, when. A bus that is down, or does not answer in time, is
    /// simply not in the list; nothing waits longer than `wait`. A bus
    /// whose handler fails answers [`ReceiptOutcome::Failed`] (and its
    /// retry may answer again: the last answer counts).
    ///
    /// The event is published as by [`publish`](Bus::publish), through the
    /// exchange, with a `reply-to`; on RabbitMQ the receipts come by direct
    /// reply-to.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tidings::Result<()> {
    /// use std::time::Duration;
    /// use serde::{Deserialize, Serialize};
    /// use tidings::{Bus, Event, Subscribers};
    ///
    /// #[derive(Event, Serialize, Deserialize, Debug)]
    /// #[event(name = "doc.receipts.flush_cache")]
    /// struct FlushCache;
    ///
    /// let (one, two) = (Subscribers::new(), Subscribers::new());
    /// let _g1 = one.subscribe(|_: &FlushCache| {});
    /// let _g2 = two.subscribe(|_: &FlushCache| {});
    /// let a = Bus::builder("memory://doc-receipts")?.subscribers(one).connect().await?;
    /// let b = Bus::builder("memory://doc-receipts")?.subscribers(two).connect().await?;
    ///
    /// let receipts = a.publish_with_receipts(&FlushCache, Duration::from_millis(200)).await?;
    /// let mut expected = vec![a.instance_id(), b.instance_id()];
    /// expected.sort_unstable();
    /// assert_eq!(receipts.handled_by(), expected);
    /// # a.close().await?; b.close().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`publish`](Bus::publish);
    /// [`ErrorKind::ConnectionLost`](crate::ErrorKind::ConnectionLost) when
    /// the connection was lost while waiting.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops collecting; the event stays published.
    pub async fn publish_with_receipts(
        &self,
        event: &dyn Event,
        wait: Duration,
    ) -> Result<Receipts> {
        let deadline = Instant::now() + wait;
        let (mut out, span) = self.prepare(event, None, &PublishOptions::new())?;
        out.headers
            .push((Cow::Borrowed(RECEIPT_HEADER), "1".to_owned()));
        let transport = self.inner.transport.clone();
        async move {
            let mut receipts = Receipts::default();
            let mut replies = match transport.request(out, None).await {
                Ok(replies) => replies,
                // No queue at all: nobody to answer.
                Err(e) if e.kind() == ErrorKind::Unroutable => return Ok(receipts),
                Err(e) => return Err(e),
            };
            loop {
                let reply = match tokio::time::timeout_at(deadline, replies.next()).await {
                    Err(_) => break,
                    Ok(Err(e)) if e.kind() == ErrorKind::Unroutable => break,
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(reply)) => reply,
                };
                let Some(receipt) = read_receipt(&*reply) else {
                    continue;
                };
                receipts
                    .receipts
                    .retain(|r| r.instance_id != receipt.instance_id);
                receipts.receipts.push(receipt);
            }
            debug!(receipts = receipts.receipts.len(), "receipts collected");
            Ok(receipts)
        }
        .instrument(span)
        .await
    }
}

fn read_receipt(reply: &dyn Received) -> Option<Receipt> {
    let instance_id = reply.origin()?.to_owned();
    let outcome = match (reply.header(OUTCOME_HEADER), reply.header(ERROR_HEADER)) {
        (Header::Text("handled"), _) => ReceiptOutcome::Handled,
        (Header::Text(_), Header::Text(error)) => ReceiptOutcome::Failed(error.to_owned()),
        (Header::Text(_), _) => ReceiptOutcome::Failed(String::new()),
        _ => return None,
    };
    Some(Receipt {
        instance_id,
        outcome,
        at: SystemTime::now(),
    })
}

/// Sends a receipt for `incoming` through `transport`, from the bus
/// `instance_id`, if its publisher asked for one: handled, or failed with
/// `error`.
pub(crate) async fn send_receipt(
    transport: &dyn Transport,
    instance_id: &str,
    incoming: &dyn Received,
    error: Option<&str>,
) {
    if !matches!(incoming.header(RECEIPT_HEADER), Header::Text(_)) {
        return;
    }
    let (Some(reply_to), Some(correlation_id)) = (incoming.reply_to(), incoming.correlation_id())
    else {
        return;
    };
    let mut headers = vec![(
        Cow::Borrowed(OUTCOME_HEADER),
        if error.is_some() { "failed" } else { "handled" }.to_owned(),
    )];
    if let Some(error) = error {
        headers.push((Cow::Borrowed(ERROR_HEADER), error.to_owned()));
    }
    let out = Outgoing {
        body: Arc::new(Vec::new()),
        content_type: transport.codec().content_type().into(),
        tag: RECEIPT_TAG,
        fingerprint: Fingerprint::from_u64(0),
        version: 1,
        routing_key: RECEIPT_TAG.into(),
        message_id: format!("{instance_id}-receipt-{correlation_id}"),
        to_queue: Some(reply_to.to_owned()),
        headers,
        correlation_id: Some(correlation_id.to_owned()),
        content_encoding: None,
        delivery: crate::transport::seam::DeliveryOptions::DEFAULT,
    };
    if let Err(e) = transport.reply(out).await {
        debug!(error = %e, "a receipt could not be sent");
    }
}
