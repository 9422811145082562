//! **A stream listener on RabbitMQ** ([`Listen::stream`]): a stream queue
//! read over AMQP 0-9-1 from an offset, the offset kept on the broker, and
//! failed events retried in the process.
//!
//! Over AMQP 0-9-1 the broker does not track a reader's offset (the stream
//! protocol does), so the listener keeps it: in the quorum queue
//! `<stream>.offset.<consumer>`, which holds one message (`x-max-length`
//! 1), the offset of the last event settled with every event before it.
//! The broker is the place because it is where the stream is: the offset
//! is as durable and as replicated as the events it points into, it needs
//! no disk of the process's own (containers come and go), and the
//! application's credentials reach it.
//!
//! A stream cannot take an event back, so a failed event is parked here
//! and delivered again to the bus after its retry delay (at most prefetch
//! of them are parked; the stream waits meanwhile); the offset written
//! never passes an event still unsettled or parked.
//!
//! [`Listen::stream`]: crate::Listen::stream

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Confirmation};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tracing::{debug, warn};

use super::amqp::{Amqp, AmqpReceived};
use super::lock;
use super::seam::{BoxFuture, DeadLetter, Header, Inbox, Received};
use crate::amqp::connection::{Connection, short};
use crate::amqp::consumer::{ConsumeArguments, Consumer};
use crate::amqp::queue::Queue;
use crate::amqp::stream::{offset_of, stream_arguments, stream_offset};
use crate::error::{Error, ErrorKind, Result};
use crate::headers::SENT_AT_HEADER;
use crate::transport::listen::Listen;
use crate::transport::replay::{StreamSpec, StreamStart};

/// The offset is written at most this often while it moves...
const COMMIT_EVERY: Duration = Duration::from_millis(250);
/// ...and also once this many events were settled since the last write.
const COMMIT_EVENTS: u64 = 1_000;
/// A write of the offset that takes longer is given up (the broker is
/// unreachable): a listener's stop does not wait for a lost connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a stream listener: declares the stream (bound like a group's
/// queue) and its offset store, reads the saved offset, and consumes.
pub(super) async fn listen(
    amqp: Arc<Amqp>,
    listen: &Listen,
    spec: &StreamSpec,
) -> Result<Box<dyn Inbox>> {
    let conn = amqp.conn.clone();
    if conn.props().prefetch() == 0 {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            "a stream listener needs a prefetch (RabbitMQ refuses to consume a stream without one); set prefetch above 0",
        ));
    }
    let retention = spec.retention;
    let arguments = stream_arguments(
        retention.max_age_arg(),
        retention.max_bytes_arg(),
        retention.segment_bytes_arg(),
    );
    let queue = listen.queue_on(conn.props().exchange(), conn.props().exchange_kind())?;
    let stream = conn
        .declare_queue_with(&queue, &arguments)
        .await
        .map_err(|e| {
            if e.to_string().contains("x-queue-type") {
                let hint = format!("{e} (streams need RabbitMQ 3.9 or later)");
                Error::with_source(e.kind(), hint, e)
            } else {
                e
            }
        })?;
    let store = match &spec.consumer {
        Some(consumer) => {
            Some(OffsetStore::open(&conn, &format!("{stream}.offset.{consumer}")).await?)
        }
        None => None,
    };
    let saved = match &store {
        Some(store) => store.read().await?,
        None => None,
    };
    debug!(stream = %stream, saved = ?saved, "reading a stream");
    let prefetch = usize::from(conn.props().prefetch());
    let state = Arc::new(State {
        tracker: Mutex::new(Tracker::new(saved, spec.start)),
        parked: Mutex::default(),
        parked_now: Notify::new(),
        commit_now: Notify::new(),
        closing: Notify::new(),
        prefetch,
    });
    let offset_state = state.clone();
    let arguments: ConsumeArguments =
        Arc::new(move || stream_offset(lock(&offset_state.tracker).subscribe()));
    let consumer = Consumer::start_with(conn, stream.clone(), Some(arguments)).await?;
    let committer = store.map(|store| tokio::spawn(commit(state.clone(), store, saved)));
    Ok(Box::new(StreamInbox {
        stream,
        consumer: Some(consumer),
        amqp,
        state,
        committer,
    }))
}

/// What the inbox and its deliveries share.
struct State {
    tracker: Mutex<Tracker<Arc<AmqpReceived>>>,
    /// Failed events waiting for their retry, in the order parked.
    parked: Mutex<Vec<Parked>>,
    /// An event was parked: the inbox looks again when it is due.
    parked_now: Notify,
    /// Enough events were settled to write the offset now.
    commit_now: Notify,
    /// The listener stops: write the offset a last time.
    closing: Notify,
    /// At most this many parked events before the stream waits.
    prefetch: usize,
}

