//! Gateway metrics (Prometheus text on the admin listener). The registry
//! is an object, so each gateway instance and test counts on its own.

use crate::sharded::{ShardedCounter, ShardedGauge, ShardedHistogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Route and status class of a request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route's prefix, or `none`.
    pub route: String,
    /// `2xx` .. `5xx`.
    pub class: &'static str,
}

/// A route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route's prefix, or `none`.
    pub route: String,
}

/// An upstream replica.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Upstream name.
    pub upstream: String,
    /// Replica address.
    pub endpoint: String,
}

/// A retry and its cause.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// Upstream name.
    pub upstream: String,
    /// `connect`, `reset`, `timeout` or `status`.
    pub reason: &'static str,
}

/// A refused connection and why.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `max_connections`, `max_connections_per_ip` or `tls_handshake`.
    pub reason: &'static str,
}

/// A shared rate-limit sync's result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// `ok`, `failed` (Redis refused or unreachable) or `slow` (over
    /// `sync_timeout`).
    pub result: &'static str,
}

/// An answer the gateway made itself instead of a replica's.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Whose fault: `client`, `gateway` or `upstream`.
    pub origin: &'static str,
    /// What it was (`no_route`, `bad_request`, `body_timeout`, ...).
    pub reason: &'static str,
}

/// A serving worker.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// The worker's index (`server.workers`).
    pub worker: String,
}

/// A rate-limit decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Policy name.
    pub policy: String,
    /// `passed`, `delayed`, `rejected`, `dry_run_delayed`, `dry_run_rejected`.
    pub outcome: &'static str,
}

/// A configuration reload's result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied` or `rejected`.
    pub result: &'static str,
}

/// A rate-limit policy.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Policy name.
    pub policy: String,
}

type HistogramFamily = Family<RouteLabels, ShardedHistogram, fn() -> ShardedHistogram>;

/// Every gateway metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status class.
    pub requests: Family<RequestLabels, ShardedCounter>,
    /// Latency to the end of the response, by route.
    pub latency: HistogramFamily,
    /// Requests being served now.
    pub in_flight: ShardedGauge,
    /// Open client connections.
    pub connections: Gauge,
    /// Connections closed at once, by reason.
    pub refused: Family<RefusedLabels, Counter>,
    /// Connections accepted, by worker (shows how evenly they spread).
    pub accepted: Family<WorkerLabels, Counter>,
    /// 1 when a replica is available, 0 when not.
    pub upstream_healthy: Family<EndpointLabels, Gauge>,
    /// Retries by upstream and cause.
    pub retries: Family<RetryLabels, Counter>,
    /// Rate-limit decisions by policy and outcome.
    pub rate_limit_decisions: Family<DecisionLabels, Counter>,
    /// Client keys tracked per policy (as of the last cleanup).
    pub rate_limit_keys: Family<PolicyLabels, Gauge>,
    /// Gateway nodes sharing rate limits, as of the last sync.
    pub rate_limit_live_nodes: Gauge,
    /// 1 while shared policies are limited on this node alone (Redis out
    /// of reach), 0 while shared.
    pub rate_limit_degraded: Gauge,
    /// Shared rate-limit syncs by result.
    pub rate_limit_syncs: Family<SyncLabels, Counter>,
    /// Client keys published and taken in by syncs.
    pub rate_limit_synced_keys: Counter,
    /// Client keys a sync left out (over `max_sync_keys`, the lightest).
    pub rate_limit_sync_skipped_keys: Counter,
    /// Configuration reloads by result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Requests the gateway refused or failed itself, by origin and reason
    /// (including malformed, oversized or late requests hyper answered
    /// before any layer saw them).
    pub request_errors: Family<ErrorLabels, Counter>,
    /// The process's resident memory, read at each scrape.
    pub memory_resident: Gauge,
    /// The memory limit the process runs under (its cgroup's), 0 if none.
    pub memory_limit: Gauge,
}

