//! The only place the request layers are ordered, outermost first, each
//! with the reason it sits where it does.

use crate::access_log;
use crate::errors::GatewayError;
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::{Proxy, Routes};
use crate::rate_limit::{Outcome, RateLimiter};
use crate::server::{ClientInfo, HttpService};
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Limited;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;

/// The request id of a request, in its extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The replica that answered, in the response's extensions (for the access log).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamAddr(pub std::net::SocketAddr);

/// What the layers share.
#[derive(Debug, Clone)]
pub struct StackState {
    /// The innermost service.
    pub proxy: Arc<Proxy>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Requests allowed in flight at once.
    pub in_flight: Arc<Semaphore>,
    /// Largest request body.
    pub max_body: u64,
    /// The rate limiter.
    pub limiter: Arc<RateLimiter>,
}

/// The rate-limit outcome of a request, in its response's extensions (for the access log).
#[derive(Debug, Clone)]
pub struct RateLimitNote {
    /// Policy name.
    pub policy: Arc<str>,
    /// Outcome label.
    pub outcome: &'static str,
}

/// The proxying stack of the HTTPS listener (and of HTTP in `proxy` mode).
pub fn proxy_stack(state: StackState) -> HttpService {
    let state = Arc::new(state);
    let observe = Arc::new(ObserveState {
        unrouted: state.metrics.route("none"),
        metrics: state.metrics.clone(),
        routes: state.proxy.routes.clone(),
    });
    BoxCloneSyncService::new(tower::service_fn(move |req: Request| {
        let (state, observe) = (state.clone(), observe.clone());
        async move { Ok::<_, Infallible>(proxy_layers(&state, &observe, req).await) }
    }))
}

/// The proxying layers, outermost first. Each layer is an async function
/// of the request and the rest of the stack (`next`), composed here at
/// compile time: a request costs one boxed future for the whole stack,
/// not a box, a service clone and an extractor pass per layer.
async fn proxy_layers(state: &StackState, observe_state: &ObserveState, req: Request) -> Response<Body> {
    // Outermost: every later layer, log line and error body sees the id.
    assign_request_id(req, async |req| {
        // Access log and metrics see the final status, errors included, and
        // the whole response body (bytes, time to last byte).
        observe(observe_state, req, async |req| {
            // Shed load before doing any work for the request.
            shed_load(state, req, async |req| {
                // Rate limit after shedding (a flood must not cost key state
                // when the gateway is already overloaded), before any body is
                // read or upstream touched.
                rate_limit(state, req, async |req| {
                    // Refuse oversized bodies before the proxy streams them anywhere.
                    limit_body(state, req, async |req| {
                        let id = request_id(&req);
                        state
                            .proxy
                            .forward(req)
                            .await
                            .unwrap_or_else(|e| e.into_response_with(&id))
                    })
                    .await
                })
                .await
            })
            .await
        })
        .await
    })
    .await
}

/// The stack of the plain-HTTP listener in `redirect` mode: 308 to https,
/// with a request id and an access-log line like every answer.
pub fn redirect_stack(metrics: Arc<Metrics>, https_port: u16) -> HttpService {
    let observe_state = Arc::new(ObserveState {
        unrouted: metrics.route("redirect"),
        metrics,
        routes: Routes::new(Vec::new()),
    });
    BoxCloneSyncService::new(tower::service_fn(move |req: Request| {
        let observe_state = observe_state.clone();
        async move {
            let response = assign_request_id(req, async |req| {
                observe(&observe_state, req, async |req| {
                    let id = request_id(&req);
                    redirect(&req, https_port).unwrap_or_else(|e| e.into_response_with(&id))
                })
                .await
            })
            .await;
            Ok::<_, Infallible>(response)
        }
    }))
}

