//! Bulk imports end to end, on both backends: `POST /imports` (202 at
//! once), the workers (in the app, in `app worker` processes), exact
//! counts, item errors, bounds, and what a dead worker or a restarted
//! Redis leaves behind (nothing lost, nothing counted twice).

#[macro_use]
mod common;

use common::redis::OwnRedis;
use common::{Backend, Options, TestApp, spawn_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "import-token";

/// The configs seed's sample shape: 65 items, 56 valid with distinct
/// names, 7 invalid (each a different rule), 2 repeating an earlier name.
/// Returns the items and, per name, the data its first occurrence holds.
fn sample() -> (Vec<Value>, Vec<(String, Value)>) {
    let mut items: Vec<Value> = (0..56)
        .map(|i| json!({"name": format!("cfg-{i:02}"), "data": [{"n": i, "tag": "sample"}]}))
        .collect();
    let expected: Vec<(String, Value)> = items
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["data"].clone()))
        .collect();
    let invalid = [
        json!({"data": []}),
        json!({"name": "has space", "data": []}),
        json!({"name": "bad-data", "data": {"not": "an array"}}),
        json!({"name": "bad-element", "data": [1]}),
        json!({"name": "bad-key", "data": [{"$where": "1"}]}),
        json!(42),
        json!({"name": "extra", "data": [], "owner": "x"}),
    ];
    for (k, item) in invalid.into_iter().enumerate() {
        items.insert(3 + 8 * k, item);
    }
    items.insert(40, json!({"name": "cfg-00", "data": [{"dup": 1}]}));
    items.push(json!({"name": "cfg-10", "data": [{"dup": 2}]}));
    assert_eq!(items.len(), 65);
    (items, expected)
}

fn options(env: &[(&str, &str)]) -> Options {
    Options {
        token: Some(TOKEN.into()),
        env: env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
        ..Options::default()
    }
}

