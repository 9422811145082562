//! Calls: a typed request sent to the servers of its type (or one named
//! server), and its typed reply awaited with a timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{Instrument, debug};

use crate::bus::publish_options::PublishOptions;
use crate::bus::{Bus, text::bounded};
use crate::error::{Error, ErrorKind, Result};
use crate::event::EventType;
use crate::headers::{REPLY_ERROR_HEADER, REPLY_ERROR_TYPE_HEADER};
use crate::transport::seam::{Header, Received};

/// How long a call waits for its reply unless told otherwise.
pub(crate) const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// **A request type**: an event that a server answers with a reply of type
/// [`Reply`](Request::Reply), through [`Bus::call`] and [`Bus::serve`].
/// Both are events (`#[derive(Event)]`): they go through the same codecs,
/// registry and schema checks as any other.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::{Event, Request};
///
/// #[derive(Event, Serialize, Deserialize, Debug)]
/// #[event(name = "doc.request.get_price")]
/// struct GetPrice { sku: String }
///
/// #[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
/// #[event(name = "doc.request.price")]
/// struct Price { cents: u64 }
///
/// impl Request for GetPrice {
///     type Reply = Price;
///     // Asking twice is harmless: retried once after a lost connection.
///     const IDEMPOTENT: bool = true;
/// }
/// ```
pub trait Request: EventType {
    /// What the server answers.
    type Reply: EventType;
    /// Whether handling the request twice is harmless: a call whose
    /// connection is lost before the reply came is then sent again (within
    /// its timeout) instead of failing with
    /// [`ErrorKind::ConnectionLost`]. Default `false`.
    const IDEMPOTENT: bool = false;
}

/// **How to make one call**: its timeout, and which server.
///
/// ```
/// use std::time::Duration;
/// let options = tidings::CallOptions::new()
///     .timeout(Duration::from_millis(500))
///     .server("pricing-1");
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    timeout: Option<Duration>,
    server: Option<String>,
}

impl CallOptions {
    /// The defaults: the bus's call timeout, any server of the type.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits at most this long for the reply (default: the bus's
    /// [`call_timeout`](crate::BusBuilder::call_timeout), 10 s). The
    /// request is discarded unhandled if no server took it by then.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request to the server of this name only (oslo's
    /// `Target(server=..)`; see [`ServeOptions::name`](crate::ServeOptions::name)).
    #[must_use]
    pub fn server(mut self, name: impl Into<String>) -> Self {
        self.server = Some(name.into());
        self
    }
}

/// The queue of the servers of request type `tag` on `exchange`, or of the
/// one named `server`.
pub(crate) fn service_queue(exchange: &str, tag: &str, server: Option<&str>) -> String {
    match server {
        Some(server) => format!("{exchange}.rpc.{tag}.{server}"),
        None => format!("{exchange}.rpc.{tag}"),
    }
}

impl Bus {
    /// **Calls a server**: sends `request` to one of the servers of its type
    /// ([`Bus::serve`]) and returns its reply, waiting at most the bus's
    /// [call timeout](crate::BusBuilder::call_timeout). On RabbitMQ the
    /// reply comes by direct reply-to, matched by correlation id: any
    /// number of calls may be in flight on one bus.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tidings::Result<()> {
    /// use serde::{Deserialize, Serialize};
    /// use tidings::{Bus, Event, Request};
    ///
    /// #[derive(Event, Serialize, Deserialize, Debug)]
    /// #[event(name = "doc.call.add")]
    /// struct Add { a: i64, b: i64 }
    ///
    /// #[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
    /// #[event(name = "doc.call.sum")]
    /// struct Sum(i64);
    ///
    /// impl Request for Add { type Reply = Sum; }
    ///
    /// let bus = Bus::builder("memory://doc-call")?.publish_only().connect().await?;
    /// let _server = bus
    ///     .serve(|add: std::sync::Arc<Add>| async move { Ok::<_, std::io::Error>(Sum(add.a + add.b)) })
    ///     .await?;
    /// assert_eq!(bus.call(&Add { a: 2, b: 3 }).await?, Sum(5));
    /// bus.close().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::NoResponder`] at once when no server of the type (or
    ///   of that name) runs;
    /// - [`ErrorKind::Remote`] when the server's handler failed: its
    ///   message, and [`Error::remote_type`];
    /// - [`ErrorKind::Timeout`] when no reply came in time (a reply that
    ///   comes later is dropped and counted in
    ///   [`Stats::late_replies`](crate::Stats::late_replies));
    /// - [`ErrorKind::ConnectionLost`] when the connection was lost before
    ///   the reply came (unless the request is
    ///   [idempotent](Request::IDEMPOTENT), then it is sent again);
    /// - [`ErrorKind::Decode`] when the reply cannot be decoded (the server
    ///   did handle the request);
    /// - [`ErrorKind::Encode`], [`ErrorKind::Closed`] as for publishing.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the call: a reply that comes after is
    /// dropped and counted as late. A request already sent may still be
    /// handled by a server.
    pub async fn call<R: Request>(&self, request: &R) -> Result<R::Reply> {
        self.call_with(request, &CallOptions::new()).await
    }