fn request_id(req: &Request) -> Arc<str> {
    req.extensions()
        .get::<RequestId>()
        .map_or_else(|| Arc::from(""), |r| r.0.clone())
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

async fn assign_request_id(mut req: Request, next: impl AsyncFnOnce(Request) -> Response<Body>) -> Response<Body> {
    let header = &shared::request_id::HEADER;
    let (id, value) = shared::request_id::accept_or_generate(req.headers().get(header));
    req.headers_mut().insert(header.clone(), value.clone());
    req.extensions_mut().insert(RequestId(Arc::from(id)));
    let mut response = next(req).await;
    response.headers_mut().insert(header.clone(), value);
    response
}

async fn shed_load(
    state: &StackState,
    req: Request,
    next: impl AsyncFnOnce(Request) -> Response<Body>,
) -> Response<Body> {
    match state.in_flight.try_acquire() {
        Ok(permit) => {
            let response = next(req).await;
            drop(permit);
            response
        }
        Err(_) => GatewayError::Overloaded.into_response_with(&request_id(&req)),
    }
}

async fn rate_limit(
    state: &StackState,
    req: Request,
    next: impl AsyncFnOnce(Request) -> Response<Body>,
) -> Response<Body> {
    let Some(client) = req.extensions().get::<ClientInfo>().copied() else {
        return next(req).await;
    };
    let Some(decision) = state.limiter.check(client.ip, req.method(), req.uri().path()) else {
        return next(req).await;
    };
    state
        .metrics
        .rate_limit(&decision.policy.name, decision.outcome.as_str());
    let rejected = decision.outcome == Outcome::Rejected;
    if rejected {
        tracing::debug!(policy = %decision.policy.name, client = %client.ip, verdict = ?decision.verdict, "rate limited");
    }
    let mut response = if rejected {
        let status = StatusCode::from_u16(decision.policy.settings.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
        GatewayError::RateLimited {
            status,
            retry_after: decision.retry_after_secs(),
        }
        .into_response_with(&request_id(&req))
    } else {
        if !decision.delay.is_zero() {
            tokio::time::sleep(decision.delay).await;
        }
        next(req).await
    };
    if rejected || state.limiter.headers {
        decision.write_headers(response.headers_mut());
    }
    response.extensions_mut().insert(RateLimitNote {
        policy: decision.policy.name.clone(),
        outcome: decision.outcome.as_str(),
    });
    response
}

async fn limit_body(
    state: &StackState,
    req: Request,
    next: impl AsyncFnOnce(Request) -> Response<Body>,
) -> Response<Body> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        return GatewayError::PayloadTooLarge(state.max_body).into_response_with(&request_id(&req));
    }
    let max = usize::try_from(state.max_body).unwrap_or(usize::MAX);
    next(req.map(|body| Body::new(Limited::new(body, max)))).await
}

/// Access-log fields gathered while the request runs; logged once, when
/// the response body ends or is dropped.
struct AccessLog {
    metrics: Arc<Metrics>,
    route_metrics: RouteMetrics,
    started: Instant,
    client: Option<ClientInfo>,
    method: http::Method,
    path: String,
    route: Arc<str>,
    request_id: Arc<str>,
    status: u16,
    upstream: Option<std::net::SocketAddr>,
    rate_limit: Option<RateLimitNote>,
    bytes: u64,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.route_metrics.observe(self.status, seconds);
        self.metrics.in_flight.dec();
        access_log::write(&access_log::Entry {
            client: self.client.map(|c| c.ip),
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            route: &self.route,
            upstream: self.upstream,
            latency_ms: seconds * 1000.0,
            bytes: self.bytes,
            rate_limit: self.rate_limit.as_ref().map(|n| (&*n.policy, n.outcome)),
            request_id: &self.request_id,
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

/// What the access log and metrics layer needs.
#[derive(Debug, Clone)]
struct ObserveState {
    metrics: Arc<Metrics>,
    routes: Routes,
    unrouted: RouteMetrics,
}

async fn observe(
    state: &ObserveState,
    req: Request,
    next: impl AsyncFnOnce(Request) -> Response<Body>,
) -> Response<Body> {
    state.metrics.in_flight.inc();
    let (route, route_metrics) = state.routes.find(req.uri().path()).map_or_else(
        || (Arc::from("none"), state.unrouted.clone()),
        |r| (r.prefix.clone(), r.metrics.clone()),
    );
    let log = AccessLog {
        metrics: state.metrics.clone(),
        route_metrics,
        started: Instant::now(),
        client: req.extensions().get::<ClientInfo>().copied(),
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        route,
        request_id: request_id(&req),
        status: 0,
        upstream: None,
        rate_limit: None,
        bytes: 0,
    };
    let mut log = log;
    let response = next(req).await;
    let (parts, body) = response.into_parts();
    log.status = parts.status.as_u16();
    log.upstream = parts.extensions.get::<UpstreamAddr>().map(|u| u.0);
    log.rate_limit = parts.extensions.get::<RateLimitNote>().cloned();
    Response::from_parts(parts, Body::new(Observed { inner: body, log }))
}
