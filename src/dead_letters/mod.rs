//! **Dead-letter tooling**: list, inspect, replay and purge what a bus
//! dead-lettered to `<exchange>.dead-letter`.
//!
//! Every operation walks the queue from the front with `basic.get` on a
//! channel of its own, settles what it takes (acks a replayed or purged
//! letter only after the broker confirmed its replay), and gives the rest
//! back by closing the channel: the broker puts them back in their places,
//! in order. Nothing is lost when the operation or the process stops half
//! way; a letter replayed but not yet acked may come back once more (at
//! least once, as everywhere in tidings).

mod decode;
mod filter;
mod letter;
mod replay;

use std::fmt;
use std::sync::Arc;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{FieldTable, ShortString};

pub use filter::DeadLetterFilter;
pub use letter::DeadLetterMessage;
pub use replay::{ReplayFailure, ReplayReport, ReplayTo};

use crate::amqp::connection::{Connection, short};
use crate::amqp::props::AmqpProps;
use crate::error::{Error, ErrorKind, Result, is_not_found};
use decode::Writers;

/// **The dead-letter queue of an exchange**, to list, inspect, replay and
/// purge what buses could not handle.
///
/// A bus dead-letters an event when its handlers failed on every attempt
/// or when it cannot be read (unknown tag, bad body, too large): to the
/// queue `<exchange>.dead-letter`, with why in its headers
/// ([`DeadLetterMessage::reason`], [`error`](DeadLetterMessage::error)) and
/// everything it came with (message id, origin, tag, fingerprint, content
/// type, timestamp). Once the cause is fixed, [`replay`](Self::replay)
/// sends the letters back, as new attempts, with their message id and
/// origin.
///
/// # Examples
///
/// ```
/// # async fn example() -> tidings::Result<()> {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use serde::{Deserialize, Serialize};
/// use tidings::{
///     AmqpProps, Bus, DeadLetterFilter, DeadLetters, Event, ExchangeKind, Listen, ReplayTo,
///     Subscribers,
/// };
///
/// #[derive(Event, Serialize, Deserialize, Debug)]
/// #[event(name = "doc.refund")]
/// struct Refund { id: u64 }
///
/// let props = AmqpProps::from_env()?.with_exchange("doc.dead-letters", ExchangeKind::Topic);
/// // A handler that fails until its payment service is back.
/// let up = Arc::new(AtomicBool::new(false));
/// let (handled, mut refunds) = tokio::sync::mpsc::unbounded_channel();
/// let subscribers = Subscribers::new();
/// let (u, h) = (up.clone(), handled.clone());
/// let _g = subscribers.subscribe(move |r: &Refund| {
///     if !u.load(Ordering::SeqCst) {
///         return Err("payment service down".to_owned());
///     }
///     h.send(r.id).map_err(|e| e.to_string())
/// });
/// let bus = Bus::with_props(props.clone())
///     .subscribers(subscribers)
///     .listen(Listen::group("refunds"))
///     .max_attempts(1)
///     .connect()
///     .await?;
/// bus.publish_confirmed(&Refund { id: 7 }).await?;
///
/// let dead_letters = DeadLetters::open(&props).await?;
/// # let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
/// while dead_letters.count().await? == 0 {
/// #   assert!(std::time::Instant::now() < deadline, "nothing was dead-lettered");
///     tokio::time::sleep(std::time::Duration::from_millis(20)).await;
/// }
/// let letters = dead_letters.list(&DeadLetterFilter::new()).await?;
/// assert_eq!(letters[0].reason(), Some("handler_failed"));
/// assert!(letters[0].error().is_some_and(|e| e.contains("payment service down")));
/// assert_eq!(letters[0].json(), Some(&serde_json::json!({"doc.refund": {"id": 7}})));
///
/// // The service is back: replay to the queue the letter came from.
/// up.store(true, Ordering::SeqCst);
/// let report = dead_letters
///     .replay(ReplayTo::Queue, &DeadLetterFilter::new().reason("handler_failed"))
///     .await?;
/// assert_eq!((report.replayed, report.failed.len()), (1, 0));
/// assert_eq!(refunds.recv().await, Some(7));
/// assert_eq!(dead_letters.count().await?, 0);
/// # bus.close().await?;
/// # let conn = tidings::Connection::connect(&props).await?;
/// # conn.delete_queue("doc.dead-letters.refunds").await?;
/// # conn.delete_queue("doc.dead-letters.dead-letter").await?;
/// # conn.delete_queue(&tidings::schema_stream("doc.dead-letters")).await?;
/// # conn.delete_exchange("doc.dead-letters.dead-letter").await?;
/// # conn.delete_exchange("doc.dead-letters").await?;
/// # conn.close().await?;
/// dead_letters.close().await?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
/// ```
pub struct DeadLetters {
    conn: Connection,
    queue: String,
    exchange: String,
    writers: Arc<Writers>,
    progress: Option<ProgressFn>,
}