    /// **Calls a server with options**: a timeout, a server by name (see
    /// [`CallOptions`]).
    ///
    /// # Errors
    ///
    /// As [`call`](Bus::call).
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Bus::call).
    pub async fn call_with<R: Request>(
        &self,
        request: &R,
        options: &CallOptions,
    ) -> Result<R::Reply> {
        let timeout = options.timeout.unwrap_or(self.inner.call_timeout);
        let queue = service_queue(
            self.inner.transport.exchange(),
            R::TAG,
            options.server.as_deref(),
        );
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.call_once::<R>(request, &queue, timeout))
                .await
            {
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "no reply to {} within {timeout:?}; the server is slow or stuck (a reply that comes later is dropped); raise the timeout with CallOptions::timeout",
                            R::TAG
                        ),
                    ));
                }
                Ok(Err(e)) if e.kind() == ErrorKind::ConnectionLost && R::IDEMPOTENT => {
                    debug!(tag = R::TAG, error = %e, "the connection was lost during an idempotent call; sending it again");
                }
                Ok(reply) => return reply,
            }
        }
    }

    async fn call_once<R: Request>(
        &self,
        request: &R,
        queue: &str,
        timeout: Duration,
    ) -> Result<R::Reply> {
        let inner = &*self.inner;
        let (out, span) = self.prepare(request, Some(queue.to_owned()), &PublishOptions::new())?;
        let transport = inner.transport.clone();
        async move {
            let mut replies = match transport.request(out, Some(timeout)).await {
                Ok(replies) => replies,
                Err(e) => return Err(no_responder::<R>(e, queue)),
            };
            let reply = replies
                .next()
                .await
                .map_err(|e| no_responder::<R>(e, queue))?;
            self.read_reply::<R>(&*reply).await
        }
        .instrument(span)
        .await
    }

    /// The typed reply in `reply`, or the server's error.
    async fn read_reply<R: Request>(&self, reply: &dyn Received) -> Result<R::Reply> {
        if let Header::Text(message) = reply.header(REPLY_ERROR_HEADER) {
            let kind = match reply.header(REPLY_ERROR_TYPE_HEADER) {
                Header::Text(kind) => kind,
                _ => "unknown",
            };
            return Err(Error::remote(
                format!("the server failed to handle {}: {message}", R::TAG),
                kind,
            ));
        }
        let shared = &self.inner.shared;
        let event = shared
            .decoder
            .decode(reply, &shared.counters, &*shared.transport)
            .await
            .map_err(|(reason, detail)| {
                Error::new(
                    ErrorKind::Decode,
                    format!(
                        "the reply to {} could not be decoded ({reason}: {}); the server handled the request, so check that both sides have compatible versions of {}",
                        R::TAG,
                        bounded(&detail),
                        R::Reply::TAG
                    ),
                )
            })?;
        let found = event.tag();
        let reply = event.into_any_arc().downcast::<R::Reply>().map_err(|_| {
            Error::new(
                ErrorKind::Decode,
                format!(
                    "the reply to {} is a {found}, not the {} it declares; the server handled the request",
                    R::TAG,
                    R::Reply::TAG
                ),
            )
        })?;
        Arc::try_unwrap(reply).map_err(|_| {
            Error::new(
                ErrorKind::Decode,
                "the decoded reply was shared; this is a bug in tidings",
            )
        })
    }
}

/// A request no queue took means no server.
fn no_responder<R: Request>(e: Error, queue: &str) -> Error {
    if e.kind() == ErrorKind::Unroutable {
        Error::new(
            ErrorKind::NoResponder,
            format!(
                "no server for {} (queue {queue:?}); start one with Bus::serve, or check the server's name",
                R::TAG
            ),
        )
    } else {
        e
    }
}
