//! `Outbox`: the publishing engine behind every producer. Messages wait in a
//! bounded buffer (events and bytes), are sent in order with a window of
//! publishes in flight, and are settled in order as the broker confirms
//! them. When the channel or the connection is lost, what was not confirmed
//! goes back to the front of the buffer and is sent again once the
//! connection is recovered: nothing accepted is dropped without being
//! reported.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{Instrument, debug, info_span, warn};

use crate::amqp::connection::{Connection, Link, gone};
use crate::amqp::header_frame;
use crate::amqp::props::WhenFull;
use crate::error::{Error, ErrorKind, Result};
use crate::telemetry;

/// Publishes sent and not yet confirmed, per producer. Enough to keep the
/// broker busy; it also bounds lapin's own frame queue.
const IN_FLIGHT: usize = 512;
/// The wait before opening a channel again on a connection that is up but
/// refused the last one.
const CHANNEL_RETRY: Duration = Duration::from_millis(200);
/// How many channels a message may lose while it is the only one in flight
/// before it is failed as refused by the broker instead of sent again.
const MAX_STRIKES: u8 = 2;
/// How often a message the broker refused with a nack is sent again before
/// it is failed: on a cluster that just lost a node (a quorum queue whose
/// leader is being elected, a queue of the lost node still bound) the broker
/// nacks for a few seconds, and takes the message when sent again. Each
/// resend waits [`NACK_DELAY`] doubling, at most 2 s: about 10 s in all.
const MAX_NACKS: u8 = 8;
/// The wait before sending a nacked message again the first time.
const NACK_DELAY: Duration = Duration::from_millis(100);

/// One message to publish, with whoever waits for its outcome.
pub(crate) struct Message {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) mandatory: bool,
    pub(crate) body: Arc<Vec<u8>>,
    pub(crate) properties: Properties,
    pub(crate) done: Option<oneshot::Sender<Result<()>>>,
    /// Counted in the stats, and sent again when nacked: an event of the
    /// application, not one of the bus's own retries and dead letters.
    pub(crate) counted: bool,
    /// Channels lost while this message was the only one in flight.
    pub(crate) strikes: u8,
    /// Times the broker refused it with a nack.
    pub(crate) nacks: u8,
    /// When it was accepted, for the publish-to-confirm latency.
    pub(crate) accepted: Instant,
}

/// **A message's AMQP properties**, kept until the broker confirms it so
/// that it can be sent again after a lost channel.
pub(crate) enum Properties {
    /// Kept whole: every send (the first, and a resend) sends a copy.
    Kept(BasicProperties),
    /// The first send takes `first` as it is, without a copy; the rare
    /// resend builds them again with `again`.
    Rebuilt {
        /// Built for the first send; `None` once sent.
        first: Option<BasicProperties>,
        /// Builds the same properties again.
        again: Box<dyn Fn() -> BasicProperties + Send + Sync>,
    },
}

impl Properties {
    /// The properties as they will be sent next, to be checked; `None`
    /// for properties sent once already (and checked then).
    fn current(&self) -> Option<&BasicProperties> {
        match self {
            Self::Kept(properties) => Some(properties),
            Self::Rebuilt { first, .. } => first.as_ref(),
        }
    }

    /// The properties of the next send.
    fn next(&mut self) -> BasicProperties {
        match self {
            Self::Kept(properties) => properties.clone(),
            Self::Rebuilt { first, again } => first.take().unwrap_or_else(again),
        }
    }
}

// One per message, moved and never copied; boxing the large variant would
// cost an allocation per publish.
#[allow(clippy::large_enum_variant)]
enum Command {
    Publish(Message),
    /// Answered with how many messages failed since the last flush, once
    /// every message accepted before it is settled.
    Flush(oneshot::Sender<u64>),
}

/// The handle callers publish through; the engine runs in a task of its own
/// and ends when every handle is dropped and everything is settled, or when
/// the connection is closed.
#[derive(Clone)]
pub(crate) struct Outbox {
    commands: mpsc::UnboundedSender<Command>,
    events: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_events: usize,
    max_bytes: usize,
    abort: Arc<watch::Sender<Option<String>>>,
    conn: Connection,
    counters: Arc<PublishCounters>,
}

