//! Hot reload: watching, diffing, swapping.
//!
//! [`Reloader::reload`] validates a
//! new file first; an invalid one keeps the old configuration serving and
//! logs every problem (`gateway_config_reloads_total{result="rejected"}`). A
//! valid one is swapped in atomically: new connections and requests use it,
//! requests already running finish on the one they started with. Upstreams
//! and rate-limit policies whose definitions did not change keep their state
//! (replica health, pooled connections, client buckets), so a reload never
//! hands clients fresh bursts. Settings that need a restart (listener
//! addresses, connection caps, PROXY protocol, log format) are logged when
//! they change and keep their running values. Triggers: SIGHUP, and a change
//! to the configuration or certificate files (polled, debounced). What a
//! configuration is built into is [`crate::generation`]'s.

use crate::balancer::Upstream;
use crate::config::GatewayConfig;
use crate::generation::{self, Active, Current, Fixed};
use crate::metrics::Metrics;
use shared::shutdown::CancellationToken;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Settings that only a restart changes, which differ between `old` and `new`.
pub fn restart_needed(old: &GatewayConfig, new: &GatewayConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.https_listener() != new.https_listener() {
        keys.push("server.https");
    }
    if old.http_listener() != new.http_listener() {
        keys.push("server.http / server.http_mode off");
    }
    if old.server.admin != new.server.admin {
        keys.push("server.admin");
    }
    if old.limits.max_connections != new.limits.max_connections {
        keys.push("limits.max_connections");
    }
    if old.limits.max_connections_per_ip != new.limits.max_connections_per_ip {
        keys.push("limits.max_connections_per_ip");
    }
    if old.workers() != new.workers() {
        keys.push("server.workers");
    }
    if old.client_ip.proxy_protocol != new.client_ip.proxy_protocol {
        keys.push("client_ip.proxy_protocol");
    }
    let prefixes = |c: &GatewayConfig| (c.client_ip.ipv4_prefix, c.client_ip.ipv6_prefix);
    if prefixes(old) != prefixes(new) {
        // The rate limiter takes the new prefixes at once.
        keys.push("client_ip.ipv4_prefix / ipv6_prefix (connection caps)");
    }
    if old.log.format != new.log.format {
        keys.push("log.format");
    }
    keys
}

/// Reloads the configuration file into the running gateway.
#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    current: Current,
    active: tokio::sync::Mutex<Active>,
    metrics: Arc<Metrics>,
    fixed: Fixed,
    upstreams: Mutex<Vec<Arc<Upstream>>>,
}

impl Reloader {
    /// A reloader for the configuration in `active`, read from `path`.
    pub fn new(path: Option<PathBuf>, current: Current, active: Active, metrics: Arc<Metrics>, fixed: Fixed) -> Self {
        let upstreams = Mutex::new(active.clients.values().map(|c| c.upstream.clone()).collect());
        Self {
            path,
            current,
            active: tokio::sync::Mutex::new(active),
            metrics,
            fixed,
            upstreams,
        }
    }

    /// The upstreams of the configuration in force (for readiness).
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.upstreams.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The shutdown grace of the configuration in force.
    pub async fn shutdown_grace(&self) -> Duration {
        self.active.lock().await.config.server.shutdown_grace
    }

    /// Stops the syncs and leaves the shared rate-limit membership, if any
    /// (at shutdown, once requests are done).
    pub async fn leave_shared(&self) {
        let link = {
            let active = self.active.lock().await;
            active.stop_background();
            active.shared.clone()
        };
        if let Some(link) = link {
            let _ = tokio::time::timeout(Duration::from_secs(1), link.leave()).await;
        }
    }

    /// Files whose change triggers a reload: the configuration and its certificate and key.
    pub async fn watched_files(&self) -> Vec<PathBuf> {
        let active = self.active.lock().await;
        let mut files: Vec<PathBuf> = self.path.iter().cloned().collect();
        if let Some(t) = &active.config.tls {
            files.push(t.cert.clone());
            files.push(t.key.clone());
        }
        files
    }

    /// Reads, validates and applies the file; on any problem the running
    /// configuration stays and the problems are returned (and logged).
    pub async fn reload(&self) -> Result<(), String> {
        let result = self.try_reload().await;
        let label = if result.is_ok() { "applied" } else { "rejected" };
        self.metrics.reload(label);
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(problems) => {
                tracing::error!(%problems, "configuration reload rejected; the previous configuration keeps serving")
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<(), String> {
        let path = self.path.as_deref().ok_or("the gateway was not started from a file")?;
        let config = GatewayConfig::load(path).map_err(|e| e.to_string())?;
        let mut active = self.active.lock().await;
        if active.config.https_listener().is_some() && config.tls.is_none() {
            return Err("[tls] cannot be removed while the HTTPS listener runs (restart instead)".into());
        }
        let restart = restart_needed(&active.config, &config);
        if !restart.is_empty() {
            tracing::warn!(settings = ?restart, "these settings changed but need a restart; their running values stay");
        }
        let next = generation::build(config, Some(&active), &self.metrics, self.fixed)
            .await
            .map_err(|e| format!("{e:#}"))?;
        self.current.store(next.generation.clone());
        *self.upstreams.lock().unwrap_or_else(|e| e.into_inner()) =
            next.clients.values().map(|c| c.upstream.clone()).collect();
        // Dropping the old generation stops its background tasks; its
        // upstreams and policies live on where the new one reused them.
        *active = next;
        Ok(())
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads on SIGHUP and when a watched file changes (polled every
/// `interval`; a change is applied once the files have been stable for one
/// more interval, so an editor's partial writes are not read).
pub async fn watch(reloader: Arc<Reloader>, interval: Duration, stop: CancellationToken) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut files = reloader.watched_files().await;
    let mut last: Vec<_> = files.iter().map(|f| stamp(f)).collect();
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<()>();
        let by_signal = tokio::select! {
            () = stop.cancelled() => return,
            () = sighup => true,
            () = tokio::time::sleep(interval) => false,
        };
        let now: Vec<_> = files.iter().map(|f| stamp(f)).collect();
        if !by_signal && now == last {
            continue;
        }
        if !by_signal {
            // Debounce: wait until the files stop changing.
            let mut settled = now;
            loop {
                tokio::time::sleep(interval).await;
                let again: Vec<_> = files.iter().map(|f| stamp(f)).collect();
                if again == settled {
                    break;
                }
                settled = again;
            }
            tracing::info!("configuration or certificate file changed; reloading");
        } else {
            tracing::info!("SIGHUP received; reloading");
        }
        let _ = reloader.reload().await;
        files = reloader.watched_files().await;
        last = files.iter().map(|f| stamp(f)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_only_a_restart_changes_are_reported_and_others_are_not() {
        let old = GatewayConfig::default();
        assert!(restart_needed(&old, &old.clone()).is_empty());
        let mut new = old.clone();
        new.server.workers = Some(old.workers() + 1);
        new.server.admin = "127.0.0.1:9999".parse().expect("addr");
        new.limits.max_connections += 1;
        new.server.shutdown_grace = Duration::from_secs(1);
        new.limits.max_body = bytesize::ByteSize::mib(9);
        assert_eq!(
            restart_needed(&old, &new),
            ["server.admin", "limits.max_connections", "server.workers"]
        );
    }
}
