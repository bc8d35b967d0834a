//! The store going away: MongoDB behind a TCP proxy the test cuts. Requests
//! must answer 503 within a few seconds (not hang), `/readyz` must say 503,
//! and everything must recover by itself when MongoDB is back.

mod common;

use common::tcp_proxy::TcpProxy;
use common::{Backend, Options, TestApp, assert_problem, mongo_addr, spawn_with};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

async fn app_behind(proxy: &TcpProxy) -> TestApp {
    spawn_with(
        Backend::MongoRedis,
        Options {
            env: vec![
                (
                    "MONGODB_URI".into(),
                    format!("mongodb://{}/?directConnection=true", proxy.addr),
                ),
                ("APP_STORE_TIMEOUT".into(), "1500ms".into()),
            ],
            ..Options::default()
        },
    )
    .await
}

#[tokio::test]
async fn mongodb_unreachable_is_a_fast_503_and_recovers_by_itself() {
    let proxy = TcpProxy::start(mongo_addr()).await;
    let app = app_behind(&proxy).await;
    app.create(&json!({ "name": "steady", "data": [{ "v": 1 }] })).await;

    proxy.cut().await;
    for (method, path, body) in [
        (Method::GET, "/configs", None),
        (Method::POST, "/configs", Some(json!({ "name": "lost", "data": [] }))),
        (Method::GET, "/search?data.v=1", None),
    ] {
        let started = Instant::now();
        let mut request = app.request(method.clone(), path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("sent");
        let took = started.elapsed();
        assert_eq!(
            response.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(took < Duration::from_secs(4), "{method} {path} took {took:?}");
    }
    let started = Instant::now();
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["checks"]["store"]["status"], "down");
    // Which dependency is down, not the driver's message (it names hosts).
    assert_eq!(ready["checks"]["store"].get("error"), None, "{ready}");
    assert!(started.elapsed() < Duration::from_secs(4));

    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get("/readyz").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "the app did not recover");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(app.get("/configs").await.0, StatusCode::OK);
    app.create(&json!({ "name": "after", "data": [] })).await;
    assert_eq!(
        app.all_names().await,
        ["after", "steady"],
        "the write during the outage did not land"
    );
}

#[tokio::test]
async fn an_app_started_while_mongodb_is_down_serves_once_it_appears() {
    let proxy = TcpProxy::start(mongo_addr()).await;
    proxy.cut().await;
    let app = app_behind(&proxy).await;
    assert_eq!(app.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get("/readyz").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "the app did not recover");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The unique index was created late, and it holds.
    app.create(&json!({ "name": "one", "data": [] })).await;
    let (status, _) = app
        .send_json(Method::POST, "/configs", &json!({ "name": "one", "data": [] }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}
