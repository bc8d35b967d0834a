//! Extractors that turn request parts into validated values or an [`ApiError`].

use crate::domain::ConfigName;
use crate::errors::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Proof that the request may write: the bearer token matched (compared in
/// constant time), or no token is configured. Put it first among a write
/// handler's arguments so authentication runs before the body is read.
#[derive(Debug)]
pub struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = &state.api_token else {
            return Ok(Self);
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match presented {
            Some(token) if same_token(token, expected.expose()) => Ok(Self),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// Whether `presented` is `expected`, in time that depends on neither
/// their contents nor the expected token's length: their SHA-256 digests
/// (always 32 bytes) are compared in constant time (comparing the tokens
/// themselves ended early on a length mismatch, telling the length).
fn same_token(presented: &str, expected: &str) -> bool {
    let (a, b) = (
        Sha256::digest(presented.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// The `{name}` path segment as a [`ConfigName`]; a name that cannot exist
/// is a 404, like any other missing config.
#[derive(Debug)]
pub struct NameInPath(pub ConfigName);

impl<S: Send + Sync> FromRequestParts<S> for NameInPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let not_found = || ApiError::NotFound("no such config".into());
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found())?;
        ConfigName::parse(&raw).map(Self).map_err(|_| not_found())
    }
}

/// A JSON request body: `Content-Type` must be `application/json` or a
/// `+json` type (415), the body at most the configured size (413) and
/// well-formed (400). Nesting beyond serde's recursion limit is a 422 like
/// any other too-deep document.
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType("application/json"));
        }
        let max = state.max_body;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(max)
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes).map(Self).map_err(|e| {
            if e.to_string().starts_with("recursion limit exceeded") {
                ApiError::Invalid(vec![crate::domain::FieldError {
                    pointer: String::new(),
                    detail: format!("nesting deeper than {} levels", crate::domain::MAX_DEPTH),
                }])
            } else {
                ApiError::MalformedJson(e.to_string())
            }
        })
    }
}

pub(super) fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(essence) = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
    else {
        return false;
    };
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_the_same_token_matches_whatever_its_length() {
        assert!(same_token("s3cret-token", "s3cret-token"));
        for other in ["", "s3cret", "s3cret-tokeN", "s3cret-token-longer", "s3cret-token "] {
            assert!(!same_token(other, "s3cret-token"), "{other:?}");
        }
    }

    #[test]
    fn json_media_types_are_recognised() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "text/json+x"] {
            assert!(!is_json(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_json(None));
    }
}
