//! Local subscriber lists: typed and untyped, sync and async handlers,
//! bounded streams, and `notify`.

use std::any::TypeId;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLock, Weak};
use std::task::{Context as TaskContext, Poll};

use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tracing::{error, warn};

use crate::bus::batch::Batcher;
use crate::bus::context::Context;
use crate::bus::decision::Decision;
use crate::bus::handler_call::{self, BoxFuture, Failure, panic_text};
pub use crate::error::HandlerError;
use crate::event::{Event, EventType};

/// **What a handler returns**: `()` (it cannot fail), `Result<(), E>`, a
/// [`Decision`] (ack, retry after a delay, requeue, dead-letter), or
/// `Result<Decision, E>`. An error is a retry with the bus's backoff.
pub trait HandlerOutput {
    /// The handler's decision, or its error.
    ///
    /// # Errors
    ///
    /// The handler's own error.
    fn into_decision(self) -> Result<Decision, HandlerError>;
}

impl HandlerOutput for () {
    fn into_decision(self) -> Result<Decision, HandlerError> {
        Ok(Decision::Ack)
    }
}

impl HandlerOutput for Decision {
    fn into_decision(self) -> Result<Decision, HandlerError> {
        Ok(self)
    }
}

impl<E: Into<HandlerError>> HandlerOutput for Result<(), E> {
    fn into_decision(self) -> Result<Decision, HandlerError> {
        self.map(|()| Decision::Ack).map_err(Into::into)
    }
}

impl<E: Into<HandlerError>> HandlerOutput for Result<Decision, E> {
    fn into_decision(self) -> Result<Decision, HandlerError> {
        self.map_err(Into::into)
    }
}

/// One handler call: finished already, or a future to await.
enum Call {
    Done(Result<Decision, HandlerError>),
    Pending(BoxFuture),
}

type ErasedHandler = dyn Fn(&Arc<dyn Event>, &Context) -> Call + Send + Sync;

#[derive(Clone)]
struct Entry {
    id: u64,
    /// `None` for a subscription to every event.
    type_id: Option<TypeId>,
    /// The routing key of the type, for a typed subscription.
    routing_key: Option<&'static str>,
    /// For a batch handler: the most events in one batch.
    batch: usize,
    handler: Arc<ErasedHandler>,
    /// A stream's or poller's feed: removed when the last bus dispatching
    /// to this list closes, so that the stream or poller ends.
    feed: bool,
}

#[derive(Default)]
struct Registry {
    /// Copied on write, so dispatch runs on a snapshot without holding the
    /// lock, and handlers may subscribe and unsubscribe.
    entries: RwLock<Arc<Vec<Entry>>>,
    next_id: AtomicU64,
    /// The buses dispatching to this list and not yet closed.
    buses: AtomicU64,
    /// The largest batch of a batch handler subscribed now (0 for none).
    batch_room: AtomicUsize,
}

/// **A list of local subscribers** (zope.event's `subscribers`): handlers
/// for one event type or for every event, called in subscription order by
/// [`notify`](Subscribers::notify) and by a [`Bus`](crate::Bus) for every
/// event it receives.
///
/// [`Subscribers::global`] is the process-wide list; [`Subscribers::new`]
/// makes a scoped one for a test or a library. Clones share the list.
/// Every `subscribe*` returns a [`Subscription`] guard: dropping it
/// unsubscribes.
///
/// A handler returns `()` or a `Result<(), E>`; a handler that fails or
/// panics is reported (logged, and counted in the [`Dispatch`]) and the
/// others still run.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::{Arc, Mutex};
/// use serde::{Deserialize, Serialize};
/// use tidings::{Event, Subscribers};
///
/// #[derive(Event, Serialize, Deserialize, Debug, Clone)]
/// struct UserJoined { name: String }
///
/// let subscribers = Subscribers::new();
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let guard = subscribers.subscribe(move |e: &UserJoined| log.lock().unwrap().push(e.name.clone()));
///
/// let dispatch = subscribers.notify(UserJoined { name: "ada".into() }).await;
/// assert_eq!(dispatch.handled(), 1);
/// assert_eq!(*seen.lock().unwrap(), ["ada"]);
///
/// drop(guard); // unsubscribed
/// assert_eq!(subscribers.notify(UserJoined { name: "bob".into() }).await.handled(), 0);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Subscribers {
    registry: Arc<Registry>,
}

