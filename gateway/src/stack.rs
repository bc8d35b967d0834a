//! The only place the request layers are ordered, outermost first, each
//! with the reason it sits where it does.

use crate::access_log;
use crate::errors::GatewayError;
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::Proxy;
use crate::rate_limit::{Decision, Outcome, RateLimiter};
use crate::server::{ClientInfo, HttpService, ResponseFuture};
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Limited;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

/// Requests allowed in flight at once (`limits.max_requests_in_flight`):
/// one count taken with one atomic add, no lock and no queue (nobody
/// waits: over the limit is a 503). tokio's semaphore locked its waiter
/// list on every release.
#[derive(Debug)]
pub struct InFlightLimit {
    count: AtomicUsize,
    max: usize,
}

impl InFlightLimit {
    /// A limit of `max` requests.
    pub fn new(max: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// A place, held until the permit drops; `None` when all are taken.
    pub fn try_acquire(&self) -> Option<InFlightPermit<'_>> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlightPermit(self))
    }
}

/// One request's place under an [`InFlightLimit`].
#[derive(Debug)]
pub struct InFlightPermit<'a>(&'a InFlightLimit);

impl Drop for InFlightPermit<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the layers share.
#[derive(Debug, Clone)]
pub struct StackState {
    /// The innermost service.
    pub proxy: Arc<Proxy>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Requests allowed in flight at once.
    pub in_flight: Arc<InFlightLimit>,
    /// Largest request body.
    pub max_body: u64,
    /// The rate limiter.
    pub limiter: Arc<RateLimiter>,
}

/// The rate-limit outcome of a request, for its access-log line.
#[derive(Debug)]
struct RateLimitNote {
    policy: Arc<str>,
    outcome: &'static str,
}

/// The proxying stack of the HTTPS listener (and of HTTP in `proxy` mode),
/// for `workers` workers.
pub fn proxy_stack(state: StackState, workers: usize) -> HttpService {
    // A copy per worker (and one for other threads) of what the layers
    // share: the reference counts a request takes on it, and on its route's
    // metrics, then stay on its own worker's cache lines.
    let copies: Box<[Arc<Layers>]> = (0..=workers)
        .map(|_| {
            let observe = ObserveState::new(&state.metrics, state.proxy.routes.prefixes(), "none");
            Arc::new(Layers {
                state: state.clone(),
                observe,
            })
        })
        .collect();
    HttpService::new(move |req: Request| proxy_layers(&copies[crate::workers::slot(copies.len())], req))
}

/// What the proxying layers share.
#[derive(Debug)]
struct Layers {
    state: StackState,
    observe: ObserveState,
}

/// The proxying layers, outermost first. Each layer is a pair of plain
/// functions, one on the way in and one on the way out, run in order here
/// around a single await of the proxy; the way in up to the first await
/// runs before the request's future is even made. Nesting one async
/// function per layer instead made an 8.8 KB future per request, copied at
/// every level; this future holds one level and a box.
fn proxy_layers(shared: &Arc<Layers>, req: Request) -> ResponseFuture {
    // Outermost: every later layer, log line and error body sees the id.
    let (req, id) = assign_request_id(req);
    // Access log and metrics see the final status, errors included, and the
    // whole response body (bytes, time to last byte).
    let mut log = observe_request(&shared.observe, &req, &id);
    let shared = shared.clone();
    Box::pin(async move {
        let state = &shared.state;
        let response = 'layers: {
            // Shed load before doing any work for the request.
            let Some(_permit) = state.in_flight.try_acquire() else {
                break 'layers GatewayError::Overloaded.into_response_with(id.text());
            };
            // Rate limit after shedding (a flood must not cost key state
            // when the gateway is already overloaded), before any body is
            // read or upstream touched.
            let limited = match rate_limit(state, &req, id.text(), &mut log.rate_limit) {
                Admission::Pass(decision) => decision,
                Admission::Delay(decision) => {
                    tokio::time::sleep(decision.delay).await;
                    Some(decision)
                }
                Admission::Reject(response) => break 'layers response,
            };
            // Refuse oversized bodies before the proxy streams them anywhere.
            let mut response = match limit_body(state, req) {
                // Boxed: the proxy's future is most of a request's state,
                // and this one would otherwise carry (and copy) its size.
                Ok(req) => Box::pin(state.proxy.forward(req, &mut log.upstream))
                    .await
                    .unwrap_or_else(|e| e.into_response_with(id.text())),
                Err(e) => e.into_response_with(id.text()),
            };
            if let Some(decision) = limited {
                write_rate_limit_fields(state, &decision, &mut response);
            }
            response
        };
        id.stamp(observe_response(log, response))
    })
}

