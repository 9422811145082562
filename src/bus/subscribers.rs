//! Local subscriber lists: typed and untyped, sync and async handlers,
//! bounded streams, and `notify`.

use std::any::TypeId;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock, Weak};
use std::task::{Context as TaskContext, Poll};

use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tracing::{error, warn};

use crate::bus::context::Context;
pub use crate::error::HandlerError;
use crate::event::{Event, EventType};

/// **What a handler returns**: `()` (it cannot fail) or `Result<(), E>`.
pub trait HandlerOutput {
    /// The outcome as a `Result`.
    ///
    /// # Errors
    ///
    /// The handler's own error.
    fn into_result(self) -> Result<(), HandlerError>;
}

impl HandlerOutput for () {
    fn into_result(self) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl<E: Into<HandlerError>> HandlerOutput for Result<(), E> {
    fn into_result(self) -> Result<(), HandlerError> {
        self.map_err(Into::into)
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// One handler call: finished already, or a future to await.
enum Call {
    Done(Result<(), HandlerError>),
    Pending(BoxFuture),
}

type ErasedHandler = dyn Fn(&Arc<dyn Event>, &Context) -> Call + Send + Sync;

#[derive(Clone)]
struct Entry {
    id: u64,
    /// `None` for a subscription to every event.
    type_id: Option<TypeId>,
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
            Some(TypeId::of::<E>()),
            Arc::new(move |event: &Arc<dyn Event>, context: &Context| {
                Call::Done(match event.as_any().downcast_ref::<E>() {
                    Some(event) => handler(event, context).into_result(),
                    None => Ok(()),
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
            Some(TypeId::of::<E>()),
            Arc::new(move |event: &Arc<dyn Event>, context: &Context| {
                match event.clone().into_any_arc().downcast::<E>() {
                    Ok(event) => {
                        let future = handler(event, context.clone());
                        Call::Pending(Box::pin(async move { future.await.into_result() }))
                    }
                    Err(_) => Call::Done(Ok(())),
                }
            }),
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
            None,
            Arc::new(move |event: &Arc<dyn Event>, context: &Context| {
                Call::Done(handler(event.as_ref(), context).into_result())
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
    /// # Panics
    ///
    /// If `capacity` is zero.
    pub fn stream<E: EventType>(&self, capacity: usize) -> EventStream<E> {
        let (sender, receiver) = broadcast::channel(capacity);
        let subscription = self.add_feed(
            Some(TypeId::of::<E>()),
            Arc::new(move |event: &Arc<dyn Event>, _: &Context| {
                if let Ok(event) = event.clone().into_any_arc().downcast::<E>() {
                    // No receiver left only means the stream is being dropped.
                    let _ = sender.send(event);
                }
                Call::Done(Ok(()))
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
    /// # Panics
    ///
    /// If `capacity` is zero.
    pub fn poller<E: EventType>(&self, capacity: usize) -> Poller<E> {
        assert!(capacity > 0, "a poller needs a capacity of at least 1");
        let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
        let missed = Arc::new(AtomicU64::new(0));
        let counter = missed.clone();
        let subscription = self.add_feed(
            Some(TypeId::of::<E>()),
            Arc::new(move |event: &Arc<dyn Event>, _: &Context| {
                if let Ok(event) = event.clone().into_any_arc().downcast::<E>()
                    && let Err(std::sync::mpsc::TrySendError::Full(_)) = sender.try_send(event)
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Call::Done(Ok(()))
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
                Ok(Call::Pending(future)) => CatchUnwind(future).await,
                Err(panic) => Err(Failure::Panic(panic_text(panic))),
            };
            dispatch.handled += 1;
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

    fn add(&self, type_id: Option<TypeId>, handler: Arc<ErasedHandler>) -> Subscription {
        self.add_entry(type_id, handler, false)
    }

    fn add_feed(&self, type_id: Option<TypeId>, handler: Arc<ErasedHandler>) -> Subscription {
        self.add_entry(type_id, handler, true)
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
            *entries = Arc::new(kept);
        }
    }

    fn add_entry(
        &self,
        type_id: Option<TypeId>,
        handler: Arc<ErasedHandler>,
        feed: bool,
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
            type_id,
            handler,
            feed,
        });
        *entries = Arc::new(next);
        Subscription {
            registry: Arc::downgrade(&self.registry),
            id,
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
        *entries = Arc::new(next);
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

    /// Whether every handler called succeeded.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

enum Failure {
    Error(HandlerError),
    Panic(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(e) => write!(f, "handler failed: {e}"),
            Self::Panic(message) => write!(f, "handler panicked: {message}"),
        }
    }
}

/// Polls an async handler, turning a panic into a failure.
struct CatchUnwind(BoxFuture);

impl Future for CatchUnwind {
    type Output = Result<(), Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(Poll::Ready(result)) => Poll::Ready(result.map_err(Failure::Error)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(Failure::Panic(panic_text(panic)))),
        }
    }
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    crate::amqp::consumer_thread::panic_message(&*panic).to_owned()
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