static GLOBAL: LazyLock<Subscribers> = LazyLock::new(Subscribers::new);

impl Subscribers {
    /// A new, empty, scoped list.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// **The process-wide list**, used by every bus not given another.
    #[must_use]
    pub fn global() -> &'static Subscribers {
        &GLOBAL
    }

    /// **Subscribes a handler to events of type `E`.**
    pub fn subscribe<E, R>(&self, handler: impl Fn(&E) -> R + Send + Sync + 'static) -> Subscription
    where
        E: EventType,
        R: HandlerOutput,
    {
        self.subscribe_with(move |event: &E, _: &Context| handler(event))
    }

    /// **Subscribes a handler to events of type `E` that also sees each
    /// event's [`Context`]** (routing key, message id, origin, attempt).
    pub fn subscribe_with<E, R>(
        &self,
        handler: impl Fn(&E, &Context) -> R + Send + Sync + 'static,
    ) -> Subscription
    where
        E: EventType,
        R: HandlerOutput,
    {
        self.add(
            Typed::of::<E>(),
            Arc::new(move |event: &Arc<dyn Event>, context: &Context| {
                Call::Done(match event.as_any().downcast_ref::<E>() {
                    Some(event) => handler(event, context).into_decision(),
                    None => Ok(Decision::Ack),
                })
            }),
        )
    }

    /// **Subscribes an async handler to events of type `E`.** It gets the
    /// event shared and the context by value, so its future can be
    /// `'static`; dispatch awaits it before calling the next handler.
    pub fn subscribe_async<E, F, Fut, R>(&self, handler: F) -> Subscription
    where
        E: EventType,
        F: Fn(Arc<E>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: HandlerOutput + 'static,
    {
        self.add(
            Typed::of::<E>(),
            Arc::new(move |event: &Arc<dyn Event>, context: &Context| {
                match event.clone().into_any_arc().downcast::<E>() {
                    Ok(event) => {
                        let future = handler(event, context.clone());
                        Call::Pending(Box::pin(async move { future.await.into_decision() }))
                    }
                    Err(_) => Call::Done(Ok(Decision::Ack)),
                }
            }),
        )
    }

    /// **Subscribes a handler to batches of events of type `E`** (oslo's
    /// `batch_size` / `batch_timeout`): it gets up to `max` events at once,
    /// or what arrived within `wait` of the first of a batch, in arrival
    /// order, and its outcome settles every delivery of the batch together.
    ///
    /// - **Success** (`()`, `Ok`, [`Decision::Ack`]): each delivery of the
    ///   batch is acknowledged.
    /// - **Failure** (an error or a panic): every delivery of the batch is
    ///   retried, each as its own next attempt with the bus's backoff, and
    ///   dead-lettered after [`max_attempts`](crate::BusBuilder::max_attempts),
    ///   like a failing handler of one event. Retried events come back one
    ///   by one and are batched again with whatever arrives then. A
    ///   [`Decision`] applies to every delivery of the batch alike.
    ///
    /// A bus's listener handles at least `max` deliveries at once while a
    /// batch handler is subscribed (more than its
    /// [`concurrency`](crate::BusBuilder::concurrency)), so that a batch can
    /// fill; the props' `prefetch` must be at least `max` too, or batches
    /// are cut at the prefetch. The handler runs on the task of the
    /// delivery that filled the batch, or, for a batch cut by `wait`, on a
    /// task of its own (where [`Context::current`] is `None`). Under a
    /// [`handler_timeout`](crate::BusBuilder::handler_timeout), the time a
    /// delivery waits for its batch counts.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tidings::Result<()> {
    /// use std::{sync::Arc, time::Duration};
    /// use serde::{Deserialize, Serialize};
    /// use tidings::{Bus, Event, Subscribers};
    ///
    /// #[derive(Event, Serialize, Deserialize, Debug)]
    /// #[event(name = "batch.row")]
    /// struct Row { n: u32 }
    ///
    /// let subscribers = Subscribers::new();
    /// let (sizes, seen) = tokio::sync::mpsc::unbounded_channel();
    /// let _g = subscribers.subscribe_batch(10, Duration::from_millis(50), move |rows: Vec<Arc<Row>>| {
    ///     let sizes = sizes.clone();
    ///     async move { sizes.send(rows.len()).unwrap(); } // one insert of many rows
    /// });
    /// let bus = Bus::builder("memory://batch-doc")?.subscribers(subscribers).connect().await?;
    /// for n in 0..25 {
    ///     bus.publish(&Row { n }).await?;
    /// }
    /// let mut seen = seen;
    /// let mut total = 0;
    /// while total < 25 {
    ///     let size = seen.recv().await.unwrap();
    ///     assert!(size <= 10);
    ///     total += size;
    /// }
    /// bus.close().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    ///
    /// If `max` is zero.
    pub fn subscribe_batch<E, F, Fut, R>(
        &self,
        max: usize,
        wait: std::time::Duration,
        handler: F,
    ) -> Subscription
    where
        E: EventType,
        F: Fn(Vec<Arc<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: HandlerOutput + 'static,
    {
        assert!(max > 0, "a batch holds at least one event");
        let batcher = Batcher::new(
            max,
            wait,
            Box::new(move |events: Vec<Arc<E>>| -> BoxFuture {
                let future = handler(events);
                Box::pin(async move { future.await.into_decision() })
            }),
        );
        let room = batcher.max();
        self.add_entry(
            Typed::of::<E>(),
            Arc::new(move |event: &Arc<dyn Event>, _: &Context| {
                match event.clone().into_any_arc().downcast::<E>() {
                    Ok(event) => Call::Pending(batcher.offer(event)),
                    Err(_) => Call::Done(Ok(Decision::Ack)),
                }
            }),
            false,
            room,
        )
    }

    /// **Subscribes a handler to every event**, whatever its type.
    pub fn subscribe_all<R>(
        &self,
        handler: impl Fn(&dyn Event, &Context) -> R + Send + Sync + 'static,
    ) -> Subscription
    where
        R: HandlerOutput,
    {
        self.add(
            Typed::any(),
            Arc::new(move |event: &Arc<dyn Event>, context: &Context| {
                Call::Done(handler(event.as_ref(), context).into_decision())
            }),
        )
    }

    /// **A stream of the events of type `E`**, buffering at most `capacity`
    /// of them. A stream read too slowly loses the oldest events and is told
    /// how many with an `Err(Lagged)` item; memory never grows without bound.
    ///
    /// The stream ends (`None`, after the events it holds) once every
    /// [`Bus`](crate::Bus) dispatching to these subscribers is closed.
    ///
    /// **At most once.** A delivery is acknowledged as soon as its event is
    /// in the stream's buffer, not when the stream's reader is done with
    /// it: an event lost to lag, or held in the buffer when the process
    /// stops, is not delivered again. For at least once, handle events in a
    /// handler the bus awaits ([`subscribe_async`](Subscribers::subscribe_async),
    /// or [`subscribe_batch`](Subscribers::subscribe_batch)): the delivery is
    /// acknowledged after it returns, and retried when it fails.
    ///
    /// # Panics
    ///
    /// If `capacity` is zero.
    pub fn stream<E: EventType>(&self, capacity: usize) -> EventStream<E> {
        let (sender, receiver) = broadcast::channel(capacity);
        let subscription = self.add_feed(
            Typed::of::<E>(),
            Arc::new(move |event: &Arc<dyn Event>, _: &Context| {
                if let Ok(event) = event.clone().into_any_arc().downcast::<E>() {
                    // No receiver left only means the stream is being dropped.
                    let _ = sender.send(event);
                }
                Call::Done(Ok(Decision::Ack))
            }),
        );
        EventStream {
            inner: BroadcastStream::new(receiver),
            _subscription: subscription,
        }
    }

    /// **A poller of the events of type `E`** for code that is not async
    /// (oslo's `Listener.poll(timeout)`): [`recv_timeout`](Poller::recv_timeout)
    /// blocks for the next one. At most `capacity` events wait; when the
    /// poller is read too slowly, new events are dropped and the next call
    /// reports how many with `Err(Lagged)`. Once every
    /// [`Bus`](crate::Bus) dispatching to these subscribers is closed, it
    /// returns `Ok(None)` at once when empty instead of waiting.
    ///
    /// **At most once**, like [`stream`](Subscribers::stream): a delivery is
    /// acknowledged once its event is in the poller, so an event dropped
    /// because the poller was full, or still in it when the process stops,
    /// is not delivered again. For at least once, use a handler
    /// ([`subscribe`](Subscribers::subscribe) runs on the bus's task and may
    /// block briefly; [`blocking::Bus`](crate::blocking::Bus) runs
    /// subscribers on its own thread), which is acknowledged after it
    /// returns and retried when it fails.
    ///
    /// # Panics
    ///
    /// If `capacity` is zero.
    pub fn poller<E: EventType>(&self, capacity: usize) -> Poller<E> {
        assert!(capacity > 0, "a poller needs a capacity of at least 1");
        let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
        let missed = Arc::new(AtomicU64::new(0));
        let counter = missed.clone();
        let subscription = self.add_feed(
            Typed::of::<E>(),
            Arc::new(move |event: &Arc<dyn Event>, _: &Context| {
                if let Ok(event) = event.clone().into_any_arc().downcast::<E>()
                    && let Err(std::sync::mpsc::TrySendError::Full(_)) = sender.try_send(event)
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Call::Done(Ok(Decision::Ack))
            }),
        );
        Poller {
            receiver,
            missed,
            _subscription: subscription,
        }
    }

    /// **Dispatches an event to the local subscribers**, in subscription
    /// order, awaiting async handlers one after another.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the dispatch between two handlers: those
    /// called already ran, the rest are not called.
    pub async fn notify<E: Event>(&self, event: E) -> Dispatch {
        self.dispatch(&(Arc::new(event) as Arc<dyn Event>), &Context::local())
            .await
    }

    /// **Dispatches an event from code that is not async**, blocking the
    /// thread until every handler ran; otherwise as
    /// [`notify`](Subscribers::notify). Async handlers are polled on this
    /// thread, without a Tokio runtime: one that needs Tokio (a timer, a
    /// socket) fails, counted in the [`Dispatch`]. Do not call it from
    /// async code, where it would block the runtime's thread; use
    /// `notify(..).await` there.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use tidings::{Event, Subscribers};
    ///
    /// #[derive(Event, Serialize, Deserialize, Debug)]
    /// struct Saved { id: u32 }
    ///
    /// let subscribers = Subscribers::new();
    /// let _g = subscribers.subscribe(|s: &Saved| println!("saved {}", s.id));
    /// assert_eq!(subscribers.notify_blocking(Saved { id: 7 }).handled(), 1);
    /// ```
    pub fn notify_blocking<E: Event>(&self, event: E) -> Dispatch {
        block_on(self.notify(event))
    }

    /// How many handlers are subscribed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no handler is subscribed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) async fn dispatch(&self, event: &Arc<dyn Event>, context: &Context) -> Dispatch {
        let entries = self.snapshot();
        let type_id = event.as_any().type_id();
        let mut dispatch = Dispatch::default();
        for entry in entries
            .iter()
            .filter(|e| e.type_id.is_none_or(|t| t == type_id))
        {
            let outcome = match catch_unwind(AssertUnwindSafe(|| (entry.handler)(event, context))) {
                Ok(Call::Done(result)) => result.map_err(Failure::Error),
                Ok(Call::Pending(future)) => handler_call::outcome(future).await,
                Err(panic) => Err(Failure::Panic(panic_text(panic))),
            };
            dispatch.handled += 1;
            let outcome = match outcome {
                Ok(decision) => {
                    dispatch.decision = std::mem::take(&mut dispatch.decision).and(decision);
                    Ok(())
                }
                Err(failure) => Err(failure),
            };
            if let Err(failure) = outcome {
                match &failure {
                    Failure::Error(e) => {
                        warn!(tag = event.tag(), message_id = %crate::bus::text::bounded(context.message_id().unwrap_or("")), attempt = context.attempt(), error = %e, "event handler failed");
                    }
                    Failure::Panic(message) => {
                        error!(tag = event.tag(), message_id = %crate::bus::text::bounded(context.message_id().unwrap_or("")), attempt = context.attempt(), panic = %message, "event handler panicked");
                    }
                }
                dispatch.failures.push(failure.to_string());
            }
        }
        dispatch
    }

    fn snapshot(&self) -> Arc<Vec<Entry>> {
        let entries = self
            .registry
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner());
        entries.clone()
    }

    fn add(&self, typed: Typed, handler: Arc<ErasedHandler>) -> Subscription {
        self.add_entry(typed, handler, false, 0)
    }

    fn add_feed(&self, typed: Typed, handler: Arc<ErasedHandler>) -> Subscription {
        self.add_entry(typed, handler, true, 0)
    }

    /// **The routing keys of the types subscribed to**, sorted, each once;
    /// `None` when nothing is subscribed or a handler takes every event
    /// ([`subscribe_all`](Subscribers::subscribe_all)).
    pub(crate) fn routing_keys(&self) -> Option<Vec<&'static str>> {
        let entries = self.snapshot();
        let mut keys: Vec<&'static str> = entries
            .iter()
            .map(|e| e.routing_key)
            .collect::<Option<_>>()?;
        keys.sort_unstable();
        keys.dedup();
        (!keys.is_empty()).then_some(keys)
    }

    /// The largest batch of a batch handler subscribed now; 0 for none. A
    /// listener handles at least this many deliveries at once, so that a
    /// batch can fill.
    pub(crate) fn batch_room(&self) -> usize {
        self.registry.batch_room.load(Ordering::Relaxed)
    }

    /// A bus dispatching to this list connected.
    pub(crate) fn attach(&self) {
        self.registry.buses.fetch_add(1, Ordering::SeqCst);
    }

    /// A bus dispatching to this list closed (or was dropped): when it was
    /// the last one, every stream and poller ends, after what it holds.
    pub(crate) fn detach(&self) {
        if self.registry.buses.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let mut entries = self
            .registry
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if entries.iter().any(|e| e.feed) {
            let kept: Vec<Entry> = entries.iter().filter(|e| !e.feed).cloned().collect();
            self.registry.set_entries(&mut entries, kept);
        }
    }

    fn add_entry(
        &self,
        typed: Typed,
        handler: Arc<ErasedHandler>,
        feed: bool,
        batch: usize,
    ) -> Subscription {
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        let mut entries = self
            .registry
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::clone(&entries);
        next.push(Entry {
            id,
            type_id: typed.type_id,
            routing_key: typed.routing_key,
            batch,
            handler,
            feed,
        });
        self.registry.set_entries(&mut entries, next);
        Subscription {
            registry: Arc::downgrade(&self.registry),
            id,
        }
    }
}

