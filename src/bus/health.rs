//! `Health`: whether a bus is connected and consuming, for readiness and
//! liveness probes.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio_stream::StreamExt;

use crate::amqp::connection_event::{ConnectionEvent, ConnectionEvents};

/// **The health of a [`Bus`](crate::Bus)**, from
/// [`Bus::health`](crate::Bus::health): enough for a Kubernetes readiness
/// and liveness probe. Serializes to JSON for a health endpoint.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tidings::Result<()> {
/// let bus = tidings::Bus::connect("memory://doc-health").await?;
/// let health = bus.health();
/// assert!(health.is_ready() && health.is_live());
/// assert_eq!(health.listeners.len(), 1);
/// bus.close().await?;
/// assert!(!bus.health().is_live());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Whether the connection to the broker is up.
    pub connected: bool,
    /// Since when it has been up, or down.
    pub since: SystemTime,
    /// Whether the broker blocks publishing (a memory or disk alarm).
    pub blocked: bool,
    /// Events accepted and not yet confirmed.
    pub buffered: u64,
    /// How many events the publish buffer holds at most, if bounded.
    pub buffer_capacity: Option<u64>,
    /// Each listener, and whether it consumes.
    pub listeners: Vec<ListenerHealth>,
    /// The last connection error (why it was lost, or a failed reconnect),
    /// cleared when the connection is back.
    pub last_error: Option<String>,
    /// Whether the bus was closed.
    pub closed: bool,
}

/// **One listener's part of [`Health`].**
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ListenerHealth {
    /// The queue it consumes.
    pub queue: String,
    /// Whether it consumes now: running, and the connection up.
    pub consuming: bool,
    /// Whether its loop ended without being asked to (its inbox closed
    /// for good).
    pub failed: bool,
}

impl Health {
    /// **Ready for traffic**: connected, not blocked, every listener
    /// consuming, not closed. A bus that is not ready recovers by itself;
    /// take it out of a load balancer meanwhile.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.connected
            && !self.blocked
            && !self.closed
            && self.listeners.iter().all(|l| l.consuming)
    }

    /// **Alive**: not closed, and no listener ended by itself. An outage
    /// does not make a bus dead (it reconnects by itself); a listener that
    /// ended for good does, and restarting the process is the cure.
    #[must_use]
    pub fn is_live(&self) -> bool {
        !self.closed && self.listeners.iter().all(|l| !l.failed)
    }

    /// How full the publish buffer is, from 0 to 1, if it is bounded.
    #[must_use]
    pub fn buffer_fill(&self) -> Option<f64> {
        self.buffer_capacity
            .filter(|capacity| *capacity > 0)
            .map(|capacity| self.buffered as f64 / capacity as f64)
    }
}

/// The connection's state, kept up to date from its events.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) connected: bool,
    pub(crate) since: SystemTime,
    pub(crate) blocked: bool,
    pub(crate) last_error: Option<String>,
}

/// Follows a connection's events into a [`Link`], until they end.
pub(crate) fn follow(mut events: ConnectionEvents) -> Arc<Mutex<Link>> {
    let link = Arc::new(Mutex::new(Link {
        connected: true,
        since: SystemTime::now(),
        blocked: false,
        last_error: None,
    }));
    let state = link.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let mut link = state.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                ConnectionEvent::Connected { .. } => link.connected = true,
                ConnectionEvent::Disconnected { reason } => {
                    *link = Link {
                        connected: false,
                        since: SystemTime::now(),
                        blocked: false,
                        last_error: Some(reason),
                    };
                }
                ConnectionEvent::ReconnectFailed { error, .. } => link.last_error = Some(error),
                ConnectionEvent::Recovered { .. } => {
                    *link = Link {
                        connected: true,
                        since: SystemTime::now(),
                        blocked: false,
                        last_error: None,
                    };
                }
                ConnectionEvent::Blocked { .. } => link.blocked = true,
                ConnectionEvent::Unblocked => link.blocked = false,
                ConnectionEvent::Closed => {
                    link.connected = false;
                    link.since = SystemTime::now();
                }
            }
        }
    });
    link
}
