//! Accepting connections: connection caps (global and per client IP), the
//! TLS handshake with a timeout, hyper's auto HTTP/1.1 + HTTP/2 server with
//! a timer (so the header read timeout is enforced), an idle timeout, the
//! client address in request extensions, and per-connection graceful
//! shutdown when the stop token fires.

use crate::activity::{Activity, SendContext};
use crate::client_body::Lingering;
use crate::client_ip::{KeyPrefixes, TrustedProxies};
use crate::config::{ClientIpSettings, Limits};
use crate::errors::ConnectionFault;
use crate::metrics::{Metrics, WorkerLabels};
use crate::proxy_protocol;
use crate::rate_limit::Key;
use crate::send_timeout::{self, StreamExecutor, TimedIo};
use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use shared::shutdown::{CancellationToken, TaskTracker};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
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

/// Open-connection accounting: a global cap, and a cap per client key
/// (the client's address grouped like the rate limiter's keys: an IPv6
/// client's whole /64 shares one cap). Behind a PROXY-protocol balancer the
/// client is the address its header carries, not the balancer's.
#[derive(Debug)]
pub struct ConnectionLimits {
    global: Arc<Semaphore>,
    per_key: Mutex<HashMap<Key, usize>>,
    max_per_key: usize,
    prefixes: KeyPrefixes,
}

/// One open connection's place under the global cap; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    _global: OwnedSemaphorePermit,
    client: Option<(Arc<ConnectionLimits>, Key)>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Some((limits, key)) = &self.client else { return };
        let mut map = limits.per_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}

impl ConnectionLimits {
    /// Limits from the configuration, keyed with `prefixes`.
    pub fn new(limits: &Limits, prefixes: KeyPrefixes) -> Arc<Self> {
        Arc::new(Self {
            global: Arc::new(Semaphore::new(limits.max_connections)),
            per_key: Mutex::new(HashMap::new()),
            max_per_key: limits.max_connections_per_ip,
            prefixes,
        })
    }

    /// A place under the global cap, or the name of the cap.
    pub fn acquire(self: &Arc<Self>) -> Result<ConnectionSlot, &'static str> {
        let global = self.global.clone().try_acquire_owned().map_err(|_| "max_connections")?;
        Ok(ConnectionSlot {
            _global: global,
            client: None,
        })
    }

    /// Counts `slot` against the cap of the client at `ip`, or names the cap.
    pub fn admit(self: &Arc<Self>, slot: &mut ConnectionSlot, ip: IpAddr) -> Result<(), &'static str> {
        let key = self.prefixes.key(ip);
        let mut map = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= self.max_per_key {
            if *n == 0 {
                map.remove(&key);
            }
            return Err("max_connections_per_ip");
        }
        *n += 1;
        slot.client = Some((self.clone(), key));
        Ok(())
    }
}

