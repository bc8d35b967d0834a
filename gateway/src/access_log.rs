//! The access log: one line per request, written once its response has
//! been sent (or abandoned).
//!
//! Lines are formatted here and written through the process's one log
//! stream (`shared::telemetry::write_line`) instead of going through
//! tracing's field visitors: this is the one record written per request,
//! and formatting it as a tracing event cost about 5 µs of the 35 to 40 µs
//! of CPU a proxied request costs (measured with bench/gateway.sh). The
//! output is what a tracing event would have produced: text lines as
//! `TIMESTAMP  INFO access: key=value ...`, JSON lines as a flat object
//! with `timestamp`, `level`, `target: "access"` and the fields, so
//! `gateway replay` and log shippers read both alike. `RUST_LOG` still
//! decides: the line is written when target `access` is enabled at `info`.

use crate::ip_text::IpText;
use shared::telemetry::LogFormat;
use std::cell::RefCell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// One request's access-log fields.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The client address (empty when unknown).
    pub client: Option<IpAddr>,
    /// Request method.
    pub method: &'a str,
    /// Request path (no query string: it may carry secrets).
    pub path: &'a str,
    /// Final status sent to the client.
    pub status: u16,
    /// The route's prefix, `none` or `redirect`.
    pub route: &'a str,
    /// The replica that answered, if any.
    pub upstream: Option<SocketAddr>,
    /// Time to the end of the response.
    pub latency_ms: f64,
    /// Response body bytes sent.
    pub bytes: u64,
    /// `policy:outcome` of the rate limiter, if a policy applied.
    pub rate_limit: Option<(&'a str, &'a str)>,
    /// The request id.
    pub request_id: &'a str,
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Writes `entry` to the log stream, if the access log is enabled.
pub fn write(entry: &Entry<'_>) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let Some(format) = shared::telemetry::stream_format() else {
        return;
    };
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        format_line(&mut line, format, entry, SystemTime::now());
        shared::telemetry::write_line(&line);
    });
}

/// Formats one line, newline included, into `out`. Written byte by byte
/// rather than through `write!` and serde (about 580 ns a line, a sixtieth
/// of a proxied request's CPU): integers and IPv4 addresses by hand, the
/// timestamp's date and time reused within the second.
pub fn format_line(out: &mut Vec<u8>, format: LogFormat, entry: &Entry<'_>, at: SystemTime) {
    let text = format == LogFormat::Text;
    out.reserve(256);
    if text {
        push_timestamp(out, at);
        out.extend_from_slice(b"  INFO access:");
    } else {
        out.extend_from_slice(b"{\"timestamp\":\"");
        push_timestamp(out, at);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"access\"");
    }
    let mut line = Line { out, text };
    line.quoted("client", |o| {
        if let Some(ip) = entry.client {
            push_ip(o, ip);
        }
    });
    line.quoted("method", |o| o.extend_from_slice(entry.method.as_bytes()));
    line.quoted("path", |o| o.extend_from_slice(entry.path.as_bytes()));
    line.bare("status", |o| push_u64(o, u64::from(entry.status)));
    line.quoted("route", |o| o.extend_from_slice(entry.route.as_bytes()));
    line.quoted("upstream", |o| match entry.upstream {
        Some(SocketAddr::V4(addr)) => {
            push_ip(o, IpAddr::V4(*addr.ip()));
            o.push(b':');
            push_u64(o, u64::from(addr.port()));
        }
        Some(addr) => {
            let _ = write!(o, "{addr}");
        }
        None => {}
    });
    line.bare("latency_ms", |o| push_millis(o, entry.latency_ms));
    line.bare("bytes", |o| push_u64(o, entry.bytes));
    line.quoted("rate_limit", |o| {
        if let Some((policy, outcome)) = entry.rate_limit {
            o.extend_from_slice(policy.as_bytes());
            o.push(b':');
            o.extend_from_slice(outcome.as_bytes());
        }
    });
    line.quoted("request_id", |o| o.extend_from_slice(entry.request_id.as_bytes()));
    if !text {
        out.push(b'}');
    }
    out.push(b'\n');
}

/// Writes `key=value` pairs (text) or `"key":value` members (JSON). The
/// value writers are generic, not `dyn`, so each field inlines to a few
/// stores.
struct Line<'a> {
    out: &'a mut Vec<u8>,
    text: bool,
}

impl Line<'_> {
    fn key(&mut self, key: &str) {
        if self.text {
            self.out.push(b' ');
            self.out.extend_from_slice(key.as_bytes());
            self.out.push(b'=');
        } else {
            self.out.extend_from_slice(b",\"");
            self.out.extend_from_slice(key.as_bytes());
            self.out.extend_from_slice(b"\":");
        }
    }

    /// A number or other value JSON writes bare.
    fn bare(&mut self, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
        self.key(key);
        value(self.out);
    }

    /// A value JSON writes as an escaped string.
    fn quoted(&mut self, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
        self.key(key);
        if self.text {
            value(self.out);
        } else {
            self.out.push(b'"');
            let start = self.out.len();
            value(self.out);
            escape_json_from(self.out, start);
            self.out.push(b'"');
        }
    }
}

