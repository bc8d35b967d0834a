//! The app's typed configuration: defaults, the environment variables that
//! override them (docs/API.md's table), and the rules checked once at start-up.

use bytesize::ByteSize;
use serde::Deserialize;
use shared::telemetry::LogFormat;
use shared::{EnvBinding, Problem, Secret, Validate};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Environment variable naming an optional TOML file with the same keys.
pub const CONFIG_FILE_VAR: &str = "APP_CONFIG";

/// Every environment variable the app reads, and the key it sets. Each also
/// accepts `VAR_FILE` (a Docker secret path).
pub const ENV_BINDINGS: &[EnvBinding] = &[
    EnvBinding {
        var: "APP_LISTEN",
        key: "server.listen",
    },
    EnvBinding {
        var: "APP_ADMIN_LISTEN",
        key: "server.admin_listen",
    },
    EnvBinding {
        var: "APP_MAX_BODY",
        key: "server.max_body",
    },
    EnvBinding {
        var: "APP_SHUTDOWN_GRACE",
        key: "server.shutdown_grace",
    },
    EnvBinding {
        var: "APP_HEADER_READ_TIMEOUT",
        key: "server.header_read_timeout",
    },
    EnvBinding {
        var: "APP_IDLE_TIMEOUT",
        key: "server.idle_timeout",
    },
    EnvBinding {
        var: "APP_DATA_DIR",
        key: "store.data_dir",
    },
    EnvBinding {
        var: "APP_STORE_TIMEOUT",
        key: "store.timeout",
    },
    EnvBinding {
        var: "MONGODB_URI",
        key: "mongodb.uri",
    },
    EnvBinding {
        var: "MONGODB_DATABASE",
        key: "mongodb.database",
    },
    EnvBinding {
        var: "MONGODB_COLLECTION",
        key: "mongodb.collection",
    },
    EnvBinding {
        var: "REDIS_URL",
        key: "redis.url",
    },
    EnvBinding {
        var: "REDIS_PASSWORD",
        key: "redis.password",
    },
    EnvBinding {
        var: "REDIS_KEY_PREFIX",
        key: "redis.key_prefix",
    },
    EnvBinding {
        var: "REDIS_TTL",
        key: "redis.ttl",
    },
    EnvBinding {
        var: "REDIS_TIMEOUT",
        key: "redis.timeout",
    },
    EnvBinding {
        var: "APP_IMPORTS_MAX_BODY",
        key: "imports.max_body",
    },
    EnvBinding {
        var: "APP_IMPORTS_MAX_QUEUED",
        key: "imports.max_queued",
    },
    EnvBinding {
        var: "APP_IMPORTS_BATCH_SIZE",
        key: "imports.batch_size",
    },
    EnvBinding {
        var: "APP_IMPORTS_MAX_ITEMS",
        key: "imports.max_items",
    },
    EnvBinding {
        var: "APP_WORKER_CONCURRENCY",
        key: "worker.concurrency",
    },
    EnvBinding {
        var: "APP_WORKER_CLAIM_IDLE",
        key: "worker.claim_idle",
    },
    EnvBinding {
        var: "APP_WORKER_POLL_INTERVAL",
        key: "worker.poll_interval",
    },
    EnvBinding {
        var: "APP_WORKER_MAX_ATTEMPTS",
        key: "worker.max_attempts",
    },
    EnvBinding {
        var: "API_TOKEN",
        key: "auth.api_token",
    },
    EnvBinding {
        var: "LOG_FORMAT",
        key: "log.format",
    },
];