impl Registry {
    /// Replaces the entries (under their write lock) and what is derived
    /// from them.
    fn set_entries(&self, entries: &mut Arc<Vec<Entry>>, next: Vec<Entry>) {
        let room = next.iter().map(|e| e.batch).max().unwrap_or(0);
        self.batch_room.store(room, Ordering::Relaxed);
        *entries = Arc::new(next);
    }
}

/// Which events a subscription takes: of one type (with its routing key),
/// or all.
struct Typed {
    type_id: Option<TypeId>,
    routing_key: Option<&'static str>,
}

impl Typed {
    fn of<E: EventType>() -> Self {
        Self {
            type_id: Some(TypeId::of::<E>()),
            routing_key: Some(E::ROUTING_KEY),
        }
    }

    fn any() -> Self {
        Self {
            type_id: None,
            routing_key: None,
        }
    }
}

impl fmt::Debug for Subscribers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscribers")
            .field("handlers", &self.len())
            .finish()
    }
}

/// **A subscription; dropping it unsubscribes** the handler.
#[must_use = "dropping a Subscription unsubscribes at once; keep it, or call forget()"]
pub struct Subscription {
    registry: Weak<Registry>,
    id: u64,
}

impl Subscription {
    /// Keeps the handler subscribed for as long as its list lives.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let mut entries = registry.entries.write().unwrap_or_else(|p| p.into_inner());
        let next: Vec<Entry> = entries
            .iter()
            .filter(|e| e.id != self.id)
            .cloned()
            .collect();
        registry.set_entries(&mut entries, next);
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

/// **The outcome of dispatching one event** to the local subscribers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dispatch {
    handled: usize,
    failures: Vec<String>,
    decision: Decision,
}

