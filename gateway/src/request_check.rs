//! What a request must look like before the gateway forwards or redirects
//! it (400 otherwise, cheap and logged at debug only):
//!
//! - its target is a path: origin form (`/p?q`), or absolute form with an
//!   `http`/`https` scheme (RFC 9112 §3.2.2); `*` (`OPTIONS *`) and
//!   authority form (`CONNECT host:port`) name no resource here;
//! - it carries at most one `Host`, and that one is a valid `host[:port]`;
//! - a `Host` agrees with the authority in an absolute-form target or
//!   HTTP/2's `:authority` (RFC 9113 §8.3.1): otherwise the replica, the
//!   access log and the redirect could each see a different host;
//! - an HTTP/1.1 request names a host one way or the other (RFC 9112 §3.2).

use crate::errors::GatewayError;
use axum::extract::Request;
use http::uri::Authority;
use http::{Method, Version, header};

/// Checks `req` as the module documentation says.
pub fn check(req: &Request) -> Result<(), GatewayError> {
    let uri = req.uri();
    if req.method() == Method::CONNECT || !uri.path().starts_with('/') {
        return Err(bad("the request target must be a path"));
    }
    if uri.scheme_str().is_some_and(|s| s != "http" && s != "https") {
        return Err(bad("the request target's scheme must be http or https"));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        if req.version() == Version::HTTP_11 && uri.authority().is_none() {
            return Err(bad("a Host header is required"));
        }
        return Ok(());
    };
    if hosts.next().is_some() {
        return Err(bad("more than one Host header"));
    }
    let (name, port) = split_host(host.as_bytes()).ok_or_else(|| bad("invalid Host header"))?;
    match uri.authority() {
        Some(target) if !same_authority(target, name, port, uri.scheme_str()) => {
            Err(bad("the Host header disagrees with the request target"))
        }
        _ => Ok(()),
    }
}

/// A Host value split into its host and port, if it is one (RFC 9110
/// §7.2: `uri-host [":" port]`): a registered name or IPv4 address, or an
/// IPv6 literal in brackets; never userinfo. Checked byte by byte, with no
/// allocation: every request passes here.
fn split_host(value: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let (host, rest) = if value.first() == Some(&b'[') {
        let end = value.iter().position(|&b| b == b']')?;
        let literal = &value[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return None;
        }
        value.split_at(end + 1)
    } else {
        let (host, rest) = match value.iter().rposition(|&b| b == b':') {
            Some(i) => value.split_at(i),
            None => (value, &[][..]),
        };
        if host.is_empty() || !host.iter().all(|&b| is_reg_name_byte(b)) {
            return None;
        }
        (host, rest)
    };
    let port = match rest {
        [] | [b':'] => None,
        [b':', digits @ ..] if digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) => {
            Some(std::str::from_utf8(digits).ok()?.parse().ok()?)
        }
        _ => return None,
    };
    Some((host, port))
}

/// unreserved / sub-delims / pct-encoded, as a registered name allows.
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// Whether an authority names the same host and port as a Host value, a
/// missing port being the scheme's default.
fn same_authority(target: &Authority, host: &[u8], port: Option<u16>, scheme: Option<&str>) -> bool {
    let default = match scheme {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    target.host().as_bytes().eq_ignore_ascii_case(host) && target.port_u16().or(default) == port.or(default)
}

fn bad(why: &str) -> GatewayError {
    GatewayError::BadRequest(why.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(target: &str, hosts: &[&str]) -> Request {
        let mut req = Request::new(Body::empty());
        *req.uri_mut() = target.parse().expect("uri");
        for h in hosts {
            req.headers_mut().append(header::HOST, h.parse().expect("header value"));
        }
        req
    }

    #[test]
    fn an_origin_form_request_with_one_host_passes() {
        assert!(check(&request("/configs?x=1", &["api.example.com"])).is_ok());
        assert!(check(&request("/", &["127.0.0.1:8443"])).is_ok());
    }

    #[test]
    fn targets_that_are_not_paths_are_refused() {
        for target in ["*", "example.com:443", "ftp://example.com/x"] {
            let err = check(&request(target, &["example.com"])).expect_err(target);
            assert_eq!(err.status(), 400, "{target}");
        }
        let mut connect = request("/x", &["example.com"]);
        *connect.method_mut() = Method::CONNECT;
        assert!(check(&connect).is_err());
    }

    #[test]
    fn several_or_invalid_or_missing_hosts_are_refused() {
        assert!(check(&request("/", &["a.example", "b.example"])).is_err());
        assert!(check(&request("/", &["a.example", "a.example"])).is_err());
        assert!(check(&request("/", &["user@a.example"])).is_err());
        assert!(check(&request("/", &["a b"])).is_err());
        assert!(check(&request("/", &["a.example:99999"])).is_err());
        assert!(check(&request("/", &["a.example:8x"])).is_err());
        assert!(check(&request("/", &[":8080"])).is_err());
        assert!(check(&request("/", &["[::1"])).is_err());
        assert!(check(&request("/", &["[::1]:8443"])).is_ok());
        assert!(
            check(&request("/", &["a.example:"])).is_ok(),
            "an empty port is allowed"
        );
        assert!(check(&request("/", &[])).is_err(), "HTTP/1.1 without a host");
        let mut old = request("/", &[]);
        *old.version_mut() = Version::HTTP_10;
        assert!(check(&old).is_ok(), "HTTP/1.0 may omit it");
    }

    #[test]
    fn a_host_must_agree_with_an_absolute_target() {
        assert!(check(&request("http://a.example/x", &["a.example"])).is_ok());
        assert!(check(&request("http://a.example/x", &["A.EXAMPLE:80"])).is_ok());
        assert!(check(&request("https://a.example:8443/x", &["a.example:8443"])).is_ok());
        assert!(check(&request("http://a.example/x", &[])).is_ok());
        assert!(check(&request("http://a.example/x", &["b.example"])).is_err());
        assert!(check(&request("https://a.example:8443/x", &["a.example:9443"])).is_err());
    }
}
