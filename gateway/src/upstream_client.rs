//! Keep-alive HTTP/1.1 connections to an upstream's replicas.
//!
//! One pool per worker, and one for the control runtime (health checks):
//! a worker's requests travel on connections its own event loop drives, as
//! each nginx worker keeps its own `keepalive` pool. Built on hyper's
//! connection API rather than hyper-util's pooled client, which spawns a
//! task per request to hand the connection back, hashes a (scheme,
//! authority) key per checkout and rewrites every URI; here a connection
//! goes back to its pool the moment its response body ends, from the task
//! that read it.
//!
//! Contract: `send` takes an origin-form request (`/path?query`) that
//! carries its own `Host`. A pooled connection the replica closed in the
//! meantime is skipped, and a request that never reached a closed pooled
//! connection is sent on the next one (or a new one), so keep-alive races
//! never surface as failures. Idle connections older than
//! `keepalive_timeout` are closed (checked at checkout and by a sweep every
//! half period); at most `keepalive_max_idle` are kept per replica.
//!
//! Every wait is bounded, each by its own setting, so a failure says whose
//! it is: at most `max_connections` are open to a replica (split evenly
//! between the workers; idle ones included); a request that finds them all
//! busy waits for one to come back, at most `queue_timeout`, behind at most
//! `max_queue` others, else [`SendError::Busy`] (the gateway's own limit,
//! not the replica's fault). Opening a connection takes at most
//! `connect_timeout`; the answer is due `response_timeout` after the
//! replica has the whole request (a client still sending its body is not
//! the replica being late).

use crate::balancer::{InFlight, Upstream};
use crate::client_body::BodyWatch;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// An upstream and the connection pools that reach its replicas.
#[derive(Debug)]
pub struct UpstreamClient {
    /// Replicas and balancing.
    pub upstream: Arc<Upstream>,
    pools: Arc<Pools>,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// Every connection to the replica is busy and the queue for one is
    /// full, or the wait ran out (nothing was sent).
    Busy,
    /// No connection could be made (nothing was sent).
    Connect(String),
    /// The exchange failed after the request was handed to a connection.
    Http(hyper::Error),
    /// No answer within `response_timeout` of the replica having the
    /// whole request.
    Timeout,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Busy => f.write_str("every connection to the replica is busy"),
            Self::Connect(why) => write!(f, "connect: {why}"),
            Self::Http(e) => write!(f, "{e}"),
            Self::Timeout => f.write_str("no answer in time"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Http(e) => Some(e),
            Self::Busy | Self::Connect(_) | Self::Timeout => None,
        }
    }
}

#[derive(Debug)]
struct Pools {
    /// One per worker, then the control runtime's.
    runtimes: Box<[Arc<RuntimePool>]>,
    connect_timeout: Duration,
    response_timeout: Duration,
    queue_timeout: Duration,
    sweeping: AtomicBool,
}

/// A runtime's connections, in an allocation of its own: a worker's
/// requests lock it and count references to it, no other worker does.
#[derive(Debug)]
#[repr(align(64))]
struct RuntimePool {
    replicas: Mutex<Vec<Replica>>,
    keepalive_timeout: Duration,
    max_idle: usize,
    /// This runtime's share of `max_connections` per replica.
    max_open: usize,
    /// This runtime's share of `max_queue` per replica.
    max_queue: usize,
}

#[derive(Debug)]
struct Replica {
    addr: SocketAddr,
    /// Oldest first; checkout takes the newest, a full pool drops the oldest.
    idle: VecDeque<Idle>,
    /// Connections open from this runtime, idle or busy.
    open: usize,
    /// Requests waiting for one of them.
    waiting: usize,
    /// Wakes one waiter when a connection comes back or closes.
    freed: Arc<tokio::sync::Notify>,
}

impl Replica {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: VecDeque::new(),
            open: 0,
            waiting: 0,
            freed: Arc::default(),
        }
    }

    /// Wakes a waiter, if any, for a connection that came free.
    fn wake_one(&self) {
        if self.waiting > 0 {
            self.freed.notify_one();
        }
    }
}

