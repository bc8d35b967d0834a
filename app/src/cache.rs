//! Redis read cache (cache-aside) through fred.
//!
//! Contract: a cache fault never fails a request. Every command is bounded
//! by a short timeout and fails fast while Redis is disconnected (fred keeps
//! reconnecting in the background); a failed lookup is a miss, a failed
//! write or invalidation is logged and counted. Keys are namespaced
//! `{prefix}:config:{name}` and expire after the TTL, which also bounds how
//! long an entry can stay stale if an invalidation could not be delivered.

use crate::domain::{Config, ConfigName};
use crate::metrics::Metrics;
use fred::clients::Client;
use fred::prelude::{Builder, ClientLike, Error, Expiration, KeysInterface, ReconnectPolicy};
use fred::types::config::{Config as RedisConfig, Options};
use std::sync::Arc;
use std::time::Duration;

/// Cache settings, from `[redis]`.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Overrides the URL's password when set.
    pub password: Option<String>,
    /// Key namespace.
    pub key_prefix: String,
    /// Entry time-to-live.
    pub ttl: Duration,
    /// Bound on one command.
    pub timeout: Duration,
}

/// A cache lookup's outcome.
#[derive(Debug)]
pub enum Lookup {
    /// The config was cached.
    Hit(Config),
    /// Not cached (or the cache failed; the caller reads the store either way).
    Miss,
}

/// The Redis cache.
#[derive(Clone)]
pub struct Cache {
    client: Client,
    options: Options,
    prefix: String,
    ttl_secs: i64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Builds the client and starts connecting in the background; waits at
    /// most `timeout` for the first connection, so a missing Redis delays
    /// start-up by no more than that (the app then runs uncached until
    /// Redis appears).
    pub async fn connect(settings: CacheSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let mut config = RedisConfig::from_url(&settings.url)?;
        if settings.password.is_some() {
            config.password = settings.password;
        }
        // Let the reconnect policy handle a Redis that is not up yet.
        config.fail_fast = false;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = settings.timeout.max(Duration::from_secs(1));
                c.internal_command_timeout = settings.timeout.max(Duration::from_secs(1));
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = settings.timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        client.connect();
        let first = tokio::time::timeout(settings.timeout.max(Duration::from_secs(1)), client.wait_for_connect()).await;
        if !matches!(first, Ok(Ok(()))) {
            tracing::warn!("Redis not reachable at start-up; serving uncached until it is");
        }
        let options = Options {
            fail_fast: true,
            timeout: Some(settings.timeout),
            max_attempts: Some(1),
            ..Options::default()
        };
        let ttl_secs = i64::try_from(settings.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        Ok(Self {
            client,
            options,
            prefix: settings.key_prefix,
            ttl_secs,
            metrics,
        })
    }

    fn key(&self, name: &ConfigName) -> String {
        format!("{}:config:{}", self.prefix, name)
    }

    /// Looks a config up. Faults are counted as `error` and answered as a miss.
    #[tracing::instrument(skip_all, fields(name = %name))]
    pub async fn get(&self, name: &ConfigName) -> Lookup {
        let result: Result<Option<String>, Error> = self.client.with_options(&self.options).get(self.key(name)).await;
        match result {
            Ok(Some(text)) => match serde_json::from_str::<Config>(&text) {
                Ok(config) if config.name == *name => {
                    self.metrics.cache("hit");
                    Lookup::Hit(config)
                }
                _ => {
                    tracing::warn!("unreadable cache entry, reading the store");
                    self.metrics.cache("error");
                    Lookup::Miss
                }
            },
            Ok(None) => {
                self.metrics.cache("miss");
                Lookup::Miss
            }
            Err(error) => {
                tracing::warn!(%error, "cache lookup failed, reading the store");
                self.metrics.cache("error");
                Lookup::Miss
            }
        }
    }

    /// Caches a config read from the store.
    #[tracing::instrument(skip_all, fields(name = %config.name))]
    pub async fn put(&self, config: &Config) {
        let Ok(text) = serde_json::to_string(config) else {
            return;
        };
        let result: Result<(), Error> = self
            .client
            .with_options(&self.options)
            .set(
                self.key(&config.name),
                text,
                Some(Expiration::EX(self.ttl_secs)),
                None,
                false,
            )
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, "cache write failed");
            self.metrics.cache("error");
        }
    }

    /// Drops a config's entry after a successful write to the store.
    #[tracing::instrument(skip_all, fields(name = %name))]
    pub async fn invalidate(&self, name: &ConfigName) {
        let result: Result<i64, Error> = self.client.with_options(&self.options).del(self.key(name)).await;
        if let Err(error) = result {
            tracing::warn!(%error, "cache invalidation failed; the entry expires within the TTL");
            self.metrics.cache("error");
        }
    }

    /// Whether Redis answers a PING now.
    pub async fn ping(&self) -> Result<(), String> {
        let pong: Result<String, Error> = self.client.with_options(&self.options).ping(None).await;
        pong.map(drop).map_err(|e| e.to_string())
    }

    /// Closes the connection.
    pub async fn shutdown(&self) {
        let _ = self.client.quit().await;
    }
}
