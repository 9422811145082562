//! **The schema store on RabbitMQ**: a stream queue `<exchange>.schemas`
//! that each bus appends its event types' schemas to before it first
//! publishes them, and that a receiver reads from the start when an event's
//! fingerprint differs from its own. Streams are read without being
//! consumed away, so every receiver, now or later, finds every schema; no
//! server besides the broker runs.

use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio_stream::StreamExt;

use crate::amqp::connection::{Connection, short};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Fingerprint;
use crate::headers::{FINGERPRINT_HEADER, TAG_HEADER};
use crate::schema::Schema;

/// The stream of an exchange's schemas.
#[must_use]
pub fn schema_stream(exchange: &str) -> String {
    format!("{exchange}.schemas")
}

/// The most the stream keeps; older segments are dropped first.
const MAX_BYTES: i64 = 64 * 1024 * 1024;
/// The stream's segment size, so that retention drops little at a time.
const SEGMENT_BYTES: i64 = 4 * 1024 * 1024;
/// The largest schema a receiver reads.
const MAX_SCHEMA_BYTES: usize = 1024 * 1024;
/// A read of the stream ends when nothing more came for this long.
const IDLE: Duration = Duration::from_millis(500);

async fn declare(channel: &lapin::Channel, name: &str) -> Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    arguments.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(MAX_BYTES),
    );
    arguments.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(SEGMENT_BYTES),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(short(name)?, options, arguments)
        .await
        .map(drop)
        .map_err(|e| {
            Error::amqp(
                &format!(
                    "declaring the schema stream {name:?} (RabbitMQ 3.9 or later has streams)"
                ),
                e,
            )
        })
}

/// Appends `schema` to the exchange's schema stream and waits for the
/// broker's confirm.
pub(crate) async fn store(conn: &Connection, exchange: &str, schema: &Schema) -> Result<()> {
    let name = schema_stream(exchange);
    let channel = conn.channel().await?;
    let stored = async {
        declare(&channel, &name).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Error::amqp("enabling confirms for the schema stream", e))?;
        let mut headers = FieldTable::default();
        headers.insert(
            FINGERPRINT_HEADER.into(),
            AMQPValue::LongString(schema.fingerprint().to_string().into()),
        );
        headers.insert(
            TAG_HEADER.into(),
            AMQPValue::LongString(schema.tag().into()),
        );
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from(crate::codec::JSON_CONTENT_TYPE))
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirmation = channel
            .basic_publish(
                ShortString::from(""),
                short(&name)?,
                BasicPublishOptions::default(),
                &schema.to_json(),
                properties,
            )
            .await
            .map_err(|e| Error::amqp("storing a schema", e))?
            .await
            .map_err(|e| Error::amqp("storing a schema", e))?;
        match confirmation {
            Confirmation::Nack(_) => Err(Error::new(
                ErrorKind::Nacked,
                format!(
                    "the broker refused the schema of {:?} in {name:?}",
                    schema.tag()
                ),
            )),
            _ => Ok(()),
        }
    }
    .await;
    let _ = channel.close(200, "schema stored".into()).await;
    stored
}

/// Reads the exchange's schema stream from the start until the schema of
/// `fingerprint` comes, or nothing more does.
pub(crate) async fn find(
    conn: &Connection,
    exchange: &str,
    fingerprint: Fingerprint,
) -> Result<Option<Arc<Schema>>> {
    let name = schema_stream(exchange);
    let channel = conn.channel().await?;
    let found = async {
        declare(&channel, &name).await?;
        channel
            .basic_qos(256, BasicQosOptions::default())
            .await
            .map_err(|e| Error::amqp("reading the schema stream", e))?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
        let mut deliveries = channel
            .basic_consume(
                short(&name)?,
                ShortString::from(""),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .map_err(|e| Error::amqp("reading the schema stream", e))?;
        let wanted = fingerprint.to_string();
        while let Ok(Some(delivery)) = tokio::time::timeout(IDLE, deliveries.next()).await {
            let delivery = delivery.map_err(|e| Error::amqp("reading the schema stream", e))?;
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            let claimed = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(FINGERPRINT_HEADER).cloned());
            let matches = match claimed {
                Some(AMQPValue::LongString(text)) => text.to_string() == wanted,
                _ => false,
            };
            if !matches || delivery.data.len() > MAX_SCHEMA_BYTES {
                continue;
            }
            match Schema::from_json(&delivery.data) {
                Ok(schema) if schema.fingerprint() == fingerprint => {
                    return Ok(Some(Arc::new(schema)));
                }
                Ok(_) => {}
                Err(why) => {
                    tracing::warn!(%fingerprint, "a schema in {name:?} is not valid: {why}")
                }
            }
        }
        Ok(None)
    }
    .await;
    let _ = channel.close(200, "schema read".into()).await;
    found
}