/// The stack of the plain-HTTP listener in `redirect` mode: 308 to https,
/// with a request id and an access-log line like every answer.
pub fn redirect_stack(metrics: Arc<Metrics>, https_port: u16) -> HttpService {
    let observe_state = ObserveState::new(&metrics, std::iter::empty(), "redirect");
    HttpService::new(move |req: Request| {
        let (req, id) = assign_request_id(req);
        let log = observe_request(&observe_state, &req, &id);
        let response = redirect(&req, https_port).unwrap_or_else(|e| e.into_response_with(id.text()));
        Box::pin(std::future::ready(id.stamp(observe_response(log, response))))
    })
}

/// `https://HOST[:PORT]/PATH?QUERY` for the request, or 400 without a host.
fn redirect(req: &Request, https_port: u16) -> Result<Response<Body>, GatewayError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().host().map(str::to_string))
        .ok_or_else(|| GatewayError::BadRequest("a Host header is required".into()))?;
    let authority: http::uri::Authority = host
        .parse()
        .map_err(|_| GatewayError::BadRequest("invalid Host header".into()))?;
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{port}{path}", authority.host());
    let location =
        HeaderValue::from_str(&location).map_err(|_| GatewayError::BadRequest("invalid Host header".into()))?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// A request's id: the header value sent upstream and echoed back (its
/// clones share one buffer).
struct AssignedId {
    value: HeaderValue,
}

impl AssignedId {
    fn text(&self) -> &str {
        shared::request_id::text(&self.value)
    }

    /// The response, carrying the id back to the client.
    fn stamp(self, mut response: Response<Body>) -> Response<Body> {
        response
            .headers_mut()
            .insert(shared::request_id::HEADER.clone(), self.value);
        response
    }
}

/// Keeps a safe client-sent id or makes one, and puts it in the request's
/// headers (for the upstream); later layers get it as an argument.
fn assign_request_id(mut req: Request) -> (Request, AssignedId) {
    let header = &shared::request_id::HEADER;
    let value = shared::request_id::accept_or_generate(req.headers().get(header));
    req.headers_mut().insert(header.clone(), value.clone());
    (req, AssignedId { value })
}

/// What the rate limiter made of a request.
enum Admission {
    /// Go on (with the decision, when a policy applied).
    Pass(Option<Decision>),
    /// Go on after `decision.delay` (nginx `delay=`).
    Delay(Decision),
    /// Refused: this is the answer.
    Reject(Response<Body>),
}

/// The limiter's decision on `req`; a policy that applied is noted in `note`.
fn rate_limit(state: &StackState, req: &Request, id: &str, note: &mut Option<RateLimitNote>) -> Admission {
    let Some(client) = req.extensions().get::<ClientInfo>() else {
        return Admission::Pass(None);
    };
    let Some(decision) = state.limiter.check(client.ip, req.method(), req.uri().path()) else {
        return Admission::Pass(None);
    };
    state
        .metrics
        .rate_limit(&decision.policy.name, decision.outcome.as_str());
    *note = Some(RateLimitNote {
        policy: decision.policy.name.clone(),
        outcome: decision.outcome.as_str(),
    });
    if decision.outcome != Outcome::Rejected {
        return if decision.delay.is_zero() {
            Admission::Pass(Some(decision))
        } else {
            Admission::Delay(decision)
        };
    }
    tracing::debug!(policy = %decision.policy.name, client = %client.ip, verdict = ?decision.verdict, "rate limited");
    let status = StatusCode::from_u16(decision.policy.settings.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    let mut response = GatewayError::RateLimited {
        status,
        retry_after: decision.retry_after_secs(),
    }
    .into_response_with(id);
    write_rate_limit_fields(state, &decision, &mut response);
    Admission::Reject(response)
}

/// The RateLimit fields: always on a refusal, on other answers when
/// `rate_limit.headers`.
fn write_rate_limit_fields(state: &StackState, decision: &Decision, response: &mut Response<Body>) {
    if decision.outcome == Outcome::Rejected || state.limiter.headers {
        decision.write_headers(response.headers_mut());
    }
}

/// The request with its body capped at `max_body`, or 413 when its declared
/// length is already over.
fn limit_body(state: &StackState, req: Request) -> Result<Request, GatewayError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        return Err(GatewayError::PayloadTooLarge(state.max_body));
    }
    if http_body::Body::is_end_stream(req.body()) {
        return Ok(req); // nothing to cap (most GETs)
    }
    let max = usize::try_from(state.max_body).unwrap_or(usize::MAX);
    Ok(req.map(|body| Body::new(Limited::new(body, max))))
}