impl Outbox {
    /// Starts the engine of a producer on `conn`.
    pub(crate) fn start(conn: &Connection, confirms: bool, counters: Arc<PublishCounters>) -> Self {
        let (max_events, max_bytes) = conn.props().publish_buffer();
        let (commands, receiver) = mpsc::unbounded_channel();
        let events = Arc::new(Semaphore::new(max_events));
        let bytes = Arc::new(Semaphore::new(max_bytes));
        let (abort, aborted) = watch::channel(None);
        let engine = Engine {
            conn: conn.clone(),
            confirms,
            events: events.clone(),
            bytes: bytes.clone(),
            counters: counters.clone(),
            pending: VecDeque::new(),
            nacked: VecDeque::new(),
            in_flight: VecDeque::new(),
            suspects: 0,
            accepted: 0,
            settled: 0,
            failures: 0,
            flushes: VecDeque::new(),
            aborted,
        };
        let span = info_span!("producer", instance = %conn.instance_id());
        tokio::spawn(engine.run(receiver).instrument(span));
        Self {
            commands,
            events,
            bytes,
            max_events,
            max_bytes,
            abort: Arc::new(abort),
            conn: conn.clone(),
            counters,
        }
    }

    /// **Accepts a message into the buffer**: waits for room, or fails at
    /// once by `when_full` (which also decides what a blocked connection
    /// means).
    pub(crate) async fn submit(&self, message: Message, when_full: WhenFull) -> Result<()> {
        match self.try_submit(message, when_full)? {
            None => Ok(()),
            Some(message) => self.submit_waiting(message).await,
        }
    }

    /// **Accepts a message into the buffer if there is room**, without
    /// waiting: `Ok(None)` once accepted; under [`WhenFull::Wait`], the
    /// message back when it has to wait for room
    /// ([`submit_waiting`](Self::submit_waiting)); under
    /// [`WhenFull::Fail`], an error then.
    pub(crate) fn try_submit(
        &self,
        message: Message,
        when_full: WhenFull,
    ) -> Result<Option<Message>> {
        let bytes = self.check(&message)?;
        match when_full {
            WhenFull::Fail => {
                if self.conn.is_blocked() {
                    return Err(Error::new(
                        ErrorKind::Blocked,
                        "the broker has blocked publishing (a memory or disk alarm); try again later",
                    ));
                }
                if !self.try_take(bytes) {
                    return Err(self.full());
                }
            }
            WhenFull::Wait => {
                if !self.try_take(bytes) {
                    return Ok(Some(message));
                }
            }
        }
        self.send(message, bytes)?;
        Ok(None)
    }

    /// Accepts a message [`try_submit`](Self::try_submit) gave back once
    /// there is room for it.
    pub(crate) async fn submit_waiting(&self, message: Message) -> Result<()> {
        let bytes = self.check(&message)?;
        let event = self.events.acquire().await.map_err(|_| self.closed())?;
        let room = self
            .bytes
            .acquire_many(bytes)
            .await
            .map_err(|_| self.closed())?;
        event.forget();
        room.forget();
        self.send(message, bytes)
    }

    /// Whether the message may be published at all; the room it takes in
    /// the buffer's byte budget.
    fn check(&self, message: &Message) -> Result<u32> {
        let size = message.body.len();
        let max_message_size = self.conn.props().max_message_size();
        if size > max_message_size {
            return Err(Error::new(
                ErrorKind::MessageTooLarge,
                format!(
                    "message of {size} bytes is larger than the maximum message size of {max_message_size} bytes, which receivers refuse too; raise it on both sides with with_max_message_size (and the broker's max_message_size) or send less"
                ),
            ));
        }
        let frame_max = self.conn.frame_max();
        if let Some(properties) = message.properties.current()
            && !header_frame::surely_fits(properties, frame_max)
            && let header = header_frame::size(properties)
            && header > frame_max
        {
            return Err(Error::new(
                ErrorKind::MessageTooLarge,
                format!(
                    "the message's properties and headers take {header} bytes, more than the broker's frame limit of {frame_max} bytes, and the broker would close the connection for it; send smaller headers"
                ),
            ));
        }
        if size > self.max_bytes {
            return Err(Error::new(
                ErrorKind::MessageTooLarge,
                format!(
                    "message of {size} bytes is larger than the whole publish buffer ({} bytes); raise it with with_publish_buffer",
                    self.max_bytes
                ),
            ));
        }
        // The buffer's byte budget is at most u32::MAX (see props).
        Ok(u32::try_from(size).unwrap_or(u32::MAX))
    }

