//! Test helpers: each test gets a fresh world (ports 0, its own SQLite
//! directory, MongoDB database and Redis key prefix). Tests that need a
//! service read `MONGODB_URI` / `REDIS_URL` and fail, never skip, without it:
//! `scripts/test.sh` provisions both.
#![allow(dead_code)]

pub mod ports;
pub mod redis;
pub mod tcp_proxy;

use app::config::AppConfig;
use app::startup::{Application, Role};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use shared::Sources;
use shared::shutdown::CancellationToken;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::task::JoinHandle;

/// Every job store operation once, as a worker does for a one-batch job.
pub async fn exercise_job_store(jobs: &dyn app::store::jobs::JobStore) {
    let job = app::domain::import::Job {
        id: "0123456789abcdef0123456789abcdef".into(),
        mode: app::domain::import::Mode::Create,
        state: app::domain::import::JobState::Queued,
        total: 1,
        batches: 1,
        next_batch: 0,
        counts: app::domain::import::Counts::default(),
        created_at: 1,
        started_at: None,
        finished_at: None,
        request_id: "r".into(),
        attempts: 0,
        error: None,
    };
    let batch = app::domain::import::Batch {
        first: 0,
        items: "[{}]".into(),
    };
    jobs.create_job(&job, &[batch]).await.expect("create_job");
    assert_eq!(jobs.unfinished_jobs().await.expect("unfinished"), 1);
    assert_eq!(jobs.orphans(2).await.expect("orphans").len(), 1);
    let claimed = jobs.claim(None, "w", 2, 100).await.expect("claim").expect("a job");
    assert_eq!((claimed.attempts, claimed.started_at), (1, Some(2)));
    assert!(jobs.renew(&job.id, "w", 200).await.expect("renew"));
    assert_eq!(jobs.batch(&job.id, 0).await.expect("batch").plan, None);
    let plan = jobs
        .keep_plan(&job.id, 0, &[app::domain::import::Outcome::Invalid])
        .await
        .expect("plan");
    assert_eq!(plan, (vec![app::domain::import::Outcome::Invalid], true));
    let other = [app::domain::import::Outcome::Created];
    let kept = jobs.keep_plan(&job.id, 0, &other).await.expect("plan");
    assert_eq!(
        kept,
        (vec![app::domain::import::Outcome::Invalid], false),
        "the first plan stays"
    );
    let error = app::domain::import::ItemError {
        index: 0,
        name: None,
        status: 422,
        detail: "1 invalid field".into(),
        errors: Vec::new(),
    };
    let counts = app::domain::import::Counts {
        invalid: 1,
        ..app::domain::import::Counts::default()
    };
    assert!(
        jobs.record_batch(&job.id, 0, counts, std::slice::from_ref(&error))
            .await
            .expect("record")
    );
    assert!(
        !jobs
            .record_batch(&job.id, 0, counts, std::slice::from_ref(&error))
            .await
            .expect("again")
    );
    assert!(
        jobs.finish(&job.id, "w", app::domain::import::JobState::Done, None, 3)
            .await
            .expect("finish")
    );
    assert_eq!(jobs.item_errors(&job.id, None, 10).await.expect("errors"), [error]);
    let stored = jobs.job(&job.id).await.expect("job").expect("stored");
    assert_eq!(
        (stored.state, stored.counts, stored.next_batch),
        (app::domain::import::JobState::Done, counts, 1)
    );
    assert_eq!(jobs.recent_jobs(5).await.expect("recent").len(), 1);
}

/// Which store a test app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite store in a temporary directory.
    Embedded,
    /// MongoDB (from `MONGODB_URI`) with the Redis cache (from `REDIS_URL`).
    MongoRedis,
}

/// The MongoDB URI the test script provisioned.
pub fn mongo_uri() -> String {
    std::env::var("MONGODB_URI").expect("MONGODB_URI is not set: run the tests with scripts/test.sh")
}

/// The `host:port` of `MONGODB_URI` (a single-host URI, as the test script makes).
pub fn mongo_addr() -> SocketAddr {
    let uri = mongo_uri();
    let rest = uri.strip_prefix("mongodb://").expect("a mongodb:// URI");
    let hostport = rest.split(['/', '?']).next().expect("host");
    let hostport = hostport.rsplit('@').next().expect("host");
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport.parse().expect("MONGODB_URI names an IP:port")
}

/// The Redis URL the test script provisioned.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").expect("REDIS_URL is not set: run the tests with scripts/test.sh")
}

/// A name unique to this process and call, for databases and key prefixes.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// Settings of a test app beyond its backend.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Bearer token for writes.
    pub token: Option<String>,
    /// Extra environment variables (override the defaults set here).
    pub env: Vec<(String, String)>,
    /// Run as `app worker` (import workers only; `addr` is then the admin
    /// listener's).
    pub worker_role: bool,
}

