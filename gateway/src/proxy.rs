//! The innermost service: route by path prefix, rewrite the request for the
//! upstream, forward it through a pooled keep-alive client, retry when safe.
//!
//! Retry rules (docs/GATEWAY.md): a connection that failed before anything was
//! sent is retried on another replica for any method (the request body is
//! untouched then, and is reclaimed for the next try); a 502/503, a reset
//! after sending, or a timeout is retried only for idempotent methods whose
//! body was empty or small enough to buffer (`retry_buffer`). Tries that
//! reached a replica are bounded by `max_tries` (a refused connection costs
//! none: each replica is tried at most once), and nothing is retried once
//! the response head has been handed on, so no client ever sees bytes from
//! two attempts.

use crate::balancer::{Endpoint, Upstream};
use crate::body_watch::BodyWatch;
use crate::errors::GatewayError;
use crate::ip_text::IpText;
use crate::log_limit::Throttle;
use crate::metrics::Metrics;
use crate::service::ClientInfo;
use crate::upstream_client::SendError;
pub use crate::upstream_client::UpstreamClient;
use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// A route: requests whose path starts with `prefix` go to `upstream`.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path prefix (also the metrics label).
    pub prefix: Arc<str>,
    /// Where matching requests go.
    pub upstream: Arc<UpstreamClient>,
    /// This route's body bound, when it has its own.
    pub max_body: Option<u64>,
}

/// The routing table, longest prefix first.
#[derive(Debug, Clone)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// Builds the table; ties cannot happen (config validation refuses them).
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self(routes)
    }

    /// The prefixes, longest first (the order `find` tries them in).
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| &*r.prefix)
    }

    /// The body bound of `path`'s route: its own, else `default`.
    pub fn max_body(&self, path: &str, default: u64) -> u64 {
        self.find(path).and_then(|r| r.max_body).unwrap_or(default)
    }

    /// The route for `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.0.iter().find(|r| path.starts_with(&*r.prefix))
    }
}

/// Forwarding settings shared by every route.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// The routing table.
    pub routes: Routes,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Headers that describe one hop and are never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-connection"
    )
}

/// Headers a `Connection` header cannot name away: the ones the gateway
/// owns or relies on end to end (the host, the framing, the request id and
/// the forwarding headers). Naming them there is an attempt to strip them
/// on the way through, not a hop-by-hop option.
fn is_protected(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "content-type"
            | "x-request-id"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-real-ip"
            | "forwarded"
    )
}

/// Removes hop-by-hop headers, including those `Connection` names (but
/// never a protected one, see [`is_protected`]).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over the names instead of a
    // lookup per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !is_protected(name.as_str()))
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