/// What a request gets from its runtime's pool.
enum Reserve {
    /// A pooled connection.
    Idle(SendRequest<Body>),
    /// Room for a new connection (already counted open).
    Connect,
    /// Every connection is busy: wait to be woken (already counted waiting).
    Wait(Arc<tokio::sync::Notify>),
    /// Busy, and the queue is full.
    Full,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Idle {
    /// Still open and idle for less than `keepalive_timeout`.
    fn is_live(&self, keepalive_timeout: Duration) -> bool {
        self.since.elapsed() < keepalive_timeout && !self.sender.is_closed()
    }
}

impl UpstreamClient {
    /// Pools with the upstream's connect timeout and keep-alive settings for
    /// `workers` workers and the control runtime.
    pub fn new(upstream: Arc<Upstream>, workers: usize) -> Self {
        let s = &upstream.settings;
        let share = |n: usize| n.div_ceil(workers.max(1)).max(1);
        let pools = Arc::new(Pools {
            runtimes: (0..=workers)
                .map(|_| {
                    Arc::new(RuntimePool {
                        replicas: Mutex::new(Vec::new()),
                        keepalive_timeout: s.keepalive_timeout,
                        max_idle: s.keepalive_max_idle,
                        max_open: share(s.max_connections),
                        max_queue: share(s.max_queue),
                    })
                })
                .collect(),
            connect_timeout: s.connect_timeout,
            response_timeout: s.response_timeout,
            queue_timeout: s.queue_timeout,
            sweeping: AtomicBool::new(false),
        });
        Self { upstream, pools }
    }

    /// Sends `req` to the replica at `addr` on the calling worker's pool;
    /// `watch` reports on the client's body, if it is still arriving.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: http::Request<Body>,
        watch: Option<&BodyWatch>,
    ) -> Result<http::Response<UpstreamBody>, SendError> {
        let pool = &self.pools.runtimes[crate::workers::slot(self.pools.runtimes.len())];
        let mut queued_until = None;
        loop {
            let (mut sender, pooled) = match pool.reserve(addr) {
                Reserve::Idle(sender) => (sender, true),
                Reserve::Connect => {
                    self.pools.start_sweep(pool.keepalive_timeout);
                    (self.pools.connect(pool, addr).await?, false)
                }
                Reserve::Wait(freed) => {
                    let until =
                        *queued_until.get_or_insert_with(|| tokio::time::Instant::now() + self.pools.queue_timeout);
                    let woken = tokio::time::timeout_at(until, freed.notified()).await;
                    pool.unqueue(addr);
                    if woken.is_err() {
                        return Err(SendError::Busy);
                    }
                    continue;
                }
                Reserve::Full => return Err(SendError::Busy),
            };
            if pooled && sender.ready().await.is_err() {
                continue; // closed while idle
            }
            let answer = answer_within(sender.try_send_request(req), self.pools.response_timeout, watch);
            match answer.await.map_err(|Elapsed| SendError::Timeout)? {
                Ok(response) => {
                    let reuse = Reuse {
                        sender,
                        pool: pool.clone(),
                        addr,
                    };
                    return Ok(response.map(|body| UpstreamBody {
                        inner: body,
                        reuse: Some(reuse),
                        held: None,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: a pooled connection closed under us.
                    Some(unsent) if pooled => req = unsent,
                    Some(_) => return Err(SendError::Connect(e.into_error().to_string())),
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }
}

impl RuntimePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Replica>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest live idle connection to `addr` (expired ones dropped), or
    /// room for a new one, or a place in the queue for one.
    fn reserve(&self, addr: SocketAddr) -> Reserve {
        let mut replicas = self.lock();
        let index = match replicas.iter().position(|r| r.addr == addr) {
            Some(i) => i,
            None => {
                replicas.push(Replica::new(addr));
                replicas.len() - 1
            }
        };
        let replica = &mut replicas[index];
        while let Some(idle) = replica.idle.pop_back() {
            if idle.is_live(self.keepalive_timeout) {
                return Reserve::Idle(idle.sender);
            }
        }
        if replica.open < self.max_open {
            replica.open += 1;
            return Reserve::Connect;
        }
        if replica.waiting >= self.max_queue {
            return Reserve::Full;
        }
        replica.waiting += 1;
        Reserve::Wait(replica.freed.clone())
    }

    /// A waiter leaves the queue (woken or timed out).
    fn unqueue(&self, addr: SocketAddr) {
        if let Some(r) = self.lock().iter_mut().find(|r| r.addr == addr) {
            r.waiting -= 1;
        }
    }

    /// A connection to `addr` closed (or was never made): its place is free.
    fn release(&self, addr: SocketAddr) {
        if let Some(r) = self.lock().iter_mut().find(|r| r.addr == addr) {
            r.open -= 1;
            r.wake_one();
        }
    }

    /// Drops expired and closed idle connections, and replicas with
    /// nothing left to track.
    fn sweep(&self) {
        let mut replicas = self.lock();
        for replica in replicas.iter_mut() {
            replica.idle.retain(|i| i.is_live(self.keepalive_timeout));
        }
        replicas.retain(|r| !r.idle.is_empty() || r.open > 0 || r.waiting > 0);
    }

    /// Back into the pool, unless closed or the pool is full (the oldest goes).
    fn put(&self, addr: SocketAddr, sender: SendRequest<Body>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        let mut replicas = self.lock();
        // The replica is tracked for as long as a connection to it is open.
        if let Some(replica) = replicas.iter_mut().find(|r| r.addr == addr) {
            if replica.idle.len() >= self.max_idle {
                replica.idle.pop_front();
            }
            replica.idle.push_back(idle);
            replica.wake_one();
        }
    }
}

impl Pools {
    /// Closes idle connections past `keepalive_timeout`, every half period,
    /// for as long as the pools exist.
    fn start_sweep(self: &Arc<Self>, keepalive_timeout: Duration) {
        if self.sweeping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // no runtime here; a later connection starts it
        };
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pools: Weak<Self> = Arc::downgrade(self);
        let period = (keepalive_timeout / 2).max(Duration::from_millis(50));
        handle.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pools) = pools.upgrade() else { break };
                pools.sweep();
            }
        });
    }

