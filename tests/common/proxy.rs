//! A TCP proxy between a client and the broker, so a fault test can cut the
//! network path without touching the broker.
//!
//! It runs on an OS thread of its own with its own single-threaded tokio
//! runtime, so it works the same from sync tests and from async tests of any
//! runtime flavour, and a test's runtime blocking or ending does not stall it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How long the proxy waits for the upstream to accept a connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Proxy::cut`] and `Drop` wait for the connections to be gone.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// **A TCP proxy to one upstream address**, on `127.0.0.1` and a free port.
///
/// Every accepted connection is forwarded to the upstream, bytes both ways,
/// until either side closes it, [`cut`](Proxy::cut) aborts it, or the proxy
/// is dropped. Dropping the proxy closes every connection and stops its
/// thread.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the proxy thread and the handle share.
struct State {
    upstream: SocketAddr,
    refusing: AtomicBool,
    accepted: AtomicU64,
    conns: Mutex<Conns>,
    /// Notified whenever a connection is gone.
    closed: Condvar,
}

/// The connections open now, each with the switch that aborts it and the
/// one that stalls it.
#[derive(Default)]
struct Conns {
    next_id: u64,
    live: HashMap<u64, Option<oneshot::Sender<()>>>,
    stall: HashMap<u64, oneshot::Sender<()>>,
}

impl Proxy {
    /// **Starts a proxy to `upstream`** on `127.0.0.1` and a free port, and
    /// returns once it listens (connections can be made at once).
    ///
    /// # Panics
    ///
    /// If no local port can be bound or the proxy thread cannot start.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = StdListener::bind("127.0.0.1:0").expect("proxy: cannot bind a local port");
        listener
            .set_nonblocking(true)
            .expect("proxy: cannot make the listener non-blocking");
        let addr = listener.local_addr().expect("proxy: no local address");
        let state = Arc::new(State {
            upstream,
            refusing: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            conns: Mutex::new(Conns::default()),
            closed: Condvar::new(),
        });
        let (shutdown, stopped) = oneshot::channel();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy: cannot build a tokio runtime");
                runtime.block_on(accept_loop(listener, thread_state, stopped));
                // Dropping the runtime drops every connection task, and with
                // it both sockets of each connection.
            })
            .expect("proxy: cannot start its thread");
        Proxy {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The local port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The local address clients connect to (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// **Aborts every connection proxied now**, on both the client side and
    /// the upstream side, with a TCP reset, as a network failure would; it
    /// returns once they are closed (at most 5 s). New connections are still
    /// accepted afterwards, unless [`set_refusing`](Proxy::set_refusing) says
    /// otherwise.
    ///
    /// # Panics
    ///
    /// If a connection is still open 5 s after it was told to close.
    pub fn cut(&self) {
        let mut conns = self.state.conns.lock().unwrap();
        let ids: Vec<u64> = conns.live.keys().copied().collect();
        for kill in conns.live.values_mut() {
            if let Some(kill) = kill.take() {
                let _ = kill.send(());
            }
        }
        let (conns, timeout) = self
            .state
            .closed
            .wait_timeout_while(conns, CLOSE_TIMEOUT, |c| {
                ids.iter().any(|id| c.live.contains_key(id))
            })
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "proxy: {} connection(s) still open {CLOSE_TIMEOUT:?} after cut()",
            ids.iter().filter(|id| conns.live.contains_key(id)).count()
        );
    }

    /// **While `refusing` is true, connections are accepted and closed at
    /// once**, so a client sees the broker as unreachable. Connections open
    /// already are left alone: `cut()` then `set_refusing(true)` is an outage
    /// that lasts until `set_refusing(false)`.
    pub fn set_refusing(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::SeqCst);
    }

    /// How many proxied connections are open now.
    pub fn connections(&self) -> usize {
        self.state.conns.lock().unwrap().live.len()
    }

    /// **Stops passing bytes on every connection proxied now**, keeping
    /// both sides open, as a network path that silently dies: only
    /// heartbeats can tell. New connections are proxied as usual;
    /// [`cut`](Proxy::cut) or dropping the proxy closes the stalled ones.
    pub fn stall(&self) {
        let mut conns = self.state.conns.lock().unwrap();
        for (_, stall) in conns.stall.drain() {
            let _ = stall.send(());
        }
    }

    /// How many connections were accepted in all, refused ones included.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.state.upstream)
            .field("connections", &self.connections())
            .field("accepted", &self.accepted())
            .finish_non_exhaustive()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Stop accepting first, so nothing new comes in while closing.
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The thread ends once the accept loop sees the shutdown and the
            // runtime, with every connection, is dropped.
            let _ = thread.join();
        }
        let Ok(conns) = self.state.conns.lock() else {
            return;
        };
        let still_open = conns.live.len();
        if still_open > 0 && !std::thread::panicking() {
            panic!("proxy: {still_open} connection(s) outlived the proxy thread");
        }
    }
}

/// Accepts until told to stop (or until the handle is gone).
async fn accept_loop(listener: StdListener, state: Arc<State>, mut stopped: oneshot::Receiver<()>) {
    let listener = TcpListener::from_std(listener).expect("proxy: cannot register the listener");
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            // Accept errors are transient (a peer that reset before the
            // accept, no file descriptors left): pause briefly rather than
            // spin, and go on.
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                () = tokio::time::sleep(Duration::from_millis(10)) => continue,
            }
        };
        state.accepted.fetch_add(1, Ordering::SeqCst);
        if state.refusing.load(Ordering::SeqCst) {
            abort(client);
            continue;
        }
        let (kill, killed) = oneshot::channel();
        let (stall, stalled) = oneshot::channel();
        let id = {
            let mut conns = state.conns.lock().unwrap();
            let id = conns.next_id;
            conns.next_id += 1;
            conns.live.insert(id, Some(kill));
            conns.stall.insert(id, stall);
            id
        };
        let guard = Registered {
            state: state.clone(),
            id,
        };
        tokio::spawn(forward(client, state.upstream, killed, stalled, guard));
    }
    // Close every connection still open before the runtime goes.
    let mut conns = state.conns.lock().unwrap();
    for kill in conns.live.values_mut() {
        if let Some(kill) = kill.take() {
            let _ = kill.send(());
        }
    }
}

/// Forwards one connection until it ends or is killed.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut killed: oneshot::Receiver<()>,
    stalled: oneshot::Receiver<()>,
    guard: Registered,
) {
    let connect = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream));
    let mut upstream = tokio::select! {
        biased;
        _ = &mut killed => return abort(client),
        connected = connect => match connected {
            Ok(Ok(upstream)) => upstream,
            // The upstream is down: the client sees its connection reset.
            _ => return abort(client),
        },
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        biased;
        // Killed: `killed` resolves with Ok, or with Err if the switch was
        // dropped; either way both sides are aborted.
        _ = &mut killed => {
            abort(client);
            abort(upstream);
        }
        // Stalled: nothing passes any more, both sockets stay open (a dead
        // network path), until killed.
        Ok(()) = stalled => {
            let _ = killed.await;
            abort(client);
            abort(upstream);
        }
        // One side closed or failed: the copy has already passed the close on
        // as far as it could; dropping both sockets finishes it.
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
    }
    drop(guard);
}

/// Closes a socket with a TCP reset instead of the orderly FIN handshake.
fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Deregisters a connection when its task ends, however it ends (also when
/// the runtime drops the task).
struct Registered {
    state: Arc<State>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut conns = self.state.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.live.remove(&self.id);
        conns.stall.remove(&self.id);
        self.state.closed.notify_all();
    }
}