/// Sets the forwarding headers from what the gateway observed, replacing
/// anything the client sent (a client cannot choose its own address).
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientInfo, host: Option<HeaderValue>) {
    // Room for the four headers below in one growth.
    headers.reserve(4);
    headers.remove(header::FORWARDED);
    let ip = HeaderValue::from_bytes(IpText::new(client.ip).as_bytes()).expect("an IP address is a valid header value");
    headers.insert(HeaderName::from_static("x-forwarded-for"), ip.clone());
    headers.insert(HeaderName::from_static("x-real-ip"), ip);
    let proto = if client.tls { "https" } else { "http" };
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    match host {
        Some(h) => {
            headers.insert(HeaderName::from_static("x-forwarded-host"), h);
        }
        None => {
            headers.remove(HeaderName::from_static("x-forwarded-host"));
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request body, in the form that decides what can be retried.
enum Replay {
    /// No body: any number of tries.
    Empty,
    /// A small body, buffered: any number of tries (after a send, only
    /// for idempotent methods).
    Buffered(Bytes),
    /// A streamed body: reusable only until it is first read.
    Once(OnceSlot),
}

#[derive(Clone)]
struct OnceSlot {
    body: Arc<Mutex<Option<Body>>>,
    started: Arc<AtomicBool>,
}

/// A handle on the single-use body; reading it marks it started.
struct OnceBody(OnceSlot);

impl http_body::Body for OnceBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.0.started.store(true, Ordering::Release);
        let mut slot = self.0.body.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.0.body.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let slot = self.0.body.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(http_body::Body::size_hint).unwrap_or_default()
    }
}

impl Replay {
    /// A body for the next try, or `None` if the body is gone.
    fn body(&self) -> Option<Body> {
        match self {
            Self::Empty => Some(Body::empty()),
            Self::Buffered(bytes) => Some(Body::from(bytes.clone())),
            Self::Once(slot) if !slot.started.load(Ordering::Acquire) => Some(Body::new(OnceBody(slot.clone()))),
            Self::Once(_) => None,
        }
    }

    /// Whether a try that already sent the request can be repeated.
    fn replayable_after_send(&self) -> bool {
        !matches!(self, Self::Once(_))
    }
}

/// How one try ended, when it did not produce the final response.
enum Failure {
    /// Nothing was sent: the replica refused or could not be reached.
    Connect(String),
    /// Every connection to the replica is busy (its cap and queue are
    /// ours, not the replica's fault); nothing was sent.
    Busy,
    /// The exchange failed after the request was handed over (a reset, a
    /// broken answer) and the client's body did not fail: the replica's.
    Reset(String),
    /// No answer within `response_timeout` of the replica having (or
    /// ceasing to take) the request: the replica's.
    Timeout,
    /// The replica answered 502 or 503 itself.
    Status(Response<Body>),
    /// The client's body failed: its fault, never the replica's.
    Client,
}

/// The request as every try sends it: the rewritten head, the body in its
/// replayable form, and what is known about the client's body.
struct Outgoing {
    parts: http::request::Parts,
    /// A cheap clone (shared bytes), reused by every try without re-parsing.
    path_and_query: http::uri::PathAndQuery,
    /// Whether the client named a host; if not, each try names the replica.
    has_host: bool,
    replay: Replay,
    watch: Option<BodyWatch>,
}

/// What the failed tries of one request leave behind.
#[derive(Default)]
struct Tries {
    /// Replicas that failed this request (filled only when retrying).
    failed: Vec<SocketAddr>,
    /// The last failure and the replica it came from.
    last: Option<(Failure, SocketAddr)>,
    /// Why the last failure may be retried (its metrics label); counted
    /// only once another replica has been picked for the retry.
    retry: Option<&'static str>,
}

impl Tries {
    /// A replica of `upstream` for the next try, one this request has not
    /// failed on yet.
    fn pick(&self, upstream: &Upstream) -> Option<Arc<Endpoint>> {
        upstream.pick(&self.failed)
    }
}

/// Files a failed try in `tries`: true when the request may go on to
/// another replica (which is then kept from picking `addr` again).
fn set_aside(tries: &mut Tries, failure: Failure, addr: SocketAddr, replayable: bool) -> bool {
    tries.retry = retry_reason(&failure, replayable);
    if tries.retry.is_some() {
        tries.failed.push(addr);
    }
    tries.last = Some((failure, addr));
    tries.retry.is_some()
}

/// Why `failure` may be retried on another replica (its metrics label), or
/// `None`: always when nothing was sent, after sending only if `replayable`.
fn retry_reason(failure: &Failure, replayable: bool) -> Option<&'static str> {
    match failure {
        Failure::Connect(_) => Some("connect"),
        Failure::Busy => Some("busy"),
        Failure::Reset(_) if replayable => Some("reset"),
        Failure::Timeout if replayable => Some("timeout"),
        Failure::Status(_) if replayable => Some("status"),
        _ => None,
    }
}