    /// Takes room for one message of `bytes` if there is some, without
    /// waiting.
    fn try_take(&self, bytes: u32) -> bool {
        let (Ok(event), Ok(room)) = (
            self.events.try_acquire(),
            self.bytes.try_acquire_many(bytes),
        ) else {
            return false;
        };
        event.forget();
        room.forget();
        true
    }

    /// Hands a message that has its room to the engine.
    fn send(&self, message: Message, bytes: u32) -> Result<()> {
        if message.counted {
            self.counters.buffered.fetch_add(1, Ordering::Relaxed);
            telemetry::gauge("tidings_buffered_events", 1.0);
        }
        let counted = message.counted;
        self.commands.send(Command::Publish(message)).map_err(|_| {
            self.events.add_permits(1);
            self.bytes.add_permits(bytes as usize);
            if counted {
                self.counters.buffered.fetch_sub(1, Ordering::Relaxed);
                telemetry::gauge("tidings_buffered_events", -1.0);
            }
            self.closed()
        })
    }

    /// **Waits until everything accepted so far is settled**; returns how
    /// many of those messages failed since the last flush.
    ///
    /// Cancel safe: dropping the future leaves the messages as they are.
    pub(crate) async fn flush(&self) -> Result<u64> {
        let (done, failed) = oneshot::channel();
        self.commands
            .send(Command::Flush(done))
            .map_err(|_| self.closed())?;
        failed.await.map_err(|_| self.closed())
    }

    /// Gives up on everything not yet confirmed: each is reported failed
    /// with `reason`, and the engine stops.
    pub(crate) fn abort(&self, reason: &str) {
        self.abort.send_replace(Some(reason.to_owned()));
    }

    fn full(&self) -> Error {
        Error::new(
            ErrorKind::BufferFull,
            format!(
                "the publish buffer is full (it holds at most {} events and {} bytes until the broker confirms them); the broker is slow or unreachable",
                self.max_events, self.max_bytes
            ),
        )
    }

    fn closed(&self) -> Error {
        Error::new(
            ErrorKind::Closed,
            "the producer is closed: its connection was closed",
        )
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("events_free", &self.events.available_permits())
            .field("bytes_free", &self.bytes.available_permits())
            .finish_non_exhaustive()
    }
}

type Publish = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

/// A publishing channel and the underlying connection it is on.
struct Opened {
    channel: Arc<lapin::Channel>,
    amqp: Arc<lapin::Connection>,
    link: watch::Receiver<Link>,
}

/// One publish in flight, and the future that gives its outcome.
struct InFlight {
    message: Message,
    outcome: Publish,
}

impl InFlight {
    /// Starts publishing `message` on `channel`. lapin's `basic_publish`
    /// takes its delivery tag and queues its frames on the first poll, so
    /// the future is polled once here: the broker gets the messages in the
    /// order they were started, however many are in flight.
    fn start(channel: &Arc<lapin::Channel>, mut message: Message) -> Self {
        let channel = channel.clone();
        let body = message.body.clone();
        let (exchange, routing_key) = (message.exchange.clone(), message.routing_key.clone());
        let properties = message.properties.next();
        let options = BasicPublishOptions {
            mandatory: message.mandatory,
            ..BasicPublishOptions::default()
        };
        let mut outcome: Publish = Box::pin(async move {
            channel
                .basic_publish(exchange, routing_key, options, &body, properties)
                .await?
                .await
        });
        // A finished future must not be polled again: keep what it gave.
        if let Poll::Ready(done) = outcome
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            outcome = Box::pin(std::future::ready(done));
        }
        Self { message, outcome }
    }

    /// Polled until ready, and then not again: the engine pops it.
    fn poll_outcome(&mut self, cx: &mut Context<'_>) -> Poll<lapin::Result<Confirmation>> {
        self.outcome.as_mut().poll(cx)
    }
}

