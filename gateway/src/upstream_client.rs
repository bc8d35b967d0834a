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
use crate::body_watch::BodyWatch;
use crate::upstream_pool::{OpenPlace, Reserve, RuntimePool};
use axum::body::Body;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

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

impl UpstreamClient {
    /// Pools with the upstream's connect timeout and keep-alive settings for
    /// `workers` workers and the control runtime.
    pub fn new(upstream: Arc<Upstream>, workers: usize) -> Self {
        let s = &upstream.settings;
        // Each worker gets an even share of the caps (at least one
        // connection; no queue when max_queue is 0). The control runtime's
        // pool has the same share: it runs the health checks, one
        // connection per replica at a time.
        let workers = workers.max(1);
        let open = (s.max_connections / workers).max(1);
        let queue = if s.max_queue == 0 {
            0
        } else {
            (s.max_queue / workers).max(1)
        };
        let pools = Arc::new(Pools {
            runtimes: (0..=workers)
                .map(|_| Arc::new(RuntimePool::new(s.keepalive_timeout, s.keepalive_max_idle, open, queue)))
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
    /// Cancelling it (dropping the future) at any point gives back what it
    /// held: its place in the queue, or the connection it was opening.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: http::Request<Body>,
        watch: Option<&BodyWatch>,
    ) -> Result<http::Response<UpstreamBody>, SendError> {
        let pool = &self.pools.runtimes[crate::worker_id::slot(self.pools.runtimes.len())];
        let mut queued_until = None;
        loop {
            let (mut sender, pooled) = match pool.reserve(addr) {
                Reserve::Idle(sender) => (sender, true),
                Reserve::Connect(place) => {
                    self.pools.start_sweep(pool.keepalive_timeout());
                    (self.pools.connect(place, addr).await?, false)
                }
                Reserve::Wait(place) => {
                    let until =
                        *queued_until.get_or_insert_with(|| tokio::time::Instant::now() + self.pools.queue_timeout);
                    if !place.woken_before(until).await {
                        return Err(SendError::Busy);
                    }
                    continue;
                }
                Reserve::Full => return Err(SendError::Busy),
            };
            if pooled && !self.pools.ready(&mut sender).await {
                continue; // closed while idle
            }
            let answer = answer_within(sender.try_send_request(req), self.pools.response_timeout, watch);
            match answer.await.map_err(|Elapsed| SendError::Timeout)? {
                Ok(response) => {
                    let reuse = Reuse {
                        sender,
                        pool: pool.clone(),
                        addr,
                        request: watch.cloned(),
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

    /// A new connection in `place`, driven by a task on the calling
    /// runtime, which holds the place until the connection closes; if the
    /// connection cannot be made (or this is cancelled), the place is
    /// freed at once.
    async fn connect(&self, place: OpenPlace, addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
        let (sender, connection) = self.handshake(addr).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "upstream connection ended with an error");
            }
            drop(place);
        });
        Ok(sender)
    }

    /// Whether a pooled connection can take a request: normally at once; a
    /// connection not ready within `connect_timeout` counts as closed.
    async fn ready(&self, sender: &mut SendRequest<Body>) -> bool {
        matches!(
            tokio::time::timeout(self.connect_timeout, sender.ready()).await,
            Ok(Ok(()))
        )
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
/// whole request. While the client is still sending its body, the replica
/// is late only if it leaves bytes untaken for `timeout` (it stopped
/// reading); waiting for the client is not its fault, and the body's own
/// timeout bounds that.
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
        deadline = match watch.ended_at().or_else(|| watch.handed_at()) {
            Some(since) if since + timeout <= now => return Err(Elapsed),
            Some(since) => since + timeout,
            None => now + timeout,
        };
    }
}

/// What returns a connection to its pool once its exchange is complete.
#[derive(Debug)]
struct Reuse {
    sender: SendRequest<Body>,
    pool: Arc<RuntimePool>,
    addr: SocketAddr,
    /// The client's body, if one was streamed: a replica may answer before
    /// it has all of it, and a connection still sending a request body is
    /// not free for another.
    request: Option<BodyWatch>,
}

impl Reuse {
    fn give_back(self) {
        if self.request.is_none_or(|w| w.ended_at().is_some()) {
            self.pool.put(self.addr, self.sender);
        }
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