impl Proxy {
    /// Forwards `req` to its route's upstream. When the response comes from
    /// a replica, `answered_by` names it (for the access log); an error
    /// made here leaves it `None`.
    pub async fn forward(
        &self,
        req: Request<Body>,
        answered_by: &mut Option<SocketAddr>,
    ) -> Result<Response<Body>, GatewayError> {
        let route = self.routes.find(req.uri().path()).ok_or(GatewayError::NoRoute)?;
        let upstream = &route.upstream.upstream;
        let (mut outgoing, body) = self.rewrite(req)?;
        if !http_body::Body::is_end_stream(&body) {
            let (parts, watch) = (&outgoing.parts, outgoing.watch.as_ref());
            outgoing.replay = prepare_body(parts, body, upstream.settings.retry_buffer.as_u64(), watch).await?;
        }
        let mut tries = Tries::default();
        // Tries that reached a replica. A connection refused before anything
        // was sent costs no try, only that replica (as nginx moves on through
        // its servers on a connect error): a request fails on refusals only
        // when every replica refused it, not when `max_tries` of them are
        // stopping at once (a scale-down, seen deploying on Swarm).
        let mut charged = 0;
        while charged < upstream.settings.max_tries {
            let Some(endpoint) = tries.pick(upstream) else { break };
            // The last try takes the headers: only when no other try can follow.
            let last_try =
                charged + 1 == upstream.settings.max_tries && tries.failed.len() + 1 >= upstream.endpoint_count();
            let Some(req) = outgoing.attempt(&endpoint, last_try) else {
                break;
            };
            if let (Some(reason), Some((_, failed))) = (tries.retry.take(), &tries.last) {
                self.count_retry(upstream, reason, *failed);
            }
            let addr = endpoint.addr;
            // Not boxed: inside `forward`'s own boxed future, boxing it again
            // cost an allocation and a copy (0.6% of a request's instructions).
            match self.try_once(route, endpoint, req, outgoing.watch.as_ref()).await {
                Ok(response) => {
                    *answered_by = Some(addr);
                    return Ok(response);
                }
                Err(failure) => {
                    if !matches!(failure, Failure::Connect(_)) {
                        charged += 1;
                    }
                    let replayable = outgoing.replayable_after_send();
                    if !set_aside(&mut tries, failure, addr, replayable) {
                        break;
                    }
                }
            }
        }
        self.final_answer(route, tries.last, outgoing.watch.as_ref(), answered_by)
    }

    /// Counts and logs a retry that is about to happen (another replica
    /// was picked) because `failed` failed.
    fn count_retry(&self, upstream: &Upstream, reason: &'static str, failed: SocketAddr) {
        self.metrics.retry(&upstream.name, reason);
        static RETRIES: Throttle = Throttle::new();
        if RETRIES.allow() {
            tracing::warn!(upstream = %upstream.name, endpoint = %failed, reason, "retrying on another replica (at most one line a second)");
        }
    }

