//! Redis read cache (cache-aside) through fred.
//!
//! Contract: a cache fault never fails a request. Every command is bounded
//! by a short timeout and fails fast while Redis is disconnected (fred keeps
//! reconnecting in the background); a failed lookup is a miss, a failed
//! write or invalidation is logged and counted. Entries are namespaced
//! `{prefix}:config:{name}` and expire after the TTL, which also bounds how
//! long an entry can stay stale if an invalidation could not be delivered.
//!
//! A fill never overwrites an invalidation. Plain cache-aside has a race: a
//! read misses, reads the old value from the store, a write lands and
//! deletes the key, then the read fills the cache with the old value, stale
//! for the whole TTL. So each name also has a version key,
//! `{prefix}:version:{name}`: an invalidation increments it (and deletes
//! the entry) in one script, a lookup reads the entry and the version in one
//! `MGET`, and a fill is a script that stores the entry only if the version
//! is still the one its lookup saw ([`FillTicket`]).
//!
//! Why versions rather than a short-lived tombstone and `SET NX`: a fill
//! the client gave up on (its timeout passed while Redis was stalled) can
//! still be executed by Redis later, and a tombstone sized to the longest
//! read may have expired by then; a version check refuses a stale fill
//! however late it arrives (the version key lives [`VERSION_TTL`], far
//! beyond any command's life). It also leaves no cold window after a write:
//! the next read fills at once under the new version. Both keys of a name
//! are touched by one script, so the cache needs a single Redis node (as
//! deployed), not a cluster.

use crate::domain::{Config, ConfigName};
use crate::metrics::Metrics;
use fred::clients::Client;
use fred::prelude::{Builder, ClientLike, Error, KeysInterface, ReconnectPolicy};
use fred::types::config::{Config as RedisConfig, Options};
use fred::types::{ClusterHash, CustomCommand};
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

/// How long a version key outlives the last invalidation of its name: far
/// longer than any fill can be in flight, so a fill is compared with the
/// version it raced with, never with a fresh key. One small key per name
/// written in the last day.
pub const VERSION_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Stores the entry only if the version is still the one the lookup saw.
/// KEYS: entry, version. ARGV: the version seen (`''` for none), entry, TTL.
const FILL: &str = r"
local seen = redis.call('GET', KEYS[2])
if (seen or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
";

/// Moves the version on and drops the entry, atomically.
/// KEYS: entry, version. ARGV: the version key's TTL.
const INVALIDATE: &str = r"
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
";

/// A cache lookup's outcome.
#[derive(Debug)]
pub enum Lookup {
    /// The config was cached.
    Hit(Config),
    /// Not cached: the caller reads the store, then may fill the entry with
    /// what it read, using this ticket.
    Miss(FillTicket),
    /// The cache failed: the caller reads the store and does not fill
    /// (without a version it cannot fill safely).
    Failed,
}

/// The version of a name a lookup saw; [`Cache::put`] stores an entry only
/// while that version is current, so a fill that raced with a write (and
/// its invalidation) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillTicket {
    version: Option<String>,
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

/// A fred client for `settings`, connecting (and reconnecting) in the
/// background: at most `timeout` (at least 1 s) is spent waiting for the
/// first connection. Commands are bounded by `timeout` and never retried
/// by fred. The cache and the import queue each use their own.
pub async fn connect_client(settings: &CacheSettings) -> anyhow::Result<Client> {
    let mut config = RedisConfig::from_url(&settings.url)?;
    if settings.password.is_some() {
        config.password.clone_from(&settings.password);
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
    let _ = tokio::time::timeout(settings.timeout.max(Duration::from_secs(1)), client.wait_for_connect()).await;
    Ok(client)
}

impl Cache {
    /// Builds the client and starts connecting in the background; waits at
    /// most `timeout` for the first connection, so a missing Redis delays
    /// start-up by no more than that (the app then runs uncached until
    /// Redis appears).
    pub async fn connect(settings: CacheSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let client = connect_client(&settings).await?;
        if !client.is_connected() {
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

    fn version_key(&self, name: &ConfigName) -> String {
        format!("{}:version:{}", self.prefix, name)
    }

    /// Runs a Lua script (`EVAL`, which Redis caches compiled) on an entry
    /// and its version key.
    async fn script(&self, script: &'static str, name: &ConfigName, args: Vec<String>) -> Result<i64, Error> {
        let eval = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
        let mut all = vec![script.to_string(), "2".into(), self.key(name), self.version_key(name)];
        all.extend(args);
        self.client.with_options(&self.options).custom(eval, all).await
    }

    /// Looks a config up, reading its version in the same `MGET`. Faults
    /// are counted as `error` and answered [`Lookup::Failed`]; an
    /// unreadable entry is a miss (the fill replaces it).
    #[tracing::instrument(skip_all, fields(name = %name))]
    pub async fn get(&self, name: &ConfigName) -> Lookup {
        let keys = vec![self.key(name), self.version_key(name)];
        let result: Result<Vec<Option<String>>, Error> = self.client.with_options(&self.options).mget(keys).await;
        let (entry, version) = match result {
            Ok(mut values) if values.len() == 2 => {
                let version = values.pop().flatten();
                (values.pop().flatten(), version)
            }
            Ok(_) => (None, None),
            Err(error) => {
                tracing::warn!(%error, "cache lookup failed, reading the store");
                self.metrics.cache("error");
                return Lookup::Failed;
            }
        };
        let ticket = FillTicket { version };
        let Some(text) = entry else {
            self.metrics.cache("miss");
            return Lookup::Miss(ticket);
        };
        match serde_json::from_str::<Config>(&text) {
            Ok(config) if config.name == *name => {
                self.metrics.cache("hit");
                Lookup::Hit(config)
            }
            _ => {
                tracing::warn!("unreadable cache entry, reading the store");
                self.metrics.cache("error");
                Lookup::Miss(ticket)
            }
        }
    }

    /// Caches a config read from the store after the lookup that gave
    /// `ticket`, unless the name was invalidated since (then the config may
    /// predate a write, and the fill is refused: the next read fills).
    #[tracing::instrument(skip_all, fields(name = %config.name))]
    pub async fn put(&self, config: &Config, ticket: FillTicket) {
        let Ok(text) = serde_json::to_string(config) else {
            return;
        };
        let seen = ticket.version.unwrap_or_default();
        match self
            .script(FILL, &config.name, vec![seen, text, self.ttl_secs.to_string()])
            .await
        {
            Ok(1) => {}
            Ok(_) => tracing::debug!("cache fill refused: the config was written since the lookup"),
            Err(error) => {
                tracing::warn!(%error, "cache write failed");
                self.metrics.cache("error");
            }
        }
    }

    /// [`Cache::invalidate`] for many names at once (fred pipelines them
    /// on the connection).
    pub async fn invalidate_many<'a>(&self, names: impl IntoIterator<Item = &'a ConfigName>) {
        futures::future::join_all(names.into_iter().map(|name| self.invalidate(name))).await;
    }

    /// Drops a config's entry after a write to the store that did, or may
    /// have, landed, and moves its version on so that no fill begun before
    /// can store what it read.
    #[tracing::instrument(skip_all, fields(name = %name))]
    pub async fn invalidate(&self, name: &ConfigName) {
        let ttl = VERSION_TTL.as_secs().to_string();
        if let Err(error) = self.script(INVALIDATE, name, vec![ttl]).await {
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
