//! Servers: handlers of one request type that reply to each call.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, debug_span, warn};

use crate::bus::call::{Request, service_queue};
use crate::bus::context::Context;
use crate::bus::listener::Shared;
use crate::bus::publish_options::PublishOptions;
use crate::bus::text::bounded;
use crate::bus::{Bus, closed};
use crate::error::Result;
use crate::event::EventType;
use crate::headers::{REPLY_ERROR_HEADER, REPLY_ERROR_TYPE_HEADER};
use crate::transport::listen::Listen;
use crate::transport::seam::{Inbox, Outgoing, Received};

/// **How to serve a request type**: by name, shared or not, how many at
/// once.
///
/// ```
/// // Takes its share of the calls, and those addressed to "pricing-1".
/// let options = tidings::ServeOptions::new().name("pricing-1").concurrency(8);
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    name: Option<String>,
    shared: bool,
    concurrency: usize,
    expose_panics: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            name: None,
            shared: true,
            concurrency: 64,
            expose_panics: false,
        }
    }
}

impl ServeOptions {
    /// The defaults: shared with the other servers of the type, no name,
    /// 64 requests at once, panics reported without their message.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Names this server: calls with
    /// [`CallOptions::server`](crate::CallOptions::server) of this name come
    /// to it (and to any other server of the same name) only.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether this server also takes its share of the calls to any server
    /// of the type (default `true`). Off, a named server answers only calls
    /// addressed to its name.
    #[must_use]
    pub fn shared(mut self, on: bool) -> Self {
        self.shared = on;
        self
    }

    /// How many requests are handled at once (default 64, at least 1).
    #[must_use]
    pub fn concurrency(mut self, requests: usize) -> Self {
        self.concurrency = requests.max(1);
        self
    }

    /// Whether a caller learns what a panicking handler's panic said
    /// (default `false`: only that it panicked, which leaks nothing).
    #[must_use]
    pub fn expose_panics(mut self, on: bool) -> Self {
        self.expose_panics = on;
        self
    }
}

type Handler<R> =
    Arc<dyn Fn(Arc<R>) -> handler_future::Boxed<<R as Request>::Reply> + Send + Sync + 'static>;

/// Boxed handler futures, and running one on the server's task with its
/// panics caught (no task of its own per request).
mod handler_future {
    use std::any::Any;
    use std::future::Future;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// The reply, or the error's message and type.
    pub(super) type Outcome<T> = Result<T, (String, &'static str)>;

    /// What a type-erased handler returns.
    pub(super) type Boxed<T> = Pin<Box<dyn Future<Output = Outcome<T>> + Send>>;

    pub(super) fn boxed<T, F>(future: F) -> Boxed<T>
    where
        F: Future<Output = Outcome<T>> + Send + 'static,
    {
        Box::pin(future)
    }

    /// Calls a handler and polls its future, a panic in either becoming
    /// `Err` with its payload.
    pub(super) struct CatchPanic<T> {
        future: Option<Boxed<T>>,
    }

    impl<T> CatchPanic<T> {
        pub(super) fn call(start: impl FnOnce() -> Boxed<T>) -> Result<Self, Box<dyn Any + Send>> {
            catch_unwind(AssertUnwindSafe(start)).map(|future| Self {
                future: Some(future),
            })
        }
    }

    impl<T> Future for CatchPanic<T> {
        type Output = Result<Outcome<T>, Box<dyn Any + Send>>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let Some(future) = self.future.as_mut() else {
                return Poll::Pending;
            };
            match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                Ok(Poll::Ready(outcome)) => Poll::Ready(Ok(outcome)),
                Ok(Poll::Pending) => Poll::Pending,
                Err(panic) => {
                    self.future = None;
                    Poll::Ready(Err(panic))
                }
            }
        }
    }
}

/// **A running server** of one request type, from [`Bus::serve`]. It
/// serves until [`stop`](Server::stop) or the bus is closed; dropping the
/// handle does not stop it.
#[derive(Clone)]
pub struct Server {
    state: Arc<State>,
}

