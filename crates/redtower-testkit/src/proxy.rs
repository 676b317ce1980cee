//! [`FaultProxy`]: a TCP proxy between a client and a real `redis-server` that injects network
//! faults on command: latency, a black hole, refused connections, reset connections, and lost
//! replies (the request reaches Redis and runs, the reply never reaches the client).

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

/// What a [`FaultProxy`] does to the traffic it carries, until set otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fault {
    /// Forward everything as it comes (the default).
    #[default]
    PassThrough,
    /// Hold every chunk this long before forwarding it, in both directions.
    Latency(Duration),
    /// Accept connections and read from them, but forward nothing either way: requests never
    /// reach Redis and nothing is answered (a stalled network or a frozen server).
    BlackHole,
    /// Close every new connection as soon as it is accepted. Live connections are kept.
    Refuse,
}

/// A TCP proxy on a free loopback port in front of a real server, controlled from the test.
///
/// It runs on threads of its own, so it serves clients on any runtime (or none). Give the
/// client [`url`](Self::url) instead of the server's, then inject faults:
///
/// ```no_run
/// use std::time::Duration;
/// use redtower_testkit::{Fault, FaultProxy, RedisServer};
///
/// let server = RedisServer::start();
/// let proxy = FaultProxy::start(server.port()).unwrap();
/// let url = proxy.url(); // redis://127.0.0.1:<proxy port>: connect the client under test here
///
/// proxy.set(Fault::Latency(Duration::from_millis(50)));
/// proxy.set(Fault::PassThrough);
/// proxy.lose_next_reply(); // the next request runs in Redis; its reply is lost and the
///                          // connection reset, so the client sees a dropped reply
/// proxy.lose_replies(1, 50); // from now on, one reply chunk in 50 is lost the same way
/// proxy.reset_all(); // close every live connection now
/// # let _ = url;
/// ```
///
/// Stopped when dropped (every connection is closed).
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    fault: Mutex<Fault>,
    lose_next: AtomicBool,
    /// Chaos mode: lose a reply chunk with probability `num / den` (`den == 0`: off).
    lose_ratio: Mutex<(u32, u32)>,
    lost: AtomicU64,
    accepted: AtomicU64,
    resets: AtomicU64,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    stopped: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    fn fault(&self) -> Fault {
        *lock(&self.fault)
    }

    fn close_all(&self) -> usize {
        let live: Vec<_> = lock(&self.live).drain().collect();
        for (_, (client, server)) in &live {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        live.len()
    }

    /// Whether the reply to a request just forwarded is to be lost.
    fn take_loss(&self) -> bool {
        if self.lose_next.swap(false, Ordering::AcqRel) {
            return true;
        }
        let (num, den) = *lock(&self.lose_ratio);
        den != 0 && rand::random_range(0..den) < num
    }
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port that forwards to `127.0.0.1:<upstream_port>`.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub fn start(upstream_port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State::default());
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        {
            let state = state.clone();
            thread::Builder::new()
                .name(format!("fault-proxy-{port}"))
                .spawn(move || accept_loop(&listener, upstream, &state))?;
        }
        Ok(Self { port, state })
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sets the fault applied from now on (live connections included).
    pub fn set(&self, fault: Fault) {
        *lock(&self.state.fault) = fault;
    }

    /// Arms a one-shot lost reply: the next request chunk any client sends is forwarded to
    /// Redis (so it runs), then the next reply chunk on that connection is discarded and the
    /// connection is closed on both sides. The client sees its connection drop with the
    /// command in flight, which is when drivers re-send it.
    pub fn lose_next_reply(&self) {
        self.state.lose_next.store(true, Ordering::Release);
    }

    /// From now on, after each request chunk forwarded, the reply is lost (as in
    /// [`lose_next_reply`](Self::lose_next_reply)) with probability `num / den`. `den == 0`
    /// turns it off.
    pub fn lose_replies(&self, num: u32, den: u32) {
        *lock(&self.state.lose_ratio) = (num, den);
    }

    /// Closes every live connection at once, on both sides. New connections are accepted as
    /// before (unless the fault is [`Fault::Refuse`]).
    pub fn reset_all(&self) {
        if self.state.close_all() > 0 {
            self.state.resets.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Resets every live connection (as [`reset_all`](Self::reset_all)) every `every`, on a
    /// thread of its own, until the returned guard is dropped or stopped: the "connections keep
    /// dropping" half of a chaos test.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redtower_testkit::{FaultProxy, RedisServer};
    ///
    /// let server = RedisServer::start();
    /// let proxy = FaultProxy::start(server.port()).unwrap();
    /// let chaos = proxy.reset_every(Duration::from_millis(300));
    /// // ... drive the client under test ...
    /// chaos.stop(); // or drop it
    /// assert!(proxy.resets() <= proxy.connections_accepted());
    /// ```
    pub fn reset_every(&self, every: Duration) -> ResetLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (self.state.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("fault-proxy-{}-resets", self.port))
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        thread::park_timeout(every);
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        if state.close_all() > 0 {
                            state.resets.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .expect("spawn the proxy's reset thread")
        };
        ResetLoop {
            stop,
            thread: Some(thread),
        }
    }

    /// How many replies were lost so far.
    pub fn lost_replies(&self) -> u64 {
        self.state.lost.load(Ordering::Relaxed)
    }

    /// How many times [`reset_all`](Self::reset_all) closed at least one connection.
    pub fn resets(&self) -> u64 {
        self.state.resets.load(Ordering::Relaxed)
    }

    /// How many connections were accepted so far (refused ones included).
    pub fn connections_accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// How many connections are open now.
    pub fn live_connections(&self) -> usize {
        lock(&self.state.live).len()
    }
}

/// The periodic resets of [`FaultProxy::reset_every`]; they end when this is dropped.
#[derive(Debug)]
#[must_use = "the resets stop when the guard is dropped"]
pub struct ResetLoop {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ResetLoop {
    /// Stops the resets now (waits for the reset thread to end).
    pub fn stop(self) {}
}

impl Drop for ResetLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::Release);
        self.state.close_all();
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, state: &Arc<State>) {
    for client in listener.incoming() {
        if state.stopped.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = client else { continue };
        state.accepted.fetch_add(1, Ordering::Relaxed);
        if state.fault() == Fault::Refuse {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        if let Err(error) = spawn_pipes(client, server, state) {
            eprintln!("fault proxy: could not start a connection: {error}");
        }
    }
}

fn spawn_pipes(client: TcpStream, server: TcpStream, state: &Arc<State>) -> io::Result<()> {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&state.live).insert(id, (client.try_clone()?, server.try_clone()?));
    let drop_reply = Arc::new(AtomicBool::new(false));
    {
        let (from, to) = (client.try_clone()?, server.try_clone()?);
        let (state, drop_reply) = (state.clone(), drop_reply.clone());
        thread::Builder::new()
            .name("fault-proxy-up".into())
            .spawn(move || requests(from, to, &state, &drop_reply))?;
    }
    let state = state.clone();
    thread::Builder::new()
        .name("fault-proxy-down".into())
        .spawn(move || {
            replies(server, client, &state, &drop_reply);
            lock(&state.live).remove(&id);
        })?;
    Ok(())
}

/// Client to server.
fn requests(mut from: TcpStream, mut to: TcpStream, state: &State, drop_reply: &AtomicBool) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match state.fault() {
            Fault::BlackHole => continue,
            Fault::Latency(d) => thread::sleep(d),
            Fault::PassThrough | Fault::Refuse => {}
        }
        // Decided before writing, so the reply cannot slip through before the flag is seen.
        if state.take_loss() {
            drop_reply.store(true, Ordering::Release);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Server to client.
fn replies(mut from: TcpStream, mut to: TcpStream, state: &State, drop_reply: &AtomicBool) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if drop_reply.load(Ordering::Acquire) {
            state.lost.fetch_add(1, Ordering::Relaxed);
            // The client loses its connection with the reply in flight. Redis still reads
            // what was forwarded before the requests side closes, so every request that was
            // forwarded runs.
            let _ = to.shutdown(Shutdown::Both);
            while matches!(from.read(&mut buf), Ok(n) if n > 0) {}
            break;
        }
        match state.fault() {
            Fault::BlackHole => continue,
            Fault::Latency(d) => thread::sleep(d),
            Fault::PassThrough | Fault::Refuse => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