/// RFC 3339 UTC with microseconds, as tracing prints it.
fn push_timestamp(out: &mut Vec<u8>, at: SystemTime) {
    thread_local! {
        /// The second last formatted and its `YYYY-MM-DDTHH:MM:SS`.
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let Ok(since_epoch) = at.duration_since(UNIX_EPOCH) else {
        let _ = write!(out, "{}", humantime::format_rfc3339_micros(at));
        return;
    };
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != since_epoch.as_secs() {
            let whole = humantime::format_rfc3339_seconds(at).to_string();
            *second = (since_epoch.as_secs(), whole.trim_end_matches('Z').to_string());
        }
        out.extend_from_slice(second.1.as_bytes());
    });
    out.push(b'.');
    push_padded(out, u64::from(since_epoch.subsec_micros()), 6);
    out.push(b'Z');
}

/// Milliseconds with three decimals (microsecond resolution).
fn push_millis(out: &mut Vec<u8>, ms: f64) {
    // Saturating float-to-int conversion; a latency is never negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let micros = (ms * 1000.0).round().max(0.0) as u64;
    push_u64(out, micros / 1000);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `n` in exactly `width` digits, zero-padded (`n` must fit).
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut n = n;
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.extend_from_slice(IpText::new(ip).as_bytes());
}

/// Escapes for a JSON string whatever was written to `out` from `start` on.
fn escape_json_from(out: &mut Vec<u8>, start: usize) {
    if !out[start..].iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
        return;
    }
    let raw = out.split_off(start);
    for b in raw {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b if b < 0x20 => {
                let _ = write!(out, "\\u{b:04x}");
            }
            b => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry() -> Entry<'static> {
        Entry {
            client: Some("10.1.2.3".parse().expect("ip")),
            method: "GET",
            path: "/configs/a\"b\\c",
            status: 200,
            route: "/",
            upstream: Some("10.0.0.9:8000".parse().expect("addr")),
            latency_ms: 1.5,
            bytes: 15,
            rate_limit: Some(("per_ip", "passed")),
            request_id: "id-1",
        }
    }

    fn line(format: LogFormat, e: &Entry<'_>) -> String {
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let mut out = Vec::new();
        format_line(&mut out, format, e, at);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn text_lines_read_like_tracing_events() {
        assert_eq!(
            line(LogFormat::Text, &entry()),
            "2023-11-14T22:13:20.123456Z  INFO access: client=10.1.2.3 method=GET path=/configs/a\"b\\c \
             status=200 route=/ upstream=10.0.0.9:8000 latency_ms=1.500 bytes=15 rate_limit=per_ip:passed \
             request_id=id-1\n"
        );
    }

    #[test]
    fn json_lines_are_flat_escaped_objects_with_every_field() {
        let text = line(LogFormat::Json, &entry());
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["client"], "10.1.2.3");
        assert_eq!(v["path"], "/configs/a\"b\\c", "quotes and backslashes survive");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream"], "10.0.0.9:8000");
        assert_eq!(v["latency_ms"], 1.5);
        assert_eq!(v["bytes"], 15);
        assert_eq!(v["rate_limit"], "per_ip:passed");
        assert_eq!(v["request_id"], "id-1");
    }

    #[test]
    fn ipv6_addresses_and_control_characters_are_written_as_tracing_would() {
        let e = Entry {
            client: Some("2001:db8::1".parse().expect("ip")),
            upstream: Some("[2001:db8::9]:8000".parse().expect("addr")),
            path: "/a\tb\u{1}",
            latency_ms: 12.345_678,
            ..entry()
        };
        let text = line(LogFormat::Text, &e);
        assert!(
            text.contains("client=2001:db8::1 ") && text.contains("upstream=[2001:db8::9]:8000 "),
            "{text}"
        );
        assert!(text.contains(" latency_ms=12.346 "), "{text}");
        let v: serde_json::Value = serde_json::from_str(&line(LogFormat::Json, &e)).expect("json");
        assert_eq!(v["path"], "/a\tb\u{1}");
        assert_eq!(v["client"], "2001:db8::1");
        assert_eq!(v["upstream"], "[2001:db8::9]:8000");
        assert_eq!(v["latency_ms"], 12.346);
    }

    #[test]
    fn absent_values_are_empty_strings() {
        let e = Entry {
            client: None,
            upstream: None,
            rate_limit: None,
            ..entry()
        };
        let v: serde_json::Value = serde_json::from_str(&line(LogFormat::Json, &e)).expect("json");
        assert_eq!(v["client"], "");
        assert_eq!(v["upstream"], "");
        assert_eq!(v["rate_limit"], "");
        assert!(line(LogFormat::Text, &e).contains(" upstream= latency_ms=1.500 "));
    }
}
