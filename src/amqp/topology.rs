//! `Topology`: what a connection declared (exchanges, queues, bindings), so
//! that a new connection can declare it again after a recovery.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};

use crate::error::{Error, Result};

/// Everything declared through one [`Connection`](crate::Connection), in
/// declaration order. Replaying it is idempotent: the broker accepts a
/// declaration that matches what exists.
#[derive(Debug, Clone, Default)]
pub(crate) struct Topology {
    exchanges: Vec<ExchangeDecl>,
    queues: Vec<QueueDecl>,
}

#[derive(Debug, Clone)]
struct ExchangeDecl {
    name: ShortString,
    kind: lapin::ExchangeKind,
    passive: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct QueueDecl {
    pub(crate) name: ShortString,
    pub(crate) options: QueueDeclareOptions,
    pub(crate) arguments: FieldTable,
    /// `(exchange, routing key)` pairs.
    pub(crate) bindings: Vec<(ShortString, ShortString)>,
}

impl Topology {
    /// Records a durable exchange (declared or found already there).
    pub(crate) fn exchange(&mut self, name: ShortString, kind: lapin::ExchangeKind, passive: bool) {
        self.exchanges.retain(|e| e.name != name);
        self.exchanges.push(ExchangeDecl {
            name,
            kind,
            passive,
        });
    }

    /// Records a queue with its bindings, replacing an earlier record.
    pub(crate) fn queue(&mut self, queue: QueueDecl) {
        self.queues.retain(|q| q.name != queue.name);
        self.queues.push(queue);
    }

    pub(crate) fn find_queue(&self, name: &str) -> Option<&QueueDecl> {
        self.queues.iter().find(|q| q.name.as_str() == name)
    }

    /// Forgets a deleted queue.
    pub(crate) fn remove_queue(&mut self, name: &str) {
        self.queues.retain(|q| q.name.as_str() != name);
    }

    /// Forgets a deleted exchange and the bindings to it.
    pub(crate) fn remove_exchange(&mut self, name: &str) {
        self.exchanges.retain(|e| e.name.as_str() != name);
        for queue in &mut self.queues {
            queue
                .bindings
                .retain(|(exchange, _)| exchange.as_str() != name);
        }
    }

    /// Declares everything again on `channel`: exchanges, then queues with
    /// their bindings.
    pub(crate) async fn replay(&self, channel: &lapin::Channel) -> Result<()> {
        for exchange in &self.exchanges {
            declare_exchange(
                channel,
                exchange.name.clone(),
                exchange.kind.clone(),
                exchange.passive,
            )
            .await?;
        }
        for queue in &self.queues {
            declare_queue(channel, queue).await?;
        }
        Ok(())
    }
}

/// Declares a durable exchange, or, `passive`, checks that it exists.
pub(crate) async fn declare_exchange(
    channel: &lapin::Channel,
    name: ShortString,
    kind: lapin::ExchangeKind,
    passive: bool,
) -> Result<()> {
    let options = ExchangeDeclareOptions {
        durable: true,
        passive,
        ..ExchangeDeclareOptions::default()
    };
    let what = if passive {
        format!("checking that exchange {:?} exists", name.as_str())
    } else {
        format!("declaring {kind:?} exchange {:?}", name.as_str())
    };
    let exchange = format!("exchange {:?}", name.as_str());
    channel
        .exchange_declare(name, kind, options, FieldTable::default())
        .await
        .map_err(|e| declare_error(&what, &exchange, passive, e))
}

/// An error of declaring `thing` (`exchange "x"`, `queue "q"`) that says
/// what to do when it is missing or the user may not declare it.
pub(crate) fn declare_error(what: &str, thing: &str, passive: bool, err: lapin::Error) -> Error {
    let code = match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    };
    let message = match code {
        Some(404) if passive => format!(
            "{thing} does not exist (the broker said: {err}); with passive declarations tidings declares nothing shared, so an administrator must declare it first (see the README's \"Least privilege\")"
        ),
        Some(403) if passive => format!(
            "{what} failed: the user lacks a permission on {thing} (the broker said: {err}); a bus with passive declarations needs read and write (no configure) on what it uses, and configure on the queues of its own connection (broadcast listeners)"
        ),
        Some(403) => format!(
            "{what} failed: the user lacks a permission on {thing} (the broker said: {err}); declaring needs configure permission: grant it, or let an administrator declare the topology and connect with passive declarations (AmqpProps::with_passive, `passive=true`)"
        ),
        _ => return Error::amqp(what, err),
    };
    Error::with_source(crate::error::ErrorKind::Broker, message, err)
}

