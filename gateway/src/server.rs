//! Accepting connections: connection caps (global and per client IP), the
//! TLS handshake with a timeout, hyper's auto HTTP/1.1 + HTTP/2 server with
//! a timer (so the header read timeout is enforced), an idle timeout, the
//! client address in request extensions, and per-connection graceful
//! shutdown when the stop token fires.

use crate::activity::Activity;
use crate::client_body::Lingering;
use crate::client_ip::{Key, KeyPrefixes};
use crate::config::{ClientIpSettings, Limits};
use crate::connection::{self, Protocol, Rewind, Setting, StopSignal};
use crate::generation::{Current, Generation};
use crate::metrics::{Metrics, WorkerLabels};
use crate::proxy_protocol;
use crate::send_timeout::TimedIo;
use crate::service::{ClientInfo, ResponseFuture};
use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use shared::shutdown::{CancellationToken, TaskTracker};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

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

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// TLS, proxying.
    Https,
    /// Plain HTTP, proxying or redirecting.
    Http,
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
    let worker = crate::worker_id::current().map_or_else(|| "none".to_string(), |w| w.to_string());
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
        // Spawned as it is: wrapping it in another async block doubled
        // the task's size (the wrapper kept a second copy of the future).
        ctx.tracker.spawn(handle(
            stream,
            peer,
            kind,
            current.clone(),
            ctx.clone(),
            stop.clone(),
            slot,
        ));
    }
    stop.raise();
    tracing::debug!("listener closed");
}

fn refuse(ctx: &ServerContext, peer: SocketAddr, reason: &'static str) {
    ctx.metrics.refuse(reason);
    tracing::debug!(%peer, reason, "connection refused");
}

/// The client address in a connection's PROXY header (the listener
/// expects one); `None`: close it.
async fn proxied_source(
    stream: &mut TcpStream,
    peer: SocketAddr,
    generation: &Generation,
    ctx: &ServerContext,
) -> Option<IpAddr> {
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
/// connection caps) until it closes. Each phase's future is boxed and freed
/// when the phase ends, so an open connection holds only what its current
/// phase needs (the TLS handshake's state while it runs, then the serving
/// loop's): as one future the whole was 13.6 KB, mostly the handshake's,
/// held for the connection's life.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    current: Current,
    ctx: Arc<ServerContext>,
    stop: Arc<StopSignal>,
    mut slot: ConnectionSlot,
) {
    let _open = OpenConnection::count(&ctx.metrics);
    let ctx = &ctx;
    let stop = &*stop;
    let generation = current.load_full();
    let source = if ctx.proxy_protocol {
        let Some(source) = Box::pin(proxied_source(&mut stream, peer, &generation, ctx)).await else {
            return;
        };
        if let Err(reason) = ctx.connections.admit(&mut slot, source) {
            refuse(ctx, peer, reason);
            return;
        }
        source
    } else {
        peer.ip()
    };
    let info = ClientInfo {
        peer,
        ip: source,
        tls: kind == Listener::Https,
    };
    let activity = Arc::new(Activity::default());
    let service = RequestService::new(current, info, kind, activity.clone(), &generation.limits);
    let setting = Setting {
        protocols: &generation.protocols,
        limits: &generation.limits,
        stop,
        metrics: &ctx.metrics,
        peer,
    };
    let limits = &generation.limits;
    match (kind, &generation.tls) {
        (Listener::Http, _) => {
            let Some((protocol, read)) = connection::detect(&mut stream, limits.header_read_timeout).await else {
                return;
            };
            let io = Rewind::new(TimedIo::new(stream, limits.send_timeout), read);
            connection::run(io, protocol, service, activity, setting).await;
        }
        (Listener::Https, None) => tracing::error!("HTTPS connection without a TLS configuration; closing"),
        (Listener::Https, Some(acceptor)) => {
            let stream = TimedIo::new(stream, limits.send_timeout);
            // The handshake, and its result, live in a box of their own
            // that is gone once the serving loop starts.
            let handshake = Box::pin(tls_session(acceptor, stream, service, activity, setting, ctx));
            if let Some(serving) = handshake.await {
                serving.await;
            }
        }
    }
}

