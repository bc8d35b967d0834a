//! Start-up and serving: [`Gateway::build`] validates what only I/O can
//! (certificates, upstream names), binds every listener and reports the
//! addresses; [`Gateway::run_until_stopped`] serves until the token fires,
//! then turns `/readyz` to 503, closes the listeners, lets in-flight
//! requests finish within the grace period, and returns. `main` and the
//! tests call exactly these. Reloads go through [`Gateway::reloader`].

use crate::admin::{self, AdminState};
use crate::config::GatewayConfig;
use crate::generation::{self, Current, Fixed};
use crate::metrics::Metrics;
use crate::reload::{self, Reloader};
use crate::server::{Listener, ServerContext};
use crate::workers;
use anyhow::Context;
use shared::shutdown::{CancellationToken, TaskTracker};
use std::net::SocketAddr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often watched files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// A built gateway: certificates loaded, upstreams resolved, listeners bound.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    https: Option<TcpListener>,
    http: Option<TcpListener>,
    admin: tokio::net::TcpListener,
    fixed: Fixed,
    metrics: Arc<Metrics>,
    current: Current,
    reloader: Arc<Reloader>,
}

fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    workers::bind(addr).with_context(|| format!("cannot listen on {addr} ({what})"))
}

impl Gateway {
    /// Loads `path` and builds the gateway; reloads re-read `path`.
    pub async fn from_file(path: &Path) -> anyhow::Result<Self> {
        let config = GatewayConfig::load(path)?;
        Self::build_with_path(config, Some(path.to_path_buf())).await
    }

    /// Builds from a configuration that has no file (it cannot reload).
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        Self::build_with_path(config, None).await
    }

    async fn build_with_path(config: GatewayConfig, path: Option<PathBuf>) -> anyhow::Result<Self> {
        let https = match config.https_listener() {
            Some(addr) => Some(bind(addr, "https")?),
            None => None,
        };
        let http = match config.http_listener() {
            Some(addr) => Some(bind(addr, "http")?),
            None => None,
        };
        let admin = tokio::net::TcpListener::bind(config.server.admin)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", config.server.admin))?;
        let https_port = https
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or(443, |a| a.port());
        let fixed = Fixed {
            https_port,
            workers: config.workers(),
        };
        let metrics = Arc::new(Metrics::default());
        let active = generation::build(config.clone(), None, &metrics, fixed).await?;
        let current: Current = Arc::new(arc_swap::ArcSwap::new(active.generation.clone()));
        let reloader = Arc::new(Reloader::new(path, current.clone(), active, metrics.clone(), fixed));
        Ok(Self {
            config,
            fixed,
            https,
            http,
            admin,
            metrics,
            current,
            reloader,
        })
    }

    /// The HTTPS listener's address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("a bound listener has an address")
    }

    /// Reloads the configuration file on demand (SIGHUP and file changes
    /// use the same path).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Serves until `stop` fires, then drains (see the module documentation).
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            fixed,
            https,
            http,
            admin,
            metrics,
            current,
            reloader,
        } = self;
        let draining = Arc::new(AtomicBool::new(false));
        let background = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ctx = Arc::new(ServerContext::new(
            &config.limits,
            &config.client_ip,
            metrics.clone(),
            stop.clone(),
            tracker.clone(),
        ));
        let mut listeners = Vec::new();
        for (listener, kind) in [(https, Listener::Https), (http, Listener::Http)] {
            if let Some(listener) = listener {
                tracing::info!(addr = %listener.local_addr()?, ?kind, workers = fixed.workers, "listening");
                listeners.push((listener, kind));
            }
        }
        let workers = workers::spawn(fixed.workers, listeners, &current, &ctx)?;
        tokio::spawn(reload::watch(reloader.clone(), WATCH_INTERVAL, background.clone()));
        let admin_state = AdminState {
            metrics: metrics.clone(),
            reloader: reloader.clone(),
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
        let grace = reloader.shutdown_grace().await;
        tracing::info!(?grace, "draining: listeners closed, finishing in-flight requests");
        workers.stopped_accepting().await;
        let outcome = shared::shutdown::drain(&tracker, grace).await;
        workers.finish().await;
        reloader.leave_shared().await;
        background.cancel();
        let _ = admin_server.await;
        tracing::info!(?outcome, "gateway stopped");
        Ok(())
    }
}