/// A failed event waiting for its retry.
struct Parked {
    due: Instant,
    received: Arc<AmqpReceived>,
    attempt: u32,
    offset: Option<u64>,
}

/// Which offsets are out, settled, parked: where the listener may resume.
/// `T` is a first delivery's handle, to acknowledge it on the wire.
struct Tracker<T> {
    /// Handed to the bus and not yet settled, by the order handed out: the
    /// offset, and for a first delivery (not a retry) its handle.
    out: BTreeMap<u64, (Option<u64>, Option<T>)>,
    /// The offsets of parked events.
    parked: Vec<u64>,
    /// The highest offset received.
    highest: Option<u64>,
    /// The offset saved when the listener started.
    saved: Option<u64>,
    /// Deliveries at or below this offset are settled at once: the broker
    /// starts at a chunk, which may begin before the offset asked for.
    floor: Option<u64>,
    /// Where a listener with nothing saved or received starts.
    start: StreamStart,
    /// Until an event passes it: skip events sent before this (in
    /// microseconds since the epoch), for a start at a time.
    since: Option<u64>,
    /// When the listener first subscribed, for a start at "now" that must
    /// subscribe again before it received anything.
    first_subscribed: Option<SystemTime>,
    handed_out: u64,
    settled_since_commit: u64,
}

impl<T> Tracker<T> {
    fn new(saved: Option<u64>, start: StreamStart) -> Self {
        Self {
            out: BTreeMap::new(),
            parked: Vec::new(),
            highest: None,
            saved,
            floor: saved,
            start,
            since: None,
            first_subscribed: None,
            handed_out: 0,
            settled_since_commit: 0,
        }
    }

    /// The last offset settled with every offset before it.
    fn safe(&self) -> Option<u64> {
        let low = self
            .out
            .values()
            .filter_map(|(offset, _)| *offset)
            .chain(self.parked.iter().copied())
            .min();
        let progress = match low {
            Some(low) => low.checked_sub(1),
            None => self.highest,
        };
        progress.max(self.saved)
    }

    /// The `x-stream-offset` to subscribe with now: after what is safe, or
    /// where a new reader starts.
    fn subscribe(&mut self) -> AMQPValue {
        let first = self.first_subscribed.is_none();
        let now = *self.first_subscribed.get_or_insert_with(SystemTime::now);
        if let Some(safe) = self.safe() {
            self.floor = Some(safe);
            self.since = None;
            return AMQPValue::LongLongInt(i64::try_from(safe + 1).unwrap_or(i64::MAX));
        }
        match self.start {
            StreamStart::Beginning => AMQPValue::LongString("first".into()),
            StreamStart::Now if first => AMQPValue::LongString("next".into()),
            StreamStart::Now => self.at_time(now),
            StreamStart::Time(time) => self.at_time(time),
            StreamStart::Offset(offset) => {
                self.floor = offset.checked_sub(1);
                AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX))
            }
        }
    }

    fn at_time(&mut self, time: SystemTime) -> AMQPValue {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.since = Some(u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
        // A second early: the broker's timestamps are whole seconds and
        // its chunks coarse; what is earlier is skipped by `since`.
        AMQPValue::Timestamp(since.as_secs().saturating_sub(1))
    }

    /// Whether a delivery at `offset`, sent at `sent_at`, is to be skipped:
    /// settled before, or sent before the start time.
    fn skips(&mut self, offset: Option<u64>, sent_at: Option<u64>) -> bool {
        if let Some(offset) = offset {
            self.highest = self.highest.max(Some(offset));
            if self.floor.is_some_and(|floor| offset <= floor) {
                return true;
            }
        }
        match (self.since, sent_at) {
            (Some(since), Some(sent_at)) if sent_at < since => true,
            _ => {
                self.since = None;
                false
            }
        }
    }

    /// Notes a delivery handed to the bus; its number.
    fn hand_out(&mut self, offset: Option<u64>, first: Option<T>) -> u64 {
        self.handed_out += 1;
        self.highest = self.highest.max(offset);
        let retry = first.is_none();
        self.out.insert(self.handed_out, (offset, first));
        if retry && let Some(offset) = offset {
            remove_one(&mut self.parked, offset);
        }
        self.handed_out
    }

    /// Settles delivery `seq`; whether it was out.
    fn settle(&mut self, seq: u64) -> bool {
        let was_out = self.out.remove(&seq).is_some();
        self.settled_since_commit += u64::from(was_out);
        was_out
    }

    /// Settles every delivery handed out up to `seq`; the last first
    /// delivery of them, whose acknowledgement (with `multiple`) is due.
    fn settle_through(&mut self, seq: u64) -> Option<T> {
        let later = self.out.split_off(&(seq + 1));
        let settled = std::mem::replace(&mut self.out, later);
        self.settled_since_commit += settled.len() as u64;
        settled
            .into_values()
            .filter_map(|(_, first)| first)
            .next_back()
    }

    /// Parks delivery `seq` for a retry.
    fn park(&mut self, seq: u64) {
        if let Some((Some(offset), _)) = self.out.remove(&seq) {
            self.parked.push(offset);
        }
    }
}

