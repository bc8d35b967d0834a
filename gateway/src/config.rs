//! The gateway's TOML configuration: typed, defaulted, validated once.
//!
//! Contract: [`GatewayConfig::load`] reads one file; unknown keys, wrong
//! types and broken rules are all reported together (with the file and the
//! dotted key), and nothing is bound before the whole file is valid. Every
//! key and its default is listed in the README.

use bytesize::ByteSize;
use serde::Deserialize;
use shared::telemetry::LogFormat;
use shared::{Problem, Validate};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// Listeners and shutdown.
    pub server: ServerSettings,
    /// Certificate and key for the HTTPS listener.
    pub tls: Option<TlsSettings>,
    /// Connection and request limits and client-side timeouts.
    pub limits: Limits,
    /// Named upstreams.
    pub upstreams: BTreeMap<String, UpstreamSettings>,
    /// Routes by path prefix, longest match first.
    pub routes: Vec<RouteSettings>,
    /// Logging.
    pub log: LogSettings,
}

/// What the plain-HTTP listener does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// 308 to the same host and path on https.
    #[default]
    Redirect,
    /// Proxy like the HTTPS listener (behind a TLS-terminating balancer).
    Proxy,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// HTTPS listener; needs `[tls]`. Unset: no HTTPS listener.
    pub https: Option<SocketAddr>,
    /// Plain HTTP listener. Unset: none.
    pub http: Option<SocketAddr>,
    /// `redirect` (default) or `proxy`.
    pub http_mode: HttpMode,
    /// HTTPS port written into redirects; default: the HTTPS listener's port.
    pub redirect_https_port: Option<u16>,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`); never publish it.
    pub admin: SocketAddr,
    /// How long in-flight requests may run after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            https: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            http: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            http_mode: HttpMode::Redirect,
            redirect_https_port: None,
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Open client connections, all listeners together; past it new
    /// connections are closed at once.
    pub max_connections: usize,
    /// Open connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Requests being proxied at once; past it the answer is 503.
    pub max_requests_in_flight: usize,
    /// Time to receive a request's headers (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time to finish a TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest request head (HTTP/1.1 buffer; HTTP/2 header list).
    pub max_header_size: ByteSize,
    /// Largest request body (413 beyond).
    pub max_body: ByteSize,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_connections_per_ip: 256,
            max_requests_in_flight: 10_000,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_size: ByteSize::kib(16),
            max_body: ByteSize::mib(1),
            h2_max_concurrent_streams: 128,
        }
    }
}

/// How an upstream picks a replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each available replica in turn.
    RoundRobin,
    /// Power of two choices: the less busy of two random replicas.
    #[default]
    LeastRequests,
}

/// `[upstreams.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UpstreamSettings {
    /// Static replicas, `host:port` (names resolved once at start-up).
    pub servers: Vec<String>,
    /// Or a DNS name re-resolved every `discover_interval` (`tasks.app:8000`).
    pub discover: Option<String>,
    /// Re-resolution interval for `discover`.
    #[serde(with = "humantime_serde")]
    pub discover_interval: Duration,
    /// `least_requests` (default) or `round_robin`.
    pub balance: Balance,
    /// Time to open a connection to a replica.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time from sending a request to the response head.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Tries per request, the first included (nginx `proxy_next_upstream_tries`).
    pub max_tries: u32,
    /// Failures within `fail_timeout` that eject a replica (nginx `max_fails`).
    pub max_fails: u32,
    /// Failure window and ejection time (nginx `fail_timeout`).
    #[serde(with = "humantime_serde")]
    pub fail_timeout: Duration,
    /// Idle pooled connections are closed after this (below IPVS's 900 s).
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Idle pooled connections kept per replica.
    pub keepalive_max_idle: usize,
    /// Idempotent request bodies up to this size are buffered so the
    /// request can be retried after a 502/503/timeout; larger ones stream
    /// and are retried only when the connection failed before sending.
    pub retry_buffer: ByteSize,
    /// Active health checks; absent: passive only.
    pub health: Option<HealthSettings>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            discover: None,
            discover_interval: Duration::from_secs(5),
            balance: Balance::LeastRequests,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            max_tries: 3,
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            keepalive_max_idle: 64,
            retry_buffer: ByteSize::kib(64),
            health: None,
        }
    }
}

/// `[upstreams.NAME.health]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HealthSettings {
    /// Path probed with GET; 2xx is healthy.
    pub path: String,
    /// Time between probes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time a probe may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failures that mark a replica unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark it healthy again.
    pub healthy_threshold: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            path: "/healthz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }
    }
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Requests whose path starts with this go to `upstream`.
    pub path_prefix: String,
    /// An upstream name from `[upstreams]`.
    pub upstream: String,
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl GatewayConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, shared::ConfigError> {
        shared::config::load(&shared::Sources::default().with_file(path), &[])
    }
}