    fn sweep(&self) {
        for runtime in &self.runtimes {
            runtime.sweep();
        }
    }

    /// A new connection for a place `pool` has counted open, driven by a
    /// task on the calling runtime; the place is freed when the connection
    /// closes, or at once if it cannot be made.
    async fn connect(&self, pool: &Arc<RuntimePool>, addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
        let made = self.handshake(addr).await;
        let (sender, connection) = match made {
            Ok(pair) => pair,
            Err(e) => {
                pool.release(addr);
                return Err(e);
            }
        };
        let pool = pool.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "upstream connection ended with an error");
            }
            pool.release(addr);
        });
        Ok(sender)
    }

    async fn handshake(
        &self,
        addr: SocketAddr,
    ) -> Result<
        (
            SendRequest<Body>,
            http1::Connection<TokioIo<tokio::net::TcpStream>, Body>,
        ),
        SendError,
    > {
        let stream = match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(SendError::Connect(format!("tcp connect error: {e}"))),
            Err(_) => {
                return Err(SendError::Connect(format!(
                    "tcp connect timed out after {:?}",
                    self.connect_timeout
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        // One flat write buffer instead of a queue of head and body
        // buffers: API bodies are small, and copying them into the head's
        // buffer costs less than keeping the queue (2% of a request).
        http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(e.to_string()))
    }
}

/// The replica took longer than its response timeout.
#[derive(Debug)]
struct Elapsed;

/// Waits for the replica's answer, at most `timeout` after it has had the
/// whole request: while a client is still sending its body (each wait for
/// bytes bounded by the body's own timeout), the replica is not late.
async fn answer_within<F: Future>(send: F, timeout: Duration, watch: Option<&BodyWatch>) -> Result<F::Output, Elapsed> {
    let Some(watch) = watch.filter(|w| w.ended_at().is_none()) else {
        return tokio::time::timeout(timeout, send).await.map_err(|_| Elapsed);
    };
    tokio::pin!(send);
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            biased;
            output = &mut send => return Ok(output),
            () = tokio::time::sleep_until(deadline) => {}
        }
        let now = tokio::time::Instant::now();
        deadline = match watch.ended_at() {
            Some(ended) if ended + timeout <= now => return Err(Elapsed),
            Some(ended) => ended + timeout,
            None => now + timeout,
        };
    }
}

/// What returns a connection to its pool once its response is complete.
#[derive(Debug)]
struct Reuse {
    sender: SendRequest<Body>,
    pool: Arc<RuntimePool>,
    addr: SocketAddr,
}

impl Reuse {
    fn give_back(self) {
        self.pool.put(self.addr, self.sender);
    }
}

/// A replica's response body. When it has been read to the end, its
/// connection goes back to the pool; dropped earlier, the connection closes
/// (HTTP/1.1 cannot abandon a response half-read).
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    reuse: Option<Reuse>,
    /// Held until the body is done with (a replica's in-flight count).
    held: Option<InFlight>,
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            Poll::Ready(Some(Err(_))) => self.reuse = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl UpstreamBody {
    /// The body, holding `guard` until it is dropped: least-requests then
    /// counts a replica busy until its streaming response has been passed on.
    pub fn holding(mut self, guard: InFlight) -> Self {
        self.held = Some(guard);
        self
    }

    fn finish(&mut self) {
        if let Some(reuse) = self.reuse.take() {
            reuse.give_back();
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing left (or none at all) may never be polled.
        if http_body::Body::is_end_stream(&self.inner) {
            self.finish();
        }
    }
}
