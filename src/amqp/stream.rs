//! Queues declared with arguments of their own: a RabbitMQ stream
//! (`x-queue-type: stream`) and small queues that hold one message.

use lapin::types::{AMQPValue, FieldTable};
use tracing::debug;

use crate::amqp::connection::Connection;
use crate::amqp::props::QueueType;
use crate::amqp::queue::Queue;
use crate::amqp::topology;
use crate::error::Result;

impl Connection {
    /// **Declares `queue` with `arguments` added** (a stream's type and
    /// retention), binds it, and records it so that it is declared again
    /// after a recovery. Passive under passive props, as any durable queue.
    pub(crate) async fn declare_queue_with(
        &self,
        queue: &Queue,
        arguments: &[(&str, AMQPValue)],
    ) -> Result<String> {
        // The arguments name the queue's type (a stream, a quorum queue):
        // the props' queue type and its arguments (a delivery limit, dead
        // letters) do not apply.
        let mut declared = self.queue_decl(&queue.clone().with_type(QueueType::Classic))?;
        for (name, value) in arguments {
            declared.arguments.insert((*name).into(), value.clone());
        }
        let channel = self.admin_channel().await?;
        topology::declare_queue(&channel, &declared).await?;
        let name = declared.name.to_string();
        debug!(queue = %name, "queue declared with arguments");
        self.topology().queue(declared);
        Ok(name)
    }
}

/// The arguments of a stream that keeps events for `max_age` (RabbitMQ's
/// form: `7D`, `3600s`) and about `max_bytes`, in segments of
/// `segment_bytes`.
pub(crate) fn stream_arguments(
    max_age: String,
    max_bytes: i64,
    segment_bytes: i64,
) -> Vec<(&'static str, AMQPValue)> {
    vec![
        ("x-queue-type", AMQPValue::LongString("stream".into())),
        ("x-max-age", AMQPValue::LongString(max_age.into())),
        ("x-max-length-bytes", AMQPValue::LongLongInt(max_bytes)),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongLongInt(segment_bytes),
        ),
    ]
}

/// The consume arguments that read a stream from `offset`.
pub(crate) fn stream_offset(offset: AMQPValue) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), offset);
    arguments
}

/// The offset of a stream delivery's `x-stream-offset` header.
pub(crate) fn offset_of(value: Option<&AMQPValue>) -> Option<u64> {
    match value? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}
