//! `Batcher`: gathers the events of one type into batches of up to `max`,
//! or what came within `wait` of the first, for a batch handler; every
//! delivery of a batch gets the batch's outcome.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::decision::Decision;
use super::handler_call::{self, BoxFuture as BatchFuture, Failure};
use crate::error::HandlerError;

/// The batch handler, erased.
type Handler<E> = dyn Fn(Vec<Arc<E>>) -> BatchFuture + Send + Sync;

/// What every delivery of a batch is told: the handler's decision, or what
/// its failure said.
type Told = Result<Decision, String>;

/// The batches of one batch subscription.
pub(super) struct Batcher<E> {
    max: usize,
    wait: Duration,
    handler: Box<Handler<E>>,
    pending: Mutex<Pending<E>>,
}

struct Pending<E> {
    events: Vec<Arc<E>>,
    waiters: Vec<oneshot::Sender<Told>>,
    /// Counts the batches started, so that a timer finds out whether its
    /// batch went already (full).
    generation: u64,
}

type Batch<E> = (Vec<Arc<E>>, Vec<oneshot::Sender<Told>>);

impl<E: Send + Sync + 'static> Batcher<E> {
    pub(super) fn new(max: usize, wait: Duration, handler: Box<Handler<E>>) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            wait,
            handler,
            pending: Mutex::new(Pending {
                events: Vec::new(),
                waiters: Vec::new(),
                generation: 0,
            }),
        })
    }

    pub(super) fn max(&self) -> usize {
        self.max
    }

    /// Adds an event to the batch being gathered; the future ends with the
    /// outcome of the batch it ends up in. The delivery that fills a batch
    /// runs the handler; a batch that does not fill runs `wait` after its
    /// first event, on a task of its own.
    pub(super) fn offer(self: &Arc<Self>, event: Arc<E>) -> BatchFuture {
        let (told, outcome) = oneshot::channel();
        let (full, timer) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.events.push(event);
            pending.waiters.push(told);
            let timer = (pending.events.len() == 1).then_some(pending.generation);
            let full = (pending.events.len() >= self.max).then(|| take(&mut pending));
            (full, timer)
        };
        if let (Some(generation), None) = (timer, &full) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let batcher = self.clone();
                    runtime.spawn(async move {
                        tokio::time::sleep(batcher.wait).await;
                        let batch = {
                            let mut pending =
                                batcher.pending.lock().unwrap_or_else(|p| p.into_inner());
                            (pending.generation == generation).then(|| take(&mut pending))
                        };
                        if let Some(batch) = batch {
                            batcher.run(batch).await;
                        }
                    });
                }
                // No runtime to wait on: the batch is what came so far.
                Err(_) => {
                    let batch = take(&mut self.pending.lock().unwrap_or_else(|p| p.into_inner()));
                    let batcher = self.clone();
                    return Box::pin(async move {
                        batcher.run(batch).await;
                        receive(outcome).await
                    });
                }
            }
        }
        let batcher = self.clone();
        Box::pin(async move {
            if let Some(batch) = full {
                batcher.run(batch).await;
            }
            receive(outcome).await
        })
    }

    /// Runs the handler on a batch and tells each of its deliveries.
    async fn run(&self, (events, waiters): Batch<E>) {
        let told: Told = match handler_call::outcome((self.handler)(events)).await {
            Ok(decision) => Ok(decision),
            Err(Failure::Error(e)) => Err(e.to_string()),
            Err(Failure::Panic(message)) => Err(format!("batch handler panicked: {message}")),
        };
        for waiter in waiters {
            // A delivery no longer waiting (its bus closed) needs no word.
            let _ = waiter.send(told.clone());
        }
    }
}

/// The batch gathered so far, and a new one started.
fn take<E>(pending: &mut Pending<E>) -> Batch<E> {
    pending.generation += 1;
    (
        std::mem::take(&mut pending.events),
        std::mem::take(&mut pending.waiters),
    )
}

async fn receive(outcome: oneshot::Receiver<Told>) -> Result<Decision, HandlerError> {
    match outcome.await {
        Ok(Ok(decision)) => Ok(decision),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err("the batch handler was dropped before it ran".into()),
    }
}
