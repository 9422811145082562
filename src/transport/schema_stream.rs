//! **The schema store on RabbitMQ**: a stream queue `<exchange>.schemas`
//! that each bus appends its event types' schemas to when it first
//! publishes them, and that a receiver reads from the start when an event's
//! fingerprint differs from its own. Streams are read without being
//! consumed away, so every receiver, now or later, finds every schema; no
//! server besides the broker runs.
//!
//! Each store and read opens a connection of its own: RabbitMQ answers a
//! publish to a stream that is still being created (two buses declaring it
//! at once) with a connection error, which must not take the bus's
//! connection with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio_stream::StreamExt;

use crate::amqp::connection::{Connection, short};
use crate::amqp::props::AmqpProps;
use crate::error::{Error, ErrorKind, Result};
use crate::headers::{FINGERPRINT_HEADER, TAG_HEADER};
use crate::schema::Fingerprint;
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
const IDLE: Duration = Duration::from_millis(300);
/// A fingerprint not found is not looked for again sooner than this, so
/// that events with made-up fingerprints cannot keep a listener reading.
const RESCAN_AFTER: Duration = Duration::from_secs(2);
/// The most schemas a transport remembers from its reads.
const REMEMBERED: usize = 4096;

/// The schema stream of one exchange, as a transport uses it.
pub(crate) struct SchemaStream {
    props: AmqpProps,
    /// The schemas read so far, by fingerprint.
    seen: Mutex<HashMap<Fingerprint, Arc<Schema>>>,
    /// When the stream was last read through, and one read at a time.
    scanned: tokio::sync::Mutex<Option<Instant>>,
}

impl SchemaStream {
    pub(crate) fn new(props: &AmqpProps) -> Self {
        Self {
            props: props.clone(),
            seen: Mutex::default(),
            scanned: tokio::sync::Mutex::new(None),
        }
    }

    /// Appends `schema` to the stream, on a connection of its own.
    pub(crate) async fn store(&self, schema: &Schema) -> Result<()> {
        let conn = Connection::connect_without_exchange(&self.props).await?;
        let stored = store(&conn, self.props.exchange(), schema).await;
        let _ = conn.close().await;
        stored
    }

    /// The schema of `fingerprint`: remembered, or read from the stream
    /// (at most once per [`RESCAN_AFTER`]).
    pub(crate) async fn find(&self, fingerprint: Fingerprint) -> Result<Option<Arc<Schema>>> {
        if let Some(found) = self.remembered(fingerprint) {
            return Ok(Some(found));
        }
        let mut scanned = self.scanned.lock().await;
        if let Some(found) = self.remembered(fingerprint) {
            return Ok(Some(found));
        }
        if scanned.is_some_and(|at| at.elapsed() < RESCAN_AFTER) {
            return Ok(None);
        }
        let conn = Connection::connect_without_exchange(&self.props).await?;
        let read = read_all(&conn, self.props.exchange()).await;
        let _ = conn.close().await;
        *scanned = Some(Instant::now());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for schema in read? {
            if seen.len() >= REMEMBERED {
                break;
            }
            seen.insert(schema.fingerprint(), Arc::new(schema));
        }
        Ok(seen.get(&fingerprint).cloned())
    }

    fn remembered(&self, fingerprint: Fingerprint) -> Option<Arc<Schema>> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fingerprint)
            .cloned()
    }
}

/// **Every schema stored in the exchange's schema stream**, in the order
/// stored, on a connection of its own; nothing when there is no stream
/// (no bus has published on the exchange), which is then not created.
pub(crate) async fn read_stored(props: &AmqpProps) -> Result<Vec<Schema>> {
    let conn = Connection::connect_without_exchange(props).await?;
    let read = async {
        if !stream_exists(&conn, props.exchange()).await? {
            return Ok(Vec::new());
        }
        read_all(&conn, props.exchange()).await
    }
    .await;
    let _ = conn.close().await;
    read
}

/// Whether the exchange's schema stream exists (a passive declare, on a
/// channel of its own since a missing queue closes it).
async fn stream_exists(conn: &Connection, exchange: &str) -> Result<bool> {
    let name = schema_stream(exchange);
    let channel = conn.channel().await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(short(&name)?, options, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(true)
        }
        Err(e) if crate::error::is_not_found(&e) => Ok(false),
        Err(e) => Err(Error::amqp(
            &format!("looking for the schema stream {name:?}"),
            e,
        )),
    }
}

async fn declare(channel: &lapin::Channel, name: &str, passive: bool) -> Result<()> {
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
        passive,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(short(name)?, options, arguments)
        .await
        .map(drop)
        .map_err(|e| {
            crate::amqp::topology::declare_error(
                &format!(
                    "declaring the schema stream {name:?} (RabbitMQ 3.9 or later has streams)"
                ),
                &format!("the schema stream {name:?}"),
                passive,
                e,
            )
        })
}

/// Appends `schema` to the exchange's schema stream and waits for the
/// broker's confirm.
async fn store(conn: &Connection, exchange: &str, schema: &Schema) -> Result<()> {
    let name = schema_stream(exchange);
    let channel = conn.channel().await?;
    let stored = async {
        declare(&channel, &name, conn.props().passive()).await?;
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

/// Reads the exchange's schema stream from the start until nothing more
/// comes; skips what is not a valid schema.
async fn read_all(conn: &Connection, exchange: &str) -> Result<Vec<Schema>> {
    let name = schema_stream(exchange);
    let channel = conn.channel().await?;
    let read = async {
        declare(&channel, &name, conn.props().passive()).await?;
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
        let mut schemas = Vec::new();
        while let Ok(Some(delivery)) = tokio::time::timeout(IDLE, deliveries.next()).await {
            let delivery = delivery.map_err(|e| Error::amqp("reading the schema stream", e))?;
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            if delivery.data.len() > MAX_SCHEMA_BYTES {
                continue;
            }
            match Schema::from_json(&delivery.data) {
                Ok(schema) => schemas.push(schema),
                Err(why) => tracing::warn!("a schema in {name:?} is not valid: {why}"),
            }
        }
        Ok(schemas)
    }
    .await;
    let _ = channel.close(200, "schemas read".into()).await;
    read
}
