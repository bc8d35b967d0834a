//! One client connection, from its protocol to its close: hyper serves it
//! (HTTP/1.1, or HTTP/2 by ALPN or prior knowledge), and a driver watches
//! the stop signal, the idle timeout and, for HTTP/1.1, idle buffers.
//!
//! Contract:
//! - An HTTP/1.1 connection idle for [`PARK_AFTER`] after a request hands
//!   its buffers back: its hyper session is shut down without closing the socket (hyper keeps
//!   an 8 KiB read and an 8 KiB write buffer for a session's whole life),
//!   and the connection waits for the client's next bytes holding no more
//!   than the socket and a small state; then a new session serves them.
//!   The client sees one keep-alive connection throughout.
//! - A connection with nothing being answered or sent for `idle_timeout` is
//!   closed (HTTP/2 gracefully, with GOAWAY; what still holds it open then
//!   gets one `send_timeout`).
//! - When the stop signal is raised, in-flight requests finish and the
//!   connection closes (the drain's grace period bounds that).
//! - What hyper refuses before any layer sees a request (a malformed,
//!   oversized or late head) and bytes a client will not take are counted
//!   as the client's faults.

use crate::activity::{Activity, SendContext};
use crate::config::Limits;
use crate::errors::ConnectionFault;
use crate::metrics::Metrics;
use crate::send_timeout::{self, StreamExecutor};
use axum::body::Body;
use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// How long an HTTP/1.1 connection stays idle before handing its buffers
/// back (long enough that a busy keep-alive connection never does).
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface a prior-knowledge (h2c) client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The stop signal as one accept loop's connections watch it. A connection
/// reads one flag per wake-up (several per request); polling the stop token
/// itself took two mutex locks each time (the token's and its `Notify`'s).
#[derive(Debug, Default)]
pub struct StopSignal {
    raised: AtomicBool,
    notify: Notify,
}

impl StopSignal {
    /// Raises the signal and wakes every connection waiting on it.
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }
}

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or 1.0).
    Http1,
    /// HTTP/2.
    Http2,
}

/// hyper's builders for each protocol, enforcing the limits.
#[derive(Debug, Clone)]
pub struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<StreamExecutor>,
}

impl Protocols {
    /// Builders enforcing `limits`; HTTP/2 streams run under the send
    /// timeout (see `send_timeout`).
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Self {
        let max_header = usize::try_from(limits.max_header_size.as_u64()).unwrap_or(usize::MAX);
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // Small bodies are copied after the head into one buffer (one
            // write, no buffer queue); see `upstream_client`.
            .writev(false)
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(max_header.max(8192));
        let mut h2 = http2::Builder::new(StreamExecutor::new(limits.send_timeout, metrics));
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        Self { h1, h2 }
    }
}

