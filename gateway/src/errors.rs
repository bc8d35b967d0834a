//! Errors the gateway itself answers with, classified by origin (as
//! Pingora's `ErrorSource`): the client, an upstream, or the gateway. They
//! become problem+json responses in exactly one place, [`GatewayError::into_response_with`],
//! with the request id and never a server version.

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
    /// 413: the body is over the limit.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(u64),
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
    /// 504: the replica did not answer in time.
    #[error("upstream did not answer within {0:?}")]
    GatewayTimeout(std::time::Duration),
}

impl GatewayError {
    /// Whose fault it is.
    pub fn origin(&self) -> Origin {
        match self {
            Self::BadRequest(_) | Self::PayloadTooLarge(_) | Self::RateLimited { .. } => Origin::Client,
            Self::BadGateway(_) | Self::GatewayTimeout(_) => Origin::Upstream,
            Self::NoRoute | Self::NoHealthyUpstream(_) | Self::Overloaded => Origin::Gateway,
        }
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::NoHealthyUpstream(_) | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited { status, .. } => *status,
        }
    }

    /// The problem+json response for a request with `request_id`. Upstream
    /// details are logged, not sent: clients learn the class, not internals.
    pub fn into_response_with(self, request_id: &str) -> Response<Body> {
        let status = self.status();
        let detail = match &self {
            Self::BadGateway(_) => "the upstream service failed to answer".to_string(),
            Self::NoHealthyUpstream(_) => "no healthy upstream; retry later".to_string(),
            other => other.to_string(),
        };
        match self.origin() {
            Origin::Client => tracing::debug!(error = %self, "client error"),
            Origin::Upstream | Origin::Gateway => {
                tracing::error!(error = %self, origin = self.origin().as_str(), "request failed")
            }
        }
        // A refusal's Retry-After comes with the RateLimit fields instead.
        let retry_after = matches!(self, Self::NoHealthyUpstream(_) | Self::Overloaded).then_some("1");
        problem_response(status, &detail, request_id, retry_after)
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
