//! Request ids: accepted from the client when they are safe to echo, made
//! up otherwise. Every binary uses the same rule so an id survives the hop
//! from gateway to app.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// The header that carries the id, both ways.
pub static HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id accepted from a client.
pub const MAX_LEN: usize = 128;

/// The client's id when it is 1 to [`MAX_LEN`] visible ASCII characters
/// (it ends up in logs and headers), otherwise a new UUID v4. Either way a
/// value whose clones share one buffer; [`text`] reads it.
pub fn accept_or_generate(sent: Option<&HeaderValue>) -> HeaderValue {
    if let Some(value) = sent {
        let bytes = value.as_bytes();
        if !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(u8::is_ascii_graphic) {
            return value.clone();
        }
    }
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
    HeaderValue::from_maybe_shared(Bytes::from_owner(id)).expect("a UUID is a valid header value")
}

/// The text of an id from [`accept_or_generate`] (visible ASCII by construction).
pub fn text(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_ids_are_kept_and_others_replaced() {
        assert_eq!(
            text(&accept_or_generate(Some(&HeaderValue::from_static("abc-123")))),
            "abc-123"
        );
        for bad in ["", "has space", &"x".repeat(MAX_LEN + 1)] {
            let id = accept_or_generate(Some(&HeaderValue::from_str(bad).expect("header")));
            assert_eq!(text(&id).len(), 36, "{bad:?} kept");
        }
        let made = accept_or_generate(None);
        assert!(uuid::Uuid::parse_str(text(&made)).is_ok(), "{made:?}");
        assert_ne!(made, accept_or_generate(None), "ids repeat");
    }
}
