//! The app's Prometheus metrics, served on the admin listener only.
//!
//! The registry is an object, not a global, so every app instance (and every
//! test) counts on its own.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method, folded by [`method_label`] so the label set stays bounded.
    pub method: &'static str,
    /// Route template (`/configs/{name}`), never the raw path, so the label
    /// set stays bounded.
    pub route: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of a latency observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method, folded by [`method_label`].
    pub method: &'static str,
    /// Route template.
    pub route: String,
}

/// Labels of a cache operation outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit`, `miss` or `error`.
    pub outcome: &'static str,
}

/// Labels of import metrics: a job state, an item outcome or a claim kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImportLabels {
    /// The state, outcome or kind.
    pub kind: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// All app metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    cache: Family<CacheLabels, Counter>,
    import_depth: Gauge,
    import_jobs: Family<ImportLabels, Counter>,
    import_items: Family<ImportLabels, Counter>,
    import_claims: Family<ImportLabels, Counter>,
    import_retries: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("app");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by method and route",
            latency.clone(),
        );
        registry.register("cache_operations", "Cache lookups and writes by outcome", cache.clone());
        let import_depth = Gauge::default();
        let import_jobs = Family::<ImportLabels, Counter>::default();
        let import_items = Family::<ImportLabels, Counter>::default();
        let import_claims = Family::<ImportLabels, Counter>::default();
        let import_retries = Counter::default();
        registry.register(
            "import_queue_depth",
            "Import jobs queued or running (read from the store by each worker pool)",
            import_depth.clone(),
        );
        registry.register(
            "import_jobs",
            "Import job state changes made by this process, by the state entered (kind)",
            import_jobs.clone(),
        );
        registry.register(
            "import_items",
            "Import items recorded by this process, by outcome (kind)",
            import_items.clone(),
        );
        registry.register(
            "import_claims",
            "Import jobs taken by this process's workers: first, reclaimed (after a worker died), republished (lost from the queue)",
            import_claims.clone(),
        );
        registry.register(
            "import_batch_retries",
            "Import batches retried because the store was unavailable",
            import_retries.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            cache,
            import_depth,
            import_jobs,
            import_items,
            import_claims,
            import_retries,
        }
    }
}

/// The `method` label of a request: the method itself when it is one of
/// RFC 9110's (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, CONNECT,
/// TRACE; case-sensitive, as methods are), else `OTHER`. A client can send
/// any token as a method; labelling with it would let every invented one
/// create series that live as long as the process.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|known| *known == method).unwrap_or("OTHER")
}

impl Metrics {
    /// Counts one request and its latency. `method` is folded by
    /// [`method_label`]; `route` must come from a bounded set (route
    /// templates, never raw paths).
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let route = route.to_string();
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route: route.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { method, route })
            .observe(seconds);
    }

    /// Counts a cache outcome: `hit`, `miss` or `error`.
    pub fn cache(&self, outcome: &'static str) {
        self.cache.get_or_create(&CacheLabels { outcome }).inc();
    }

    /// Sets the import queue depth.
    pub fn import_depth(&self, jobs: u64) {
        self.import_depth.set(i64::try_from(jobs).unwrap_or(i64::MAX));
    }

    /// Counts a job entering `state`.
    pub fn import_job(&self, state: &'static str) {
        self.import_jobs.get_or_create(&ImportLabels { kind: state }).inc();
    }

    /// Counts `n` items recorded with `outcome`.
    pub fn import_items(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.import_items
                .get_or_create(&ImportLabels { kind: outcome })
                .inc_by(n);
        }
    }

    /// Counts a claim: `first`, `reclaimed` or `republished`.
    pub fn import_claim(&self, kind: &'static str) {
        self.import_claims.get_or_create(&ImportLabels { kind }).inc();
    }

    /// Counts a batch retried after a store fault.
    pub fn import_retry(&self) {
        self.import_retries.inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_has_the_counted_series() {
        let m = Metrics::default();
        m.observe_request("GET", "/configs/{name}", 200, 0.001);
        m.cache("hit");
        let text = m.render();
        assert!(
            text.contains(r#"app_http_requests_total{method="GET",route="/configs/{name}",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"app_cache_operations_total{outcome="hit"} 1"#),
            "{text}"
        );
        assert!(text.contains("app_http_request_duration_seconds_bucket"), "{text}");
    }

    #[test]
    fn only_known_methods_become_labels() {
        for known in [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
        ] {
            assert_eq!(method_label(known), known);
        }
        for invented in ["FOOBAR", "get", "PROPFIND", ""] {
            assert_eq!(method_label(invented), "OTHER", "{invented:?}");
        }
    }
}