/// The callback of [`DeadLetters::with_progress`].
type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// **How far a long operation on a [`DeadLetters`] queue is**, as given to
/// the callback of [`DeadLetters::with_progress`] after each dead letter
/// it examined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The dead letters examined so far.
    pub examined: u64,
    /// How many the queue held when the operation started: the most it
    /// examines (letters dead-lettered meanwhile wait for the next one).
    pub total: u64,
    /// Of those examined, how many the operation took (listed, replayed,
    /// purged).
    pub taken: u64,
}

impl DeadLetters {
    /// **Opens the dead-letter queue** of the exchange of `props`
    /// (`<exchange>.dead-letter`), on a connection of its own. Declares
    /// nothing.
    ///
    /// # Errors
    ///
    /// The errors of [`Connection::connect`], and
    /// [`ErrorKind::InvalidConfig`] when the queue does not exist (no bus
    /// has listened on that exchange, or the exchange name is wrong).
    pub async fn open(props: &AmqpProps) -> Result<Self> {
        let conn = Connection::connect_without_exchange(props).await?;
        // The name the bus declares it under (Connection::declare_dead_letters).
        let queue = props.dead_letter_name();
        let dead_letters = Self {
            conn,
            queue,
            exchange: props.exchange().to_owned(),
            writers: Arc::new(Writers::new(props)),
            progress: None,
        };
        if let Err(e) = dead_letters.count().await {
            let _ = dead_letters.conn.close().await;
            return Err(e);
        }
        Ok(dead_letters)
    }

    /// **Calls `progress` after each dead letter** a list, replay or
    /// purge examines, to show how far a long run is.
    #[must_use]
    pub fn with_progress(mut self, progress: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// The queue's name: `<exchange>.dead-letter`.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// **How many dead letters wait** in the queue (not counting those
    /// another operation holds at this moment).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] when the queue does not exist,
    /// [`ErrorKind::Broker`] or [`ErrorKind::Closed`] when the broker or
    /// the connection fails.
    pub async fn count(&self) -> Result<u64> {
        let channel = self.conn.channel().await?;
        let counted = self.count_on(&channel).await;
        let _ = channel.close(200, "counted".into()).await;
        counted
    }

    async fn count_on(&self, channel: &lapin::Channel) -> Result<u64> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(short(&self.queue)?, options, FieldTable::default())
            .await
        {
            Ok(queue) => Ok(u64::from(queue.message_count())),
            Err(e) if is_not_found(&e) => Err(Error::with_source(
                ErrorKind::InvalidConfig,
                format!(
                    "there is no dead-letter queue {:?} on the broker: no bus has listened on exchange {:?} yet, or the exchange name is wrong (check ?exchange= in the URL)",
                    self.queue, self.exchange
                ),
                e,
            )),
            Err(e) => Err(Error::amqp(
                &format!("looking at the dead-letter queue {:?}", self.queue),
                e,
            )),
        }
    }