/// A running app and what a test needs to talk to it.
#[derive(Debug)]
pub struct TestApp {
    /// API address.
    pub addr: SocketAddr,
    /// Admin (metrics) address.
    pub admin: SocketAddr,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The token configured, if any.
    pub token: Option<String>,
    /// The backend it runs on.
    pub backend: Backend,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

/// The environment a test app is configured from.
pub fn test_env(backend: Backend, dir: &std::path::Path, options: &Options) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("APP_LISTEN".into(), "127.0.0.1:0".into()),
        ("APP_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
        ("APP_DATA_DIR".into(), dir.display().to_string()),
        ("APP_SHUTDOWN_GRACE".into(), "5s".into()),
    ];
    if backend == Backend::MongoRedis {
        env.push(("MONGODB_URI".into(), mongo_uri()));
        env.push(("MONGODB_DATABASE".into(), unique("t")));
        env.push(("REDIS_URL".into(), redis_url()));
        env.push(("REDIS_KEY_PREFIX".into(), unique("t")));
    }
    if let Some(token) = &options.token {
        env.push(("API_TOKEN".into(), token.clone()));
    }
    for (k, v) in &options.env {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Starts an app on `backend`.
pub async fn spawn(backend: Backend) -> TestApp {
    spawn_with(backend, Options::default()).await
}

/// Starts an app on `backend` with `options`.
pub async fn spawn_with(backend: Backend, options: Options) -> TestApp {
    shared::telemetry::init_for_tests();
    let dir = tempfile::tempdir().expect("temp dir");
    let env = test_env(backend, dir.path(), &options);
    let sources = Sources::from_pairs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let config = AppConfig::load(&sources).expect("test config is valid");
    let role = if options.worker_role { Role::Worker } else { Role::Api };
    let app = Application::build_as(config, role).await.expect("app builds");
    let admin = app.admin_addr();
    let addr = if options.worker_role { admin } else { app.api_addr() };
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    TestApp {
        addr,
        admin,
        http: reqwest::Client::new(),
        token: options.token,
        backend,
        stop,
        handle,
        _dir: dir,
    }
}

impl TestApp {
    /// `http://ADDR/PATH` on the API listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with the configured token, if any.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => builder.bearer_auth(t),
            None => builder,
        }
    }

    /// Sends `body` as JSON with `method` and returns status and JSON body.
    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .request(method, path)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request sent");
        into_json(response).await
    }

    /// `GET path` → status and JSON body.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        into_json(self.http.get(self.url(path)).send().await.expect("request sent")).await
    }

    /// Creates a config, asserting 201.
    pub async fn create(&self, config: &Value) {
        let (status, body) = self.send_json(Method::POST, "/configs", config).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// The names of every stored config (following pages).
    pub async fn all_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut path = "/configs?limit=1000".to_string();
        loop {
            let (status, body) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            for c in body["configs"].as_array().expect("configs array") {
                names.push(c["name"].as_str().expect("name").to_string());
            }
            match body["next"].as_str() {
                Some(next) => path = format!("/configs?limit=1000&after={next}"),
                None => return names,
            }
        }
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("text")
    }

    /// Cancels the app and waits for it to finish draining.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await.expect("app task did not panic")
    }

    /// The token that stops this app (for tests that stop it mid-request).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Splits a response into status and JSON body (`Null` when empty).
pub async fn into_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, body)
}

/// Asserts a problem+json response with `status` and a request id.
pub async fn assert_problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    let header_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("x-request-id on every response");
    let (_, body) = into_json(response).await;
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(body["request_id"], header_id.as_str(), "{body}");
    assert!(body["title"].is_string() && body["detail"].is_string(), "{body}");
    body
}

/// Runs each named case (an `async fn(TestApp)` in the test file) on both
/// backends, as two tests: `embedded::CASE` and `mongodb_and_redis::CASE`.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test] async fn $case() { super::$case(super::spawn(super::Backend::Embedded).await).await; })*
        }
        mod mongodb_and_redis {
            $(#[tokio::test] async fn $case() { super::$case(super::spawn(super::Backend::MongoRedis).await).await; })*
        }
    };
}

/// Runs each named case (an `async fn(Backend)` in the test file) on both
/// backends, as two tests: `embedded::CASE` and `mongodb_and_redis::CASE`,
/// for cases that start their own apps.
#[allow(unused_macros)]
macro_rules! on_both_backends_with {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test] async fn $case() { super::$case(super::Backend::Embedded).await; })*
        }
        mod mongodb_and_redis {
            $(#[tokio::test] async fn $case() { super::$case(super::Backend::MongoRedis).await; })*
        }
    };
}