/// What to do when the broker refused to declare queue `name` because it
/// exists with another type, or as a classic queue while tidings declares a
/// quorum one (`wanted`): `PRECONDITION_FAILED - inequivalent arg ...`, on
/// the type or, checked before it, on an argument only quorum queues get
/// here, which the existing queue lacks. `None` for another error.
fn inequivalent_type(name: &str, wanted: &str, err: &lapin::Error) -> Option<String> {
    let lapin::ErrorKind::ProtocolError(e) = err.kind() else {
        return None;
    };
    let said = e.to_string();
    if e.get_id() != 406 || !said.contains("inequivalent arg") {
        return None;
    }
    let on_type = said.contains("'x-queue-type'");
    let quorum_only = [
        "'x-dead-letter-exchange'",
        "'x-delivery-limit'",
        "'x-dead-letter-strategy'",
        "'x-overflow'",
    ];
    let lacks_quorum_argument = wanted == "quorum"
        && said.contains("but current is none")
        && quorum_only.iter().any(|arg| said.contains(arg));
    if !on_type && !lacks_quorum_argument {
        return None;
    }
    let found = if wanted == "quorum" {
        "classic"
    } else {
        "quorum"
    };
    Some(format!(
        "queue {name:?} exists as a {found} queue (or with other arguments), and tidings declares it as a {wanted} queue (the broker said: {said}); \
         to keep the queue as it is, set queue_type={found} in the URL (AmqpProps::with_queue_type, or Listen::queue_type for this listener); \
         to make it a {wanted} queue, stop its consumers, move or drain its messages, delete it (and its retry queues <name>.retry.*), \
         and let tidings declare it again"
    ))
}

/// The type a queue is declared with: `quorum` or `classic`.
fn declared_type(queue: &QueueDecl) -> &'static str {
    match queue.arguments.inner().get("x-queue-type") {
        Some(lapin::types::AMQPValue::LongString(t)) if t.to_string() == "quorum" => "quorum",
        _ => "classic",
    }
}

/// Declares a queue and binds it.
pub(crate) async fn declare_queue(channel: &lapin::Channel, queue: &QueueDecl) -> Result<()> {
    let name = queue.name.as_str();
    let passive = queue.options.passive;
    let what = if passive {
        format!("checking that queue {name:?} exists")
    } else {
        format!("declaring queue {name:?}")
    };
    channel
        .queue_declare(queue.name.clone(), queue.options, queue.arguments.clone())
        .await
        .map_err(
            |e| match inequivalent_type(name, declared_type(queue), &e) {
                Some(message) => Error::with_source(crate::error::ErrorKind::Broker, message, e),
                None => declare_error(&what, &format!("queue {name:?}"), passive, e),
            },
        )?;
    for (exchange, key) in &queue.bindings {
        channel
            .queue_bind(
                queue.name.clone(),
                exchange.clone(),
                key.clone(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                declare_error(
                    &format!(
                        "binding queue {name:?} to {:?} with key {:?}",
                        exchange.as_str(),
                        key.as_str()
                    ),
                    &format!("queue {name:?} or exchange {:?}", exchange.as_str()),
                    passive,
                    e,
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, exchange: &str) -> QueueDecl {
        QueueDecl {
            name: name.into(),
            options: QueueDeclareOptions::default(),
            arguments: FieldTable::default(),
            bindings: vec![(exchange.into(), "".into())],
        }
    }

    #[test]
    fn records_replace_and_removals_forget() {
        let mut topology = Topology::default();
        topology.exchange("ex".into(), lapin::ExchangeKind::Fanout, false);
        topology.exchange("ex".into(), lapin::ExchangeKind::Fanout, false);
        topology.queue(queue("q", "ex"));
        topology.queue(queue("q", "ex"));
        topology.queue(queue("r", "other"));
        assert_eq!(topology.exchanges.len(), 1);
        assert_eq!(topology.queues.len(), 2);
        topology.remove_exchange("ex");
        assert!(topology.exchanges.is_empty());
        assert!(topology.find_queue("q").unwrap().bindings.is_empty());
        assert_eq!(topology.find_queue("r").unwrap().bindings.len(), 1);
        topology.remove_queue("q");
        assert!(topology.find_queue("q").is_none());
    }
}
