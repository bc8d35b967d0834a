//! Process lifecycle: graceful shutdown finishing an in-flight request,
//! the real binary's exit codes, and replicas sharing the embedded store.

mod common;

use common::{Backend, Options, spawn_with};
use reqwest::StatusCode;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn shutdown_finishes_the_in_flight_request_then_stops() {
    let dir = tempfile::tempdir().expect("dir");
    let data_dir = dir.path().display().to_string();
    let app = spawn_with(
        Backend::Embedded,
        Options {
            env: vec![("APP_DATA_DIR".into(), data_dir)],
            ..Options::default()
        },
    )
    .await;
    // Another connection holds SQLite's write lock, so the POST below waits.
    let blocker = rusqlite::Connection::open(dir.path().join("configs.sqlite3")).expect("open");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("lock");

    let url = app.url("/configs");
    let http = app.http.clone();
    let in_flight = tokio::spawn(async move {
        http.post(url)
            .header("content-type", "application/json")
            .body(json!({ "name": "inflight", "data": [] }).to_string())
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = app.stop_token();
    let addr = app.addr;
    let stopped = tokio::spawn(app.stop());
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: new connections are refused while the request is in flight.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting while draining"
    );
    blocker.execute_batch("COMMIT").expect("unlock");

    let response = in_flight.await.expect("task").expect("the in-flight request completed");
    assert_eq!(response.status(), StatusCode::CREATED);
    stopped.await.expect("task").expect("clean stop");
    let check = rusqlite::Connection::open(dir.path().join("configs.sqlite3")).expect("open");
    let n: i64 = check
        .query_row("SELECT COUNT(*) FROM configs WHERE name = 'inflight'", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn two_replicas_on_one_data_dir_see_the_same_configs() {
    let dir = tempfile::tempdir().expect("dir");
    let env = vec![("APP_DATA_DIR".to_string(), dir.path().display().to_string())];
    let a = spawn_with(
        Backend::Embedded,
        Options {
            env: env.clone(),
            ..Options::default()
        },
    )
    .await;
    let b = spawn_with(
        Backend::Embedded,
        Options {
            env,
            ..Options::default()
        },
    )
    .await;
    a.create(&json!({ "name": "shared", "data": [{ "from": "a" }] })).await;
    assert_eq!(b.get("/configs/shared").await.1["data"][0]["from"], "a");
    b.create(&json!({ "name": "other", "data": [] })).await;
    assert_eq!(a.all_names().await, ["other", "shared"]);
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_app"))
}

#[test]
fn the_binary_refuses_a_bad_configuration_before_binding_anything() {
    let port = common::redis::free_port();
    let output = binary()
        .env_clear()
        .env("APP_LISTEN", format!("127.0.0.1:{port}"))
        .env("MONGODB_URI", "postgres://nope")
        .env("REDIS_TTL", "forever")
        .env("API_TOKEN_FILE", "/nonexistent/secret")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in ["3 problems", "API_TOKEN_FILE", "redis.ttl", "mongodb.uri"] {
        assert!(stderr.contains(expected), "{expected:?} missing from: {stderr}");
    }
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "it bound the port"
    );
}

#[test]
fn the_binary_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let port = common::redis::free_port();
    let admin = common::redis::free_port();
    let mut child = binary()
        .env_clear()
        .env("APP_LISTEN", format!("127.0.0.1:{port}"))
        .env("APP_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("APP_DATA_DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the app did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let healthcheck = |port: u16| {
        binary()
            .env_clear()
            .env("APP_LISTEN", format!("0.0.0.0:{port}"))
            .arg("healthcheck")
            .status()
            .expect("runs")
    };
    assert!(healthcheck(port).success(), "healthcheck of a ready app");
    assert!(
        !healthcheck(common::redis::free_port()).success(),
        "healthcheck of nothing"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "the app did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the child process when dropped, so a failed assertion leaves no
/// app running.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_healthcheck_probes_liveness_so_a_store_outage_restarts_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let port = common::redis::free_port();
    let admin = common::redis::free_port();
    // MongoDB at a port nothing listens on: the store is down, the process serves.
    let nothing = common::redis::free_port();
    let _app = Killed(
        binary()
            .env_clear()
            .env("APP_LISTEN", format!("127.0.0.1:{port}"))
            .env("APP_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("APP_DATA_DIR", dir.path())
            .env(
                "MONGODB_URI",
                format!("mongodb://127.0.0.1:{nothing}/?directConnection=true"),
            )
            .env("APP_STORE_TIMEOUT", "500ms")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawns"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the app did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let healthcheck = |args: &[&str]| {
        binary()
            .env_clear()
            .env("APP_LISTEN", format!("0.0.0.0:{port}"))
            .arg("healthcheck")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("runs")
    };
    assert!(healthcheck(&[]).success(), "liveness must hold while the store is down");
    assert!(
        !healthcheck(&["--ready"]).success(),
        "readiness must fail while the store is down"
    );
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let readyz = shared::healthcheck::probe(target, "/readyz", Duration::from_secs(5)).expect("answers");
    assert_eq!(readyz, 503);
    assert_eq!(
        healthcheck(&["--bogus"]).code(),
        Some(2),
        "an unknown flag is a usage error"
    );
}
