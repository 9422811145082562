//! The AMQP transport: a producer for publishing, queues declared per
//! listener, and the retry and dead-letter paths of settlement.

use std::sync::Arc;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::sync::oneshot;

use super::{
    ATTEMPT_HEADER, ERROR_HEADER, FINGERPRINT_HEADER, Outgoing, QUEUE_HEADER, REASON_HEADER,
    ROUTING_KEY_HEADER, TAG_HEADER,
};
use crate::connection::{Connection, short};
use crate::consumer::Consumer;
use crate::delivery::Delivery;
use crate::error::Result;
use crate::producer::Producer;
use crate::queue::Queue;
use crate::stats::Counters;

pub(crate) struct Amqp {
    pub(crate) conn: Connection,
    producer: Producer,
    dead_letter_exchange: String,
}

impl Amqp {
    pub(crate) async fn open(conn: Connection, counters: Arc<Counters>) -> Result<Self> {
        let producer = Producer::with_counters(&conn, true, counters)?;
        let dead_letter_exchange = conn.declare_dead_letters().await?;
        Ok(Self {
            conn,
            producer,
            dead_letter_exchange,
        })
    }

    /// Declares the queue and its retry queue, and consumes the queue.
    pub(crate) async fn consume(&self, queue: &Queue) -> Result<Consumer> {
        let consumer = self.conn.consumer(queue).await?;
        let retry = Queue::retry_for(consumer.queue(), queue.is_durable());
        self.conn.declare_queue(&retry).await?;
        Ok(consumer)
    }

    /// Queues an event for the broker; `done` hears the broker's answer.
    /// Sent to a queue by name it is mandatory, so a missing queue is
    /// reported instead of dropped.
    pub(crate) async fn publish(
        &self,
        out: Outgoing,
        done: Option<oneshot::Sender<Result<()>>>,
    ) -> Result<()> {
        let mut headers = FieldTable::default();
        headers.insert(TAG_HEADER.into(), AMQPValue::LongString(out.tag.into()));
        headers.insert(
            FINGERPRINT_HEADER.into(),
            AMQPValue::LongString(out.fingerprint.to_string().into()),
        );
        let (exchange, routing_key, mandatory) = match &out.to_queue {
            Some(queue) => (Some(ShortString::from("")), short(queue)?, true),
            None => (None, ShortString::from(out.routing_key), false),
        };
        self.producer
            .send_event(
                exchange,
                out.body,
                routing_key,
                ShortString::from(out.message_id),
                headers,
                mandatory,
                done,
            )
            .await
    }

    /// Waits until every event queued so far is settled; how many failed.
    pub(crate) async fn flush(&self) -> Result<u64> {
        self.producer.flush().await
    }

    /// Reports every event not yet confirmed as failed.
    pub(crate) fn abort(&self, reason: &str) {
        self.producer.abort(reason);
    }

    /// Parks a failed delivery in its queue's retry queue for `delay`, with
    /// the attempt count raised; the broker then puts it back.
    pub(crate) async fn retry(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        attempt: u32,
        delay: Duration,
    ) -> Result<()> {
        let mut headers = headers_of(delivery);
        headers.insert(
            ROUTING_KEY_HEADER.into(),
            AMQPValue::LongString(routing_key.into()),
        );
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongString(attempt.to_string().into()),
        );
        let properties = delivery
            .properties()
            .clone()
            .with_headers(headers)
            .with_expiration(delay.as_millis().max(1).to_string().into());
        let retry_queue = format!("{}.retry", delivery.queue());
        self.producer
            .republish(
                "".into(),
                retry_queue.as_str().into(),
                delivery.body(),
                properties,
            )
            .await
    }

    /// Publishes a delivery to the dead-letter exchange with why.
    pub(crate) async fn dead_letter(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        reason: &str,
        error: &str,
        attempts: u32,
    ) -> Result<()> {
        let mut headers = headers_of(delivery);
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert(REASON_HEADER.into(), text(reason));
        headers.insert(ERROR_HEADER.into(), text(error));
        headers.insert(ATTEMPT_HEADER.into(), text(&attempts.to_string()));
        headers.insert(ROUTING_KEY_HEADER.into(), text(routing_key));
        headers.insert(QUEUE_HEADER.into(), text(delivery.queue()));
        let properties = delivery.properties().clone().with_headers(headers);
        self.producer
            .republish(
                self.dead_letter_exchange.as_str().into(),
                short(routing_key)?,
                delivery.body(),
                properties,
            )
            .await
    }

    pub(crate) fn dead_letter_queue(&self) -> &str {
        &self.dead_letter_exchange
    }
}

fn headers_of(delivery: &Delivery) -> FieldTable {
    delivery.properties().headers().clone().unwrap_or_default()
}