/// What one configuration gives the listeners. A reload builds a new one
/// and swaps it in whole: new connections and new requests use it, while
/// requests already running finish on the one they started with.
pub struct Generation {
    /// Timeouts and sizes for new connections.
    pub limits: Limits,
    /// hyper's connection builder, enforcing `limits`.
    pub builder: auto::Builder<StreamExecutor>,
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

/// A hyper builder enforcing `limits`; HTTP/2 streams run under the send
/// timeout (see `send_timeout`).
pub fn hyper_builder(limits: &Limits, metrics: Arc<Metrics>) -> auto::Builder<StreamExecutor> {
    let mut builder = auto::Builder::new(StreamExecutor::new(limits.send_timeout, metrics));
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
        let prefixes = KeyPrefixes {
            v4: client_ip.ipv4_prefix,
            v6: client_ip.ipv6_prefix,
        };
        Self {
            connections: ConnectionLimits::new(limits, prefixes),
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
        let mut slot = match ctx.connections.acquire() {
            Ok(slot) => slot,
            Err(reason) => {
                refuse(&ctx, peer, reason);
                continue;
            }
        };
        // Without PROXY headers the peer is the client: refuse at once.
        // With them, the client is known only once its header is read.
        if !ctx.proxy_protocol {
            if let Err(reason) = ctx.connections.admit(&mut slot, peer.ip()) {
                refuse(&ctx, peer, reason);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        accepted_here.inc();
        let (ctx2, current, stop) = (ctx.clone(), current.clone(), stop.clone());
        ctx.tracker.spawn(async move {
            ctx2.metrics.connections.inc();
            handle(stream, peer, kind, current, &ctx2, &stop, slot).await;
            ctx2.metrics.connections.dec();
        });
    }
    stop.raise();
    tracing::debug!("listener closed");
}

fn refuse(ctx: &ServerContext, peer: SocketAddr, reason: &'static str) {
    ctx.metrics.refuse(reason);
    tracing::debug!(%peer, reason, "connection refused");
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
        // Anyone can connect: counted, logged at debug (no log flood).
        tracing::debug!(%peer, "PROXY header expected from an untrusted peer; closing");
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

/// Serves one accepted connection, holding `slot` (its place under the
/// connection caps) until it closes.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    current: Current,
    ctx: &Arc<ServerContext>,
    stop: &StopSignal,
    mut slot: ConnectionSlot,
) {
    let generation = current.load_full();
    let Some(source) = connection_source(&mut stream, peer, &generation, ctx).await else {
        return;
    };
    if ctx.proxy_protocol {
        if let Err(reason) = ctx.connections.admit(&mut slot, source) {
            refuse(ctx, peer, reason);
            return;
        }
    }
    let info = ClientInfo {
        peer,
        ip: source,
        tls: kind == Listener::Https,
    };
    let stream = TimedIo::new(stream, generation.limits.send_timeout);
    match (kind, &generation.tls) {
        (Listener::Http, _) => serve(stream, info, kind, current, &generation, stop, ctx).await,
        (Listener::Https, None) => tracing::error!("HTTPS connection without a TLS configuration; closing"),
        (Listener::Https, Some(acceptor)) => {
            match tokio::time::timeout(generation.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => serve(tls_stream, info, kind, current, &generation, stop, ctx).await,
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

/// Serves one connection with hyper until it ends: the idle timeout
/// closes it gracefully once nothing has been answered or sent for
/// `idle_timeout` (then, should anything still hold it open, such as an
/// HTTP/2 stream's last bytes the client will not take, it is dropped after
/// `send_timeout`), and the stop signal closes it gracefully at shutdown.
async fn serve<I>(
    io: I,
    info: ClientInfo,
    kind: Listener,
    current: Current,
    generation: &Generation,
    stop: &StopSignal,
    ctx: &ServerContext,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let tracked = activity.clone();
    let linger = (generation.limits.body_read_timeout, generation.limits.max_body.as_u64());
    let hyper_service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = if req.version() == http::Version::HTTP_2 && !http_body::Body::is_end_stream(req.body()) {
            // An answer that comes before the body must still reach the client.
            req.map(|body| {
                Body::new(Lingering::new(
                    Body::new(body),
                    linger.0,
                    linger.1.saturating_mul(LINGER_BODIES),
                ))
            })
        } else {
            req.map(Body::new)
        };
        // Each request runs on the generation in force when it arrives.
        let now = current.load();
        let ip = now.trusted.resolve(info.ip, req.headers());
        req.extensions_mut().insert(ClientInfo { ip, ..info });
        let call = match kind {
            Listener::Https => now.proxying.call(req),
            Listener::Http => now.plain.call(req),
        };
        let answered = RequestAnswered(tracked.clone());
        answered.0.request_started();
        async move {
            let response = call.await;
            drop(answered);
            Ok::<_, Infallible>(response)
        }
    });
    let mut context = Some(SendContext {
        connection: activity.clone(),
        stream: None,
    });
    let conn = generation.builder.serve_connection(TokioIo::new(io), hyper_service);
    tokio::pin!(conn);
    // Made before the flag is first read: a raise after that still wakes it.
    let stopped = stop.notify.notified();
    tokio::pin!(stopped);
    let idle = generation.limits.idle_timeout;
    let idle_timer = tokio::time::sleep_until(activity.deadline(idle));
    tokio::pin!(idle_timer);
    let mut closing = Closing::No;
    // Wakers for the stop signal and the idle timer are registered once
    // (again after the timer moves); other wake-ups, nearly all for the
    // connection, read two flags after polling it.
    let mut registered = false;
    let result = std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = SendContext::enter(&mut context, || conn.as_mut().poll(cx)) {
                return Poll::Ready(Some(result));
            }
            match closing {
                Closing::Stopping => return Poll::Pending,
                Closing::Idle => {
                    // Idle and still open: only bytes the client will not
                    // take are left. They get one send timeout.
                    return match idle_timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    };
                }
                Closing::No => {}
            }
            if stop.is_raised() {
                conn.as_mut().graceful_shutdown();
                closing = Closing::Stopping;
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
                closing = Closing::Idle;
                idle_timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + generation.limits.send_timeout);
            } else {
                // Requests are running: look again one idle period from now.
                activity.touch();
                idle_timer.as_mut().reset(activity.deadline(idle));
                registered = false;
            }
        }
    })
    .await;
    match result {
        Some(Ok(())) => {}
        Some(Err(error)) => count_connection_error(&*error, info.peer, &ctx.metrics),
        None => tracing::debug!(peer = %info.peer, "idle connection dropped: its last bytes were not taken in time"),
    }
}

/// How much of an HTTP/2 request body answered early is drained, in
/// `max_body`s (64 MiB by default) before its stream is reset.
const LINGER_BODIES: u64 = 64;

/// Why a connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    /// At shutdown: in-flight requests get the drain's grace period.
    Stopping,
    /// Idle: what is left gets one send timeout.
    Idle,
}

/// Counts a request's answer (its head is out, or it was dropped).
struct RequestAnswered(Arc<Activity>);

impl Drop for RequestAnswered {
    fn drop(&mut self) {
        self.0.request_answered();
    }
}

/// Counts what ended a connection with an error when it was the client's
/// doing: hyper answers a malformed (400) or oversized (431) head, or a
/// late one, before any layer sees a request.
fn count_connection_error(error: &(dyn std::error::Error + 'static), peer: SocketAddr, metrics: &Metrics) {
    let fault = match error.downcast_ref::<hyper::Error>() {
        Some(e) if e.is_parse_too_large() => Some(ConnectionFault::HeaderTooLarge),
        Some(e) if e.is_parse() => Some(ConnectionFault::BadHead),
        Some(e) if e.is_timeout() => Some(ConnectionFault::HeaderTimeout),
        _ if send_timeout::is_send_timeout(error) => Some(ConnectionFault::SendTimeout),
        _ => None,
    };
    if let Some(fault) = fault {
        fault.count(metrics);
    }
    tracing::debug!(%peer, %error, reason = fault.map(ConnectionFault::reason), "connection ended with an error");
}
