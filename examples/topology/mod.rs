//! Deleting what an example's buses declared on the broker, so that
//! running an example leaves nothing behind: the exchange, its dead
//! letters, its schema stream, and the durable queues the example names.

use tidings::{AmqpProps, Connection};

/// Deletes the exchange of `props` and what buses on it declare, and
/// `queues`.
pub(crate) async fn delete(props: &AmqpProps, queues: &[&str]) -> tidings::Result<()> {
    let conn = Connection::connect_without_exchange(props).await?;
    let exchange = props.exchange();
    let dead_letters = format!("{exchange}.dead-letter");
    for queue in queues
        .iter()
        .copied()
        .chain([dead_letters.as_str(), &tidings::schema_stream(exchange)])
    {
        conn.delete_queue(queue).await?;
    }
    conn.delete_exchange(&dead_letters).await?;
    conn.delete_exchange(exchange).await?;
    conn.close().await
}
