//! Start-up and serving: [`Application::build`] connects, binds and reports
//! the bound addresses; [`Application::run_until_stopped`] serves until the
//! token is cancelled, then drains within the grace period and closes pools.
//! `main` and the tests call exactly these.

use crate::cache::{Cache, CacheSettings};
use crate::config::AppConfig;
use crate::imports::redis_queue::RedisQueue;
use crate::imports::worker::Workers;
use crate::imports::{Imports, Queue};
use crate::metrics::Metrics;
use crate::routes;
use crate::server::{self, ConnectionLimits};
use crate::state::AppState;
use crate::store::DynStore;
use crate::store::jobs::DynJobs;
use crate::store::mongo::MongoStore;
use crate::store::sqlite::SqliteStore;
use anyhow::Context;
use shared::shutdown::CancellationToken;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The API (and `worker.concurrency` import workers beside it).
    Api,
    /// Import workers only (`app worker`): no API listener; the admin
    /// listener serves `/healthz` and `/metrics`.
    Worker,
}

/// A built app: store open, cache connecting, listeners bound.
#[derive(Debug)]
pub struct Application {
    api: Option<TcpListener>,
    admin: TcpListener,
    state: AppState,
    workers: Option<Arc<Workers>>,
    mongo: Option<Arc<MongoStore>>,
    grace: Duration,
    limits: ConnectionLimits,
}

impl Application {
    /// [`Application::build_as`] the API.
    pub async fn build(config: AppConfig) -> anyhow::Result<Self> {
        Self::build_as(config, Role::Api).await
    }

    /// Opens the store (MongoDB when a URI is set, else the embedded SQLite
    /// store), connects the cache and the import queue when Redis is set,
    /// binds the listeners of `role`.
    pub async fn build_as(config: AppConfig, role: Role) -> anyhow::Result<Self> {
        if role == Role::Worker && config.worker.concurrency == 0 {
            anyhow::bail!("app worker needs worker.concurrency (APP_WORKER_CONCURRENCY) of at least 1");
        }
        let metrics = Arc::new(Metrics::default());
        let (store, jobs, mongo): (DynStore, DynJobs, _) = match &config.mongodb.uri {
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
                (m.clone(), m.clone(), Some(m))
            }
            None => {
                let s = Arc::new(SqliteStore::open(&config.store.data_dir, config.store.timeout)?);
                tracing::info!(path = %s.path().display(), "store: embedded SQLite (no MONGODB_URI set)");
                (s.clone(), s, None)
            }
        };
        let worker_id = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "app".into()),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let (cache, queue) = match &config.redis.url {
            Some(url) => {
                let settings = CacheSettings {
                    url: url.expose().clone(),
                    password: config.redis.password.as_ref().map(|p| p.expose().clone()),
                    key_prefix: config.redis.key_prefix.clone(),
                    ttl: config.redis.ttl,
                    timeout: config.redis.timeout,
                };
                tracing::info!(ttl = ?config.redis.ttl, "cache: Redis; import queue: Redis stream");
                let queue = RedisQueue::connect(&settings, worker_id.clone(), config.worker.poll_interval)
                    .await
                    .context("invalid Redis settings")?;
                let cache = Cache::connect(settings, metrics.clone())
                    .await
                    .context("invalid Redis settings")?;
                (Some(cache), Queue::Redis(queue))
            }
            None => {
                tracing::info!("cache: none (no REDIS_URL set); import queue: the store");
                (None, Queue::Store)
            }
        };
        let imports = Imports {
            jobs,
            queue: Arc::new(queue),
            wake: Arc::default(),
            settings: config.imports.clone(),
            metrics: metrics.clone(),
            parsing: Arc::new(tokio::sync::Semaphore::new(crate::imports::PARSE_SLOTS)),
        };
        let workers = (config.worker.concurrency > 0).then(|| {
            Arc::new(Workers {
                store: store.clone(),
                cache: cache.clone(),
                imports: imports.clone(),
                settings: config.worker.clone(),
                id: worker_id,
                queue_down: AtomicBool::new(false),
            })
        });
        if role == Role::Api && config.auth.api_token.is_none() {
            tracing::warn!("API_TOKEN is not set: writes are open to anyone who can reach the app");
        }
        let api = match role {
            Role::Api => Some(
                TcpListener::bind(config.server.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.server.listen))?,
            ),
            Role::Worker => None,
        };
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.admin_listen))?;
        let state = AppState {
            store,
            cache,
            metrics,
            api_token: config.auth.api_token.clone().map(Arc::new),
            max_body: usize::try_from(config.server.max_body.as_u64()).unwrap_or(usize::MAX),
            imports,
            draining: Arc::default(),
        };
        Ok(Self {
            api,
            admin,
            state,
            workers,
            mongo,
            grace: config.server.shutdown_grace,
            limits: ConnectionLimits {
                header_read_timeout: config.server.header_read_timeout,
                idle_timeout: config.server.idle_timeout,
            },
        })
    }

    /// The API listener's bound address.
    ///
    /// # Panics
    /// In the worker role, which has no API listener.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
            .as_ref()
            .expect("the worker role has no API listener")
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin (metrics) listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("a bound listener has an address")
    }

    /// Serves (and runs the import workers) until `stop` is cancelled.
    /// Then readiness turns 503, the listeners stop accepting, in-flight
    /// requests get up to the grace period, workers give their jobs back
    /// at a batch boundary, and the store, cache and queue connections are
    /// closed. Both listeners bound slow and idle connections (see
    /// [`crate::server`]).
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Self {
            api,
            admin,
            state,
            workers,
            mongo,
            grace,
            limits,
        } = self;
        let api_addr = api.as_ref().map(TcpListener::local_addr).transpose()?;
        tracing::info!(api = ?api_addr, admin = %admin.local_addr()?, "app listening");
        let api_server = async {
            if let Some(api) = api {
                server::serve(api, routes::api(state.clone()), limits, stop.clone()).await;
            }
        };
        let admin_server = server::serve(admin, routes::admin(state.clone()), limits, stop.clone());
        let worker_pool = async {
            if let Some(workers) = workers {
                workers.run(stop.clone()).await;
            }
        };
        let servers = async { tokio::join!(api_server, admin_server, worker_pool) };
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
        if let Queue::Redis(queue) = &*state.imports.queue {
            queue.shutdown().await;
        }
        if let Some(mongo) = mongo {
            mongo.shutdown().await;
        }
        tracing::info!("app stopped");
        Ok(())
    }
}