    /// **Lists the dead letters that match `filter`**, oldest first,
    /// without taking them: each is given back, in its place. Bodies are
    /// decoded as [`DeadLetterMessage::event`] and
    /// [`json`](DeadLetterMessage::json) say. Every listed letter is held
    /// in memory: give a [`limit`](DeadLetterFilter::limit) for a long
    /// queue.
    ///
    /// # Errors
    ///
    /// As [`count`](Self::count).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped half way, the letters it held go back to the
    /// queue in their places (its channel closes).
    pub async fn list(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterMessage>> {
        let mut scan = self.scan().await?;
        let listed = async {
            let mut listed = Vec::new();
            while scan.taken < filter.limit_of() {
                let Some((_, mut letter)) = scan.next().await? else {
                    break;
                };
                if filter.matches(&letter) {
                    self.writers.decode(&mut letter).await;
                    listed.push(letter);
                    scan.took();
                }
                scan.report();
            }
            Ok(listed)
        }
        .await;
        scan.finish().await;
        listed
    }

    /// **The dead letter with this message id**, if it is in the queue
    /// (the first, if several are), without taking it.
    ///
    /// # Errors
    ///
    /// As [`count`](Self::count).
    pub async fn find(&self, message_id: &str) -> Result<Option<DeadLetterMessage>> {
        let filter = DeadLetterFilter::new().message_id(message_id).limit(1);
        Ok(self.list(&filter).await?.pop())
    }

    /// **Sends the dead letters that match `filter` back** (`to` says
    /// where), each as a new first attempt: the headers of dead-lettering
    /// and retries are removed, message id, origin and everything else
    /// kept. Each is removed from the dead-letter queue only once the
    /// broker has confirmed its replay; one that cannot be replayed (its
    /// queue is gone, nothing is bound to its routing key, its body was
    /// dropped) stays, and the report says why.
    ///
    /// A letter that fails again while the replay runs is dead-lettered
    /// behind the others and waits for the next replay.
    ///
    /// # Errors
    ///
    /// As [`count`](Self::count); [`ErrorKind::InvalidConfig`] for
    /// [`ReplayTo::Exchange`] when the exchange does not exist; when the
    /// connection fails half way, the letters replayed so far are out and
    /// the others stay.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped half way, the letters it held go back to the
    /// queue in their places (its channel closes); one replayed but not
    /// yet removed may be replayed again.
    pub async fn replay(&self, to: ReplayTo, filter: &DeadLetterFilter) -> Result<ReplayReport> {
        if to == ReplayTo::Exchange {
            self.check_exchange().await?;
        }
        let channel = self.conn.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Error::amqp("enabling confirms to replay dead letters", e))?;
        let mut scan = self.scan().await?;
        let mut report = ReplayReport::default();
        let replayed = async {
            while let Some((acker, letter)) = scan.next().await? {
                if scan.taken >= filter.limit_of() || !filter.matches(&letter) {
                    report.not_matching += 1;
                    scan.report();
                    continue;
                }
                scan.took();
                let sent = match replay::destination(&letter, to, &self.exchange) {
                    Ok(destination) => replay::send(&channel, &letter, destination).await?,
                    Err(why) => Err(why),
                };
                match sent {
                    Ok(()) => {
                        acker.ack(BasicAckOptions::default()).await.map_err(|e| {
                            Error::amqp(
                                "removing a replayed dead letter (it may be replayed again)",
                                e,
                            )
                        })?;
                        report.replayed += 1;
                    }
                    Err(why) => report.failed.push(ReplayFailure {
                        message_id: letter.message_id().map(str::to_owned),
                        why,
                    }),
                }
                scan.report();
            }
            Ok::<_, Error>(())
        }
        .await;
        scan.finish().await;
        let _ = channel.close(200, "replayed".into()).await;
        match replayed {
            Ok(()) => Ok(report),
            Err(e) => Err(Error::with_source(
                e.kind(),
                format!(
                    "replaying dead letters stopped after {} were replayed: {e}; the others are still in {:?}",
                    report.replayed, self.queue
                ),
                e,
            )),
        }
    }

