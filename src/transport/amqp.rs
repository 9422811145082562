//! The AMQP transport: a producer for publishing, queues declared per
//! listener, and the retry and dead-letter paths of settlement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::sync::oneshot;

use super::{
    ATTEMPT_HEADER, BODY_DROPPED_HEADER, ERROR_HEADER, FINGERPRINT_HEADER, Outgoing, QUEUE_HEADER,
    REASON_HEADER, ROUTING_KEY_HEADER, TAG_HEADER,
};
use crate::connection::{Connection, short};
use crate::consumer::Consumer;
use crate::delivery::Delivery;
use crate::error::{Error, ErrorKind, Result};
use crate::header_frame;
use crate::producer::{ORIGIN_HEADER, Producer};
use crate::queue::Queue;
use crate::stats::Counters;

pub(crate) struct Amqp {
    pub(crate) conn: Connection,
    producer: Producer,
    /// `None` on a bus that only publishes: it dead-letters nothing.
    dead_letter_exchange: Option<String>,
    /// Every publish mandatory.
    mandatory: bool,
    /// The queues consumed, by name: whether each is durable.
    consumed: Mutex<HashMap<String, bool>>,
    /// The retry queues declared, by name: when, to declare one again
    /// (which renews its expiry) before it could expire.
    retry_queues: Mutex<HashMap<String, Instant>>,
}

/// How long a retry queue is trusted to exist after its declaration; it
/// expires ten minutes after its last use.
const RETRY_QUEUE_FRESH: Duration = Duration::from_secs(60);

impl Amqp {
    /// Opens the transport on `conn`; with `dead_letters` (the queue's
    /// limits: messages, bytes), declares the dead-letter exchange and
    /// queue.
    pub(crate) async fn open(
        conn: Connection,
        counters: Arc<Counters>,
        dead_letters: Option<(u64, u64)>,
        mandatory: bool,
    ) -> Result<Self> {
        let producer = Producer::with_counters(&conn, true, counters)?;
        let dead_letter_exchange = match dead_letters {
            Some((messages, bytes)) => {
                Some(conn.declare_dead_letters_bounded(messages, bytes).await?)
            }
            None => None,
        };
        Ok(Self {
            conn,
            producer,
            dead_letter_exchange,
            mandatory,
            consumed: Mutex::default(),
            retry_queues: Mutex::default(),
        })
    }

    /// Declares the queue and consumes it. Its retry queues are declared
    /// when first needed.
    pub(crate) async fn consume(&self, queue: &Queue) -> Result<Consumer> {
        let consumer = self.conn.consumer(queue).await?;
        lock(&self.consumed).insert(consumer.queue().to_owned(), queue.is_durable());
        Ok(consumer)
    }

    /// Deletes the retry queues declared for `queue` (a broadcast queue
    /// being cancelled).
    pub(crate) async fn delete_retry_queues(&self, queue: &str) -> Result<()> {
        let prefix = format!("{queue}.retry.");
        let names: Vec<String> = {
            let mut declared = lock(&self.retry_queues);
            let names = declared
                .keys()
                .filter(|name| name.starts_with(&prefix))
                .cloned()
                .collect();
            declared.retain(|name, _| !name.starts_with(&prefix));
            names
        };
        for name in names {
            self.conn.delete_queue(&name).await?;
        }
        lock(&self.consumed).remove(queue);
        Ok(())
    }

    /// The retry queue of `queue` for `delay`, declared (again) unless it
    /// was lately.
    async fn retry_queue(&self, queue: &str, delay: Duration) -> Result<String> {
        let delay_ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX).max(1);
        let name = format!("{queue}.retry.{delay_ms}");
        let fresh = lock(&self.retry_queues)
            .get(&name)
            .is_some_and(|at| at.elapsed() < RETRY_QUEUE_FRESH);
        if !fresh {
            let durable = lock(&self.consumed).get(queue).copied().unwrap_or(true);
            self.conn
                .declare_queue(&Queue::retry_for(queue, delay_ms, durable))
                .await?;
            lock(&self.retry_queues).insert(name.clone(), Instant::now());
        }
        Ok(name)
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
            None => (None, ShortString::from(out.routing_key), self.mandatory),
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

    /// Parks a failed delivery in its queue's retry queue for `delay`
    /// (one queue per delay), with the attempt count raised; the broker
    /// then puts it back. Headers that would make the message too large
    /// for a frame are dropped, the event's own kept.
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
        let properties = delivery.properties().clone().with_headers(headers);
        let keep = [
            TAG_HEADER,
            FINGERPRINT_HEADER,
            ATTEMPT_HEADER,
            ROUTING_KEY_HEADER,
            ORIGIN_HEADER,
        ];
        let properties = self.fit(properties, &keep)?;
        let retry_queue = self.retry_queue(delivery.queue(), delay).await?;
        let parked = self
            .producer
            .republish(
                "".into(),
                retry_queue.as_str().into(),
                delivery.body(),
                properties,
                true,
            )
            .await;
        if parked.is_err() {
            // Perhaps deleted under us: declare it again next time.
            lock(&self.retry_queues).remove(&retry_queue);
        }
        parked
    }

    /// Publishes a delivery to the dead-letter exchange with why; without
    /// its body unless `keep_body`. Foreign headers are dropped, largest
    /// first, if the message would not fit a frame otherwise.
    pub(crate) async fn dead_letter(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        reason: &str,
        error: &str,
        attempts: u32,
        keep_body: bool,
    ) -> Result<()> {
        let Some(exchange) = &self.dead_letter_exchange else {
            return Err(Error::new(
                ErrorKind::Usage,
                "this bus declared no dead-letter queue (it only publishes)",
            ));
        };
        let mut headers = headers_of(delivery);
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert(REASON_HEADER.into(), text(reason));
        headers.insert(ERROR_HEADER.into(), text(error));
        headers.insert(ATTEMPT_HEADER.into(), text(&attempts.to_string()));
        headers.insert(ROUTING_KEY_HEADER.into(), text(routing_key));
        headers.insert(QUEUE_HEADER.into(), text(delivery.queue()));
        let body: &[u8] = if keep_body {
            delivery.body()
        } else {
            headers.insert(
                BODY_DROPPED_HEADER.into(),
                text(&delivery.body().len().to_string()),
            );
            &[]
        };
        let properties = delivery.properties().clone().with_headers(headers);
        let keep = [
            REASON_HEADER,
            ERROR_HEADER,
            ATTEMPT_HEADER,
            ROUTING_KEY_HEADER,
            QUEUE_HEADER,
            BODY_DROPPED_HEADER,
        ];
        let properties = self.fit(properties, &keep)?;
        self.producer
            .republish(
                exchange.as_str().into(),
                short(routing_key)?,
                body,
                properties,
                false,
            )
            .await
    }

    /// `properties` trimmed to fit the broker's frame limit.
    fn fit(&self, properties: BasicProperties, keep: &[&str]) -> Result<BasicProperties> {
        header_frame::fit(properties, self.conn.frame_max(), keep).ok_or_else(|| {
            Error::new(
                ErrorKind::MessageTooLarge,
                "the message's own properties are too large for a frame even without foreign headers",
            )
        })
    }

    pub(crate) fn dead_letter_queue(&self) -> Option<&str> {
        self.dead_letter_exchange.as_deref()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn headers_of(delivery: &Delivery) -> FieldTable {
    delivery.properties().headers().clone().unwrap_or_default()
}
