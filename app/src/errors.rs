//! One error type for the API, mapped to RFC 9457 problem documents in
//! exactly one place ([`ApiError::into_response`]).
//!
//! Every problem carries the request id of the request it answers; the id
//! reaches this code through a task-local set by [`crate::routes`]'s request
//! id middleware, so handlers never pass it around.

use crate::domain::{FieldError, QueryError};
use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

tokio::task_local! {
    /// The id of the request being served on this task.
    pub static REQUEST_ID: String;
}

/// Media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// 400: an import body is not the framing it declares, or is empty.
    #[error("{0}")]
    BadImport(String),
    /// 400: a query parameter is wrong.
    #[error("bad query parameter {}: {}", .0.param, .0.detail)]
    BadQuery(QueryError),
    /// 401: missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 404: no such config, or no such path.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not (axum adds `Allow`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the name is taken, or a concurrent write won.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than the configured maximum.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 413: an import item is larger than a config may be, or an import
    /// holds more items than `imports.max_items`.
    #[error("{0}")]
    ItemTooLarge(String),
    /// 415: the body is not declared as a type the route takes (named here).
    #[error("expected Content-Type {0}")]
    UnsupportedMediaType(&'static str),
    /// 422: the JSON is well-formed but breaks the field rules.
    #[error("invalid fields")]
    Invalid(Vec<FieldError>),
    /// 503: `imports.max_queued` jobs are queued or running.
    #[error("the import queue is full ({0} jobs queued or running); retry later")]
    QueueFull(u64),
    /// 503: the store cannot be reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// 500: a bug or corrupt data; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Conflict("a config with this name already exists".into()),
            StoreError::Unavailable(why) => Self::Unavailable(why),
            StoreError::Internal(why) => Self::Internal(why),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, detail, extra) = match &self {
            Self::MalformedJson(_)
            | Self::BadImport(_)
            | Self::NotFound(_)
            | Self::Conflict(_)
            | Self::PayloadTooLarge(_)
            | Self::ItemTooLarge(_)
            | Self::QueueFull(_) => (self.status(), self.to_string(), None),
            Self::BadQuery(q) => (self.status(), self.to_string(), Some(("param", json!(q.param)))),
            Self::Invalid(errors) => (
                self.status(),
                format!(
                    "{} invalid field{}",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                ),
                Some(("errors", json!(errors))),
            ),
            Self::Unauthorized | Self::MethodNotAllowed | Self::UnsupportedMediaType(_) => {
                (self.status(), self.to_string(), None)
            }
            Self::Unavailable(why) => {
                tracing::error!(error = %why, "request failed: store unavailable");
                (self.status(), "the store is unavailable, retry later".to_string(), None)
            }
            Self::Internal(why) => {
                tracing::error!(error = %why, "request failed: internal error");
                (self.status(), "internal error".to_string(), None)
            }
        };
        let mut response = problem(status, &detail, extra);
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // A job takes seconds; sooner would mostly find the queue full again.
            Self::QueueFull(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::BadImport(_) | Self::BadQuery(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) | Self::ItemTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::QueueFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A problem+json response: `type`, `title` (the status phrase), `status`,
/// `detail`, `request_id`, plus one optional extension member.
fn problem(status: StatusCode, detail: &str, extra: Option<(&str, Value)>) -> Response {
    let request_id = REQUEST_ID.try_with(Clone::clone).ok();
    let mut body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "request_id": request_id,
    });
    if let (Some((key, value)), Some(map)) = (extra, body.as_object_mut()) {
        map.insert(key.to_string(), value);
    }
    (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body.to_string()).into_response()
}
