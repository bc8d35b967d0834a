//! The only place the request layers are ordered, outermost first, each
//! with the reason it sits where it does.

use crate::access_log;
use crate::activity::BodyReport;
use crate::client_body::ClientBody;
use crate::errors::GatewayError;
use crate::in_flight::{ClientInFlight, ClientSlots, InFlightLimit};
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::Proxy;
use crate::rate_limit::{Decision, Outcome, RateLimiter};
use crate::request_check;
use crate::service::{ClientInfo, HttpService, ResponseFuture};
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What the layers share.
#[derive(Debug, Clone)]
pub struct StackState {
    /// The innermost service.
    pub proxy: Arc<Proxy>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Requests allowed in flight at once.
    pub in_flight: Arc<InFlightLimit>,
    /// Each client's share of them.
    pub per_client: Arc<ClientInFlight>,
    /// Largest request body.
    pub max_body: u64,
    /// Longest wait for the next bytes of a request body.
    pub body_read_timeout: std::time::Duration,
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
    HttpService::new(move |req: Request| proxy_layers(&copies[crate::worker_id::slot(copies.len())], req))
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
    // In-flight places go back when the response has been sent (they ride
    // on its body) or when the client goes away first.
    let places = Places::new(shared.clone());
    Box::pin(async move {
        let state = &places.layers.state;
        let refuse = |e: GatewayError| e.into_response_with(id.text(), &state.metrics);
        let response = 'layers: {
            // Shed load before doing any work for the request.
            if !places.take_global() {
                break 'layers refuse(GatewayError::Overloaded);
            }
            // Rate limit after shedding (a flood must not cost key state
            // when the gateway is already overloaded), before anything else
            // is done for the request, whatever its target.
            let limited = match rate_limit(&state.limiter, &state.metrics, &req, id.text(), &mut log.rate_limit) {
                Admission::Pass(decision) => decision,
                Admission::Delay(decision) => {
                    tokio::time::sleep(decision.delay).await;
                    Some(decision)
                }
                Admission::Reject(response) => break 'layers response,
            };
            // Refuse what cannot be forwarded as sent (target, hosts)
            // before it costs a client place.
            if let Err(e) = request_check::check(&req) {
                break 'layers refuse(e);
            }
            // One client's share of the in-flight places, after its rate
            // (a refused request never holds one).
            if !places.take_client(&req) {
                break 'layers refuse(GatewayError::TooManyInFlight);
            }
            // Bound the body before the proxy streams it anywhere.
            let mut response = match limit_body(state, req) {
                // Boxed: the proxy's future is most of a request's state,
                // and this one would otherwise carry (and copy) its size.
                Ok(req) => Box::pin(state.proxy.forward(req, &mut log.upstream))
                    .await
                    .unwrap_or_else(refuse),
                Err(e) => refuse(e),
            };
            if let Some(decision) = limited {
                write_rate_limit_fields(&state.limiter, &decision, &mut response);
            }
            response
        };
        log.places = Some(places);
        id.stamp(observe_response(log, response))
    })
}

/// The in-flight places a request holds; given back when dropped.
struct Places {
    layers: Arc<Layers>,
    global: Cell<bool>,
    client: Cell<Option<ClientSlots>>,
}

impl Places {
    fn new(layers: Arc<Layers>) -> Self {
        Self {
            layers,
            global: Cell::new(false),
            client: Cell::new(None),
        }
    }

    /// A place under `limits.max_requests_in_flight`.
    fn take_global(&self) -> bool {
        let taken = self.layers.state.in_flight.try_take();
        self.global.set(taken);
        taken
    }

    /// A place under the client's share, keyed like the rate limiter.
    fn take_client(&self, req: &Request) -> bool {
        let Some(client) = req.extensions().get::<ClientInfo>() else {
            return true;
        };
        let state = &self.layers.state;
        let slots = state.per_client.try_take(state.limiter.key(client.ip));
        self.client.set(slots);
        slots.is_some()
    }
}

impl Drop for Places {
    fn drop(&mut self) {
        let state = &self.layers.state;
        if self.global.get() {
            state.in_flight.release();
        }
        if let Some(slots) = self.client.get() {
            state.per_client.release(slots);
        }
    }
}