/// The TLS handshake, then the serving loop for the protocol ALPN chose
/// (not yet started); `None` when the handshake failed.
async fn tls_session<'a>(
    acceptor: &TlsAcceptor,
    stream: TimedIo<TcpStream>,
    service: RequestService,
    activity: Arc<Activity>,
    setting: Setting<'a>,
    ctx: &ServerContext,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
    let tls = handshake(
        acceptor,
        stream,
        setting.limits.tls_handshake_timeout,
        ctx,
        setting.peer,
    )
    .await?;
    let protocol = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    let io = Rewind::new(tls, bytes::Bytes::new());
    Some(connection::run(io, protocol, service, activity, setting))
}

/// Counts a connection open (`gateway_connections_open`) until dropped.
struct OpenConnection<'a>(&'a Metrics);

impl<'a> OpenConnection<'a> {
    fn count(metrics: &'a Metrics) -> Self {
        metrics.connections.inc();
        Self(metrics)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// The TLS handshake within `timeout`; failures are counted and closed.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TimedIo<TcpStream>,
    timeout: Duration,
    ctx: &ServerContext,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TimedIo<TcpStream>>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(error)) => {
            ctx.metrics.refuse("tls_handshake");
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            ctx.metrics.refuse("tls_handshake");
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// The service of one connection: each request gets the client's
/// address, runs on the generation in force when it arrives, and is
/// counted in the connection's activity until its answer's head is out.
#[derive(Clone)]
struct RequestService {
    current: Current,
    info: ClientInfo,
    kind: Listener,
    activity: Arc<Activity>,
    /// How early-answered HTTP/2 bodies are drained: the gap between
    /// bytes and the most bytes (see `client_body::Lingering`).
    linger: (Duration, u64),
}

impl std::fmt::Debug for RequestService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestService")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl RequestService {
    fn new(current: Current, info: ClientInfo, kind: Listener, activity: Arc<Activity>, limits: &Limits) -> Self {
        let linger = (
            limits.body_read_timeout,
            limits.max_body.as_u64().saturating_mul(LINGER_BODIES),
        );
        Self {
            current,
            info,
            kind,
            activity,
            linger,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for RequestService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        let mut req = if req.version() == http::Version::HTTP_2 && !http_body::Body::is_end_stream(req.body()) {
            // An answer that comes before the body must still reach the client.
            let (gap, most) = self.linger;
            req.map(|body| Body::new(Lingering::new(Body::new(body), gap, most)))
        } else {
            req.map(Body::new)
        };
        let now = self.current.load();
        let ip = now.trusted.resolve(self.info.ip, req.headers());
        req.extensions_mut().insert(ClientInfo { ip, ..self.info });
        let call = match self.kind {
            Listener::Https => now.proxying.call(req),
            Listener::Http => now.plain.call(req),
        };
        self.activity.request_started();
        Answer {
            call,
            answered: Some(RequestAnswered(self.activity.clone())),
        }
    }
}

/// A request's answer; counts it answered when its head is out (or when
/// it is dropped unanswered).
struct Answer {
    call: ResponseFuture,
    answered: Option<RequestAnswered>,
}

impl Future for Answer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let response = std::task::ready!(self.call.as_mut().poll(cx));
        self.answered = None;
        Poll::Ready(Ok(response))
    }
}

/// How much of an HTTP/2 request body answered early is drained, in
/// `max_body`s (64 MiB by default) before its stream is reset.
const LINGER_BODIES: u64 = 64;

/// Counts a request's answer (its head is out, or it was dropped).
struct RequestAnswered(Arc<Activity>);

impl Drop for RequestAnswered {
    fn drop(&mut self) {
        self.0.request_answered();
    }
}