/// Reads the first bytes of a plain-HTTP connection, as far as needed to
/// tell HTTP/2 with prior knowledge from HTTP/1.1; `None` if the client
/// closed or sent nothing within `timeout`. The bytes read go back in front
/// of the stream.
pub async fn detect(stream: &mut TcpStream, timeout: Duration) -> Option<(Protocol, Bytes)> {
    let read = async {
        let mut seen = Vec::with_capacity(H2_PREFACE.len());
        while seen.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&seen) {
            let mut buf = [0u8; 24];
            let want = H2_PREFACE.len() - seen.len();
            match stream.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let protocol = if seen == H2_PREFACE {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        Some((protocol, Bytes::from(seen)))
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// An IO object that can say when it has bytes to read without reading
/// them (so a parked connection holds no read buffer).
pub trait ReadReady {
    /// Ready when a read would not block (data, end of stream or error).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl<I: ReadReady> ReadReady for send_timeout::TimedIo<I> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }
}

impl<I: ReadReady> ReadReady for tokio_rustls::server::TlsStream<I> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // rustls holds no unread plaintext here: the session before this
        // wait read until it would block.
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// An IO object with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    /// `inner`, with `prefix` to be read first.
    pub fn new(inner: I, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }

    /// The same, with `more` read before what is left of the prefix.
    fn put_back(mut self, more: Bytes) -> Self {
        if !more.is_empty() {
            self.prefix = if self.prefix.is_empty() {
                more
            } else {
                [more, std::mem::take(&mut self.prefix)].concat().into()
            };
        }
        self
    }
}

impl<I: ReadReady> ReadReady for Rewind<I> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            self.inner.poll_read_ready(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The service a connection runs: hyper's, cloneable (each HTTP/1.1
/// session takes a copy) and with futures that need no pinning (so a
/// session can end without closing its socket).
pub trait ConnectionService:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Unpin + Send + 'static,
    > + Clone
    + Unpin
    + Send
    + 'static
{
}

impl<S> ConnectionService for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Unpin + Send + 'static,
        > + Clone
        + Unpin
        + Send
        + 'static
{
}

/// What a connection needs besides its IO and service.
#[derive(Debug)]
pub struct Setting<'a> {
    /// hyper's builders.
    pub protocols: &'a Protocols,
    /// Timeouts.
    pub limits: &'a Limits,
    /// The accept loop's stop signal.
    pub stop: &'a StopSignal,
    /// Where client faults are counted.
    pub metrics: &'a Metrics,
    /// The client, for logs.
    pub peer: SocketAddr,
}

/// Serves a connection until it ends (see the module documentation). The
/// future is boxed for the connection's protocol alone: one future for
/// both would be sized (and allocated) for the larger.
pub fn run<'a, I, S>(
    io: Rewind<I>,
    protocol: Protocol,
    service: S,
    activity: Arc<Activity>,
    setting: Setting<'a>,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    S: ConnectionService,
{
    match protocol {
        Protocol::Http1 => Box::pin(async move {
            let ended = run_http1(io, service, &activity, &setting).await;
            report(ended, &setting);
        }),
        Protocol::Http2 => Box::pin(async move {
            let session = Box::pin(setting.protocols.h2.serve_connection(TokioIo::new(io), service));
            let ended = drive(&mut H2(session), &activity, &setting, None).await;
            report(ended, &setting);
        }),
    }
}

/// Logs and counts how a connection ended.
fn report(ended: Ended, setting: &Setting<'_>) {
    match ended {
        Ended::Finished(Ok(())) | Ended::Parked => {}
        Ended::Finished(Err(error)) => count_connection_error(&error, setting.peer, setting.metrics),
        Ended::Dropped => {
            tracing::debug!(peer = %setting.peer, "idle connection dropped: its last bytes were not taken in time");
        }
    }
}

/// HTTP/1.1: sessions one after another on one socket, parked in between
/// while the client is quiet.
async fn run_http1<I, S>(mut io: Rewind<I>, service: S, activity: &Arc<Activity>, setting: &Setting<'_>) -> Ended
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    S: ConnectionService,
{
    loop {
        let session = setting.protocols.h1.serve_connection(TokioIo::new(io), service.clone());
        let mut session = H1(Box::new(session));
        match drive(&mut session, activity, setting, Some(PARK_AFTER)).await {
            Ended::Parked => {
                let parts = session.0.into_parts();
                io = parts.io.into_inner().put_back(parts.read_buf);
            }
            other => return other,
        }
        if !wait_for_client(&mut io, activity, setting).await {
            return Ended::Finished(Ok(()));
        }
    }
}

/// Waits, holding no buffer, until the client sends its next bytes (true),
/// or the idle timeout passes or the stop signal is raised (false).
async fn wait_for_client<I: ReadReady>(io: &mut I, activity: &Activity, setting: &Setting<'_>) -> bool {
    let stopped = setting.stop.notify.notified();
    if setting.stop.is_raised() {
        return false;
    }
    tokio::select! {
        ready = std::future::poll_fn(move |cx| io.poll_read_ready(cx)) => ready.is_ok(),
        () = tokio::time::sleep_until(activity.deadline(setting.limits.idle_timeout)) => false,
        () = stopped => false,
    }
}

/// How a driven session ended.
enum Ended {
    /// hyper finished (the client closed, or an error).
    Finished(Result<(), hyper::Error>),
    /// Shut down to hand its buffers back; the socket is open.
    Parked,
    /// Idle and closing, but still held open after one send timeout.
    Dropped,
}

/// A hyper session the driver can poll and shut down.
trait Session {
    /// Polls it; for HTTP/1.1, without closing the socket when it ends.
    fn poll_session(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>>;

    /// Starts a graceful shutdown (HTTP/1.1: after the current exchange;
    /// HTTP/2: GOAWAY).
    fn shut_down(&mut self);
}

/// An HTTP/1.1 session, boxed so that a parked connection frees it.
struct H1<I, S: ConnectionService>(Box<http1::Connection<TokioIo<Rewind<I>>, S>>);

impl<I, S> Session for H1<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ConnectionService,
{
    fn poll_session(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_without_shutdown(cx)
    }

    fn shut_down(&mut self) {
        Pin::new(&mut *self.0).graceful_shutdown();
    }
}

/// hyper's HTTP/2 connection over `I`.
type Http2Connection<I, S> = http2::Connection<TokioIo<Rewind<I>>, S, StreamExecutor>;

/// An HTTP/2 session.
struct H2<I, S: ConnectionService>(Pin<Box<Http2Connection<I, S>>>);

impl<I, S> Session for H2<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ConnectionService,
{
    fn poll_session(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.as_mut().poll(cx)
    }

    fn shut_down(&mut self) {
        self.0.as_mut().graceful_shutdown();
    }
}

/// Why a session is being shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    /// At shutdown: in-flight requests get the drain's grace period.
    Stopping,
    /// Idle past `park_after`: to hand its buffers back.
    Parking,
    /// Idle past `idle_timeout`: what is left gets one send timeout.
    Idle,
}

/// What the driver does after the watcher has looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Nothing: wait for the session or a watched event to wake the task.
    Wait,
    /// Shut the session down gracefully, then poll it again.
    ShutDown,
    /// Drop the session: idle and shut down, it was still held open one
    /// send timeout later.
    Drop,
}

/// The stop/idle watcher of one session.
///
/// Contract: [`Watcher::watch`], called after each poll of the session
/// that left it pending, says [`Watch::ShutDown`] once, when the stop
/// signal is raised, or when the connection has been idle (see
/// `Activity`) for `park_after` after having served a request (a *park*:
/// HTTP/1.1 hands its buffers back) or for `idle_timeout`; after an idle
/// shutdown it says [`Watch::Drop`] if the session is still there one
/// `send_timeout` later. Its wakers (the stop signal, one timer) are
/// registered once, and again only when the timer moves, so a wake-up
/// for the session costs two flag reads.
struct Watcher<'w, 's> {
    activity: &'w Activity,
    stop: &'s StopSignal,
    stopped: Pin<&'w mut tokio::sync::futures::Notified<'s>>,
    timer: Pin<&'w mut tokio::time::Sleep>,
    idle: Duration,
    send_timeout: Duration,
    /// The park threshold, or the idle timeout when parking is off.
    quiet: Duration,
    parks: bool,
    first_request: u64,
    closing: Closing,
    registered: bool,
}

impl<'w, 's> Watcher<'w, 's> {
    /// A watcher over `activity`, made before the stop flag is first read
    /// (`stopped` from the signal's `Notify`), so that a raise after that
    /// still wakes the task; `timer` is reset by the watcher.
    fn new(
        activity: &'w Activity,
        stop: &'s StopSignal,
        stopped: Pin<&'w mut tokio::sync::futures::Notified<'s>>,
        mut timer: Pin<&'w mut tokio::time::Sleep>,
        limits: &Limits,
        park_after: Option<Duration>,
    ) -> Self {
        let quiet = park_after.map_or(limits.idle_timeout, |p| p.min(limits.idle_timeout));
        timer.as_mut().reset(activity.deadline(quiet));
        Self {
            activity,
            stop,
            stopped,
            timer,
            idle: limits.idle_timeout,
            send_timeout: limits.send_timeout,
            quiet,
            parks: park_after.is_some(),
            first_request: activity.started_total(),
            closing: Closing::No,
            registered: false,
        }
    }

    /// Whether the session was shut down to park.
    fn parking(&self) -> bool {
        self.closing == Closing::Parking
    }

    /// What to do now (see the type's contract).
    fn watch(&mut self, cx: &mut Context<'_>) -> Watch {
        match self.closing {
            Closing::Stopping | Closing::Parking => return Watch::Wait,
            Closing::Idle => {
                return match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Watch::Drop,
                    Poll::Pending => Watch::Wait,
                };
            }
            Closing::No => {}
        }
        if self.stop.is_raised() {
            self.closing = Closing::Stopping;
            return Watch::ShutDown;
        }
        loop {
            if !self.registered {
                self.registered = true;
                let _ = self.stopped.as_mut().poll(cx);
                if self.timer.as_mut().poll(cx).is_pending() {
                    return Watch::Wait;
                }
            } else if !self.timer.is_elapsed() {
                return Watch::Wait;
            }
            // A session parks only once it has served a request: before
            // that, hyper's header timeout is what bounds it (a head that
            // trickles in cannot restart it by parking), and a park could
            // not be told from a client's first request being cut short.
            let parkable = self.parks && self.activity.started_total() > self.first_request;
            let threshold = if parkable { self.quiet } else { self.idle };
            if self.activity.is_busy() {
                // Idle time counts from the end of what is running.
                self.activity.touch();
            }
            if self.activity.is_idle(threshold) {
                self.closing = if parkable { Closing::Parking } else { Closing::Idle };
                let drop_at = tokio::time::Instant::now() + self.send_timeout;
                self.timer.as_mut().reset(drop_at);
                return Watch::ShutDown;
            }
            self.timer.as_mut().reset(self.activity.deadline(threshold));
            self.registered = false;
        }
    }
}

/// Drives `session` until it ends, shutting it down or dropping it when
/// its [`Watcher`] says so.
async fn drive<T: Session>(
    session: &mut T,
    activity: &Arc<Activity>,
    setting: &Setting<'_>,
    park_after: Option<Duration>,
) -> Ended {
    let mut context = Some(SendContext {
        connection: activity.clone(),
        stream: None,
    });
    let stopped = setting.stop.notify.notified();
    tokio::pin!(stopped);
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut watcher = Watcher::new(activity, setting.stop, stopped, timer, setting.limits, park_after);
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = SendContext::enter(&mut context, || session.poll_session(cx)) {
                return Poll::Ready(match (watcher.parking(), result) {
                    (true, Ok(())) => Ended::Parked,
                    (_, result) => Ended::Finished(result),
                });
            }
            match watcher.watch(cx) {
                Watch::Wait => return Poll::Pending,
                Watch::ShutDown => session.shut_down(),
                Watch::Drop => return Poll::Ready(Ended::Dropped),
            }
        }
    })
    .await
}