impl Dispatch {
    /// How many handlers were called.
    #[must_use]
    pub fn handled(&self) -> usize {
        self.handled
    }

    /// What each failing or panicking handler said, in call order.
    #[must_use]
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Whether every handler called succeeded (returned no error and did
    /// not panic, whatever it decided).
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// **What the handlers that succeeded decided together**: the
    /// strictest (see [`Decision`]); [`Decision::Ack`] when every one
    /// returned `()` or `Ok(())`.
    #[must_use]
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

/// Runs a future to its end on this thread, parking it while the future
/// waits.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// **A bounded stream of the events of one type**, made by
/// [`Subscribers::stream`]; dropping it unsubscribes.
///
/// Items are `Ok(event)`, or `Err(Lagged)` when the stream fell behind and
/// the oldest events were dropped.
///
/// # Cancel safety
///
/// `next()` is cancel safe: an event not yet returned stays in the buffer.
pub struct EventStream<E> {
    inner: BroadcastStream<Arc<E>>,
    _subscription: Subscription,
}

/// **Events a lagging [`EventStream`] lost**: it was read too slowly and the
/// buffer overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event stream lagged behind and lost {0} events; read faster or give it a larger capacity")]
pub struct Lagged(pub u64);

impl<E: EventType> Stream for EventStream<E> {
    type Item = Result<Arc<E>, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|result| result.map_err(|BroadcastStreamRecvError::Lagged(n)| Lagged(n)))
        })
    }
}

impl<E> fmt::Debug for EventStream<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

/// **A blocking, bounded receiver of the events of one type**, made by
/// [`Subscribers::poller`]; dropping it unsubscribes.
pub struct Poller<E> {
    receiver: std::sync::mpsc::Receiver<Arc<E>>,
    missed: Arc<AtomicU64>,
    _subscription: Subscription,
}

impl<E> Poller<E> {
    /// **Waits up to `timeout` for the next event**; `Ok(None)` when none
    /// came in time.
    ///
    /// # Errors
    ///
    /// [`Lagged`] with the number of events dropped since the last call,
    /// because the poller was full; the next call goes on receiving.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Result<Option<Arc<E>>, Lagged> {
        match self.missed.swap(0, Ordering::Relaxed) {
            0 => Ok(self.receiver.recv_timeout(timeout).ok()),
            missed => Err(Lagged(missed)),
        }
    }
}

impl<E> fmt::Debug for Poller<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}
