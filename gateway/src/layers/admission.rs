//! Admission by the rate limiter: every request passes it, whatever its
//! target; a refusal is the policy's status (429) with `Retry-After` and
//! the RateLimit fields, a delay (nginx `delay=`) is the stack's to wait,
//! and the policy that applied is noted for the access log.

use super::observe::RateLimitNote;
use crate::errors::GatewayError;
use crate::metrics::Metrics;
use crate::rate_limit::{Decision, Outcome, RateLimiter};
use crate::service::ClientInfo;
use axum::body::Body;
use axum::extract::Request;
use http::{Response, StatusCode};

/// What the rate limiter made of a request.
#[derive(Debug)]
pub enum Admission {
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
pub fn rate_limit(
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
pub fn write_rate_limit_fields(limiter: &RateLimiter, decision: &Decision, response: &mut Response<Body>) {
    if decision.outcome == Outcome::Rejected || limiter.headers {
        decision.write_headers(response.headers_mut());
    }
}
