//! Serving a router on a listener: hyper-util's auto builder (HTTP/1.1,
//! and HTTP/2 with prior knowledge) with a timer, so slow and idle clients
//! cannot hold connections forever, and graceful shutdown.
//!
//! `axum::serve` has no timer: a client that sends half a request head (or
//! nothing at all) and waits kept its connection, and a task, forever. Here
//! a connection is closed when:
//!
//! - it has not sent a complete request head within `header_read_timeout`
//!   of being accepted (hyper's HTTP/1 timer covers partial heads; the
//!   check below also covers a silent client and a stalled HTTP/2 preface,
//!   which hyper-util's protocol detection waits for without a timer);
//! - on HTTP/1.1, the next request's head has not fully arrived within
//!   `header_read_timeout` of the previous response (hyper counts the wait
//!   for the next head as reading it, so this also ends idle keep-alive);
//! - no request has been in flight for `idle_timeout` (HTTP/2 mostly); the
//!   close is graceful (GOAWAY), and a connection that has not finished one
//!   more `idle_timeout` later (a client not reading its response) is
//!   dropped.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use shared::shutdown::{CancellationToken, TaskTracker};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::Service;

/// Per-connection time bounds, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request head must arrive within this (see the module docs).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` fires. Then the listener is
/// closed at once (new connections are refused), every open connection is
/// asked to finish gracefully (in-flight requests complete, keep-alive
/// ends), and this returns when the last one has closed. The caller bounds
/// that wait with its grace period.
pub async fn serve(listener: TcpListener, router: Router, limits: ConnectionLimits, stop: CancellationToken) {
    let builder = Arc::new(builder(limits));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off, keep going.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, stop) = (builder.clone(), router.clone(), stop.clone());
        tracker.spawn(async move { serve_connection(stream, peer, &builder, router, limits, &stop).await });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

fn builder(limits: ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Detects peers that vanished without closing.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    router: Router,
    limits: ConnectionLimits,
    stop: &CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let request = RequestGuard::begin(tracked.clone());
        // A Router is always ready; a clone per request is its usual use.
        let mut router = router.clone();
        async move {
            let response = router.call(req).await;
            drop(request);
            response
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // The next look at the time bounds; `None` while draining for shutdown
    // (the caller's grace period bounds that).
    let mut check = Some(activity.started + activity.step(limits));
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                check = None;
            }
            () = tokio::time::sleep_until(check.unwrap_or_else(Instant::now)), if check.is_some() => {
                if closing {
                    tracing::debug!(%peer, "connection did not finish closing; dropping it");
                    return;
                }
                let now = Instant::now();
                check = match activity.next_look(limits, now) {
                    Some(at) => Some(at),
                    None => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        Some(now + limits.idle_timeout)
                    }
                };
            }
        }
    }
}

/// What one connection has been doing, for its time bounds.
#[derive(Debug)]
struct Activity {
    started: Instant,
    /// Whether any request head has arrived.
    began: AtomicBool,
    in_flight: AtomicUsize,
    /// When the last request ended, in milliseconds after `started`.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            began: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    /// Requests move the bounds without waking the connection's loop, so it
    /// looks at least this often: a connection closes at most one step
    /// after its bound.
    fn step(&self, limits: ConnectionLimits) -> Duration {
        limits.header_read_timeout.min(limits.idle_timeout)
    }

    /// When to look at the bounds next; `None`: close the connection now.
    fn next_look(&self, limits: ConnectionLimits, now: Instant) -> Option<Instant> {
        let step = self.step(limits);
        match self.close_at(limits) {
            Some(at) if at <= now => None,
            Some(at) => Some(at.min(now + step)),
            None => Some(now + step),
        }
    }

    /// When the connection is due to close if nothing happens meanwhile;
    /// `None` while a request is in flight.
    fn close_at(&self, limits: ConnectionLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.began.load(Ordering::Acquire) {
            return Some(self.started + limits.header_read_timeout);
        }
        let last_end = Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        Some(self.started + last_end + limits.idle_timeout)
    }
}

/// One request in flight on a connection; counts it until dropped.
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.began.store(true, Ordering::Release);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let elapsed = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end_ms.store(elapsed, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
