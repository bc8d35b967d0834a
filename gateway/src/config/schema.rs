//! The typed configuration: every section and key, its default, and (in
//! its doc comment) its contract; serde fills unset keys from `Default`.

use super::rate::{Rate, RateUnit};
use bytesize::ByteSize;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use shared::telemetry::LogFormat;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// How the client address is found.
    pub client_ip: ClientIpSettings,
    /// Named rate-limit policies.
    #[serde(default = "default_policies")]
    pub rate_limits: BTreeMap<String, PolicySettings>,
    /// Which requests are limited by which policy, and limiter-wide settings.
    pub rate_limit: RateLimitSettings,
    /// Logging.
    pub log: LogSettings,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            tls: None,
            limits: Limits::default(),
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
            client_ip: ClientIpSettings::default(),
            rate_limits: default_policies(),
            rate_limit: RateLimitSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// The shipped policy: `per_ip`, 20 r/s with a burst of 20, no delay.
fn default_policies() -> BTreeMap<String, PolicySettings> {
    let per_ip = PolicySettings {
        rate: Rate {
            count: 20,
            per: RateUnit::Second,
        },
        burst: 20,
        nodelay: true,
        status: 429,
        dry_run: false,
        shared: None,
    };
    BTreeMap::from([("per_ip".to_string(), per_ip)])
}

/// `[client_ip]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ClientIpSettings {
    /// Peers whose `X-Forwarded-For` (walked from the right) and PROXY
    /// headers are believed (nginx `set_real_ip_from` + `real_ip_recursive on`).
    pub trusted_proxies: Vec<IpNet>,
    /// Expect a PROXY protocol v1/v2 header on the public listeners
    /// (accepted from trusted proxies only; anything else is closed).
    pub proxy_protocol: bool,
    /// IPv4 prefix length that forms one key (32: per address).
    pub ipv4_prefix: u8,
    /// IPv6 prefix length that forms one key (64: per /64).
    pub ipv6_prefix: u8,
}

impl Default for ClientIpSettings {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

/// `[rate_limits.NAME]`: one policy, with nginx `limit_req` semantics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Sustained rate per client key.
    pub rate: Rate,
    /// Requests allowed above the rate (default 0).
    #[serde(default)]
    pub burst: u32,
    /// `true`: requests within the burst pass at once; `false` (nginx's
    /// default, and a policy's when unset; the shipped `per_ip` sets
    /// `true`): they are delayed to leave at the rate.
    #[serde(default)]
    pub nodelay: bool,
    /// Status of a refusal (default 429).
    #[serde(default = "default_reject_status")]
    pub status: u16,
    /// Count and log would-be refusals and delays without applying them.
    #[serde(default)]
    pub dry_run: bool,
    /// Share this policy's state with the other gateway nodes through
    /// `[rate_limit.shared]`; unset: shared when that section is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

fn default_reject_status() -> u16 {
    429
}

/// `[rate_limit]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RateLimitSettings {
    /// Client networks never limited.
    pub allowlist: Vec<IpNet>,
    /// Keys tracked per policy at most (memory bound).
    pub max_keys: usize,
    /// How often replenished keys are dropped.
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// Send `RateLimit-Policy` / `RateLimit` on successful responses too.
    pub headers: bool,
    /// Which requests each policy limits; omitted with exactly one policy:
    /// every request, by that policy.
    pub rules: Vec<RuleSettings>,
    /// One limit across every gateway node, through Redis (none: each node
    /// limits on its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedSettings>,
}

/// `[rate_limit.shared]`: the policies' state shared by every gateway
/// node through one Redis. Decisions never wait for Redis: each node
/// decides on its own state and, every `sync_interval`, publishes what its
/// active keys consumed and takes in what the others did.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedSettings {
    /// `redis://[:password@]host:port/db`; or give `redis_url_file`.
    pub redis_url: Option<String>,
    /// A file holding the URL (a Docker secret such as
    /// `/run/secrets/gateway_redis_url`); read at start-up and reload.
    pub redis_url_file: Option<PathBuf>,
    /// Namespace of the keys in Redis; nodes with the same prefix (and
    /// Redis) share their limits.
    pub key_prefix: String,
    /// How often a node publishes and takes in consumption.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// A sync's budget: slower, or failed, and the node limits on its own
    /// with the quota divided by the live nodes until one succeeds.
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// A node not heard from for this long is no longer counted live.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// Live nodes assumed before Redis has ever answered (a node started
    /// while Redis is down divides its quota by this).
    pub assumed_nodes: u32,
    /// Client keys one sync publishes at most, those nearest their limit
    /// first (bounds Redis's work when a flood of clients arrives).
    pub max_sync_keys: usize,
}

impl Default for SharedSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_url_file: None,
            key_prefix: "gateway:ratelimit".into(),
            sync_interval: Duration::from_millis(100),
            sync_timeout: Duration::from_millis(250),
            node_ttl: Duration::from_secs(2),
            assumed_nodes: 1,
            max_sync_keys: 4000,
        }
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            allowlist: Vec::new(),
            max_keys: 1_000_000,
            cleanup_interval: Duration::from_secs(10),
            headers: true,
            rules: Vec::new(),
            shared: None,
        }
    }
}

/// `[[rate_limit.rules]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// Requests whose path starts with this; the longest prefix wins.
    pub path_prefix: String,
    /// Only these methods (all when empty).
    #[serde(default)]
    pub methods: Vec<String>,
    /// A policy name from `[rate_limits]`.
    pub policy: String,
}

