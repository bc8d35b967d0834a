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

use serde::Serialize;
use serde::ser::Serializer;
use shared::telemetry::LogFormat;
use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

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

/// Formats one line, newline included, into `out`.
pub fn format_line(out: &mut Vec<u8>, format: LogFormat, entry: &Entry<'_>, at: SystemTime) {
    let timestamp = humantime::format_rfc3339_micros(at);
    match format {
        LogFormat::Text => {
            let _ = write!(
                out,
                "{timestamp}  INFO access: client={} method={} path={} status={} route={} upstream={} \
                 latency_ms={:?} bytes={} rate_limit={} request_id={}",
                Maybe(entry.client),
                entry.method,
                entry.path,
                entry.status,
                entry.route,
                Maybe(entry.upstream),
                entry.latency_ms,
                entry.bytes,
                Maybe(entry.rate_limit.map(|(p, o)| Pair(p, o))),
                entry.request_id,
            );
        }
        LogFormat::Json => {
            let json = Json {
                timestamp: Shown(&timestamp),
                level: "INFO",
                target: "access",
                client: Shown(Maybe(entry.client)),
                method: entry.method,
                path: entry.path,
                status: entry.status,
                route: entry.route,
                upstream: Shown(Maybe(entry.upstream)),
                latency_ms: entry.latency_ms,
                bytes: entry.bytes,
                rate_limit: Shown(Maybe(entry.rate_limit.map(|(p, o)| Pair(p, o)))),
                request_id: entry.request_id,
            };
            let _ = serde_json::to_writer(&mut *out, &json);
        }
    }
    out.push(b'\n');
}

/// The JSON line, in the shape of a flattened tracing event.
#[derive(Serialize)]
#[serde(bound(serialize = "T: Display, C: Display, U: Display, R: Display"))]
struct Json<'a, T, C, U, R> {
    timestamp: Shown<T>,
    level: &'static str,
    target: &'static str,
    client: Shown<C>,
    method: &'a str,
    path: &'a str,
    status: u16,
    route: &'a str,
    upstream: Shown<U>,
    latency_ms: f64,
    bytes: u64,
    rate_limit: Shown<R>,
    request_id: &'a str,
}

/// Serializes a value as the string it displays as (escaped by serde_json).
struct Shown<T>(T);

impl<T: Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Displays an optional value as itself or as nothing.
struct Maybe<T>(Option<T>);

impl<T: Display> Display for Maybe<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

/// `policy:outcome`.
struct Pair<'a>(&'a str, &'a str);

impl Display for Pair<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

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
             status=200 route=/ upstream=10.0.0.9:8000 latency_ms=1.5 bytes=15 rate_limit=per_ip:passed \
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
        assert!(line(LogFormat::Text, &e).contains(" upstream= latency_ms=1.5 "));
    }
}
