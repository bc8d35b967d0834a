//! Start-up and serving: [`Gateway::build`] validates what only I/O can
//! (certificates, upstream names), binds every listener and reports the
//! addresses; [`Gateway::run_until_stopped`] serves until the token fires,
//! then turns `/readyz` to 503, closes the listeners, lets in-flight
//! requests finish within the grace period, and returns. `main` and the
//! tests call exactly these.

use crate::admin::{self, AdminState};
use crate::balancer::Upstream;
use crate::client_ip::KeyPrefixes;
use crate::config::{GatewayConfig, HttpMode};
use crate::health;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Route, Routes, UpstreamClient};
use crate::rate_limit::{MonotonicClock, RateLimiter};
use crate::server::{self, HttpService, ServerContext};
use crate::stack::{self, StackState};
use crate::tls;
use anyhow::Context;
use shared::shutdown::{CancellationToken, TaskTracker};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// A built gateway: certificates loaded, upstreams resolved, listeners bound.
pub struct Gateway {
    config: GatewayConfig,
    https: Option<(TcpListener, TlsAcceptor)>,
    http: Option<TcpListener>,
    admin: TcpListener,
    clients: Vec<Arc<UpstreamClient>>,
    metrics: Arc<Metrics>,
    routes: Routes,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("https", &self.https_addr())
            .field("http", &self.http_addr())
            .field("admin", &self.admin_addr())
            .finish_non_exhaustive()
    }
}

/// Drops replenished rate-limit keys every `interval` and publishes the
/// tracked-key gauges.
async fn clean_rate_limits(
    limiter: Arc<RateLimiter>,
    interval: std::time::Duration,
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

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

impl Gateway {
    /// Loads the certificate, resolves static upstreams, binds listeners.
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let mut clients: BTreeMap<String, Arc<UpstreamClient>> = BTreeMap::new();
        for (name, settings) in &config.upstreams {
            let mut addrs = Vec::new();
            for server in &settings.servers {
                addrs.extend(
                    health::resolve(server)
                        .await
                        .with_context(|| format!("upstreams.{name}: cannot resolve {server}"))?,
                );
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
            clients.insert(name.clone(), Arc::new(UpstreamClient::new(upstream)));
        }
        let routes = Routes::new(
            config
                .routes
                .iter()
                .map(|r| Route {
                    prefix: Arc::from(r.path_prefix.as_str()),
                    upstream: clients[&r.upstream].clone(),
                    metrics: metrics.route(&r.path_prefix),
                })
                .collect(),
        );
        let https = match (config.https_listener(), &config.tls) {
            (Some(addr), Some(t)) => {
                let acceptor = TlsAcceptor::from(tls::server_config(&t.cert, &t.key)?);
                Some((bind(addr, "https").await?, acceptor))
            }
            _ => None,
        };
        let http = match config.http_listener() {
            Some(addr) => Some(bind(addr, "http").await?),
            None => None,
        };
        let admin = bind(config.server.admin, "admin").await?;
        Ok(Self {
            config,
            https,
            http,
            admin,
            clients: clients.into_values().collect(),
            metrics,
            routes,
        })
    }

    /// The HTTPS listener's address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `stop` fires, then drains (see the module documentation).
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let https_port = self
            .config
            .server
            .redirect_https_port
            .or(self.https_addr().map(|a| a.port()))
            .unwrap_or(443);
        let Self {
            config,
            https,
            http,
            admin,
            clients,
            metrics,
            routes,
        } = self;
        let draining = Arc::new(AtomicBool::new(false));
        let background = CancellationToken::new();
        let tracker = TaskTracker::new();
        for client in &clients {
            tokio::spawn(health::check(client.clone(), metrics.clone(), background.clone()));
            if let Some(name) = &client.upstream.settings.discover {
                let interval = client.upstream.settings.discover_interval;
                tokio::spawn(health::discover(
                    client.upstream.clone(),
                    name.clone(),
                    interval,
                    background.clone(),
                ));
            }
        }
        let max_body = config.limits.max_body.as_u64();
        let proxy = Arc::new(Proxy {
            routes,
            max_body,
            metrics: metrics.clone(),
        });
        let prefixes = KeyPrefixes {
            v4: config.client_ip.ipv4_prefix,
            v6: config.client_ip.ipv6_prefix,
        };
        let limiter = Arc::new(RateLimiter::new(
            &config.rate_limits,
            &config.rate_limit,
            prefixes,
            Arc::new(MonotonicClock::default()),
            None,
        ));
        tokio::spawn(clean_rate_limits(
            limiter.clone(),
            config.rate_limit.cleanup_interval,
            metrics.clone(),
            background.clone(),
        ));
        let proxying: HttpService = stack::proxy_stack(StackState {
            proxy,
            metrics: metrics.clone(),
            in_flight: Arc::new(Semaphore::new(config.limits.max_requests_in_flight)),
            max_body,
            limiter,
        });
        let ctx = Arc::new(ServerContext::new(
            config.limits.clone(),
            &config.client_ip,
            metrics.clone(),
            stop.clone(),
            tracker.clone(),
        ));
        let mut loops = Vec::new();
        if let Some((listener, acceptor)) = https {
            tracing::info!(addr = %listener.local_addr()?, "HTTPS listening");
            loops.push(tokio::spawn(server::accept_loop(
                listener,
                Some(acceptor),
                proxying.clone(),
                ctx.clone(),
            )));
        }
        if let Some(listener) = http {
            let service = match config.server.http_mode {
                HttpMode::Proxy => proxying.clone(),
                HttpMode::Redirect | HttpMode::Off => stack::redirect_stack(metrics.clone(), https_port),
            };
            tracing::info!(addr = %listener.local_addr()?, mode = ?config.server.http_mode, "HTTP listening");
            loops.push(tokio::spawn(server::accept_loop(listener, None, service, ctx.clone())));
        }
        let admin_state = AdminState {
            metrics: metrics.clone(),
            upstreams: clients.iter().map(|c| c.upstream.clone()).collect(),
            draining: draining.clone(),
        };
        tracing::info!(addr = %admin.local_addr()?, "admin listening");
        let admin_stop = background.clone();
        let admin_server = tokio::spawn(
            axum::serve(admin, admin::router(admin_state))
                .with_graceful_shutdown(admin_stop.cancelled_owned())
                .into_future(),
        );

        stop.cancelled().await;
        draining.store(true, Ordering::Release);
        tracing::info!(grace = ?config.server.shutdown_grace, "draining: listeners closed, finishing in-flight requests");
        for l in loops {
            let _ = l.await;
        }
        let outcome = shared::shutdown::drain(&tracker, config.server.shutdown_grace).await;
        background.cancel();
        let _ = admin_server.await;
        tracing::info!(?outcome, "gateway stopped");
        Ok(())
    }
}