fn positive(problems: &mut Vec<Problem>, key: &str, d: Duration) {
    if d.is_zero() {
        problems.push(Problem::new(key, "must be greater than zero"));
    }
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let s = &self.server;
        if s.https.is_some() && self.tls.is_none() {
            p.push(Problem::new(
                "tls",
                "server.https is set, so [tls] cert and key are required",
            ));
        }
        if s.https.is_none() && s.http.is_none() {
            p.push(Problem::new("server", "set server.https, server.http or both"));
        }
        if s.https.is_none() && s.http_mode == HttpMode::Redirect && s.redirect_https_port.is_none() && s.http.is_some()
        {
            p.push(Problem::new(
                "server.http_mode",
                "redirect needs server.https or server.redirect_https_port",
            ));
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !path.is_file() {
                    p.push(Problem::new(key, format!("{} is not a readable file", path.display())));
                }
            }
        }
        let l = &self.limits;
        for (key, n) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            ("limits.max_requests_in_flight", l.max_requests_in_flight),
            ("limits.h2_max_concurrent_streams", l.h2_max_concurrent_streams as usize),
        ] {
            if n == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        positive(&mut p, "limits.header_read_timeout", l.header_read_timeout);
        positive(&mut p, "limits.tls_handshake_timeout", l.tls_handshake_timeout);
        positive(&mut p, "limits.idle_timeout", l.idle_timeout);
        if l.max_header_size.as_u64() < 8192 {
            p.push(Problem::new("limits.max_header_size", "must be at least 8KiB"));
        }
        if self.upstreams.is_empty() {
            p.push(Problem::new("upstreams", "define at least one upstream"));
        }
        for (name, u) in &self.upstreams {
            validate_upstream(name, u, &mut p);
        }
        if self.routes.is_empty() {
            p.push(Problem::new("routes", "define at least one route"));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !r.path_prefix.starts_with('/') {
                p.push(Problem::new(format!("routes[{i}].path_prefix"), "must start with '/'"));
            }
            if !self.upstreams.contains_key(&r.upstream) {
                p.push(Problem::new(
                    format!("routes[{i}].upstream"),
                    format!("no upstream named {:?}", r.upstream),
                ));
            }
            if self.routes[..i].iter().any(|o| o.path_prefix == r.path_prefix) {
                p.push(Problem::new(
                    format!("routes[{i}].path_prefix"),
                    "duplicates an earlier route",
                ));
            }
        }
        p
    }
}

fn validate_upstream(name: &str, u: &UpstreamSettings, p: &mut Vec<Problem>) {
    let key = |k: &str| format!("upstreams.{name}.{k}");
    match (u.servers.is_empty(), &u.discover) {
        (true, None) => p.push(Problem::new(key("servers"), "set servers or discover")),
        (false, Some(_)) => p.push(Problem::new(key("discover"), "set servers or discover, not both")),
        _ => {}
    }
    for (i, s) in u.servers.iter().enumerate() {
        if !has_port(s) {
            p.push(Problem::new(
                format!("{}[{i}]", key("servers")),
                format!("{s:?} is not host:port"),
            ));
        }
    }
    if let Some(d) = &u.discover {
        if !has_port(d) {
            p.push(Problem::new(key("discover"), format!("{d:?} is not host:port")));
        }
    }
    positive(p, &key("discover_interval"), u.discover_interval);
    positive(p, &key("connect_timeout"), u.connect_timeout);
    positive(p, &key("response_timeout"), u.response_timeout);
    positive(p, &key("fail_timeout"), u.fail_timeout);
    positive(p, &key("keepalive_timeout"), u.keepalive_timeout);
    if u.keepalive_timeout >= Duration::from_secs(900) {
        p.push(Problem::new(
            key("keepalive_timeout"),
            "must be below 900s (IPVS drops idle connections then)",
        ));
    }
    if u.max_tries == 0 {
        p.push(Problem::new(key("max_tries"), "must be at least 1"));
    }
    if u.max_fails == 0 {
        p.push(Problem::new(key("max_fails"), "must be at least 1"));
    }
    if let Some(h) = &u.health {
        if !h.path.starts_with('/') {
            p.push(Problem::new(key("health.path"), "must start with '/'"));
        }
        positive(p, &key("health.interval"), h.interval);
        positive(p, &key("health.timeout"), h.timeout);
        if h.unhealthy_threshold == 0 || h.healthy_threshold == 0 {
            p.push(Problem::new(key("health"), "thresholds must be at least 1"));
        }
    }
}

fn has_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
}