    /// The request rewritten for the upstream (hop-by-hop headers removed,
    /// forwarding headers set from what the gateway observed, a `Host` made
    /// from HTTP/2's `:authority`), with no body yet, and its body.
    fn rewrite(&self, req: Request<Body>) -> Result<(Outgoing, Body), GatewayError> {
        let client = req
            .extensions()
            .get::<ClientInfo>()
            .copied()
            .ok_or_else(|| GatewayError::BadRequest("no client address".into()))?;
        let (mut parts, body) = req.into_parts();
        let watch = parts.extensions.remove::<BodyWatch>();
        let sent_host = parts.headers.get(header::HOST).cloned();
        // HTTP/2 names the host in `:authority` instead: make it a Host header.
        let authority_host = sent_host
            .is_none()
            .then(|| {
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            })
            .flatten();
        let host = sent_host.or(authority_host.clone());
        let has_host = host.is_some();
        strip_hop_by_hop(&mut parts.headers);
        set_forwarded(&mut parts.headers, &client, host);
        if let Some(h) = authority_host {
            parts.headers.insert(header::HOST, h);
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let outgoing = Outgoing {
            parts,
            path_and_query,
            has_host,
            replay: Replay::Empty,
            watch,
        };
        Ok((outgoing, body))
    }

    /// One try against one replica, with passive health bookkeeping: only
    /// the replica's own faults count (refused, reset or late while it owed
    /// us bytes, 502/503); the client's body failing, or the replica being
    /// at the gateway's connection cap, do not.
    async fn try_once(
        &self,
        route: &Route,
        endpoint: Arc<Endpoint>,
        req: Request<Body>,
        watch: Option<&BodyWatch>,
    ) -> Result<Response<Body>, Failure> {
        let settings = &route.upstream.upstream.settings;
        let addr = endpoint.addr;
        let in_flight = endpoint.start();
        let count_failure = || {
            if in_flight
                .endpoint()
                .record_failure(settings.max_fails, settings.fail_timeout)
            {
                tracing::warn!(upstream = %route.upstream.upstream.name, endpoint = %addr, "replica ejected after repeated failures");
            }
        };
        let sent = route.upstream.send(addr, req, watch).await;
        if watch.and_then(BodyWatch::fault).is_some() {
            return Err(Failure::Client);
        }
        let response = match sent {
            Ok(response) => response,
            Err(SendError::Busy) => return Err(Failure::Busy),
            Err(SendError::Connect(why)) => {
                count_failure();
                return Err(Failure::Connect(why));
            }
            Err(SendError::Http(e)) => {
                count_failure();
                return Err(Failure::Reset(error_chain(&e)));
            }
            Err(SendError::Timeout) => {
                count_failure();
                return Err(Failure::Timeout);
            }
        };
        let failed = matches!(
            response.status(),
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        );
        if failed {
            count_failure();
        } else {
            in_flight.endpoint().record_success();
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The body holds the replica's in-flight count until the client
        // has it all (least-requests sees streaming responses).
        let response = Response::from_parts(parts, Body::new(body.holding(in_flight)));
        if failed {
            Err(Failure::Status(response))
        } else {
            Ok(response)
        }
    }

    /// The answer once no try succeeded: the last replica's own 502/503 if
    /// it sent one, else the error its failure maps to.
    fn final_answer(
        &self,
        route: &Route,
        last: Option<(Failure, SocketAddr)>,
        watch: Option<&BodyWatch>,
        answered_by: &mut Option<SocketAddr>,
    ) -> Result<Response<Body>, GatewayError> {
        let upstream = &route.upstream.upstream;
        match last {
            None => Err(GatewayError::NoHealthyUpstream(upstream.name.clone())),
            Some((Failure::Status(response), addr)) => {
                *answered_by = Some(addr);
                Ok(response)
            }
            Some((Failure::Connect(why) | Failure::Reset(why), _)) => Err(GatewayError::BadGateway(why)),
            Some((Failure::Busy, _)) => Err(GatewayError::UpstreamBusy(upstream.name.clone())),
            Some((Failure::Timeout, _)) => Err(GatewayError::GatewayTimeout(upstream.settings.response_timeout)),
            Some((Failure::Client, _)) => {
                Err(client_error(watch).unwrap_or_else(|| GatewayError::BadRequest("malformed request body".into())))
            }
        }
    }
}

impl Outgoing {
    /// Whether a try that already sent this request may be repeated: an
    /// idempotent method, and a body that can be sent again.
    fn replayable_after_send(&self) -> bool {
        is_idempotent(&self.parts.method) && self.replay.replayable_after_send()
    }

    /// The request for one try at `endpoint`, or `None` when the body can
    /// no longer be sent. The last possible try takes the headers; earlier
    /// ones copy them.
    fn attempt(&mut self, endpoint: &Endpoint, last: bool) -> Option<Request<Body>> {
        let body = self.replay.body()?;
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        // Origin form: the connection already names the replica.
        *req.uri_mut() = Uri::from(self.path_and_query.clone());
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = if last {
            std::mem::take(&mut self.parts.headers)
        } else {
            self.parts.headers.clone()
        };
        if !self.has_host {
            // HTTP/1.0 without Host: name the replica, as nginx does.
            if let Ok(h) = HeaderValue::from_str(endpoint.authority.as_str()) {
                req.headers_mut().insert(header::HOST, h);
            }
        }
        Some(req)
    }
}

/// Decides how the body travels: empty, buffered or streamed once. A body
/// of at most `retry_buffer` bytes, announced or not, is read in full
/// before any replica is contacted (as nginx's request buffering): a
/// client slow to send it then holds no upstream connection, and an
/// idempotent request can be retried after it was sent. A longer body
/// streams (what was read first goes ahead of the rest). The stack has
/// already bounded the body (see `client_body`).
async fn prepare_body(
    parts: &http::request::Parts,
    mut body: Body,
    retry_buffer: u64,
    watch: Option<&BodyWatch>,
) -> Result<Replay, GatewayError> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if http_body::Body::is_end_stream(&body) || declared == Some(0) {
        return Ok(Replay::Empty);
    }
    let mut read = Vec::new();
    if declared.is_none_or(|n| n <= retry_buffer) {
        let mut size = 0;
        while size <= retry_buffer {
            match body.frame().await {
                None => return Ok(Replay::Buffered(concat(read))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        size += data.len() as u64;
                        read.push(data);
                    }
                }
                Some(Err(e)) => {
                    return Err(client_error(watch)
                        .unwrap_or_else(|| GatewayError::BadRequest(format!("cannot read the request body: {e}"))));
                }
            }
        }
    }
    let body = if read.is_empty() {
        body
    } else {
        Body::new(Prefixed {
            read: read.into(),
            rest: body,
        })
    };
    Ok(Replay::Once(OnceSlot {
        body: Arc::new(Mutex::new(Some(body))),
        started: Arc::new(AtomicBool::new(false)),
    }))
}

