//! The AMQP transport: a producer for publishing and an exclusive,
//! library-named queue bound to the exchange for receiving.

use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::{FINGERPRINT_HEADER, Outgoing, Pending, TAG_HEADER};
use crate::connection::Connection;
use crate::consumer::Consumer;
use crate::error::Result;
use crate::producer::Producer;
use crate::queue::Queue;

pub(crate) struct Amqp {
    pub(crate) conn: Connection,
    producer: Producer,
}

impl Amqp {
    pub(crate) async fn open(conn: Connection) -> Result<Self> {
        let producer = conn.producer().await?;
        Ok(Self { conn, producer })
    }

    pub(crate) async fn subscribe(&self) -> Result<Consumer> {
        self.conn.consumer(&Queue::exclusive()).await
    }

    pub(crate) async fn publish(&self, out: &Outgoing) -> Result<Pending> {
        let mut headers = FieldTable::default();
        headers.insert(TAG_HEADER.into(), AMQPValue::LongString(out.tag.into()));
        headers.insert(
            FINGERPRINT_HEADER.into(),
            AMQPValue::LongString(out.fingerprint.to_string().into()),
        );
        let confirm = self
            .producer
            .publish_raw(
                &out.body,
                ShortString::from(out.routing_key),
                ShortString::from(out.message_id.as_str()),
                headers,
            )
            .await?;
        Ok(Pending::Amqp(confirm))
    }
}