/// Posts an import.
async fn send_import(app: &TestApp, query: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    app.request(Method::POST, &format!("/imports{query}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("sent")
}

/// Posts an import; returns the response status, `Location` and body.
async fn post_import(
    app: &TestApp,
    query: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Option<String>, Value) {
    let response = send_import(app, query, content_type, body).await;
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().expect("ascii").to_string());
    let (status, body) = common::into_json(response).await;
    (status, location, body)
}

async fn accepted(app: &TestApp, query: &str, items: &[Value]) -> String {
    let (status, location, body) =
        post_import(app, query, "application/json", serde_json::to_vec(items).expect("json")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let location = location.expect("Location on 202");
    assert_eq!(location, format!("/imports/{}", body["id"].as_str().expect("id")));
    assert_eq!(body["state"], "queued");
    assert_eq!(body["total"], items.len());
    location
}

async fn job(app: &TestApp, location: &str) -> Value {
    let (status, body) = common::into_json(app.request(Method::GET, location).send().await.expect("sent")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls a job until it is `done` or `failed`.
async fn finished(app: &TestApp, location: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let body = job(app, location).await;
        if body["state"] == "done" || body["state"] == "failed" {
            return body;
        }
        assert!(Instant::now() < deadline, "not finished in {within:?}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sample_counts_are_exact_and_the_store_holds_the_valid_items(backend: Backend) {
    let app = spawn_with(backend, options(&[("APP_IMPORTS_BATCH_SIZE", "10")])).await;
    let (items, expected) = sample();
    let location = accepted(&app, "", &items).await;
    let done = finished(&app, &location, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        done["counts"],
        json!({"created": 56, "updated": 0, "invalid": 7, "conflicts": 2}),
        "{done}"
    );
    assert_eq!(done["processed"], 65);
    assert!(
        done["started_at"].is_string() && done["finished_at"].is_string(),
        "{done}"
    );
    // The store holds exactly the valid items, each with its first data.
    let mut names = app.all_names().await;
    names.sort();
    let mut want: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(names, want);
    for (name, data) in &expected {
        let (status, body) = app.get(&format!("/configs/{name}")).await;
        assert_eq!((status, &body["data"]), (StatusCode::OK, data), "{name}");
    }
    // Item errors: index, name and the single write's status, paged.
    let first = job(&app, &format!("{location}?errors_limit=5")).await;
    let page: Vec<(u64, u64)> = first["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(page, [(3, 422), (11, 422), (19, 422), (27, 422), (35, 422)], "{first}");
    assert_eq!(first["errors"][1]["name"], "has space");
    assert!(first["errors"][1]["errors"][0]["pointer"] == "/name", "{first}");
    let after = first["next_errors_after"].as_u64().expect("a next page");
    let rest = job(&app, &format!("{location}?errors_after={after}")).await;
    let page: Vec<(u64, u64, Value)> = rest["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["status"].as_u64().unwrap(),
                e["name"].clone(),
            )
        })
        .collect();
    assert_eq!(
        page,
        [
            (40, 409, json!("cfg-00")),
            (44, 422, Value::Null),
            (52, 422, json!("extra")),
            (64, 409, json!("cfg-10"))
        ],
        "{rest}"
    );
    assert!(rest["next_errors_after"].is_null());
    // Upsert the same items as NDJSON: every valid occurrence replaces.
    let ndjson: String = items.iter().map(|v| format!("{v}\n")).collect();
    let (status, location, body) = post_import(&app, "?mode=upsert", "application/x-ndjson", ndjson.into_bytes()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = finished(&app, &location.expect("Location"), Duration::from_secs(60)).await;
    assert_eq!(
        done["counts"],
        json!({"created": 0, "updated": 58, "invalid": 7, "conflicts": 0}),
        "{done}"
    );
    let (_, body) = app.get("/configs/cfg-10").await;
    assert_eq!(body["data"], json!([{"dup": 2}]), "the last occurrence wins");
    assert_eq!(app.all_names().await.len(), 56);
    // Listed newest first; metrics counted both jobs and their items.
    let (status, list) = common::into_json(app.request(Method::GET, "/imports").send().await.expect("sent")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["imports"].as_array().expect("imports").len(), 2);
    assert_eq!(list["imports"][0]["mode"], "upsert");
    let metrics = app.metrics().await;
    for line in [
        r#"app_import_jobs_total{kind="done"} 2"#,
        r#"app_import_items_total{kind="created"} 56"#,
        r#"app_import_items_total{kind="updated"} 58"#,
        r#"app_import_items_total{kind="invalid"} 14"#,
        r#"app_import_items_total{kind="conflict"} 2"#,
        "app_import_queue_depth 0",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    // The cache saw the upsert (a read before it would have cached cfg-00).
    let (_, body) = app.get("/configs/cfg-00").await;
    assert_eq!(body["data"], json!([{"dup": 1}]));
    app.stop().await.expect("stops");
}

async fn bad_imports_are_refused_whole_and_queue_nothing(backend: Backend) {
    let app = spawn_with(
        backend,
        options(&[
            ("APP_IMPORTS_MAX_BODY", "64KiB"),
            ("APP_MAX_BODY", "1KiB"),
            ("APP_IMPORTS_MAX_ITEMS", "3000"),
        ]),
    )
    .await;
    let item = |i: usize| json!({"name": format!("x{i}"), "data": []});
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode)> = vec![
        (
            "",
            "application/json",
            b"{\"name\": \"x\"}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "",
            "application/json",
            b"[{\"name\": \"x\",".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        ("", "application/json", b"[]".to_vec(), StatusCode::BAD_REQUEST),
        (
            "",
            "application/x-ndjson",
            format!("{}\n{{oops\n", item(1)).into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "?mode=merge",
            "application/json",
            serde_json::to_vec(&[item(1)]).unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "?limit=3",
            "application/json",
            serde_json::to_vec(&[item(1)]).unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "",
            "text/plain",
            serde_json::to_vec(&[item(1)]).unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "",
            "application/json",
            serde_json::to_vec(&(0..4000).map(item).collect::<Vec<_>>()).unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        // Under the body bound, over the item bound (tiny items), both framings.
        (
            "",
            "application/json",
            format!("[{}0]", "0,".repeat(3000)).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "",
            "application/x-ndjson",
            "0\n".repeat(3001).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "?mode=create&mode=upsert",
            "application/json",
            serde_json::to_vec(&[item(1)]).unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "",
            "application/json",
            serde_json::to_vec(&[item(1), json!({"name": "big", "data": [{"k": "v".repeat(2000)}]})]).unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (query, content_type, body, status) in cases {
        let response = send_import(&app, query, content_type, body).await;
        let problem = common::assert_problem(response, status).await;
        assert!(!problem["detail"].as_str().unwrap_or_default().is_empty());
    }
    // Without the token: 401 on every /imports route, before the body is read.
    let anonymous = reqwest::Client::new();
    for (method, path) in [
        (Method::POST, "/imports"),
        (Method::GET, "/imports"),
        (Method::GET, "/imports/0123456789abcdef0123456789abcdef"),
    ] {
        let response = anonymous
            .request(method, app.url(path))
            .header("content-type", "application/json")
            .body("[]")
            .send()
            .await
            .expect("sent");
        common::assert_problem(response, StatusCode::UNAUTHORIZED).await;
    }
    let (status, list) = common::into_json(app.request(Method::GET, "/imports").send().await.expect("sent")).await;
    assert_eq!((status, list), (StatusCode::OK, json!({"imports": []})));
    // Bad paging and unknown parameters on the reads: 400 naming the parameter.
    let id = "0123456789abcdef0123456789abcdef";
    for (path, param) in [
        ("/imports?limit=0".to_string(), "limit"),
        ("/imports?limit=101".to_string(), "limit"),
        ("/imports?limit=5&limit=6".to_string(), "limit"),
        ("/imports?after=x".to_string(), "after"),
        (format!("/imports/{id}?errors_limit=0"), "errors_limit"),
        (format!("/imports/{id}?errors_limit=1001"), "errors_limit"),
        (format!("/imports/{id}?errors_after=-1"), "errors_after"),
        (format!("/imports/{id}?page=2"), "page"),
    ] {
        let response = app.request(Method::GET, &path).send().await.expect("sent");
        let problem = common::assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(problem["param"], param, "{path}: {problem}");
    }
    // An id that cannot exist is a 404 like an unknown one.
    for path in ["/imports/not-an-id", "/imports/0123456789ABCDEF0123456789abcdeg"] {
        let response = app.request(Method::GET, path).send().await.expect("sent");
        common::assert_problem(response, StatusCode::NOT_FOUND).await;
    }
    let unknown = app
        .request(Method::GET, "/imports/0123456789abcdef0123456789abcdef")
        .send()
        .await
        .expect("sent");
    common::assert_problem(unknown, StatusCode::NOT_FOUND).await;
    app.stop().await.expect("stops");
}

async fn a_full_queue_answers_503_and_an_app_worker_drains_it(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let data_dir = dir.path().display().to_string();
    let mut env = vec![
        ("APP_WORKER_CONCURRENCY", "0"),
        ("APP_IMPORTS_MAX_QUEUED", "2"),
        ("APP_DATA_DIR", data_dir.as_str()),
    ];
    // Both processes on one MongoDB database and one Redis prefix.
    let (database, prefix) = (common::unique("imp"), common::unique("imp"));
    if backend == Backend::MongoRedis {
        env.push(("MONGODB_DATABASE", database.as_str()));
        env.push(("REDIS_KEY_PREFIX", prefix.as_str()));
    }
    let api = spawn_with(backend, options(&env)).await;
    let items: Vec<Value> = (0..30).map(|i| json!({"name": format!("q{i}"), "data": []})).collect();
    let first = accepted(&api, "", &items[..10]).await;
    let second = accepted(&api, "", &items[10..20]).await;
    let response = api
        .request(Method::POST, "/imports")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&items[20..]).expect("json"))
        .send()
        .await
        .expect("sent");
    let retry_after = response.headers().get("retry-after").cloned();
    common::assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(retry_after.expect("Retry-After on 503"), "5");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        job(&api, &first).await["state"],
        "queued",
        "no worker runs in the API process"
    );
    // A separate worker process (the `app worker` role) takes both.
    env.retain(|(k, _)| *k != "APP_WORKER_CONCURRENCY");
    let worker = spawn_with(
        backend,
        Options {
            worker_role: true,
            ..options(&env)
        },
    )
    .await;
    for location in [&first, &second] {
        let done = finished(&api, location, Duration::from_secs(30)).await;
        assert_eq!(done["counts"]["created"], 10, "{done}");
    }
    let (status, _, _) = post_import(
        &api,
        "",
        "application/json",
        serde_json::to_vec(&items[20..]).expect("json"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "room again once jobs finish");
    assert!(
        worker
            .metrics()
            .await
            .contains(r#"app_import_claims_total{kind="first"}"#)
    );
    worker.stop().await.expect("worker stops");
    api.stop().await.expect("stops");
}

/// Items that are JSON but that a single write could not take either
/// (nested past the parser's depth, a lone surrogate escape, a number out of
/// range) are item errors; the rest of their batch is written.
async fn items_no_single_write_could_parse_are_item_errors(backend: Backend) {
    let app = spawn_with(backend, options(&[])).await;
    let deep = format!(
        "{{\"name\":\"deep\",\"data\":[{}1{}]}}",
        "[".repeat(130),
        "]".repeat(130)
    );
    let body = format!(
        "[{{\"name\":\"a\",\"data\":[]}},{deep},{{\"name\":\"s\",\"data\":[{{\"k\":\"\\ud800\"}}]}},{{\"name\":\"n\",\"data\":[{{\"k\":1e400}}]}},{{\"name\":\"b\",\"data\":[]}}]"
    );
    let (status, location, accepted) = post_import(&app, "", "application/json", body.into_bytes()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let done = finished(&app, &location.expect("Location"), Duration::from_secs(30)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        done["counts"],
        json!({"created": 2, "updated": 0, "invalid": 3, "conflicts": 0}),
        "{done}"
    );
    let indexes: Vec<u64> = done["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(indexes, [1, 2, 3], "{done}");
    let mut names = app.all_names().await;
    names.sort();
    assert_eq!(names, ["a", "b"]);
    app.stop().await.expect("stops");
}

on_both_backends_with!(
    items_no_single_write_could_parse_are_item_errors,
    a_worker_killed_mid_job_is_replaced_and_every_item_is_stored_once,
    a_stopping_worker_gives_its_job_back_at_once,
    sample_counts_are_exact_and_the_store_holds_the_valid_items,
    bad_imports_are_refused_whole_and_queue_nothing,
    a_full_queue_answers_503_and_an_app_worker_drains_it,
);

/// An `app worker` process on the environment of `app`'s backend; its
/// JSON log (stderr) goes to `log` when given.
fn worker_process(env: &[(String, String)], log: Option<&std::path::Path>) -> Child {
    let stdout = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
        None => Stdio::null(),
    };
    Command::new(env!("CARGO_BIN_EXE_app"))
        .arg("worker")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("APP_ADMIN_LISTEN", "127.0.0.1:0")
        .env("APP_WORKER_CONCURRENCY", "1")
        .env("APP_WORKER_CLAIM_IDLE", "2s")
        .env("APP_WORKER_POLL_INTERVAL", "200ms")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(stdout)
        .spawn()
        .expect("app worker starts")
}

async fn a_worker_killed_mid_job_is_replaced_and_every_item_is_stored_once(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    // One store and one queue for the API and both worker processes.
    let (database, prefix) = (common::unique("kill"), common::unique("kill"));
    let options = options(&[
        ("APP_WORKER_CONCURRENCY", "0"),
        ("APP_IMPORTS_BATCH_SIZE", "50"),
        ("APP_DATA_DIR", &dir.path().display().to_string()),
        ("MONGODB_DATABASE", &database),
        ("REDIS_KEY_PREFIX", &prefix),
    ]);
    let env = common::test_env(backend, dir.path(), &options);
    let api = spawn_with(backend, options).await;
    let total = 20_000;
    let items: Vec<Value> = (0..total)
        .map(|i| json!({"name": format!("bulk-{i:05}"), "data": [{"i": i, "pad": "x".repeat(40)}]}))
        .collect();
    let location = accepted(&api, "", &items).await;
    let mut first = worker_process(&env, None);
    // Kill it (SIGKILL: no goodbye) once it is well into the job.
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let body = job(&api, &location).await;
        let processed = body["processed"].as_u64().unwrap_or(0);
        if processed >= 1_000 {
            break processed;
        }
        assert!(Instant::now() < deadline, "the worker made no progress: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    first.kill().expect("kill");
    first.wait().expect("reaped");
    let state = job(&api, &location).await;
    assert!(
        state["processed"].as_u64().unwrap_or(0) < total as u64,
        "the job finished before the kill ({at_kill} at the look); the test proves nothing: {state}"
    );
    assert_eq!(state["state"], "running", "{state}");
    let log = dir.path().join("second-worker.log");
    let mut second = worker_process(&env, Some(&log));
    let done = finished(&api, &location, Duration::from_secs(180)).await;
    // SIGTERM: a clean stop flushes the log.
    let term = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    assert!(second.wait().expect("reaped").success(), "a clean stop exits 0");
    // One line per state change, each naming the job and its request.
    let (id, request_id) = (
        done["id"].as_str().expect("id"),
        done["request_id"].as_str().expect("request id"),
    );
    let lines = std::fs::read_to_string(&log).expect("worker log");
    for message in ["import running", "import done"] {
        assert!(
            lines
                .lines()
                .any(|l| l.contains(message) && l.contains(id) && l.contains(request_id)),
            "no {message:?} line with the job and request ids in\n{lines}"
        );
    }
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        done["counts"],
        json!({"created": total, "updated": 0, "invalid": 0, "conflicts": 0}),
        "{done}"
    );
    assert_eq!(done["attempts"], 2, "taken over once: {done}");
    let names = api.all_names().await;
    assert_eq!(names.len(), total, "each item stored once");
    let (_, errors) = common::into_json(api.request(Method::GET, &location).send().await.expect("sent")).await;
    assert_eq!(
        errors["errors"],
        json!([]),
        "no item reported twice or as a conflict with itself"
    );
    api.stop().await.expect("stops");
}

/// Redis loses everything (killed, restarted empty) while jobs wait: the
/// workers' repair queues them again from the store, and a job accepted
/// while Redis is down is queued too.
#[tokio::test]
async fn redis_restarted_empty_loses_no_accepted_job() {
    let mut redis = OwnRedis::start();
    let prefix = common::unique("restart");
    let database = common::unique("restart");
    let env = [
        ("MONGODB_DATABASE", database.as_str()),
        ("REDIS_URL", &redis.url()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("APP_WORKER_CONCURRENCY", "0"),
        ("APP_IMPORTS_BATCH_SIZE", "20"),
    ];
    let api = spawn_with(Backend::MongoRedis, options(&env)).await;
    let items: Vec<Value> = (0..300)
        .map(|i| json!({"name": format!("r{i:03}"), "data": []}))
        .collect();
    let mut locations = Vec::new();
    for chunk in items[..200].chunks(100) {
        locations.push(accepted(&api, "", chunk).await);
    }
    redis.kill();
    locations.push(accepted(&api, "", &items[200..]).await);
    redis.restart();
    let mut worker_env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .filter(|(k, _)| *k != "APP_WORKER_CONCURRENCY")
        .collect();
    worker_env.push(("APP_WORKER_CLAIM_IDLE", "1s"));
    worker_env.push(("APP_WORKER_POLL_INTERVAL", "200ms"));
    let worker = spawn_with(
        Backend::MongoRedis,
        Options {
            worker_role: true,
            ..options(&worker_env)
        },
    )
    .await;
    for location in &locations {
        let done = finished(&api, location, Duration::from_secs(30)).await;
        assert_eq!(done["counts"]["created"], 100, "{done}");
    }
    assert_eq!(api.all_names().await.len(), 300);
    assert!(
        worker
            .metrics()
            .await
            .contains(r#"app_import_claims_total{kind="republished"} 3"#),
        "{}",
        worker.metrics().await
    );
    worker.stop().await.expect("stops");
    api.stop().await.expect("stops");
}

/// A worker stopped mid-job (SIGTERM's path) gives the job back at a batch
/// boundary: another worker takes it at once, not after `claim_idle`, and
/// the give-back is not counted as an attempt.
async fn a_stopping_worker_gives_its_job_back_at_once(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let (database, prefix) = (common::unique("stop"), common::unique("stop"));
    let data_dir = dir.path().display().to_string();
    let env = [
        ("APP_DATA_DIR", data_dir.as_str()),
        ("MONGODB_DATABASE", database.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("APP_IMPORTS_BATCH_SIZE", "20"),
        ("APP_WORKER_POLL_INTERVAL", "100ms"),
        ("APP_WORKER_CLAIM_IDLE", "120s"),
    ];
    let mut api_env = env.to_vec();
    api_env.push(("APP_WORKER_CONCURRENCY", "0"));
    let api = spawn_with(backend, options(&api_env)).await;
    let worker = || {
        spawn_with(
            backend,
            Options {
                worker_role: true,
                ..options(&env)
            },
        )
    };
    let first = worker().await;
    let items: Vec<Value> = (0..4000)
        .map(|i| json!({"name": format!("g{i:04}"), "data": []}))
        .collect();
    let location = accepted(&api, "", &items).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while job(&api, &location).await["processed"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the worker never started the job");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.stop().await.expect("stops");
    let given_back = job(&api, &location).await;
    assert!(
        given_back["processed"].as_u64().unwrap_or(0) < 4000,
        "finished before the stop: {given_back}"
    );
    assert_eq!(
        given_back["attempts"], 0,
        "released, the attempt not counted: {given_back}"
    );
    if backend == Backend::MongoRedis {
        assert_eq!(consumers(&prefix), 0, "a stopped worker leaves the consumer group");
    }
    let second = worker().await;
    // claim_idle is 120 s: only a give-back lets it finish sooner.
    let done = finished(&api, &location, Duration::from_secs(90)).await;
    assert_eq!(done["counts"]["created"], 4000, "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(api.all_names().await.len(), 4000);
    if backend == Backend::MongoRedis {
        assert_eq!(consumers(&prefix), 1, "the running worker is in the group");
    }
    second.stop().await.expect("stops");
    if backend == Backend::MongoRedis {
        assert_eq!(consumers(&prefix), 0, "a stopped worker leaves the consumer group");
    }
    api.stop().await.expect("stops");
}

/// How many consumers the import stream's group lists (`redis-cli`).
fn consumers(prefix: &str) -> usize {
    let output = Command::new("redis-cli")
        .args([
            "-u",
            &common::redis_url(),
            "XINFO",
            "CONSUMERS",
            &format!("{prefix}:imports"),
            "workers",
        ])
        .output()
        .expect("redis-cli runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.trim() == "name")
        .count()
}