/// The chunks as one buffer (no copy for one chunk).
fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut all = bytes::BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        all.extend_from_slice(&chunk);
    }
    all.freeze()
}

/// A body whose first chunks were already read: those, then the rest.
struct Prefixed {
    read: std::collections::VecDeque<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        match self.read.pop_front() {
            Some(data) => Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }
}

/// The answer for a client body that failed, if it did.
fn client_error(watch: Option<&BodyWatch>) -> Option<GatewayError> {
    watch.and_then(BodyWatch::error)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn a_failure_after_sending_is_retried_only_when_the_request_can_be_replayed() {
        let after_sending = || {
            [
                Failure::Reset("reset".into()),
                Failure::Timeout,
                Failure::Status(Response::new(Body::empty())),
            ]
        };
        for failure in after_sending() {
            assert_eq!(retry_reason(&failure, false), None);
        }
        let reasons: Vec<_> = after_sending().iter().map(|f| retry_reason(f, true)).collect();
        assert_eq!(reasons, [Some("reset"), Some("timeout"), Some("status")]);
        for replayable in [false, true] {
            assert_eq!(
                retry_reason(&Failure::Connect("refused".into()), replayable),
                Some("connect")
            );
            assert_eq!(retry_reason(&Failure::Busy, replayable), Some("busy"));
            assert_eq!(retry_reason(&Failure::Client, replayable), None);
        }
    }

    #[test]
    fn forwarding_headers_replace_what_the_client_sent() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        let client = ClientInfo {
            peer: "10.1.2.3:5555".parse().expect("addr"),
            ip: "10.1.2.3".parse().expect("ip"),
            tls: true,
        };
        set_forwarded(&mut h, &client, Some(HeaderValue::from_static("example.com")));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert!(!h.contains_key(header::FORWARDED));
    }
}