/// Counts what ended a connection with an error when it was the client's
/// doing: hyper answers a malformed (400) or oversized (431) head, or a
/// late one, before any layer sees a request.
fn count_connection_error(error: &hyper::Error, peer: SocketAddr, metrics: &Metrics) {
    let fault = if error.is_parse_too_large() {
        Some(ConnectionFault::HeaderTooLarge)
    } else if error.is_parse() {
        Some(ConnectionFault::BadHead)
    } else if error.is_timeout() {
        Some(ConnectionFault::HeaderTimeout)
    } else if send_timeout::is_send_timeout(error) {
        Some(ConnectionFault::SendTimeout)
    } else {
        None
    };
    if let Some(fault) = fault {
        fault.count(metrics);
    }
    tracing::debug!(%peer, %error, reason = fault.map(ConnectionFault::reason), "connection ended with an error");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Limits with a 10 s idle timeout and a 3 s send timeout.
    fn limits() -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(3),
            ..Limits::default()
        }
    }

    /// What `watcher` says now, polled as the driver does.
    async fn look(watcher: &mut Watcher<'_, '_>) -> Watch {
        std::future::poll_fn(|cx| Poll::Ready(watcher.watch(cx))).await
    }

    async fn after(duration: Duration) {
        tokio::time::advance(duration).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_is_shut_down_at_the_idle_timeout_and_dropped_a_send_timeout_later() {
        let (activity, stop, limits) = (Activity::default(), StopSignal::default(), limits());
        let stopped = std::pin::pin!(stop.notify.notified());
        let timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut watcher = Watcher::new(&activity, &stop, stopped, timer, &limits, Some(PARK_AFTER));
        assert_eq!(look(&mut watcher).await, Watch::Wait);
        after(Duration::from_secs(9)).await;
        // Parking needs a served request: this one has none.
        assert_eq!(look(&mut watcher).await, Watch::Wait);
        after(Duration::from_secs(1)).await;
        assert_eq!(look(&mut watcher).await, Watch::ShutDown);
        assert!(!watcher.parking());
        after(Duration::from_secs(2)).await;
        assert_eq!(look(&mut watcher).await, Watch::Wait, "one send timeout to go");
        after(Duration::from_secs(1)).await;
        assert_eq!(look(&mut watcher).await, Watch::Drop);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_served_a_request_parks_once_quiet_for_park_after() {
        let (activity, stop, limits) = (Activity::default(), StopSignal::default(), limits());
        let stopped = std::pin::pin!(stop.notify.notified());
        let timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut watcher = Watcher::new(&activity, &stop, stopped, timer, &limits, Some(PARK_AFTER));
        activity.request_started();
        after(Duration::from_secs(5)).await;
        // Busy the whole time: the quiet period starts when it is answered.
        assert_eq!(look(&mut watcher).await, Watch::Wait);
        activity.request_answered();
        activity.touch();
        after(PARK_AFTER / 2).await;
        assert_eq!(look(&mut watcher).await, Watch::Wait);
        after(PARK_AFTER / 2).await;
        assert_eq!(look(&mut watcher).await, Watch::ShutDown);
        assert!(watcher.parking());
        after(Duration::from_secs(60)).await;
        assert_eq!(
            look(&mut watcher).await,
            Watch::Wait,
            "a parking session is never dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_stop_signal_shuts_a_session_down_once_and_nothing_follows() {
        let (activity, stop, limits) = (Activity::default(), StopSignal::default(), limits());
        let stopped = std::pin::pin!(stop.notify.notified());
        let timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut watcher = Watcher::new(&activity, &stop, stopped, timer, &limits, None);
        assert_eq!(look(&mut watcher).await, Watch::Wait);
        stop.raise();
        assert_eq!(look(&mut watcher).await, Watch::ShutDown);
        assert!(!watcher.parking());
        after(Duration::from_secs(60)).await;
        assert_eq!(
            look(&mut watcher).await,
            Watch::Wait,
            "the drain's grace period decides"
        );
    }

    #[tokio::test]
    async fn rewound_bytes_are_read_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"world").await.expect("write");
        let mut io = Rewind::new(server, Bytes::from_static(b"lo ")).put_back(Bytes::from_static(b"hel"));
        let mut text = [0u8; 11];
        io.read_exact(&mut text).await.expect("read");
        assert_eq!(&text, b"hello world");
    }

    #[tokio::test]
    async fn the_preface_tells_http2_from_http1_and_its_bytes_come_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        for (sent, expected) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest"[..], Protocol::Http2),
            (&b"GET / HTTP/1.1\r\n\r\n"[..], Protocol::Http1),
            (&b"PRIX"[..], Protocol::Http1),
        ] {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            client.write_all(sent).await.expect("write");
            let (mut server, _) = listener.accept().await.expect("accept");
            let (protocol, read) = detect(&mut server, Duration::from_secs(5)).await.expect("detected");
            assert_eq!(protocol, expected);
            assert!(sent.starts_with(&read), "{read:?}");
        }
        let silent = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        assert!(detect(&mut server, Duration::from_millis(100)).await.is_none());
        drop(silent);
    }
}
