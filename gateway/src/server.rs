//! Accepting connections: connection caps (global and per client IP), the
//! TLS handshake with a timeout, hyper's auto HTTP/1.1 + HTTP/2 server with
//! a timer (so the header read timeout is enforced), an idle timeout, the
//! client address in request extensions, and per-connection graceful
//! shutdown when the stop token fires.

use crate::client_ip::TrustedProxies;
use crate::config::{ClientIpSettings, Limits};
use crate::metrics::{Metrics, WorkerLabels};
use crate::proxy_protocol;
use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use shared::shutdown::{CancellationToken, TaskTracker};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

/// What the gateway observed about the client of a request; in every
/// request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client: the TCP peer or PROXY source, or, when that is a trusted
    /// proxy, the address found in `X-Forwarded-For` (see `client_ip`).
    pub ip: IpAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The future of one request's response.
pub type ResponseFuture = std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// The service every connection of a listener runs: a request in, its
/// response out (errors already turned into responses). Called by
/// reference, so a request costs no service clone.
#[derive(Clone)]
pub struct HttpService(Arc<dyn Fn(Request<Body>) -> ResponseFuture + Send + Sync>);

impl HttpService {
    /// A service from its request handler.
    pub fn new(handler: impl Fn(Request<Body>) -> ResponseFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(handler))
    }

    /// Starts answering `req`.
    pub fn call(&self, req: Request<Body>) -> ResponseFuture {
        (self.0)(req)
    }
}

impl std::fmt::Debug for HttpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpService")
    }
}

/// Open-connection accounting: a global cap and a per-IP cap.
#[derive(Debug)]
pub struct ConnectionLimits {
    global: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// One open connection's share of the limits; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    _global: OwnedSemaphorePermit,
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    /// Limits from the configuration.
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            global: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: limits.max_connections_per_ip,
        })
    }

    /// A slot for a connection from `ip`, or the name of the cap it hits.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, &'static str> {
        let global = self.global.clone().try_acquire_owned().map_err(|_| "max_connections")?;
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err("max_connections_per_ip");
        }
        *n += 1;
        Ok(ConnectionSlot {
            _global: global,
            limits: self.clone(),
            ip,
        })
    }
}

/// What one configuration gives the listeners. A reload builds a new one
/// and swaps it in whole: new connections and new requests use it, while
/// requests already running finish on the one they started with.
pub struct Generation {
    /// Timeouts and sizes for new connections.
    pub limits: Limits,
    /// hyper's connection builder, enforcing `limits`.
    pub builder: auto::Builder<TokioExecutor>,
    /// Peers whose forwarding headers are believed.
    pub trusted: TrustedProxies,
    /// TLS for new handshakes on the HTTPS listener.
    pub tls: Option<TlsAcceptor>,
    /// The proxying stack (HTTPS listener).
    pub proxying: HttpService,
    /// The plain-HTTP listener's stack (proxying or redirect).
    pub plain: HttpService,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The generation in force, swapped atomically on reload.
pub type Current = Arc<arc_swap::ArcSwap<Generation>>;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// TLS, proxying.
    Https,
    /// Plain HTTP, proxying or redirecting.
    Http,
}