    /// **Removes the dead letters that match `filter`**; returns how many.
    /// Without conditions the queue is purged at once; otherwise each letter
    /// is examined and the others given back.
    ///
    /// # Errors
    ///
    /// As [`count`](Self::count).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped half way, the letters it held go back to the
    /// queue in their places (its channel closes).
    pub async fn purge(&self, filter: &DeadLetterFilter) -> Result<u64> {
        if filter.is_everything() {
            let channel = self.conn.channel().await?;
            let purged = channel
                .queue_purge(short(&self.queue)?, QueuePurgeOptions::default())
                .await
                .map_err(|e| Error::amqp(&format!("purging {:?}", self.queue), e));
            let _ = channel.close(200, "purged".into()).await;
            return purged.map(u64::from);
        }
        let mut scan = self.scan().await?;
        let purged = async {
            while let Some((acker, letter)) = scan.next().await? {
                if scan.taken < filter.limit_of() && filter.matches(&letter) {
                    acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(|e| Error::amqp("removing a dead letter", e))?;
                    scan.took();
                }
                scan.report();
            }
            Ok(scan.taken)
        }
        .await;
        scan.finish().await;
        purged
    }

    /// **Closes the connection**; what an operation still held goes back
    /// to the queue.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Broker`] when the broker does not close cleanly.
    pub async fn close(self) -> Result<()> {
        self.conn.close().await
    }

    /// Fails unless the exchange to replay to exists.
    async fn check_exchange(&self) -> Result<()> {
        let channel = self.conn.channel().await?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let checked = channel
            .exchange_declare(
                short(&self.exchange)?,
                lapin::ExchangeKind::Fanout,
                options,
                FieldTable::default(),
            )
            .await;
        match checked {
            Ok(()) => {
                let _ = channel.close(200, "checked".into()).await;
                Ok(())
            }
            Err(e) if is_not_found(&e) => Err(Error::with_source(
                ErrorKind::InvalidConfig,
                format!(
                    "the exchange {:?} does not exist, so nothing can be replayed to it; replay to the queues instead, or start a bus on the exchange first",
                    self.exchange
                ),
                e,
            )),
            Err(e) => Err(Error::amqp(
                &format!("looking for the exchange {:?}", self.exchange),
                e,
            )),
        }
    }

    async fn scan(&self) -> Result<Scan> {
        let channel = self.conn.channel().await?;
        let total = match self.count_on(&channel).await {
            Ok(total) => total,
            Err(e) => {
                let _ = channel.close(200, "failed".into()).await;
                return Err(e);
            }
        };
        Ok(Scan {
            channel,
            queue: short(&self.queue)?,
            total,
            examined: 0,
            taken: 0,
            progress: self.progress.clone(),
        })
    }
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("queue", &self.queue)
            .field("connection", &self.conn)
            .finish_non_exhaustive()
    }
}

/// One walk through the queue: the letters it takes it settles, the rest
/// go back when it finishes.
struct Scan {
    channel: lapin::Channel,
    queue: ShortString,
    total: u64,
    examined: u64,
    taken: u64,
    progress: Option<ProgressFn>,
}

impl Scan {
    /// The next letter, held until acked or given back; `None` after as
    /// many as the queue held at the start.
    async fn next(&mut self) -> Result<Option<(lapin::Acker, DeadLetterMessage)>> {
        if self.examined >= self.total {
            return Ok(None);
        }
        let got = self
            .channel
            .basic_get(self.queue.clone(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| Error::amqp(&format!("reading {:?}", self.queue.as_str()), e))?;
        let Some(got) = got else {
            return Ok(None);
        };
        self.examined += 1;
        let lapin::message::Delivery {
            acker,
            properties,
            data,
            ..
        } = got.delivery;
        Ok(Some((acker, DeadLetterMessage::new(properties, data))))
    }

    fn took(&mut self) {
        self.taken += 1;
    }

    fn report(&self) {
        if let Some(progress) = &self.progress {
            progress(&Progress {
                examined: self.examined,
                total: self.total,
                taken: self.taken,
            });
        }
    }

    /// Gives back what was not settled, in order: closing the channel
    /// makes the broker requeue it in place.
    async fn finish(self) {
        let _ = self
            .channel
            .close(200, "dead letters examined".into())
            .await;
    }
}