struct Engine {
    conn: Connection,
    confirms: bool,
    events: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    counters: Arc<PublishCounters>,
    /// Accepted, not sent on the current channel; re-sends first.
    pending: VecDeque<(Message, bool)>,
    /// Refused with a nack, to be sent again at the time given.
    nacked: VecDeque<(Instant, Message)>,
    in_flight: VecDeque<InFlight>,
    /// How many messages at the front of `pending` were in flight when a
    /// channel was lost: they are sent one at a time, so that a message the
    /// broker refuses by closing the channel is found and failed alone.
    suspects: usize,
    accepted: u64,
    settled: u64,
    failures: u64,
    flushes: VecDeque<(u64, oneshot::Sender<u64>)>,
    aborted: watch::Receiver<Option<String>>,
}

enum Stop {
    /// Nothing more can come and everything is settled.
    Finished,
    /// The channel failed; what was in flight is pending again.
    ChannelLost,
    /// The connection was closed or the application gave up.
    GaveUp(String),
}

impl Engine {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut open = true;
        let mut aborted = self.aborted.clone();
        let reason = loop {
            let opened = tokio::select! {
                biased;
                reason = wait_abort(&mut aborted) => break reason,
                channel = open_channel(&self.conn, self.confirms) => match channel {
                    Some(channel) => channel,
                    None => break "the connection was closed before the broker confirmed".to_owned(),
                },
            };
            match self.pump(&opened, &mut commands, &mut open).await {
                Stop::Finished => return,
                // The broker closed the channel but not the connection (a
                // refused publish): pause rather than spin on it.
                Stop::ChannelLost if self.conn.is_connected() => {
                    tokio::select! {
                        biased;
                        reason = wait_abort(&mut aborted) => break reason,
                        () = tokio::time::sleep(CHANNEL_RETRY) => {}
                    }
                }
                Stop::ChannelLost => {}
                Stop::GaveUp(reason) => break reason,
            }
        };
        commands.close();
        while let Ok(command) = commands.try_recv() {
            self.accept(command);
        }
        let pending: Vec<(Message, bool)> = self
            .in_flight
            .drain(..)
            .map(|f| (f.message, true))
            .chain(self.pending.drain(..))
            .chain(self.nacked.drain(..).map(|(_, m)| (m, true)))
            .collect();
        if !pending.is_empty() {
            warn!(messages = pending.len(), reason = %reason, "messages not confirmed by the broker are reported failed");
        }
        for (message, _) in pending {
            let error = Error::new(
                ErrorKind::Closed,
                format!("message not confirmed: {reason}"),
            );
            self.settle(message, Err(error));
        }
        for (_, flush) in self.flushes.drain(..) {
            let _ = flush.send(self.failures);
        }
    }

    async fn pump(
        &mut self,
        opened: &Opened,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        open: &mut bool,
    ) -> Stop {
        let channel = &opened.channel;
        loop {
            let window = if self.suspects > 0 { 1 } else { IN_FLIGHT };
            while self.in_flight.len() < window {
                let Some((message, again)) = self.pending.pop_front() else {
                    break;
                };
                if again && message.counted {
                    self.counters.republished.fetch_add(1, Ordering::Relaxed);
                    telemetry::count("tidings_republished_total", "", "");
                }
                self.in_flight.push_back(InFlight::start(channel, message));
            }
            if !*open
                && self.pending.is_empty()
                && self.in_flight.is_empty()
                && self.nacked.is_empty()
            {
                return Stop::Finished;
            }
            let waiting = !self.in_flight.is_empty();
            let resend_at = self.nacked.front().map(|(at, _)| *at);
            tokio::select! {
                biased;
                reason = wait_abort(&mut self.aborted) => return Stop::GaveUp(reason),
                // lapin may leave what was sent on a dead connection
                // unanswered: a new or lost connection ends this channel.
                () = gone(opened.link.clone(), &opened.amqp), if waiting => {
                    return self.channel_lost("the connection was lost");
                }
                outcome = poll_fn(|cx| match self.in_flight.front_mut() {
                    Some(front) => front.poll_outcome(cx),
                    None => Poll::Pending,
                }), if waiting => match outcome {
                    Ok(confirmation) => {
                        if let Some(front) = self.in_flight.pop_front() {
                            self.answered(front.message, confirmation);
                        }
                        if let Err(e) = self.settle_ready() {
                            return self.channel_lost(&e.to_string());
                        }
                    }
                    Err(e) => return self.channel_lost(&e.to_string()),
                },
                () = sleep_until(resend_at), if resend_at.is_some() => {
                    // Sent again before what waits, in the order refused.
                    let now = Instant::now();
                    let mut due = Vec::new();
                    while let Some((at, _)) = self.nacked.front()
                        && *at <= now
                        && let Some((_, message)) = self.nacked.pop_front()
                    {
                        due.push(message);
                    }
                    for message in due.into_iter().rev() {
                        self.pending.push_front((message, true));
                    }
                }
                command = commands.recv(), if *open => match command {
                    Some(command) => {
                        self.accept(command);
                        // Take what else is there in one go.
                        while self.pending.len() < IN_FLIGHT
                            && let Ok(command) = commands.try_recv()
                        {
                            self.accept(command);
                        }
                    }
                    None => *open = false,
                },
            }
        }
    }

    /// Settles, in order, every publish whose outcome is there already:
    /// the broker confirms in batches (`multiple`), so one wake-up settles
    /// many.
    fn settle_ready(&mut self) -> lapin::Result<()> {
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(front) = self.in_flight.front_mut() {
            match front.poll_outcome(&mut cx) {
                Poll::Ready(Ok(confirmation)) => {
                    if let Some(front) = self.in_flight.pop_front() {
                        self.answered(front.message, confirmation);
                    }
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// Puts what was in flight back in front of the buffer, to be sent
    /// again on the next channel.
    ///
    /// Those messages are suspects: the broker may have closed the channel
    /// because of one of them. They are sent again one at a time, and one
    /// that loses the channel again while alone in flight is failed as
    /// refused rather than sent forever.
    fn channel_lost(&mut self, why: &str) -> Stop {
        if self.conn.is_closed() {
            return Stop::GaveUp(
                "the connection was closed before the broker confirmed".to_owned(),
            );
        }
        debug!(error = %why, in_flight = self.in_flight.len(), "publishing channel lost; unconfirmed messages will be sent again, one at a time");
        if self.suspects > 0
            && self.in_flight.len() == 1
            && let Some(alone) = self.in_flight.pop_front()
        {
            let mut message = alone.message;
            message.strikes += 1;
            if message.strikes >= MAX_STRIKES {
                warn!(error = %why, bytes = message.body.len(), routing_key = %message.routing_key, "the broker refused a message; failing it and going on with the rest");
                let error = Error::new(
                    ErrorKind::Refused,
                    format!("the broker refused the message and closed the channel: {why}"),
                );
                self.settle(message, Err(error));
            } else {
                self.pending.push_front((message, true));
            }
            return Stop::ChannelLost;
        }
        let lost = self.in_flight.len();
        for lost in self.in_flight.drain(..).rev() {
            self.pending.push_front((lost.message, true));
        }
        self.suspects = self.suspects.max(lost);
        Stop::ChannelLost
    }

    /// Settles a message the broker answered, unless it is an event the
    /// broker refused with a nack less than [`MAX_NACKS`] times: then it is
    /// sent again after a delay.
    fn answered(&mut self, mut message: Message, confirmation: Confirmation) {
        // Only what the application published: a retry or a dead letter
        // (not counted) fails at once, since the listener waiting for it
        // has a fallback of its own, and a full dead-letter queue must not
        // hold it for the resends' ten seconds.
        if matches!(confirmation, Confirmation::Nack(_))
            && message.counted
            && message.nacks < MAX_NACKS
        {
            // Answered, so not what closed a channel: no longer a suspect.
            self.suspects = self.suspects.saturating_sub(1);
            let delay =
                (NACK_DELAY * 2u32.pow(u32::from(message.nacks))).min(Duration::from_secs(2));
            message.nacks += 1;
            debug!(routing_key = %message.routing_key, nacks = message.nacks, ?delay, "the broker refused a message (nack); sending it again");
            // Delays only grow, so the queue stays in time order.
            let at = (Instant::now() + delay)
                .max(self.nacked.back().map_or(Instant::now(), |(at, _)| *at));
            self.nacked.push_back((at, message));
            return;
        }
        self.settle(message, outcome_of(confirmation));
    }

    fn accept(&mut self, command: Command) {
        match command {
            Command::Publish(message) => {
                self.accepted += 1;
                self.pending.push_back((message, false));
            }
            Command::Flush(done) => {
                if self.settled >= self.accepted {
                    let _ = done.send(std::mem::take(&mut self.failures));
                } else {
                    self.flushes.push_back((self.accepted, done));
                }
            }
        }
    }

    fn settle(&mut self, message: Message, outcome: Result<()>) {
        self.events.add_permits(1);
        // Suspects are sent alone, so the first settled ones are they.
        self.suspects = self.suspects.saturating_sub(1);
        self.bytes.add_permits(message.body.len());
        let counters = &self.counters;
        if message.counted {
            counters.buffered.fetch_sub(1, Ordering::Relaxed);
            telemetry::gauge("tidings_buffered_events", -1.0);
            if telemetry::ENABLED {
                telemetry::time(
                    "tidings_publish_confirm_seconds",
                    "",
                    message.accepted.elapsed(),
                );
            }
            counters.settled(&outcome);
        }
        if outcome.is_err() {
            self.failures += 1;
        }
        match (message.done, outcome) {
            (Some(done), outcome) => {
                let _ = done.send(outcome);
            }
            (None, Err(e)) => {
                warn!(error = %e, routing_key = %message.routing_key, "the broker did not take a message");
            }
            (None, Ok(())) => {}
        }
        self.settled += 1;
        while let Some((upto, _)) = self.flushes.front()
            && *upto <= self.settled
        {
            if let Some((_, done)) = self.flushes.pop_front() {
                let _ = done.send(std::mem::take(&mut self.failures));
            }
        }
    }
}

/// Sleeps until `at`; never resolves for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn wait_abort(aborted: &mut watch::Receiver<Option<String>>) -> String {
    let reason = aborted
        .wait_for(Option::is_some)
        .await
        .ok()
        .map(|reason| reason.clone().unwrap_or_default());
    match reason {
        Some(reason) => reason,
        // Every handle is gone: nobody can abort any more.
        None => std::future::pending().await,
    }
}

/// A publishing channel on the current connection, waiting while it
/// recovers; `None` once the connection is closed.
async fn open_channel(conn: &Connection, confirms: bool) -> Option<Opened> {
    loop {
        let link = conn.link();
        let amqp = conn.up().await?;
        let opened = async {
            let channel = amqp.create_channel().await?;
            if confirms {
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
            }
            Ok::<_, lapin::Error>(channel)
        };
        match opened.await {
            Ok(channel) => {
                return Some(Opened {
                    channel: Arc::new(channel),
                    amqp,
                    link,
                });
            }
            Err(e) => {
                debug!(error = %e, "opening a publishing channel failed; trying again");
                tokio::time::sleep(CHANNEL_RETRY).await;
            }
        }
    }
}

fn outcome_of(confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(Error::new(
            ErrorKind::Unroutable,
            format!(
                "broker returned the message: no queue is bound to routing key {:?} ({})",
                returned.delivery.routing_key.as_str(),
                returned.reply_text.as_str()
            ),
        )),
        Confirmation::Nack(_) => Err(Error::new(
            ErrorKind::Nacked,
            "broker refused the message (nack); it may be out of resources or the queue may be full",
        )),
    }
}

/// **Counters of what a transport published**, kept by the transport and
/// read into the bus's [`Stats`](crate::Stats).
#[derive(Debug, Default)]
pub struct PublishCounters {
    /// Events the transport has safely.
    pub confirmed: AtomicU64,
    /// Events returned: no queue was bound to them.
    pub returned: AtomicU64,
    /// Events refused or given up on.
    pub failed: AtomicU64,
    /// Events accepted and not yet settled.
    pub buffered: AtomicU64,
    /// Sends of events again after a lost connection.
    pub republished: AtomicU64,
}

impl PublishCounters {
    /// Adds one to `counter`.
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an outcome: confirmed, returned ([`ErrorKind::Unroutable`])
    /// or failed.
    ///
    /// [`ErrorKind::Unroutable`]: crate::ErrorKind::Unroutable
    pub fn settled(&self, outcome: &Result<()>) {
        let (counter, metric) = match outcome {
            Ok(()) => (&self.confirmed, "tidings_confirmed_total"),
            Err(e) if e.kind() == ErrorKind::Unroutable => {
                (&self.returned, "tidings_returned_total")
            }
            Err(_) => (&self.failed, "tidings_publish_failed_total"),
        };
        Self::add(counter);
        telemetry::count(metric, "", "");
    }
}