fn remove_one(offsets: &mut Vec<u64>, offset: u64) {
    if let Some(at) = offsets.iter().position(|o| *o == offset) {
        offsets.swap_remove(at);
    }
}

/// Writes the safe offset while it moves, and a last time on close.
async fn commit(state: Arc<State>, store: OffsetStore, mut written: Option<u64>) {
    loop {
        let closing = tokio::select! {
            () = tokio::time::sleep(COMMIT_EVERY) => false,
            () = state.commit_now.notified() => false,
            () = state.closing.notified() => true,
        };
        let safe = {
            let mut tracker = lock(&state.tracker);
            tracker.settled_since_commit = 0;
            tracker.safe()
        };
        if let Some(offset) = safe.filter(|_| safe != written) {
            match tokio::time::timeout(WRITE_TIMEOUT, store.write(offset)).await {
                Ok(Ok(())) => written = Some(offset),
                Ok(Err(e)) => {
                    debug!(error = %e, queue = %store.queue, "saving the stream offset failed; trying again");
                }
                Err(_) => debug!(queue = %store.queue, "saving the stream offset timed out"),
            }
        }
        if closing {
            return;
        }
    }
}

/// The messages of one stream listener.
struct StreamInbox {
    stream: String,
    consumer: Option<Consumer>,
    amqp: Arc<Amqp>,
    state: Arc<State>,
    committer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for StreamInbox {
    /// Dropped without [`close`](Inbox::close): the offset stays where it
    /// was last written.
    fn drop(&mut self) {
        if let Some(committer) = self.committer.take() {
            committer.abort();
        }
    }
}

impl StreamInbox {
    /// A parked event that is due, or when the next one is.
    fn due(&self) -> (Option<Parked>, Option<Instant>, bool) {
        let mut parked = lock(&self.state.parked);
        let now = Instant::now();
        if let Some(at) = parked.iter().position(|p| p.due <= now) {
            return (Some(parked.remove(at)), None, true);
        }
        let room = parked.len() < self.state.prefetch;
        (None, parked.iter().map(|p| p.due).min(), room)
    }

    fn received(
        &self,
        inner: Arc<AmqpReceived>,
        offset: Option<u64>,
        attempt: Option<u32>,
    ) -> Box<dyn Received> {
        let first = attempt.is_none().then(|| inner.clone());
        let seq = lock(&self.state.tracker).hand_out(offset, first);
        Box::new(StreamReceived {
            inner,
            attempt,
            seq,
            offset,
            state: self.state.clone(),
        })
    }
}

impl Inbox for StreamInbox {
    fn queue(&self) -> &str {
        &self.stream
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Box<dyn Received>>> {
        Box::pin(async move {
            loop {
                let (ready, next_due, room) = self.due();
                if let Some(parked) = ready {
                    return Some(self.received(
                        parked.received,
                        parked.offset,
                        Some(parked.attempt),
                    ));
                }
                let consumer = self.consumer.as_mut()?;
                let delivery = tokio::select! {
                    () = sleep_until(next_due) => continue,
                    () = self.state.parked_now.notified() => continue,
                    delivery = consumer.next(), if room => delivery,
                };
                let delivery = match delivery? {
                    Ok(delivery) => delivery,
                    Err(e) => {
                        warn!(error = %e, "receiving an event failed");
                        continue;
                    }
                };
                let offset = offset_of(delivery.header("x-stream-offset"));
                let sent_at = delivery
                    .header_str(SENT_AT_HEADER)
                    .and_then(|at| at.parse().ok());
                if lock(&self.state.tracker).skips(offset, sent_at) {
                    // Acknowledged apart, so that dropping this future (it
                    // is cancel safe) never leaves a delivery holding room.
                    tokio::spawn(async move {
                        if let Err(e) = delivery.ack().await {
                            debug!(error = %e, "acknowledging a skipped stream delivery failed");
                        }
                    });
                    continue;
                }
                let inner = Arc::new(AmqpReceived::new(delivery, self.amqp.clone()));
                return Some(self.received(inner, offset, None));
            }
        })
    }

    fn close(mut self: Box<Self>, _delete: bool) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if let Some(consumer) = self.consumer.take() {
                let _ = consumer.cancel().await;
            }
            // A stream outlives its listeners: never deleted here.
            if let Some(committer) = self.committer.take() {
                self.state.closing.notify_one();
                let _ = committer.await;
            }
            Ok(())
        })
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// One event of a stream, handed out first (`attempt` none) or again
/// after a failure.
struct StreamReceived {
    inner: Arc<AmqpReceived>,
    /// For a retry: which attempt this is.
    attempt: Option<u32>,
    seq: u64,
    offset: Option<u64>,
    state: Arc<State>,
}

impl StreamReceived {
    fn settled(&self) {
        let mut tracker = lock(&self.state.tracker);
        tracker.settle(self.seq);
        if tracker.settled_since_commit >= COMMIT_EVENTS {
            self.state.commit_now.notify_one();
        }
    }

