//! What a running gateway is made of, assembled from one configuration.
//!
//! [`build`] makes an [`Active`]: the upstream clients (one per upstream,
//! kept from the previous configuration when their definition did not
//! change), TLS, the routes, the rate limiter (keeping every unchanged
//! policy's buckets), the proxy and the two listeners' stacks, gathered in
//! a [`Generation`] that the accept loops read; and the background tasks
//! beside it (health checks, DNS discovery, limiter cleanup), which stop
//! when the `Active` is dropped. Start-up builds the first one; a reload
//! builds the next from the one in force and swaps it
//! in: new connections and requests use it, requests already running
//! finish on the one they started with.

use crate::balancer::Upstream;
use crate::client_ip::{KeyPrefixes, TrustedProxies};
use crate::config::{GatewayConfig, HttpMode};
use crate::connection::Protocols;
use crate::health;
use crate::in_flight::{ClientInFlight, InFlightLimit};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Route, Routes, UpstreamClient};
use crate::rate_limit::cluster::{self, Link};
use crate::rate_limit::{MonotonicClock, RateLimiter};
use crate::service::HttpService;
use crate::stack::{self, StackState};
use crate::tls;
use anyhow::Context;
use shared::shutdown::CancellationToken;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// What one configuration gives the listeners. A reload builds a new one
/// and swaps it in whole.
pub struct Generation {
    /// Timeouts and sizes for new connections.
    pub limits: crate::config::Limits,
    /// hyper's builders, enforcing `limits`.
    pub protocols: Protocols,
    /// Peers whose forwarding headers are believed.
    pub trusted: TrustedProxies,
    /// TLS for new handshakes on the HTTPS listener.
    pub tls: Option<TlsAcceptor>,
    /// The proxying stack (HTTPS listener).
    pub proxying: HttpService,
    /// The plain-HTTP listener's stack (proxying or redirect).
    pub plain: HttpService,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The generation in force, swapped atomically on reload.
pub type Current = Arc<arc_swap::ArcSwap<Generation>>;

/// Everything built from one configuration.
#[derive(Debug)]
pub struct Active {
    /// The configuration.
    pub config: GatewayConfig,
    /// What the listeners use.
    pub generation: Arc<Generation>,
    /// Upstream clients by name.
    pub clients: BTreeMap<String, Arc<UpstreamClient>>,
    /// The rate limiter.
    pub limiter: Arc<RateLimiter>,
    /// TLS session resumption (kept across reloads, see `tls::Resumption`).
    pub resumption: Option<tls::Resumption>,
    /// The shared rate-limit store (kept across reloads while
    /// `[rate_limit.shared]` is unchanged).
    pub shared: Option<Arc<Link>>,
    /// Stops this generation's background tasks.
    background: CancellationToken,
}

impl Active {
    /// Stops this generation's background tasks now (before leaving the
    /// shared membership at shutdown, so no sync joins it again).
    pub fn stop_background(&self) {
        self.background.cancel();
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.background.cancel();
    }
}

/// What start-up fixed for the life of the process: a reload builds on
/// these running values even when the file now says otherwise (such
/// changes are reported as needing a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    /// The HTTPS listener's port (written into redirects by default).
    pub https_port: u16,
    /// Serving workers, each with its own upstream pools.
    pub workers: usize,
}

/// Builds everything `config` describes, reusing what `previous` has for
/// unchanged upstreams, policies and certificate names, and starts its
/// background tasks.
pub async fn build(
    config: GatewayConfig,
    previous: Option<&Active>,
    metrics: &Arc<Metrics>,
    fixed: Fixed,
) -> anyhow::Result<Active> {
    let clients = upstream_clients(&config, previous, fixed.workers).await?;
    let (tls, resumption) = tls_acceptor(&config, previous)?;
    let limiter = rate_limiter(&config, previous);
    let shared = shared_link(&config, previous, metrics)?;
    let proxy = Arc::new(Proxy {
        routes: routes(&config, &clients),
        metrics: metrics.clone(),
    });
    let proxying = proxy_stack(&config, proxy, &limiter, metrics, fixed);
    let plain = match config.server.http_mode {
        HttpMode::Proxy => proxying.clone(),
        HttpMode::Redirect | HttpMode::Off => stack::redirect_stack(
            metrics.clone(),
            limiter.clone(),
            config.server.redirect_https_port.unwrap_or(fixed.https_port),
        ),
    };
    let generation = Arc::new(Generation {
        protocols: Protocols::new(&config.limits, metrics.clone()),
        limits: config.limits.clone(),
        trusted: TrustedProxies::new(config.client_ip.trusted_proxies.clone()),
        tls,
        proxying,
        plain,
    });
    let background = CancellationToken::new();
    start_background(&config, &clients, &limiter, metrics, &background);
    if let Some(link) = &shared {
        tokio::spawn(cluster::run(
            link.clone(),
            limiter.clone(),
            metrics.clone(),
            background.clone(),
        ));
    }
    Ok(Active {
        config,
        generation,
        clients,
        limiter,
        resumption,
        shared,
        background,
    })
}

