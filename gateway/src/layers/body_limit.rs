//! The request body bounded before the proxy streams it anywhere: a
//! declared length over `max_body` is 413 at once; any other body is
//! wrapped (`client_body`) to enforce the size and the read timeout as it
//! flows, with its failures recorded as the client's.

use crate::client_body::ClientBody;
use crate::errors::GatewayError;
use axum::body::Body;
use axum::extract::Request;
use http::header;

/// The request with its body bounded (see `client_body`: at most
/// `max_body` bytes, `body_read_timeout` between them, failures recorded as
/// the client's), or 413 when its declared length is already over.
pub fn limit_body(
    mut req: Request,
    max_body: u64,
    body_read_timeout: std::time::Duration,
) -> Result<Request, GatewayError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(GatewayError::PayloadTooLarge(max_body));
    }
    if http_body::Body::is_end_stream(req.body()) {
        return Ok(req); // nothing to bound (most GETs)
    }
    let body = std::mem::take(req.body_mut());
    let (body, watch) = ClientBody::new(body, max_body, body_read_timeout);
    *req.body_mut() = Body::new(body);
    req.extensions_mut().insert(watch);
    Ok(req)
}