/// The whole configuration. Every field has a default, so an empty
/// environment runs the app on the embedded store with no cache.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AppConfig {
    /// Listeners and request handling.
    pub server: ServerSettings,
    /// Store selection (embedded) and store timeouts.
    pub store: StoreSettings,
    /// MongoDB; unset `uri` means the embedded store.
    pub mongodb: MongoSettings,
    /// Redis read cache; unset `url` means no cache.
    pub redis: RedisSettings,
    /// Bulk imports (`POST /imports`).
    pub imports: ImportSettings,
    /// The import workers of this process.
    pub worker: WorkerSettings,
    /// Write authentication.
    pub auth: AuthSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// API listener (`APP_LISTEN`), default `0.0.0.0:8000`.
    pub listen: SocketAddr,
    /// Metrics listener (`APP_ADMIN_LISTEN`), default `127.0.0.1:9100`.
    pub admin_listen: SocketAddr,
    /// Largest accepted request body (`APP_MAX_BODY`), default 1 MiB.
    pub max_body: ByteSize,
    /// How long in-flight requests may run after SIGTERM, default 20 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A request head must arrive in full within this of the connection
    /// being accepted or, on HTTP/1.1 keep-alive, of the previous response
    /// (`APP_HEADER_READ_TIMEOUT`), default 10 s; so it also closes HTTP/1.1
    /// connections idle that long. See [`crate::server`].
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight this long is closed
    /// gracefully (`APP_IDLE_TIMEOUT`), default 60 s: what bounds idle
    /// HTTP/2 connections (HTTP/1.1 ones close at `header_read_timeout`).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            max_body: ByteSize::mib(1),
            shutdown_grace: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StoreSettings {
    /// Directory of the embedded SQLite store (`APP_DATA_DIR`), default `./data`.
    pub data_dir: PathBuf,
    /// Bound on one store operation; past it the request is a 503 (default 3 s).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            timeout: Duration::from_secs(3),
        }
    }
}

/// `[mongodb]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MongoSettings {
    /// Connection string (`MONGODB_URI`); may carry credentials, so secret.
    pub uri: Option<Secret<String>>,
    /// Database name, default `app`.
    pub database: String,
    /// Collection name, default `configs`.
    pub collection: String,
}

impl Default for MongoSettings {
    fn default() -> Self {
        Self {
            uri: None,
            database: "app".into(),
            collection: "configs".into(),
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    /// Connection string (`REDIS_URL`), e.g. `redis://redis:6379/0`.
    pub url: Option<Secret<String>>,
    /// Password (`REDIS_PASSWORD`), overriding any in the URL.
    pub password: Option<Secret<String>>,
    /// Namespace of every cache key, default `app`.
    pub key_prefix: String,
    /// Time-to-live of a cached config, default 60 s.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Bound on one cache command before falling back to the store (250 ms).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            password: None,
            key_prefix: "app".into(),
            ttl: Duration::from_secs(60),
            timeout: Duration::from_millis(250),
        }
    }
}

/// `[imports]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ImportSettings {
    /// Largest import body (`APP_IMPORTS_MAX_BODY`), default 16 MiB; the
    /// `/imports` route's own bound, apart from `server.max_body`.
    pub max_body: ByteSize,
    /// Jobs queued or running at most (`APP_IMPORTS_MAX_QUEUED`), default
    /// 64; past it `POST /imports` answers 503 with `Retry-After`.
    #[serde(deserialize_with = "shared::config::number")]
    pub max_queued: u64,
    /// Items per batch (`APP_IMPORTS_BATCH_SIZE`), default 500: one bulk
    /// write, one plan and one progress record each.
    #[serde(deserialize_with = "shared::config::number")]
    pub batch_size: usize,
    /// Most items in one import (`APP_IMPORTS_MAX_ITEMS`), default
    /// 100,000; more is a 413. Bounds what one job costs to parse, to
    /// store errors for, and to hold a worker.
    #[serde(deserialize_with = "shared::config::number")]
    pub max_items: usize,
}

impl Default for ImportSettings {
    fn default() -> Self {
        Self {
            max_body: ByteSize::mib(16),
            max_queued: 64,
            batch_size: 500,
            max_items: 100_000,
        }
    }
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Jobs this process works on at once (`APP_WORKER_CONCURRENCY`),
    /// default 1; `0` runs no workers here (then `app worker` processes
    /// must).
    #[serde(deserialize_with = "shared::config::number")]
    pub concurrency: usize,
    /// A job whose worker has not shown progress this long is taken by
    /// another (`APP_WORKER_CLAIM_IDLE`), default 30 s: the lease, and the
    /// idle time of `XAUTOCLAIM`.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// How often an idle worker looks for work when nothing wakes it
    /// (`APP_WORKER_POLL_INTERVAL`), default 1 s (also the `BLOCK` of a
    /// Redis read).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A job taken this many times without finishing fails when taken
    /// once more (`APP_WORKER_MAX_ATTEMPTS`), default 5: a job that kills
    /// its workers must not kill them forever. A give-back on shutdown is
    /// not a take.
    #[serde(deserialize_with = "shared::config::number")]
    pub max_attempts: u32,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 1,
            claim_idle: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            max_attempts: 5,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Bearer token required on writes (`API_TOKEN`); unset means open writes.
    pub api_token: Option<Secret<String>>,
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// `text` (default) or `json` (`LOG_FORMAT`).
    pub format: LogFormat,
}