/// One client per upstream: `previous`'s when the definition is unchanged
/// (its replicas' health and pooled connections kept), else a new one on
/// the resolved addresses (a `discover` name that does not resolve yet is
/// retried in the background; a static one that does not is an error).
async fn upstream_clients(
    config: &GatewayConfig,
    previous: Option<&Active>,
    workers: usize,
) -> anyhow::Result<BTreeMap<String, Arc<UpstreamClient>>> {
    let mut clients = BTreeMap::new();
    for (name, settings) in &config.upstreams {
        let kept = previous
            .and_then(|p| p.clients.get(name))
            .filter(|c| c.upstream.settings == *settings)
            .cloned();
        if let Some(client) = kept {
            clients.insert(name.clone(), client);
            continue;
        }
        let mut addrs = Vec::new();
        for server in &settings.servers {
            let found = health::resolve(server).await;
            addrs.extend(found.with_context(|| format!("upstreams.{name}: cannot resolve {server}"))?);
        }
        if let Some(d) = &settings.discover {
            match health::resolve(d).await {
                Ok(found) => addrs = found,
                Err(error) => {
                    tracing::warn!(upstream = %name, %error, "{d} does not resolve yet; retrying in the background")
                }
            }
        }
        let upstream = Arc::new(Upstream::new(name, settings.clone(), &addrs));
        clients.insert(name.clone(), Arc::new(UpstreamClient::new(upstream, workers)));
    }
    Ok(clients)
}

/// The TLS acceptor for `config.tls`, resuming sessions with `previous`'s
/// keys and cache when the certificate names the same server.
fn tls_acceptor(
    config: &GatewayConfig,
    previous: Option<&Active>,
) -> anyhow::Result<(Option<TlsAcceptor>, Option<tls::Resumption>)> {
    let Some(t) = &config.tls else {
        return Ok((None, None));
    };
    let previous = previous.and_then(|p| p.resumption.as_ref());
    let (server_config, resumption) = tls::server_config(&t.cert, &t.key, previous)?;
    Ok((Some(TlsAcceptor::from(server_config)), Some(resumption)))
}

/// The routing table: each route's prefix and its upstream's client.
fn routes(config: &GatewayConfig, clients: &BTreeMap<String, Arc<UpstreamClient>>) -> Routes {
    Routes::new(
        config
            .routes
            .iter()
            .map(|r| Route {
                prefix: Arc::from(r.path_prefix.as_str()),
                upstream: clients[&r.upstream].clone(),
                max_body: r.max_body.map(|b| b.as_u64()),
            })
            .collect(),
    )
}

/// The rate limiter, keeping `previous`'s buckets for unchanged policies.
fn rate_limiter(config: &GatewayConfig, previous: Option<&Active>) -> Arc<RateLimiter> {
    let prefixes = KeyPrefixes {
        v4: config.client_ip.ipv4_prefix,
        v6: config.client_ip.ipv6_prefix,
    };
    Arc::new(RateLimiter::new(
        &config.rate_limits,
        &config.rate_limit,
        prefixes,
        Arc::new(MonotonicClock::default()),
        previous.map(|p| p.limiter.as_ref()),
    ))
}

/// The link to the shared rate-limit store: `previous`'s while its
/// settings (and the URL they resolve to) are unchanged, so the node keeps
/// its identity and connection; `None` when limits are not shared.
fn shared_link(
    config: &GatewayConfig,
    previous: Option<&Active>,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<Link>>> {
    let previous = previous.and_then(|p| p.shared.as_ref());
    let Some(settings) = &config.rate_limit.shared else {
        // Nothing shared: the gauges say so (a reload may have removed it).
        metrics.rate_limit_degraded.set(0);
        metrics.rate_limit_live_nodes.set(0);
        return Ok(None);
    };
    match previous.filter(|l| l.serves(settings)) {
        Some(link) => Ok(Some(link.clone())),
        None => Link::connect(settings, previous.map(Arc::as_ref))
            .map(Some)
            .context("rate_limit.shared"),
    }
}

/// The proxying stack with this configuration's limits (one copy per
/// worker).
fn proxy_stack(
    config: &GatewayConfig,
    proxy: Arc<Proxy>,
    limiter: &Arc<RateLimiter>,
    metrics: &Arc<Metrics>,
    fixed: Fixed,
) -> HttpService {
    let limits = &config.limits;
    let per_client = limits
        .max_requests_in_flight_per_client
        .min(limits.max_requests_in_flight);
    stack::proxy_stack(
        StackState {
            proxy,
            metrics: metrics.clone(),
            in_flight: Arc::new(InFlightLimit::new(limits.max_requests_in_flight)),
            per_client: Arc::new(ClientInFlight::new(per_client)),
            max_body: limits.max_body.as_u64(),
            body_read_timeout: limits.body_read_timeout,
            limiter: limiter.clone(),
        },
        fixed.workers,
    )
}

/// Health checks and DNS discovery per upstream, and the limiter's
/// cleanup, until `stop` fires.
fn start_background(
    config: &GatewayConfig,
    clients: &BTreeMap<String, Arc<UpstreamClient>>,
    limiter: &Arc<RateLimiter>,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) {
    for client in clients.values() {
        tokio::spawn(health::check(client.clone(), metrics.clone(), stop.clone()));
        if let Some(name) = &client.upstream.settings.discover {
            let interval = client.upstream.settings.discover_interval;
            tokio::spawn(health::discover(
                client.upstream.clone(),
                name.clone(),
                interval,
                stop.clone(),
            ));
        }
    }
    tokio::spawn(clean_rate_limits(
        limiter.clone(),
        config.rate_limit.cleanup_interval,
        metrics.clone(),
        stop.clone(),
    ));
}

/// Drops replenished rate-limit keys every `interval` and publishes the
/// tracked-key gauges.
async fn clean_rate_limits(
    limiter: Arc<RateLimiter>,
    interval: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        for (policy, keys) in limiter.cleanup() {
            metrics.set_tracked_keys(&policy, keys);
        }
    }
}