fn latency_histogram() -> ShardedHistogram {
    ShardedHistogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Family::<RequestLabels, ShardedCounter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let in_flight = ShardedGauge::default();
        let connections = Gauge::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        let accepted = Family::<WorkerLabels, Counter>::default();
        let upstream_healthy = Family::<EndpointLabels, Gauge>::default();
        let retries = Family::<RetryLabels, Counter>::default();
        let rate_limit_decisions = Family::<DecisionLabels, Counter>::default();
        let rate_limit_keys = Family::<PolicyLabels, Gauge>::default();
        let rate_limit_live_nodes = Gauge::default();
        let rate_limit_degraded = Gauge::default();
        let rate_limit_syncs = Family::<SyncLabels, Counter>::default();
        let rate_limit_synced_keys = Counter::default();
        let rate_limit_sync_skipped_keys = Counter::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let request_errors = Family::<ErrorLabels, Counter>::default();
        let memory_resident = Gauge::default();
        let memory_limit = Gauge::default();
        registry.register("requests", "Requests by route and status class", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time to the end of the response, by route",
            latency.clone(),
        );
        registry.register("requests_in_flight", "Requests being served", in_flight.clone());
        registry.register("connections_open", "Open client connections", connections.clone());
        registry.register(
            "connections_refused",
            "Connections closed at once, by reason",
            refused.clone(),
        );
        registry.register(
            "worker_connections",
            "Connections accepted, by worker",
            accepted.clone(),
        );
        registry.register(
            "upstream_healthy",
            "1 when a replica is available",
            upstream_healthy.clone(),
        );
        registry.register("upstream_retries", "Retries by upstream and cause", retries.clone());
        registry.register(
            "rate_limit_decisions",
            "Rate-limit decisions by policy and outcome",
            rate_limit_decisions.clone(),
        );
        registry.register(
            "rate_limit_tracked_keys",
            "Client keys tracked per policy",
            rate_limit_keys.clone(),
        );
        registry.register(
            "rate_limit_live_nodes",
            "Gateway nodes sharing rate limits, as of the last sync",
            rate_limit_live_nodes.clone(),
        );
        registry.register(
            "rate_limit_shared_degraded",
            "1 while shared policies are limited on this node alone, with its share of the quota",
            rate_limit_degraded.clone(),
        );
        registry.register(
            "rate_limit_syncs",
            "Shared rate-limit syncs by result",
            rate_limit_syncs.clone(),
        );
        registry.register(
            "rate_limit_synced_keys",
            "Client keys published and taken in by shared rate-limit syncs",
            rate_limit_synced_keys.clone(),
        );
        registry.register(
            "rate_limit_sync_skipped_keys",
            "Client keys shared rate-limit syncs left out (over max_sync_keys, the lightest)",
            rate_limit_sync_skipped_keys.clone(),
        );
        registry.register("config_reloads", "Configuration reloads by result", reloads.clone());
        registry.register(
            "request_errors",
            "Requests the gateway answered with an error itself, by origin and reason",
            request_errors.clone(),
        );
        registry.register_with_unit(
            "memory_resident",
            "Resident memory of the process (read at each scrape)",
            prometheus_client::registry::Unit::Bytes,
            memory_resident.clone(),
        );
        registry.register_with_unit(
            "memory_limit",
            "Memory limit of the process's cgroup (0: none found)",
            prometheus_client::registry::Unit::Bytes,
            memory_limit.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            in_flight,
            connections,
            refused,
            accepted,
            upstream_healthy,
            retries,
            rate_limit_decisions,
            rate_limit_keys,
            rate_limit_live_nodes,
            rate_limit_degraded,
            rate_limit_syncs,
            rate_limit_synced_keys,
            rate_limit_sync_skipped_keys,
            reloads,
            request_errors,
            memory_resident,
            memory_limit,
        }
    }
}

/// One route's request series, resolved once so counting a request is a
/// few atomic operations (no label hashing or allocation per request);
/// cloning it is one reference count.
#[derive(Debug, Clone)]
pub struct RouteMetrics(Arc<RouteSeries>);

#[derive(Debug)]
struct RouteSeries {
    route: Arc<str>,
    classes: [ShardedCounter; 5],
    latency: ShardedHistogram,
    in_flight: ShardedGauge,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl RouteMetrics {
    /// The route's label (its prefix, or `none`).
    pub fn route(&self) -> &str {
        &self.0.route
    }

    /// Counts a request as in flight until [`Self::finish`].
    pub fn start(&self) {
        self.0.in_flight.inc();
    }

    /// Counts a finished request (and ends its in-flight count).
    pub fn finish(&self, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.0.classes[class].inc();
        self.0.latency.observe(seconds);
        self.0.in_flight.dec();
    }
}

impl Metrics {
    /// The series of `route` (its prefix, or `none`).
    pub fn route(&self, route: &str) -> RouteMetrics {
        let classes = CLASSES.map(|class| {
            let labels = RequestLabels {
                route: route.to_string(),
                class,
            };
            self.requests.get_or_create(&labels).clone()
        });
        let latency = self
            .latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .clone();
        RouteMetrics(Arc::new(RouteSeries {
            route: Arc::from(route),
            classes,
            latency,
            in_flight: self.in_flight.clone(),
        }))
    }

    /// Counts a retry.
    pub fn retry(&self, upstream: &str, reason: &'static str) {
        self.retries
            .get_or_create(&RetryLabels {
                upstream: upstream.to_string(),
                reason,
            })
            .inc();
    }

    /// Counts a shared rate-limit sync of `keys` keys.
    pub fn rate_limit_sync(&self, result: &'static str, keys: usize) {
        self.rate_limit_syncs.get_or_create(&SyncLabels { result }).inc();
        if result == "ok" {
            self.rate_limit_synced_keys.inc_by(keys as u64);
        }
    }

    /// Counts a configuration reload.
    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Counts a rate-limit decision.
    pub fn rate_limit(&self, policy: &str, outcome: &'static str) {
        self.rate_limit_decisions
            .get_or_create(&DecisionLabels {
                policy: policy.to_string(),
                outcome,
            })
            .inc();
    }

    /// Sets a policy's tracked-key gauge.
    pub fn set_tracked_keys(&self, policy: &str, keys: usize) {
        let labels = PolicyLabels {
            policy: policy.to_string(),
        };
        self.rate_limit_keys
            .get_or_create(&labels)
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// Counts an error answer (or a request hyper refused before the layers).
    pub fn request_error(&self, origin: &'static str, reason: &'static str) {
        self.request_errors.get_or_create(&ErrorLabels { origin, reason }).inc();
    }

    /// Counts a refused connection.
    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }

    /// Sets a replica's availability gauge.
    pub fn set_healthy(&self, upstream: &str, endpoint: &str, available: bool) {
        let labels = EndpointLabels {
            upstream: upstream.to_string(),
            endpoint: endpoint.to_string(),
        };
        self.upstream_healthy.get_or_create(&labels).set(i64::from(available));
    }

    /// The Prometheus text exposition (memory gauges read now).
    pub fn render(&self) -> String {
        self.memory_resident.set(crate::memory::resident_bytes().unwrap_or(0));
        self.memory_limit.set(crate::memory::limit_bytes().unwrap_or(0));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