/// The stack of the plain-HTTP listener in `redirect` mode: 308 to https,
/// with a request id and an access-log line like every answer, rate limited
/// like the proxying stack, and only for targets that are paths.
pub fn redirect_stack(metrics: Arc<Metrics>, limiter: Arc<RateLimiter>, https_port: u16) -> HttpService {
    let observe_state = ObserveState::new(&metrics, std::iter::empty(), "redirect");
    HttpService::new(move |req: Request| {
        let (req, id) = assign_request_id(req);
        let mut log = observe_request(&observe_state, &req, &id);
        let response = match rate_limit(&limiter, &metrics, &req, id.text(), &mut log.rate_limit) {
            // A redirect is never held: a delay would only slow the answer.
            Admission::Pass(_) | Admission::Delay(_) => {
                redirect(&req, https_port).unwrap_or_else(|e| e.into_response_with(id.text(), &metrics))
            }
            Admission::Reject(response) => response,
        };
        Box::pin(std::future::ready(id.stamp(observe_response(log, response))))
    })
}

/// `https://HOST[:PORT]/PATH?QUERY` for the request, or 400 when it is not
/// one to redirect (see `request_check`) or names no host.
fn redirect(req: &Request, https_port: u16) -> Result<Response<Body>, GatewayError> {
    request_check::check(req)?;
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
/// A target that is not a path (`*`, `host:port`) is limited as `/`, the
/// most general rule: every request passes the limiter, whatever it names.
fn rate_limit(
    limiter: &RateLimiter,
    metrics: &Metrics,
    req: &Request,
    id: &str,
    note: &mut Option<RateLimitNote>,
) -> Admission {
    let Some(client) = req.extensions().get::<ClientInfo>() else {
        return Admission::Pass(None);
    };
    let path = Some(req.uri().path()).filter(|p| p.starts_with('/')).unwrap_or("/");
    let Some(decision) = limiter.check(client.ip, req.method(), path) else {
        return Admission::Pass(None);
    };
    metrics.rate_limit(&decision.policy.name, decision.outcome.as_str());
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
    .into_response_with(id, metrics);
    write_rate_limit_fields(limiter, &decision, &mut response);
    Admission::Reject(response)
}

/// The RateLimit fields: always on a refusal, on other answers when
/// `rate_limit.headers`.
fn write_rate_limit_fields(limiter: &RateLimiter, decision: &Decision, response: &mut Response<Body>) {
    if decision.outcome == Outcome::Rejected || limiter.headers {
        decision.write_headers(response.headers_mut());
    }
}

/// The request with its body bounded (see `client_body`: at most
/// `max_body` bytes, `body_read_timeout` between them, failures recorded as
/// the client's), or 413 when its declared length is already over.
fn limit_body(state: &StackState, mut req: Request) -> Result<Request, GatewayError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        return Err(GatewayError::PayloadTooLarge(state.max_body));
    }
    if http_body::Body::is_end_stream(req.body()) {
        return Ok(req); // nothing to bound (most GETs)
    }
    let body = std::mem::take(req.body_mut());
    let (body, watch) = ClientBody::new(body, state.max_body, state.body_read_timeout);
    *req.body_mut() = Body::new(body);
    req.extensions_mut().insert(watch);
    Ok(req)
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
    /// The request's in-flight places, given back with this entry.
    places: Option<Places>,
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

/// The response body, counting bytes for the access log and reporting to
/// its connection (see `activity`): alive, asked for bytes, handed bytes.
/// Over HTTP/2 it hands data over in pieces of at most [`H2_PIECE`], so
/// that what waits in a stream for a client's flow-control window is one
/// piece, not a whole upstream read.
struct Observed {
    inner: Body,
    log: AccessLog,
    report: Option<BodyReport>,
    /// What is left of a data frame being handed over in pieces.
    rest: Option<Bytes>,
}

/// Largest data frame handed to an HTTP/2 stream (HTTP/2's default frame size).
const H2_PIECE: usize = 16 * 1024;

impl Observed {
    fn piece(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > H2_PIECE && self.report.as_ref().is_some_and(BodyReport::is_stream) {
            self.rest = Some(data.split_off(H2_PIECE));
        }
        data
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Some(report) = &self.report {
            report.asked();
        }
        let polled = match self.rest.take() {
            Some(rest) => Poll::Ready(Some(Ok(http_body::Frame::data(self.piece(rest))))),
            None => match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.log.bytes += data.len() as u64;
                        Poll::Ready(Some(Ok(http_body::Frame::data(self.piece(data)))))
                    }
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            },
        };
        if let (Poll::Ready(Some(Ok(_))), Some(report)) = (&polled, &self.report) {
            report.handed_over();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(rest) = &self.rest {
            // Upper first: set_lower checks against it.
            let rest = rest.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + rest);
            }
            hint.set_lower(hint.lower() + rest);
        }
        hint
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
        places: None,
    }
}

/// Completes the entry from the response; it is written when the response
/// body ends or is dropped.
fn observe_response(mut log: AccessLog, response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    log.status = parts.status.as_u16();
    let observed = Observed {
        inner: body,
        log,
        report: BodyReport::start(),
        rest: None,
    };
    Response::from_parts(parts, Body::new(observed))
}