/// Access-log fields gathered while the request runs; logged once, when
/// the response body ends or is dropped.
struct AccessLog {
    route: RouteMetrics,
    started: Instant,
    client: Option<ClientInfo>,
    method: http::Method,
    /// Shares the request's bytes (a clone is a reference count).
    target: Option<http::uri::PathAndQuery>,
    request_id: HeaderValue,
    status: u16,
    /// The replica whose response this is; the proxy fills it in.
    upstream: Option<std::net::SocketAddr>,
    /// The policy that applied and its outcome; the rate-limit layer fills it in.
    rate_limit: Option<RateLimitNote>,
    bytes: u64,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.route.finish(self.status, seconds);
        access_log::write(&access_log::Entry {
            client: self.client.map(|c| c.ip),
            method: self.method.as_str(),
            path: self.target.as_ref().map_or("/", http::uri::PathAndQuery::path),
            status: self.status,
            route: self.route.route(),
            upstream: self.upstream,
            latency_ms: seconds * 1000.0,
            bytes: self.bytes,
            rate_limit: self.rate_limit.as_ref().map(|n| (&*n.policy, n.outcome)),
            request_id: shared::request_id::text(&self.request_id),
        });
    }
}

/// The response body, counting bytes for the access log.
struct Observed {
    inner: Body,
    log: AccessLog,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.log.bytes += data.len() as u64;
            }
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

/// What the access log and metrics layer needs: each route's series,
/// longest prefix first, and the series of requests no route takes. Each
/// stack copy holds handles of its own (see `proxy_stack`).
#[derive(Debug)]
struct ObserveState {
    routes: Vec<RouteMetrics>,
    unrouted: RouteMetrics,
}

impl ObserveState {
    fn new<'a>(metrics: &Metrics, prefixes: impl Iterator<Item = &'a str>, unrouted: &str) -> Self {
        Self {
            routes: prefixes.map(|p| metrics.route(p)).collect(),
            unrouted: metrics.route(unrouted),
        }
    }

    /// The series of the route `path` takes (as `Routes::find` picks it).
    fn series(&self, path: &str) -> &RouteMetrics {
        self.routes
            .iter()
            .find(|m| path.starts_with(m.route()))
            .unwrap_or(&self.unrouted)
    }
}

/// Starts the access-log entry and the in-flight count for a request.
fn observe_request(state: &ObserveState, req: &Request, id: &AssignedId) -> AccessLog {
    let route = state.series(req.uri().path()).clone();
    route.start();
    AccessLog {
        route,
        started: Instant::now(),
        client: req.extensions().get::<ClientInfo>().copied(),
        method: req.method().clone(),
        target: req.uri().path_and_query().cloned(),
        request_id: id.value.clone(),
        status: 0,
        upstream: None,
        rate_limit: None,
        bytes: 0,
    }
}

/// Completes the entry from the response; it is written when the response
/// body ends or is dropped.
fn observe_response(mut log: AccessLog, response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    log.status = parts.status.as_u16();
    Response::from_parts(parts, Body::new(Observed { inner: body, log }))
}