/// A hyper builder enforcing `limits`.
pub fn hyper_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_header = usize::try_from(limits.max_header_size.as_u64()).unwrap_or(usize::MAX);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Small bodies are copied after the head into one buffer (one
        // write, no buffer queue); see `upstream_client`.
        .writev(false)
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(max_header.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// What the accept loops share for the process's lifetime (settings here
/// need a restart to change).
#[derive(Debug)]
pub struct ServerContext {
    /// Open-connection caps.
    pub connections: Arc<ConnectionLimits>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Fires at shutdown.
    pub stop: CancellationToken,
    /// Tracks connection tasks for the drain.
    pub tracker: TaskTracker,
    /// Whether public connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl ServerContext {
    /// A context for the given caps.
    pub fn new(
        limits: &Limits,
        client_ip: &ClientIpSettings,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            connections: ConnectionLimits::new(limits),
            metrics,
            stop,
            tracker,
            proxy_protocol: client_ip.proxy_protocol,
        }
    }
}

/// Accepts connections on `listener` until the stop token fires, serving
/// each with the generation current when it arrives.
pub async fn accept_loop(listener: TcpListener, kind: Listener, current: Current, ctx: Arc<ServerContext>) {
    // This loop's worker never changes: find its counter once.
    let worker = crate::workers::current().map_or_else(|| "none".to_string(), |w| w.to_string());
    let accepted_here = ctx.metrics.accepted.get_or_create(&WorkerLabels { worker }).clone();
    // This loop's connections watch their own signal, raised when the loop ends.
    let stop = Arc::new(StopSignal::default());
    loop {
        let accepted = tokio::select! {
            () = ctx.stop.cancelled() => break,
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
        let slot = match ctx.connections.acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                ctx.metrics.refuse(reason);
                tracing::debug!(%peer, reason, "connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        accepted_here.inc();
        let (ctx2, current, stop) = (ctx.clone(), current.clone(), stop.clone());
        ctx.tracker.spawn(async move {
            ctx2.metrics.connections.inc();
            handle(stream, peer, kind, current, &ctx2, &stop).await;
            ctx2.metrics.connections.dec();
            drop(slot);
        });
    }
    stop.raise();
    tracing::debug!("listener closed");
}

/// The stop signal as one accept loop's connections watch it. A connection
/// reads one flag per wake-up (several per request); polling the stop token
/// itself took two mutex locks each time (the token's and its `Notify`'s).
#[derive(Debug, Default)]
struct StopSignal {
    raised: AtomicBool,
    notify: Notify,
}

impl StopSignal {
    /// Raises the signal and wakes every connection waiting on it.
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }
}

/// The client address a connection speaks for: the TCP peer, or the source
/// in its PROXY header when the listener expects one. `None`: close it.
async fn connection_source(
    stream: &mut TcpStream,
    peer: SocketAddr,
    generation: &Generation,
    ctx: &ServerContext,
) -> Option<IpAddr> {
    if !ctx.proxy_protocol {
        return Some(peer.ip());
    }
    if !generation.trusted.contains(peer.ip()) {
        ctx.metrics.refuse("proxy_protocol_untrusted");
        tracing::warn!(%peer, "PROXY header expected from an untrusted peer; closing");
        return None;
    }
    match tokio::time::timeout(
        generation.limits.tls_handshake_timeout,
        proxy_protocol::read_header(stream),
    )
    .await
    {
        Ok(Ok(source)) => Some(source.map_or(peer.ip(), |s| s.ip())),
        Ok(Err(error)) => {
            ctx.metrics.refuse("proxy_protocol_malformed");
            tracing::warn!(%peer, %error, "bad PROXY header; closing");
            None
        }
        Err(_) => {
            ctx.metrics.refuse("proxy_protocol_malformed");
            tracing::warn!(%peer, "PROXY header not received in time; closing");
            None
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    current: Current,
    ctx: &ServerContext,
    stop: &StopSignal,
) {
    let generation = current.load_full();
    let Some(source) = connection_source(&mut stream, peer, &generation, ctx).await else {
        return;
    };
    let info = ClientInfo {
        peer,
        ip: source,
        tls: kind == Listener::Https,
    };
    match (kind, &generation.tls) {
        (Listener::Http, _) => serve(stream, info, kind, current, &generation, stop).await,
        (Listener::Https, None) => tracing::error!("HTTPS connection without a TLS configuration; closing"),
        (Listener::Https, Some(acceptor)) => {
            match tokio::time::timeout(generation.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => serve(tls_stream, info, kind, current, &generation, stop).await,
                Ok(Err(error)) => {
                    ctx.metrics.refuse("tls_handshake");
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                }
                Err(_) => {
                    ctx.metrics.refuse("tls_handshake");
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

/// Activity of one connection, for the idle timeout.
#[derive(Debug)]
struct Activity {
    started: Instant,
    active: AtomicUsize,
    last_millis: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(ms, Ordering::Relaxed);
    }

    /// When the connection becomes idle-expired if nothing happens.
    fn deadline(&self, idle: Duration) -> tokio::time::Instant {
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        tokio::time::Instant::from_std(self.started + last + idle)
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.active.load(Ordering::Relaxed) == 0 && tokio::time::Instant::now() >= self.deadline(idle)
    }
}

async fn serve<I>(io: I, info: ClientInfo, kind: Listener, current: Current, generation: &Generation, stop: &StopSignal)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        started: Instant::now(),
        active: AtomicUsize::new(0),
        last_millis: AtomicU64::new(0),
    });
    let tracked = activity.clone();
    let hyper_service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(Body::new);
        // Each request runs on the generation in force when it arrives.
        let now = current.load();
        let ip = now.trusted.resolve(info.ip, req.headers());
        req.extensions_mut().insert(ClientInfo { ip, ..info });
        let call = match kind {
            Listener::Https => now.proxying.call(req),
            Listener::Http => now.plain.call(req),
        };
        let activity = tracked.clone();
        activity.active.fetch_add(1, Ordering::Relaxed);
        async move {
            let response = call.await;
            activity.active.fetch_sub(1, Ordering::Relaxed);
            activity.touch();
            Ok::<_, Infallible>(response)
        }
    });
    let conn = generation.builder.serve_connection(TokioIo::new(io), hyper_service);
    tokio::pin!(conn);
    // Made before the flag is first read: a raise after that still wakes it.
    let stopped = stop.notify.notified();
    tokio::pin!(stopped);
    let idle = generation.limits.idle_timeout;
    let idle_timer = tokio::time::sleep_until(activity.deadline(idle));
    tokio::pin!(idle_timer);
    let mut closing = false;
    // Wakers for the stop signal and the idle timer are registered once
    // (again after the timer moves); other wake-ups, nearly all for the
    // connection, read two flags after polling it.
    let mut registered = false;
    let result = std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            if closing {
                return Poll::Pending;
            }
            if stop.is_raised() {
                conn.as_mut().graceful_shutdown();
                closing = true;
                continue;
            }
            if !registered {
                registered = true;
                let _ = stopped.as_mut().poll(cx);
                if idle_timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            } else if !idle_timer.is_elapsed() {
                return Poll::Pending;
            }
            if activity.is_idle(idle) {
                conn.as_mut().graceful_shutdown();
                closing = true;
            } else {
                // Requests are running: look again one idle period from now.
                activity.touch();
                idle_timer.as_mut().reset(activity.deadline(idle));
                registered = false;
            }
        }
    })
    .await;
    if let Err(error) = result {
        tracing::debug!(peer = %info.peer, %error, "connection ended with an error");
    }
}
