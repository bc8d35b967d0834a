//! Start-up and serving: [`Application::build`] connects, binds and reports
//! the bound addresses; [`Application::run_until_stopped`] serves until the
//! token is cancelled, then drains within the grace period and closes pools.
//! `main` and the tests call exactly these.

use crate::cache::{Cache, CacheSettings};
use crate::config::AppConfig;
use crate::metrics::Metrics;
use crate::routes;
use crate::server::{self, ConnectionLimits};
use crate::state::AppState;
use crate::store::DynStore;
use crate::store::mongo::MongoStore;
use crate::store::sqlite::SqliteStore;
use anyhow::Context;
use shared::shutdown::CancellationToken;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;

/// A built app: store open, cache connecting, both listeners bound.
#[derive(Debug)]
pub struct Application {
    api: TcpListener,
    admin: TcpListener,
    state: AppState,
    mongo: Option<Arc<MongoStore>>,
    grace: Duration,
    limits: ConnectionLimits,
}

impl Application {
    /// Opens the store (MongoDB when a URI is set, else the embedded SQLite
    /// store), connects the cache when Redis is set, binds both listeners.
    pub async fn build(config: AppConfig) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let (store, mongo): (DynStore, _) = match &config.mongodb.uri {
            Some(uri) => {
                let m = Arc::new(
                    MongoStore::connect(
                        uri.expose(),
                        &config.mongodb.database,
                        &config.mongodb.collection,
                        config.store.timeout,
                    )
                    .await?,
                );
                tracing::info!(database = %config.mongodb.database, collection = %config.mongodb.collection, "store: MongoDB");
                (m.clone(), Some(m))
            }
            None => {
                let s = SqliteStore::open(&config.store.data_dir, config.store.timeout)?;
                tracing::info!(path = %s.path().display(), "store: embedded SQLite (no MONGODB_URI set)");
                (Arc::new(s), None)
            }
        };
        let cache = match &config.redis.url {
            Some(url) => {
                let settings = CacheSettings {
                    url: url.expose().clone(),
                    password: config.redis.password.as_ref().map(|p| p.expose().clone()),
                    key_prefix: config.redis.key_prefix.clone(),
                    ttl: config.redis.ttl,
                    timeout: config.redis.timeout,
                };
                tracing::info!(ttl = ?config.redis.ttl, "cache: Redis");
                Some(
                    Cache::connect(settings, metrics.clone())
                        .await
                        .context("invalid Redis settings")?,
                )
            }
            None => {
                tracing::info!("cache: none (no REDIS_URL set)");
                None
            }
        };
        if config.auth.api_token.is_none() {
            tracing::warn!("API_TOKEN is not set: writes are open to anyone who can reach the app");
        }
        let api = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.admin_listen))?;
        let state = AppState {
            store,
            cache,
            metrics,
            api_token: config.auth.api_token.clone().map(Arc::new),
            max_body: usize::try_from(config.server.max_body.as_u64()).unwrap_or(usize::MAX),
            draining: Arc::default(),
        };
        Ok(Self {
            api,
            admin,
            state,
            mongo,
            grace: config.server.shutdown_grace,
            limits: ConnectionLimits {
                header_read_timeout: config.server.header_read_timeout,
                idle_timeout: config.server.idle_timeout,
            },
        })
    }

    /// The API listener's bound address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api.local_addr().expect("a bound listener has an address")
    }

    /// The admin (metrics) listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `stop` is cancelled. Then readiness turns 503, the
    /// listeners stop accepting, in-flight requests get up to the grace
    /// period, and the store and cache connections are closed. Both
    /// listeners bound slow and idle connections (see [`crate::server`]).
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Self {
            api,
            admin,
            state,
            mongo,
            grace,
            limits,
        } = self;
        tracing::info!(api = %api.local_addr()?, admin = %admin.local_addr()?, "app listening");
        let api_server = server::serve(api, routes::api(state.clone()), limits, stop.clone());
        let admin_server = server::serve(admin, routes::admin(state.clone()), limits, stop.clone());
        let servers = async { tokio::join!(api_server, admin_server) };
        let deadline = async {
            stop.cancelled().await;
            state.draining.store(true, Ordering::Release);
            tracing::info!(?grace, "draining in-flight requests");
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            _ = servers => {}
            () = deadline => tracing::warn!("grace period over with requests still in flight"),
        }
        if let Some(cache) = &state.cache {
            cache.shutdown().await;
        }
        if let Some(mongo) = mongo {
            mongo.shutdown().await;
        }
        tracing::info!("app stopped");
        Ok(())
    }
}
