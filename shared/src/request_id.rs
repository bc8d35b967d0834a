//! Request ids: accepted from the client when they are safe to echo, made
//! up otherwise. Every binary uses the same rule so an id survives the hop
//! from gateway to app.

use http::{HeaderName, HeaderValue};

/// The header that carries the id, both ways.
pub static HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id accepted from a client.
pub const MAX_LEN: usize = 128;

/// The client's id when it is 1 to [`MAX_LEN`] visible ASCII characters
/// (it ends up in logs and headers), otherwise a new UUID v4.
pub fn accept_or_generate(sent: Option<&HeaderValue>) -> (String, HeaderValue) {
    if let Some(value) = sent {
        let bytes = value.as_bytes();
        if !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(u8::is_ascii_graphic) {
            let text = String::from_utf8_lossy(bytes).into_owned();
            return (text, value.clone());
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let value = HeaderValue::from_str(&id).expect("a UUID is a valid header value");
    (id, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_ids_are_kept_and_others_replaced() {
        assert_eq!(
            accept_or_generate(Some(&HeaderValue::from_static("abc-123"))).0,
            "abc-123"
        );
        for bad in ["", "has space", &"x".repeat(MAX_LEN + 1)] {
            let (id, _) = accept_or_generate(Some(&HeaderValue::from_str(bad).expect("header")));
            assert_eq!(id.len(), 36, "{bad:?} kept");
        }
        assert_eq!(accept_or_generate(None).0.len(), 36);
    }
}