impl AppConfig {
    /// Loads from the process environment (and `APP_CONFIG`, if set).
    pub fn from_process() -> Result<Self, shared::ConfigError> {
        Self::load(&shared::Sources::from_process(CONFIG_FILE_VAR))
    }

    /// Loads from explicit sources; what tests use.
    pub fn load(sources: &shared::Sources) -> Result<Self, shared::ConfigError> {
        shared::config::load(sources, ENV_BINDINGS)
    }
}

impl Validate for AppConfig {
    fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut positive = |key: &str, d: Duration| {
            if d.is_zero() {
                problems.push(Problem::new(key, "must be greater than zero"));
            }
        };
        positive("server.header_read_timeout", self.server.header_read_timeout);
        positive("server.idle_timeout", self.server.idle_timeout);
        positive("store.timeout", self.store.timeout);
        positive("redis.ttl", self.redis.ttl);
        positive("redis.timeout", self.redis.timeout);
        positive("worker.claim_idle", self.worker.claim_idle);
        positive("worker.poll_interval", self.worker.poll_interval);
        if self.imports.max_body.as_u64() == 0 {
            problems.push(Problem::new("imports.max_body", "must be greater than zero"));
        }
        if self.imports.max_queued == 0 {
            problems.push(Problem::new("imports.max_queued", "must be at least 1"));
        }
        if !(1..=10_000).contains(&self.imports.batch_size) {
            problems.push(Problem::new("imports.batch_size", "must be from 1 to 10000"));
        }
        if self.imports.max_items == 0 {
            problems.push(Problem::new("imports.max_items", "must be at least 1"));
        }
        if self.worker.max_attempts == 0 {
            problems.push(Problem::new("worker.max_attempts", "must be at least 1"));
        }
        if self.server.max_body.as_u64() == 0 {
            problems.push(Problem::new("server.max_body", "must be greater than zero"));
        }
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            problems.push(Problem::new(
                "server.admin_listen",
                "must differ from server.listen: metrics never share the API port",
            ));
        }
        if let Some(uri) = &self.mongodb.uri {
            let uri = uri.expose();
            if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                problems.push(Problem::new(
                    "mongodb.uri",
                    "must start with mongodb:// or mongodb+srv://",
                ));
            }
        }
        if let Some(url) = &self.redis.url {
            let url = url.expose();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                problems.push(Problem::new("redis.url", "must start with redis:// or rediss://"));
            }
        }
        for (key, value) in [
            ("mongodb.database", &self.mongodb.database),
            ("mongodb.collection", &self.mongodb.collection),
            ("redis.key_prefix", &self.redis.key_prefix),
        ] {
            if value.is_empty() {
                problems.push(Problem::new(key, "must not be empty"));
            }
        }
        if matches!(&self.auth.api_token, Some(t) if t.expose().is_empty()) {
            problems.push(Problem::new("auth.api_token", "must not be empty when set"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::Sources;

    #[test]
    fn the_empty_environment_gives_the_documented_defaults() {
        let c = AppConfig::load(&Sources::default()).expect("valid");
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8000");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9100");
        assert_eq!(c.server.max_body, ByteSize::mib(1));
        assert!(c.mongodb.uri.is_none() && c.redis.url.is_none() && c.auth.api_token.is_none());
        assert_eq!(c.store.data_dir, PathBuf::from("./data"));
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn connection_time_bounds_come_from_the_environment_and_must_be_positive() {
        let c = AppConfig::load(&Sources::from_pairs([
            ("APP_HEADER_READ_TIMEOUT", "250ms"),
            ("APP_IDLE_TIMEOUT", "2s"),
        ]))
        .expect("valid");
        assert_eq!(c.server.header_read_timeout, Duration::from_millis(250));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(2));
        let err = AppConfig::load(&Sources::from_pairs([
            ("APP_HEADER_READ_TIMEOUT", "0s"),
            ("APP_IDLE_TIMEOUT", "0s"),
        ]))
        .expect_err("invalid");
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["server.header_read_timeout", "server.idle_timeout"], "{err}");
    }

    #[test]
    fn api_md_variables_are_honoured() {
        let c = AppConfig::load(&Sources::from_pairs([
            ("APP_LISTEN", "127.0.0.1:1234"),
            ("MONGODB_URI", "mongodb://db:27017"),
            ("REDIS_URL", "redis://cache:6379"),
            ("API_TOKEN", "t"),
            ("LOG_FORMAT", "json"),
            ("APP_MAX_BODY", "64KiB"),
        ]))
        .expect("valid");
        assert_eq!(c.server.listen.port(), 1234);
        assert_eq!(c.mongodb.uri.expect("set").expose(), "mongodb://db:27017");
        assert_eq!(c.redis.url.expect("set").expose(), "redis://cache:6379");
        assert_eq!(c.auth.api_token.expect("set").expose(), "t");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.server.max_body, ByteSize::kib(64));
    }

    #[test]
    fn secrets_come_from_files_in_a_directory() {
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, value: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, value).expect("write");
            p.to_str().expect("utf-8").to_string()
        };
        let token = write("api_token", "tok-9f2\n");
        let uri = write("mongo_uri", "mongodb://u:p@db:27017\n");
        let pw = write("redis_pw", "pw");
        let c = AppConfig::load(&Sources::from_pairs([
            ("API_TOKEN_FILE", token.as_str()),
            ("MONGODB_URI_FILE", uri.as_str()),
            ("REDIS_URL", "redis://cache:6379"),
            ("REDIS_PASSWORD_FILE", pw.as_str()),
        ]))
        .expect("valid");
        assert_eq!(c.auth.api_token.as_ref().expect("set").expose(), "tok-9f2");
        assert_eq!(c.mongodb.uri.as_ref().expect("set").expose(), "mongodb://u:p@db:27017");
        assert_eq!(c.redis.password.as_ref().expect("set").expose(), "pw");
        let debug = format!("{c:?}");
        assert!(!debug.contains("tok-9f2") && !debug.contains("u:p@") && !debug.contains("\"pw\""));
    }

    #[test]
    fn bad_values_are_all_reported_together() {
        let err = AppConfig::load(&Sources::from_pairs([
            ("MONGODB_URI", "postgres://x"),
            ("REDIS_URL", "http://x"),
            ("REDIS_TTL", "0s"),
            ("API_TOKEN", ""),
        ]))
        .expect_err("invalid");
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["redis.ttl", "mongodb.uri", "redis.url", "auth.api_token"],
            "{err}"
        );
    }

    #[test]
    fn import_and_worker_numbers_come_from_the_environment_as_text() {
        let c = AppConfig::load(&Sources::from_pairs([
            ("APP_WORKER_CONCURRENCY", "4"),
            ("APP_IMPORTS_MAX_QUEUED", "7"),
            ("APP_IMPORTS_BATCH_SIZE", "250"),
            ("APP_WORKER_MAX_ATTEMPTS", "2"),
            ("APP_IMPORTS_MAX_BODY", "32MiB"),
            ("APP_WORKER_CLAIM_IDLE", "5s"),
        ]))
        .expect("valid");
        assert_eq!(
            (
                c.worker.concurrency,
                c.imports.max_queued,
                c.imports.batch_size,
                c.worker.max_attempts
            ),
            (4, 7, 250, 2)
        );
        assert_eq!(c.imports.max_body, ByteSize::mib(32));
        assert_eq!(c.worker.claim_idle, Duration::from_secs(5));
        let defaults = AppConfig::load(&Sources::default()).expect("valid");
        assert_eq!((defaults.worker.concurrency, defaults.imports.max_queued), (1, 64));
        let err = AppConfig::load(&Sources::from_pairs([
            ("APP_WORKER_CONCURRENCY", "many"),
            ("APP_IMPORTS_BATCH_SIZE", "0"),
            ("APP_WORKER_MAX_ATTEMPTS", "-1"),
        ]))
        .expect_err("invalid");
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(
            keys.contains(&"worker.concurrency") && keys.contains(&"worker.max_attempts"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_secret_file_fails_naming_the_variable() {
        let err =
            AppConfig::load(&Sources::from_pairs([("API_TOKEN_FILE", "/run/secrets/nope")])).expect_err("invalid");
        assert_eq!(err.problems[0].key, "API_TOKEN_FILE");
    }
}