    fn is_first(&self) -> bool {
        self.attempt.is_none()
    }
}

impl Received for StreamReceived {
    fn body(&self) -> &[u8] {
        self.inner.body()
    }

    fn content_type(&self) -> Option<&str> {
        self.inner.content_type()
    }

    fn content_encoding(&self) -> Option<&str> {
        self.inner.content_encoding()
    }

    fn header(&self, name: &str) -> Header<'_> {
        self.inner.header(name)
    }

    fn visit_headers(&self, visit: &mut dyn FnMut(&str, Header<'_>)) {
        self.inner.visit_headers(visit);
    }

    fn routing_key(&self) -> &str {
        self.inner.routing_key()
    }

    fn attempt(&self) -> u32 {
        self.attempt.unwrap_or_else(|| self.inner.attempt())
    }

    fn message_id(&self) -> Option<&str> {
        self.inner.message_id()
    }

    fn origin(&self) -> Option<&str> {
        self.inner.origin()
    }

    fn timestamp(&self) -> Option<u64> {
        self.inner.timestamp()
    }

    fn redelivered(&self) -> bool {
        self.inner.redelivered()
    }

    fn reply_to(&self) -> Option<&str> {
        self.inner.reply_to()
    }

    fn correlation_id(&self) -> Option<&str> {
        self.inner.correlation_id()
    }

    /// Settles it; the first delivery is also acknowledged on the wire,
    /// which gives the broker room to send the next (a stream keeps it).
    fn ack(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.settled();
            if self.is_first() {
                self.inner.delivery.ack().await
            } else {
                Ok(())
            }
        })
    }

    fn ack_through(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let last_first = {
                let mut tracker = lock(&self.state.tracker);
                let last_first = tracker.settle_through(self.seq);
                if tracker.settled_since_commit >= COMMIT_EVENTS {
                    self.state.commit_now.notify_one();
                }
                last_first
            };
            // Every first delivery before it is settled, and a retry's own
            // was acknowledged when it was parked: one `multiple` ack of the
            // last first delivery settles exactly these on the wire.
            match last_first {
                Some(last) => last.delivery.ack_multiple().await,
                None => Ok(()),
            }
        })
    }

    /// Parks it in this process for `delay`; the bus then acknowledges
    /// this delivery, and the offset waits for the retry.
    fn retry(&self, attempt: u32, delay: Duration) -> BoxFuture<'_, Result<()>> {
        lock(&self.state.tracker).park(self.seq);
        lock(&self.state.parked).push(Parked {
            due: Instant::now() + delay,
            received: self.inner.clone(),
            attempt,
            offset: self.offset,
        });
        self.state.parked_now.notify_one();
        Box::pin(std::future::ready(Ok(())))
    }

    fn dead_letter<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.amqp.dead_letter(
            &self.inner.delivery,
            self.routing_key(),
            letter,
            self.attempt(),
        ))
    }

    /// A stream cannot take it back: it is handled again at once.
    fn requeue(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let _ = self.retry(self.attempt(), Duration::ZERO).await;
            self.ack().await
        })
    }

    /// Dropped: settled and acknowledged (a stream keeps it anyway).
    fn reject(&self) -> BoxFuture<'_, Result<()>> {
        self.ack()
    }
}

