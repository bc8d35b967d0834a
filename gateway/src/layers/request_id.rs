//! The request id, outermost: a safe client-sent `X-Request-Id` is kept,
//! otherwise one is made; it goes upstream in the request's headers, into
//! every log line and error body, and back to the client on the response.

use axum::body::Body;
use axum::extract::Request;
use http::{HeaderValue, Response};

/// A request's id: the header value sent upstream and echoed back (its
/// clones share one buffer).
#[derive(Debug)]
pub struct AssignedId {
    pub(crate) value: HeaderValue,
}

impl AssignedId {
    /// The id as text.
    pub fn text(&self) -> &str {
        shared::request_id::text(&self.value)
    }

    /// The response, carrying the id back to the client.
    pub fn stamp(self, mut response: Response<Body>) -> Response<Body> {
        response
            .headers_mut()
            .insert(shared::request_id::HEADER.clone(), self.value);
        response
    }
}

/// Keeps a safe client-sent id or makes one, and puts it in the request's
/// headers (for the upstream); later layers get it as an argument.
pub fn assign_request_id(mut req: Request) -> (Request, AssignedId) {
    let header = &shared::request_id::HEADER;
    let value = shared::request_id::accept_or_generate(req.headers().get(header));
    req.headers_mut().insert(header.clone(), value.clone());
    (req, AssignedId { value })
}