/// What the plain-HTTP listener does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// 308 to the same host and path on https.
    #[default]
    Redirect,
    /// Proxy like the HTTPS listener (behind a TLS-terminating balancer).
    Proxy,
    /// No plain-HTTP listener.
    Off,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerSettings {
    /// HTTPS listener; needs `[tls]`. Unset: `0.0.0.0:443` when `[tls]` is
    /// given, else no HTTPS listener (see [`GatewayConfig::https_listener`]).
    pub https: Option<SocketAddr>,
    /// Plain HTTP listener (none with `http_mode = "off"`).
    pub http: SocketAddr,
    /// `redirect` (default), `proxy` or `off`.
    pub http_mode: HttpMode,
    /// HTTPS port written into redirects; default: the HTTPS listener's port.
    pub redirect_https_port: Option<u16>,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`); never publish it.
    pub admin: SocketAddr,
    /// How long in-flight requests may run after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serving threads, each with its own event loop, listening sockets
    /// and upstream connections (nginx's `worker_processes`); unset: one
    /// per CPU (see [`GatewayConfig::workers`]).
    pub workers: Option<usize>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            https: None,
            http: SocketAddr::from(([0, 0, 0, 0], 80)),
            http_mode: HttpMode::Redirect,
            redirect_https_port: None,
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            shutdown_grace: Duration::from_secs(25),
            workers: None,
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Limits {
    /// Open client connections, all listeners together; past it new
    /// connections are closed at once.
    pub max_connections: usize,
    /// Open connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Requests being proxied at once (until their response has been
    /// sent); past it the answer is 503.
    pub max_requests_in_flight: usize,
    /// Requests in flight from one client key (keyed like the rate
    /// limiter; at most `max_requests_in_flight`); past it the answer is
    /// 429, so one client cannot take the whole of `max_requests_in_flight`.
    pub max_requests_in_flight_per_client: usize,
    /// Time to receive a request's headers (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time to finish a TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest wait for the next bytes of a request body; then 408 (the
    /// client's fault, never the replica's).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Longest a response may wait for the client to take its bytes (a
    /// blocked socket, an HTTP/2 stream without flow-control window); then
    /// the connection is closed (the stream reset over HTTP/2) and the
    /// upstream connection released.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
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
            max_connections: 12_000,
            max_connections_per_ip: 256,
            max_requests_in_flight: 10_000,
            max_requests_in_flight_per_client: 100,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            max_header_size: ByteSize::kib(16),
            max_body: ByteSize::mib(1),
            h2_max_concurrent_streams: 128,
        }
    }
}

/// How an upstream picks a replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each available replica in turn.
    RoundRobin,
    /// Power of two choices: the less busy of two random replicas.
    #[default]
    LeastRequests,
}

/// `[upstreams.NAME]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// Time to the response head, counted from the replica's having the
    /// whole request (while a streamed body is still going, only time the
    /// replica leaves bytes untaken counts: see `body_watch`).
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Tries per request that reached a replica, the first included (nginx
    /// `proxy_next_upstream_tries`); a refused connection costs none.
    pub max_tries: u32,
    /// Failures within `fail_timeout` that eject a replica (nginx `max_fails`).
    pub max_fails: u32,
    /// Failure window and ejection time (nginx `fail_timeout`).
    #[serde(with = "humantime_serde")]
    pub fail_timeout: Duration,
    /// Idle pooled connections are closed after this: below the replica's
    /// own idle timeout (the app's is 10 s), or a request can meet a
    /// connection the replica is closing; and below IPVS's 900 s.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Idle pooled connections kept per replica.
    pub keepalive_max_idle: usize,
    /// Open connections to one replica, split evenly between the workers;
    /// a request that finds them all busy waits in the queue.
    pub max_connections: usize,
    /// Requests that may wait for a connection to one replica (split like
    /// `max_connections`); past it the answer is 503 at once.
    pub max_queue: usize,
    /// Longest wait in that queue; then 503.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Request bodies of at most this many bytes (announced by
    /// `Content-Length` or not) are read in full before a
    /// replica is contacted (a slow client then holds no upstream
    /// connection), and idempotent ones can be retried after a
    /// 502/503/timeout; larger ones stream and are retried only when the
    /// connection failed before sending.
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
            keepalive_timeout: Duration::from_secs(4),
            keepalive_max_idle: 64,
            max_connections: 1024,
            max_queue: 1024,
            queue_timeout: Duration::from_secs(5),
            retry_buffer: ByteSize::kib(64),
            health: None,
        }
    }
}

/// `[upstreams.NAME.health]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Requests whose path starts with this go to `upstream`.
    pub path_prefix: String,
    /// An upstream name from `[upstreams]`.
    pub upstream: String,
    /// Largest request body on this route; default `limits.max_body`.
    /// For routes that take bulk uploads (the app's `/imports`), so the
    /// rest of the API keeps the small bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct LogSettings {
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl GatewayConfig {
    /// The HTTPS listener: `server.https`, else `0.0.0.0:443` when `[tls]`
    /// is given, else none.
    pub fn https_listener(&self) -> Option<SocketAddr> {
        self.server
            .https
            .or_else(|| self.tls.as_ref().map(|_| SocketAddr::from(([0, 0, 0, 0], 443))))
    }

    /// The plain-HTTP listener, unless `http_mode = "off"`.
    pub fn http_listener(&self) -> Option<SocketAddr> {
        (self.server.http_mode != HttpMode::Off).then_some(self.server.http)
    }

    /// Serving threads: `server.workers`, else one per CPU.
    pub fn workers(&self) -> usize {
        self.server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
    }
}
