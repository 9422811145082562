//! `ConsumerThread`: a consumer with a callback, on an OS thread of its own.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::watch;
use tokio_stream::StreamExt;
use tracing::{Instrument, error, info_span, warn};

use crate::Connection;
use crate::amqp::delivery::Delivery;
use crate::amqp::props::AmqpProps;
use crate::amqp::queue::Queue;
use crate::error::HandlerError;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::BlockingRuntime;

/// **A consumer that runs a callback on its own OS thread** (zamqp's
/// `AMQPThread(AMQPConsumer(queue, props, callback))`), for code that is not
/// async.
///
/// The thread has its own Tokio runtime and its own connection. Each delivery
/// is passed to the callback; when it returns `Ok` the delivery is
/// acknowledged, when it returns `Err` or panics the delivery is rejected
/// (dropped, or dead-lettered if the queue has a dead-letter exchange) and
/// the failure is logged. Either way the thread goes on with the next one.
///
/// [`stop`](ConsumerThread::stop) lets the current callback finish, cancels
/// the consumer, closes the connection and joins the thread;
/// [`join`](ConsumerThread::join) waits for the thread to end on its own
/// (when the connection is lost). Dropping the handle stops the thread.
///
/// # Examples
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
/// use tidings::{AmqpProps, ConsumerThread, Queue, blocking};
///
/// let props = AmqpProps::from_env()?.with_exchange("doc.thread", tidings::ExchangeKind::Fanout);
/// let (tx, rx) = mpsc::channel();
/// let thread = ConsumerThread::spawn(&props, Queue::exclusive(), move |delivery| {
///     tx.send(delivery.decode::<u32>()?)?;
///     Ok(())
/// })?;
///
/// blocking::Producer::connect(&props)?.publish(&7u32)?;
/// assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
/// thread.stop()?;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// #     let conn = tidings::Connection::connect(&props).await?;
/// #     conn.delete_exchange("doc.thread").await?;
/// #     conn.close().await
/// # })?;
/// # Ok::<(), tidings::Error>(())
/// ```
pub struct ConsumerThread {
    queue: String,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl ConsumerThread {
    /// **Starts the thread**: connects, declares and binds `queue`, starts
    /// consuming, and returns once deliveries can flow.
    ///
    /// # Errors
    ///
    /// As [`Connection::consumer`]: the set-up error is returned here and no
    /// thread is left running.
    pub fn spawn<F>(props: &AmqpProps, queue: Queue, callback: F) -> Result<Self>
    where
        F: FnMut(&Delivery) -> Result<(), HandlerError> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let (ready_tx, ready_rx) = mpsc::channel();
        let props = props.clone();
        let thread = std::thread::Builder::new()
            .name("tidings-consumer".to_owned())
            .spawn(move || run(props, queue, callback, stopped, ready_tx))
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Usage,
                    format!("cannot spawn the consumer thread: {e}"),
                    e,
                )
            })?;
        match ready_rx.recv() {
            Ok(Ok(queue)) => Ok(Self {
                queue,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(join_error(thread.join())),
        }
    }

    /// The name of the queue consumed.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Whether the thread has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// **Stops the thread**: the callback running now finishes, the consumer
    /// is cancelled (unsettled deliveries go back to the queue), the
    /// connection closes, and the thread is joined.
    ///
    /// # Errors
    ///
    /// What ended the thread, if it ended with an error before the stop.
    pub fn stop(mut self) -> Result<()> {
        self.request_stop();
        self.join_thread()
    }

    /// **Asks the thread to stop** after the callback running now, and
    /// returns at once; [`join`](ConsumerThread::join) then waits for it.
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// **Waits for the thread to end** by itself, which it does when its
    /// connection is lost or the consumer is cancelled by the broker.
    ///
    /// # Errors
    ///
    /// What ended the thread.
    pub fn join(mut self) -> Result<()> {
        self.join_thread()
    }

    fn join_thread(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(result) => result,
                Err(panic) => Err(join_error(Err(panic))),
            },
            None => Ok(()),
        }
    }
}

impl Drop for ConsumerThread {
    fn drop(&mut self) {
        self.request_stop();
        let _ = self.join_thread();
    }
}

impl fmt::Debug for ConsumerThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerThread")
            .field("queue", &self.queue)
            .field("finished", &self.is_finished())
            .finish()
    }
}

fn run<F>(
    props: AmqpProps,
    queue: Queue,
    mut callback: F,
    mut stopped: watch::Receiver<bool>,
    ready: mpsc::Sender<Result<String>>,
) -> Result<()>
where
    F: FnMut(&Delivery) -> Result<(), HandlerError>,
{
    let runtime = match BlockingRuntime::new("tidings-consumer-io") {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let span = info_span!("consumer_thread", queue = tracing::field::Empty);
    let finished = runtime.block_on(
        async move {
            let started = async {
                let conn = Connection::connect(&props).await?;
                let consumer = conn.consumer(&queue).await?;
                Ok::<_, Error>((conn, consumer))
            };
            let (conn, mut consumer) = match started.await {
                Ok(started) => started,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return Ok(());
                }
            };
            tracing::Span::current().record("queue", consumer.queue());
            let _ = ready.send(Ok(consumer.queue().to_owned()));
            let outcome = loop {
                let delivery = tokio::select! {
                    biased;
                    _ = stopped.wait_for(|stop| *stop) => break Ok(()),
                    next = consumer.next() => next,
                };
                let delivery = match delivery {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => {
                        warn!(error = %e, "receiving failed");
                        continue;
                    }
                    None => {
                        break Err(Error::new(
                            ErrorKind::Closed,
                            format!("the consumer of queue {:?} was closed by the broker or the connection was lost", consumer.queue()),
                        ));
                    }
                };
                let settled = match catch_unwind(AssertUnwindSafe(|| callback(&delivery))) {
                    Ok(Ok(())) => delivery.ack().await,
                    Ok(Err(e)) => {
                        warn!(error = %e, message_id = ?delivery.message_id(), "callback failed; delivery rejected");
                        delivery.reject().await
                    }
                    Err(panic) => {
                        error!(panic = panic_message(&panic), message_id = ?delivery.message_id(), "callback panicked; delivery rejected");
                        delivery.reject().await
                    }
                };
                if let Err(e) = settled {
                    warn!(error = %e, "settling a delivery failed");
                }
            };
            if outcome.is_ok()
                && let Err(e) = consumer.cancel().await
            {
                warn!(error = %e, "cancelling the consumer failed");
            }
            let _ = conn.close().await;
            outcome
        }
        .instrument(span),
    );
    finished.unwrap_or_else(Err)
}

fn join_error(joined: std::thread::Result<Result<()>>) -> Error {
    match joined {
        Ok(Err(e)) => e,
        Ok(Ok(())) => Error::new(
            ErrorKind::Closed,
            "the consumer thread ended before it started",
        ),
        Err(panic) => Error::new(
            ErrorKind::Handler,
            format!("the consumer thread panicked: {}", panic_message(&panic)),
        ),
    }
}

/// The text of a panic payload, for logs and errors.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}