struct State {
    queues: Vec<String>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Server {
    /// The queues it consumes: the shared one of its type, its name's.
    #[must_use]
    pub fn queues(&self) -> &[String] {
        &self.state.queues
    }

    /// **Stops serving**: takes no more requests, lets the running
    /// handlers finish and reply, and cancels its consumers (a queue no
    /// server consumes any more is deleted, so calls then fail at once
    /// with [`ErrorKind::NoResponder`](crate::ErrorKind::NoResponder)).
    /// Safe to call twice.
    pub async fn stop(&self) {
        self.state.stop.send_replace(true);
        let tasks =
            std::mem::take(&mut *self.state.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    pub(crate) fn request_stop(&self) {
        self.state.stop.send_replace(true);
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("queues", &self.state.queues)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// **Serves a request type**: each call ([`Bus::call`]) to it runs
    /// `handler`, and what it returns goes back to the caller: the reply,
    /// or the error's message and type as an
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) error. A panic is
    /// reported as `"panic"` without its message (see
    /// [`ServeOptions::expose_panics`]). The servers of one type share its
    /// queue: each call is handled by one of them.
    ///
    /// Inside the handler, [`Context::current`] is the request's.
    ///
    /// # Examples
    ///
    /// See [`Bus::call`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) on a closed bus; the
    /// broker's refusal of the queue.
    pub async fn serve<R, F, Fut, E>(&self, handler: F) -> Result<Server>
    where
        R: Request,
        F: Fn(Arc<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R::Reply, E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        self.serve_with(ServeOptions::new(), handler).await
    }

    /// **Serves a request type with options**: by name, not shared, how
    /// many at once (see [`ServeOptions`]).
    ///
    /// # Errors
    ///
    /// As [`serve`](Bus::serve).
    pub async fn serve_with<R, F, Fut, E>(
        &self,
        options: ServeOptions,
        handler: F,
    ) -> Result<Server>
    where
        R: Request,
        F: Fn(Arc<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R::Reply, E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        let inner = &*self.inner;
        if inner.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(closed());
        }
        let exchange = inner.transport.exchange();
        let mut queues = Vec::new();
        if options.shared || options.name.is_none() {
            queues.push(service_queue(exchange, R::TAG, None));
        }
        if let Some(name) = &options.name {
            queues.push(service_queue(exchange, R::TAG, Some(name)));
        }
        let mut inboxes = Vec::new();
        for queue in &queues {
            let inbox = inner
                .transport
                .listen(&Listen::service(queue.clone()))
                .await;
            match inbox {
                Ok(inbox) => inboxes.push(inbox),
                Err(e) => {
                    for inbox in inboxes {
                        let _ = inbox.close(false).await;
                    }
                    return Err(e);
                }
            }
        }
        let handler: Handler<R> = Arc::new(move |request: Arc<R>| {
            let future = handler(request);
            handler_future::boxed(async move {
                future
                    .await
                    .map_err(|e| (e.to_string(), std::any::type_name::<E>()))
            })
        });
        let (stop, stopped) = watch::channel(false);
        let serving = Arc::new(Serving {
            bus: Arc::downgrade(&self.inner),
            shared: inner.shared.clone(),
            handler,
            expose_panics: options.expose_panics,
        });
        let tasks = inboxes
            .into_iter()
            .map(|inbox| {
                let span = debug_span!("serve", tag = R::TAG, queue = %inbox.queue());
                tokio::spawn(
                    serving
                        .clone()
                        .run(inbox, stopped.clone(), options.concurrency)
                        .instrument(span),
                )
            })
            .collect();
        let server = Server {
            state: Arc::new(State {
                queues,
                stop,
                tasks: Mutex::new(tasks),
            }),
        };
        inner
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(server.clone());
        debug!(tag = R::TAG, queues = ?server.queues(), "serving");
        Ok(server)
    }
}

struct Serving<R: Request> {
    /// Weak: a bus dropped without `close` stops its servers.
    bus: std::sync::Weak<crate::bus::Inner>,
    shared: Arc<Shared>,
    handler: Handler<R>,
    expose_panics: bool,
}

impl<R: Request> Serving<R> {
    async fn run(
        self: Arc<Self>,
        mut inbox: Box<dyn Inbox>,
        mut stopped: watch::Receiver<bool>,
        concurrency: usize,
    ) {
        let mut running = JoinSet::new();
        let queue: Arc<str> = inbox.queue().into();
        loop {
            while running.len() >= concurrency {
                running.join_next().await;
            }
            let next = tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => break,
                next = inbox.next() => next,
            };
            let Some(incoming) = next else { break };
            let serving = self.clone();
            let queue = queue.clone();
            // Shared with the handler's `Context`, which reads it when asked.
            let incoming: Arc<dyn Received> = incoming.into();
            running.spawn(async move {
                serving.handle(&incoming, &queue).await;
                if let Err(e) = incoming.ack().await {
                    debug!(error = %e, "acknowledging a request failed");
                }
            });
        }
        while running.join_next().await.is_some() {}
        if let Err(e) = inbox.close(false).await {
            debug!(error = %e, "closing a server's queue failed");
        }
    }

    /// Handles one request and replies.
    async fn handle(&self, delivery: &Arc<dyn Received>, queue: &Arc<str>) {
        let incoming: &dyn Received = &**delivery;
        let (Some(reply_to), Some(correlation_id)) =
            (incoming.reply_to(), incoming.correlation_id())
        else {
            warn!(queue = %queue, "a message without reply-to or correlation id came to a server's queue; dropped");
            return;
        };
        // As for events: nothing unauthenticated is decoded (a request is
        // not retried, so no allowance past the window).
        let verified = match &self.shared.signing {
            Some(signing) => signing.verify(incoming, Duration::ZERO),
            None => Ok(()),
        };
        let decoded = match verified {
            Ok(()) => {
                self.shared
                    .decoder
                    .decode(incoming, &self.shared.counters, &*self.shared.transport)
                    .await
            }
            Err(refusal) => {
                self.shared.counters.reject(refusal.0);
                Err(refusal)
            }
        };
        let outcome = match decoded {
            Err((reason, detail)) => Err((
                format!(
                    "the server could not decode the request ({reason}: {})",
                    bounded(&detail)
                ),
                "decode",
            )),
            Ok(event) => match event.into_any_arc().downcast::<R>() {
                Err(_) => Err((
                    format!("the server's queue for {} got another type", R::TAG),
                    "decode",
                )),
                Ok(request) => {
                    let context = Context::remote(delivery.clone(), queue);
                    // On this task, inside the request's context.
                    let handling = context
                        .scope(async {
                            match handler_future::CatchPanic::call(|| (self.handler)(request)) {
                                Ok(handling) => handling.await,
                                Err(panic) => Err(panic),
                            }
                        })
                        .await;
                    match handling {
                        Ok(outcome) => outcome,
                        Err(payload) => {
                            let said = payload
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| payload.downcast_ref::<String>().cloned());
                            warn!(tag = R::TAG, panic = %said.as_deref().unwrap_or("?"), "a server's handler panicked");
                            let message = match (self.expose_panics, said) {
                                (true, Some(said)) => format!("the handler panicked: {said}"),
                                _ => "the handler panicked".to_owned(),
                            };
                            Err((message, "panic"))
                        }
                    }
                }
            },
        };
        let Some(inner) = self.bus.upgrade() else {
            return;
        };
        let bus = Bus { inner };
        let out = match outcome {
            Ok(reply) => bus.prepare(&reply, None, &PublishOptions::new()),
            Err((message, kind)) => {
                debug!(tag = R::TAG, error = %message, "the server failed a request");
                error_reply::<R>(&bus, &message, kind)
            }
        };
        let mut out = match out {
            Ok((out, _)) => out,
            Err(e) => match error_reply::<R>(
                &bus,
                &format!("the reply could not be encoded: {e}"),
                "encode",
            ) {
                Ok((out, _)) => out,
                Err(e) => {
                    warn!(error = %e, "a reply could not be sent");
                    return;
                }
            },
        };
        out.to_queue = Some(reply_to.to_owned());
        out.correlation_id = Some(correlation_id.to_owned());
        if let Err(e) = self.shared.transport.reply(out).await {
            warn!(error = %e, "a reply could not be sent");
        }
    }
}

/// A reply that says the server failed: an empty body, and why.
fn error_reply<R: Request>(
    bus: &Bus,
    message: &str,
    kind: &str,
) -> Result<(Outgoing, tracing::Span)> {
    let mut out = bus.bare(R::Reply::TAG, R::Reply::ROUTING_KEY);
    out.headers.push((
        Cow::Borrowed(REPLY_ERROR_HEADER),
        bounded(message).into_owned(),
    ));
    out.headers
        .push((Cow::Borrowed(REPLY_ERROR_TYPE_HEADER), kind.to_owned()));
    Ok((out, tracing::Span::none()))
}
