//! Background upstream maintenance: DNS re-resolution of `discover` names,
//! active HTTP health checks, and the availability gauges.

use crate::balancer::Upstream;
use crate::metrics::Metrics;
use crate::proxy::UpstreamClient;
use axum::body::Body;
use http::{Request, Uri};
use shared::shutdown::CancellationToken;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Resolves `host:port` to its addresses.
pub async fn resolve(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host(name).await?.collect())
}

/// Re-resolves `name` every `interval` and updates the upstream's
/// replicas. A failed or empty lookup keeps the previous set (DNS hiccups
/// must not empty a healthy upstream).
pub async fn discover(upstream: Arc<Upstream>, name: String, interval: Duration, stop: CancellationToken) {
    loop {
        match resolve(&name).await {
            Ok(addrs) if !addrs.is_empty() => {
                if upstream.set_endpoints(&addrs) {
                    tracing::info!(upstream = %upstream.name, replicas = addrs.len(), "replica set changed");
                }
            }
            Ok(_) => {
                tracing::warn!(upstream = %upstream.name, %name, "DNS returned no address; keeping the previous replicas")
            }
            Err(error) => {
                tracing::warn!(upstream = %upstream.name, %name, %error, "DNS lookup failed; keeping the previous replicas")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Probes every replica of `client`'s upstream at its health interval
/// (when configured) and publishes availability gauges.
pub async fn check(client: Arc<UpstreamClient>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let upstream = client.upstream.clone();
    let interval = upstream
        .settings
        .health
        .as_ref()
        .map_or(Duration::from_secs(2), |h| h.interval);
    loop {
        let endpoints = upstream.endpoints();
        if let Some(h) = &upstream.settings.health {
            let name = &upstream.name;
            let probes = endpoints.iter().map(|e| {
                let client = client.clone();
                async move {
                    let ok = probe(&client, e.addr, &h.path, h.timeout).await;
                    if let Some(healthy) = e.record_probe(ok, h.healthy_threshold, h.unhealthy_threshold) {
                        let state = if healthy { "healthy" } else { "unhealthy" };
                        tracing::warn!(upstream = %name, endpoint = %e.addr, state, "replica health changed");
                    }
                }
            });
            futures::future::join_all(probes).await;
        }
        let now = Instant::now();
        for e in endpoints.iter() {
            metrics.set_healthy(&upstream.name, &e.addr.to_string(), e.is_available(now));
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

async fn probe(client: &UpstreamClient, addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let (Ok(uri), Ok(host)) = (path.parse::<Uri>(), http::HeaderValue::from_str(&addr.to_string())) else {
        return false;
    };
    let mut req = Request::new(Body::empty());
    *req.uri_mut() = uri;
    req.headers_mut().insert(http::header::HOST, host);
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("gateway-health-check"),
    );
    // Read the body too, so the connection goes back to the pool; a probe
    // answer over 64 KiB is not a health check, and fails.
    let exchange = async {
        let response = client.send(addr, req, None).await.ok()?;
        let ok = response.status().is_success();
        let body = http_body_util::Limited::new(response.into_body(), 64 * 1024);
        http_body_util::BodyExt::collect(body).await.ok()?;
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, exchange).await, Ok(Some(true)))
}
