//! The plain-HTTP listener's answer in `redirect` mode: 308 to the same
//! path and query over https, for targets that are paths and a valid Host.

use crate::errors::GatewayError;
use crate::request_check;
use axum::body::Body;
use axum::extract::Request;
use http::{HeaderValue, Response, StatusCode, header};

/// `https://HOST[:PORT]/PATH?QUERY` for the request, or 400 when it is not
/// one to redirect (see `request_check`) or names no host.
pub fn redirect(req: &Request, https_port: u16) -> Result<Response<Body>, GatewayError> {
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
