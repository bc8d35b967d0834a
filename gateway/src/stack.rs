//! The only place the request layers are ordered: the recipes of the two
//! stacks, outermost layer first, each with the reason it sits where it
//! does. The layers' code is in `crate::layers` (and `crate::in_flight`
//! for the in-flight places); the innermost service is the proxy.

use crate::client_ip::Key;
use crate::errors::GatewayError;
use crate::in_flight::{ClientInFlight, InFlightLimit, Places, Shares};
use crate::layers::admission::{Admission, rate_limit, write_rate_limit_fields};
use crate::layers::body_limit::limit_body;
use crate::layers::observe::{ObserveState, observe_request, observe_response};
use crate::layers::redirect::redirect;
use crate::layers::request_id::assign_request_id;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::rate_limit::RateLimiter;
use crate::request_check;
use crate::service::{ClientInfo, HttpService, ResponseFuture};
use axum::extract::Request;
use std::sync::Arc;

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

impl Shares for Layers {
    fn global(&self) -> &InFlightLimit {
        &self.state.in_flight
    }

    fn per_client(&self) -> &ClientInFlight {
        &self.state.per_client
    }

    fn key(&self, ip: std::net::IpAddr) -> Key {
        self.state.limiter.key(ip)
    }
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
        let state = &places.shares().state;
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
            if !places.take_client(req.extensions().get::<ClientInfo>().map(|c| c.ip)) {
                break 'layers refuse(GatewayError::TooManyInFlight);
            }
            // Bound the body (the route's own bound, else the global one)
            // before the proxy streams it anywhere.
            let max_body = state.proxy.routes.max_body(req.uri().path(), state.max_body);
            let mut response = match limit_body(req, max_body, state.body_read_timeout) {
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

/// The stack of the plain-HTTP listener in `redirect` mode: 308 to https,
/// with a request id and an access-log line like every answer, rate limited
/// like the proxying stack, and only for targets that are paths.
pub fn redirect_stack(metrics: Arc<Metrics>, limiter: Arc<RateLimiter>, https_port: u16) -> HttpService {
    let observe_state = ObserveState::new(&metrics, std::iter::empty(), "redirect");
    HttpService::new(move |req: Request| {
        let (req, id) = assign_request_id(req);
        let mut log = observe_request::<()>(&observe_state, &req, &id);
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