/// Where a stream listener's offset is kept: a quorum queue holding one
/// message, the decimal offset of the last event settled with all before it.
struct OffsetStore {
    conn: Connection,
    queue: String,
    /// The channel writes go through, in confirm mode; one write at a time.
    channel: tokio::sync::Mutex<Option<lapin::Channel>>,
}

impl OffsetStore {
    async fn open(conn: &Connection, queue: &str) -> Result<Self> {
        let arguments = [
            ("x-queue-type", AMQPValue::LongString("quorum".into())),
            ("x-max-length", AMQPValue::LongLongInt(1)),
        ];
        let queue = conn
            .declare_queue_with(&Queue::durable(queue).unbound(), &arguments)
            .await?;
        Ok(Self {
            conn: conn.clone(),
            queue,
            channel: tokio::sync::Mutex::new(None),
        })
    }

    /// The offset saved, if any; the message stays in the queue.
    async fn read(&self) -> Result<Option<u64>> {
        let channel = self.conn.channel().await?;
        let got = channel
            .basic_get(short(&self.queue)?, BasicGetOptions::default())
            .await
            .map_err(|e| {
                Error::amqp(&format!("reading the stream offset in {:?}", self.queue), e)
            })?;
        // Closing the channel gives the message back.
        let _ = channel.close(200, "offset read".into()).await;
        let Some(message) = got else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&message.delivery.data).unwrap_or("");
        text.trim().parse().map(Some).map_err(|_| {
            Error::new(
                ErrorKind::Broker,
                format!(
                    "the stream offset queue {:?} holds {text:?}, not an offset; delete the queue to start the consumer afresh",
                    self.queue
                ),
            )
        })
    }

    /// Saves `offset`, confirmed by the broker; the queue drops the older.
    async fn write(&self, offset: u64) -> Result<()> {
        let mut held = self.channel.lock().await;
        let channel = match held.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.conn.channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|e| Error::amqp("selecting confirms", e))?;
                held.insert(channel).clone()
            }
        };
        let confirm = channel
            .basic_publish(
                "".into(),
                short(&self.queue)?,
                BasicPublishOptions::default(),
                offset.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(|e| Error::amqp("saving the stream offset", e))?
            .await
            .map_err(|e| Error::amqp("saving the stream offset", e))?;
        match confirm {
            Confirmation::Ack(_) => Ok(()),
            _ => Err(Error::new(
                ErrorKind::Broker,
                format!("the broker refused the stream offset for {:?}", self.queue),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safe_offset_waits_for_unsettled_and_parked_events() {
        let mut t = Tracker::new(Some(9), StreamStart::Beginning);
        assert_eq!(t.safe(), Some(9));
        assert!(t.skips(Some(9), None), "at or below the saved offset");
        assert!(!t.skips(Some(10), None));
        let a = t.hand_out(Some(10), Some(10));
        let b = t.hand_out(Some(11), Some(11));
        let c = t.hand_out(Some(12), Some(12));
        assert_eq!(t.safe(), Some(9));
        t.park(a);
        t.settle(b);
        assert_eq!(t.safe(), Some(9), "10 is parked");
        let again = t.hand_out(Some(10), None);
        assert_eq!(t.settle_through(c), Some(12));
        assert_eq!(t.safe(), Some(9), "the retry of 10 came after 12");
        t.settle(again);
        assert_eq!(t.safe(), Some(12));
        assert_eq!(t.subscribe(), AMQPValue::LongLongInt(13));
    }

    #[test]
    fn a_new_reader_starts_where_told() {
        let mut beginning = Tracker::<()>::new(None, StreamStart::Beginning);
        assert_eq!(beginning.subscribe(), AMQPValue::LongString("first".into()));
        let mut now = Tracker::<()>::new(None, StreamStart::Now);
        assert_eq!(now.subscribe(), AMQPValue::LongString("next".into()));
        assert!(
            matches!(now.subscribe(), AMQPValue::Timestamp(_)),
            "after a reconnect, from the first subscription's time"
        );
        let at = UNIX_EPOCH + Duration::from_micros(5_000_000);
        let mut time = Tracker::<()>::new(None, StreamStart::Time(at));
        assert_eq!(time.subscribe(), AMQPValue::Timestamp(4));
        assert!(time.skips(Some(0), Some(4_999_999)));
        assert!(!time.skips(Some(1), Some(5_000_000)));
        assert!(!time.skips(Some(2), Some(1)), "only until one passes");
    }
}
