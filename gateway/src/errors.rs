//! Errors the gateway itself answers with, classified by origin (as
//! Pingora's `ErrorSource`): the client, an upstream, or the gateway. They
//! become problem+json responses in exactly one place, [`GatewayError::into_response_with`],
//! with the request id and never a server version.

use crate::log_limit::Throttle;
use crate::metrics::Metrics;
use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The request was bad or too slow/large (4xx).
    Client,
    /// A replica refused, reset or was too slow (502/504).
    Upstream,
    /// The gateway chose not to serve (503) or has a bug (500).
    Gateway,
}

impl Origin {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Gateway => "gateway",
        }
    }
}

/// A failure the gateway answers for itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// 400: the request cannot be forwarded as sent.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 404: no route matches the path.
    #[error("no route for this path")]
    NoRoute,
    /// 408: the client stopped sending its body.
    #[error("the request body did not arrive within {0:?} of its last bytes")]
    RequestTimeout(std::time::Duration),
    /// 413: the body is over the limit.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(u64),
    /// 429: the client already has its share of requests in flight.
    #[error("too many requests in flight from this client")]
    TooManyInFlight,
    /// 502: the replica refused, reset or sent garbage.
    #[error("upstream failed: {0}")]
    BadGateway(String),
    /// 503: no replica is healthy.
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(String),
    /// The client is over its rate limit (429 unless the policy says otherwise).
    #[error("rate limit exceeded; retry after {retry_after} s")]
    RateLimited {
        /// The policy's reject status.
        status: StatusCode,
        /// Whole seconds until a retry can succeed.
        retry_after: u64,
    },
    /// 503: too many requests in flight.
    #[error("gateway overloaded")]
    Overloaded,
    /// 503: every connection to the replica is busy and its queue is full,
    /// or the wait for one ran out.
    #[error("upstream {0} is at its connection limit")]
    UpstreamBusy(String),
    /// 504: the replica did not answer in time.
    #[error("upstream did not answer within {0:?}")]
    GatewayTimeout(std::time::Duration),
}

impl GatewayError {
    /// Whose fault it is.
    pub fn origin(&self) -> Origin {
        match self {
            Self::BadRequest(_)
            | Self::NoRoute
            | Self::RequestTimeout(_)
            | Self::PayloadTooLarge(_)
            | Self::TooManyInFlight
            | Self::RateLimited { .. } => Origin::Client,
            Self::BadGateway(_) | Self::GatewayTimeout(_) => Origin::Upstream,
            Self::NoHealthyUpstream(_) | Self::Overloaded | Self::UpstreamBusy(_) => Origin::Gateway,
        }
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyInFlight => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::NoHealthyUpstream(_) | Self::Overloaded | Self::UpstreamBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited { status, .. } => *status,
        }
    }

    /// The label an error answer is counted under
    /// (`gateway_request_errors_total{origin,reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::NoRoute => "no_route",
            Self::RequestTimeout(_) => "body_timeout",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::TooManyInFlight => "in_flight_per_client",
            Self::RateLimited { .. } => "rate_limited",
            Self::BadGateway(_) => "bad_gateway",
            Self::NoHealthyUpstream(_) => "no_healthy_upstream",
            Self::Overloaded => "overloaded",
            Self::UpstreamBusy(_) => "upstream_busy",
            Self::GatewayTimeout(_) => "gateway_timeout",
        }
    }

    /// The problem+json response for a request with `request_id`. Upstream
    /// details are logged, not sent: clients learn the class, not internals.
    /// Log levels follow whose fault it is: a client's (which any client can
    /// repeat at will) at debug, the gateway choosing not to serve at warn,
    /// a replica failing at error, those two at most once a second.
    /// Every answer is counted in `gateway_request_errors_total{origin,reason}`.
    pub fn into_response_with(self, request_id: &str, metrics: &Metrics) -> Response<Body> {
        let status = self.status();
        metrics.request_error(self.origin().as_str(), self.reason());
        let detail = match &self {
            Self::BadGateway(_) => "the upstream service failed to answer".to_string(),
            Self::NoHealthyUpstream(_) => "no healthy upstream; retry later".to_string(),
            other => other.to_string(),
        };
        // A client's fault at debug; the others at most once a second each
        // (under overload or a failing replica they come by the thousand;
        // the counter above has every one).
        static REFUSED: Throttle = Throttle::new();
        static FAILED: Throttle = Throttle::new();
        match self.origin() {
            Origin::Client => tracing::debug!(error = %self, "client error"),
            Origin::Gateway if REFUSED.allow() => {
                tracing::warn!(error = %self, "request refused (at most one line a second)")
            }
            Origin::Upstream if FAILED.allow() => {
                tracing::error!(error = %self, origin = "upstream", "request failed (at most one line a second)")
            }
            Origin::Gateway | Origin::Upstream => {}
        }
        // A rate-limit refusal's Retry-After comes with the RateLimit fields instead.
        let retry_after = matches!(
            self,
            Self::NoHealthyUpstream(_) | Self::Overloaded | Self::UpstreamBusy(_) | Self::TooManyInFlight
        )
        .then_some("1");
        problem_response(status, &detail, request_id, retry_after)
    }
}

/// What ends a client's connection or stream without an answer from the
/// layers, when it is the client's doing: hyper refused its request head,
/// or it would not take a response's bytes. Counted with the request
/// errors (origin `client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionFault {
    /// A head over `max_header_size` (hyper answered 431).
    HeaderTooLarge,
    /// A malformed head (hyper answered 400).
    BadHead,
    /// A head not received within `header_read_timeout`.
    HeaderTimeout,
    /// Response bytes not taken within `send_timeout`.
    SendTimeout,
}

impl ConnectionFault {
    /// The label it is counted under.
    pub fn reason(self) -> &'static str {
        match self {
            Self::HeaderTooLarge => "header_too_large",
            Self::BadHead => "bad_request",
            Self::HeaderTimeout => "header_timeout",
            Self::SendTimeout => "send_timeout",
        }
    }

    /// Counts it in `gateway_request_errors_total`.
    pub fn count(self, metrics: &Metrics) {
        metrics.request_error(Origin::Client.as_str(), self.reason());
    }
}

/// A problem+json response (RFC 9457) carrying `request_id`.
pub fn problem_response(
    status: StatusCode,
    detail: &str,
    request_id: &str,
    retry_after: Option<&str>,
) -> Response<Body> {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "request_id": request_id,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(seconds) = retry_after.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(header::RETRY_AFTER, seconds);
    }
    response
}
