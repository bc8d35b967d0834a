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

use crate::balancer::{InFlight, Upstream};
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
    /// No connection could be made (nothing was sent).
    Connect(String),
    /// The exchange failed after the request was handed to a connection.
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(why) => write!(f, "connect: {why}"),
            Self::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(_) => None,
            Self::Http(e) => Some(e),
        }
    }
}

#[derive(Debug)]
struct Pools {
    /// One per worker, then the control runtime's.
    runtimes: Box<[Arc<RuntimePool>]>,
    connect_timeout: Duration,
    sweeping: AtomicBool,
}

/// A runtime's idle connections, in an allocation of its own: a worker's
/// requests lock it and count references to it, no other worker does.
#[derive(Debug)]
#[repr(align(64))]
struct RuntimePool {
    replicas: Mutex<Vec<Replica>>,
    keepalive_timeout: Duration,
    max_idle: usize,
}

#[derive(Debug)]
struct Replica {
    addr: SocketAddr,
    /// Oldest first; checkout takes the newest, a full pool drops the oldest.
    idle: VecDeque<Idle>,
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
        let pools = Arc::new(Pools {
            runtimes: (0..=workers)
                .map(|_| {
                    Arc::new(RuntimePool {
                        replicas: Mutex::new(Vec::new()),
                        keepalive_timeout: s.keepalive_timeout,
                        max_idle: s.keepalive_max_idle,
                    })
                })
                .collect(),
            connect_timeout: s.connect_timeout,
            sweeping: AtomicBool::new(false),
        });
        Self { upstream, pools }
    }

    /// Sends `req` to the replica at `addr` on the calling worker's pool.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<UpstreamBody>, SendError> {
        let pool = &self.pools.runtimes[crate::workers::slot(self.pools.runtimes.len())];
        loop {
            let (mut sender, pooled) = match pool.checkout(addr) {
                Some(sender) => (sender, true),
                None => {
                    self.pools.start_sweep(pool.keepalive_timeout);
                    (self.pools.connect(addr).await?, false)
                }
            };
            if pooled && sender.ready().await.is_err() {
                continue; // closed while idle
            }
            match sender.try_send_request(req).await {
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
    /// The newest live idle connection to `addr`, dropping expired ones.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        let replica = replicas.iter_mut().find(|r| r.addr == addr)?;
        while let Some(idle) = replica.idle.pop_back() {
            if idle.is_live(self.keepalive_timeout) {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Drops expired and closed idle connections.
    fn sweep(&self) {
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        for replica in replicas.iter_mut() {
            replica.idle.retain(|i| i.is_live(self.keepalive_timeout));
        }
        replicas.retain(|r| !r.idle.is_empty());
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
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        match replicas.iter_mut().find(|r| r.addr == addr) {
            Some(replica) => {
                if replica.idle.len() >= self.max_idle {
                    replica.idle.pop_front();
                }
                replica.idle.push_back(idle);
            }
            None => replicas.push(Replica {
                addr,
                idle: VecDeque::from([idle]),
            }),
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

    /// A new connection, driven by a task on the calling runtime.
    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
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
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
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
