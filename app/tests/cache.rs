//! The Redis cache on a real `redis-server` this test owns, including Redis
//! killed mid-test and Redis stalled: reads and writes keep working from the
//! store, never a 5xx, and the faults are counted.

mod common;

use common::redis::OwnRedis;
use common::{Backend, Options, TestApp, spawn_with};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

async fn app_with(redis: &OwnRedis, prefix: &str) -> TestApp {
    spawn_with(
        Backend::MongoRedis,
        Options {
            env: vec![
                ("REDIS_URL".into(), redis.url()),
                ("REDIS_KEY_PREFIX".into(), prefix.into()),
                ("REDIS_TIMEOUT".into(), "200ms".into()),
            ],
            ..Options::default()
        },
    )
    .await
}

fn count(metrics: &str, outcome: &str) -> u64 {
    let series = format!("app_cache_operations_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

#[tokio::test]
async fn reads_fill_the_cache_and_writes_invalidate_it() {
    let redis = OwnRedis::start();
    let app = app_with(&redis, "fill").await;
    app.create(&json!({ "name": "c1", "data": [{ "v": 1 }] })).await;
    assert_eq!(redis.command(&["EXISTS", "fill:config:c1"]), ":0\r\n");
    assert_eq!(app.get("/configs/c1").await.0, StatusCode::OK);
    assert_eq!(
        redis.command(&["EXISTS", "fill:config:c1"]),
        ":1\r\n",
        "a read fills the cache"
    );
    let ttl = redis.command(&["TTL", "fill:config:c1"]);
    let ttl: i64 = ttl.trim_start_matches(':').trim().parse().expect("ttl");
    assert!((1..=60).contains(&ttl), "entries expire (TTL {ttl})");
    app.send_json(Method::PUT, "/configs/c1", &json!({ "data": [{ "v": 2 }] }))
        .await;
    assert_eq!(
        redis.command(&["EXISTS", "fill:config:c1"]),
        ":0\r\n",
        "a write invalidates"
    );
    assert_eq!(app.get("/configs/c1").await.1["data"][0]["v"], 2);
    let metrics = app.metrics().await;
    assert_eq!((count(&metrics, "miss"), count(&metrics, "hit")), (2, 0), "{metrics}");
    app.get("/configs/c1").await;
    assert_eq!(count(&app.metrics().await, "hit"), 1);
}

#[tokio::test]
async fn redis_killed_mid_test_never_fails_a_request_and_loses_no_write() {
    let mut redis = OwnRedis::start();
    let app = app_with(&redis, "killed").await;
    app.create(&json!({ "name": "before", "data": [{ "v": 1 }] })).await;
    assert_eq!(app.get("/configs/before").await.0, StatusCode::OK);

    redis.kill();
    // Reads come from the store.
    let (status, body) = app.get("/configs/before").await;
    assert_eq!((status, body["data"][0]["v"].clone()), (StatusCode::OK, json!(1)));
    // Writes land and are readable afterwards.
    app.create(&json!({ "name": "during", "data": [{ "v": 2 }] })).await;
    let (status, _) = app
        .send_json(Method::PUT, "/configs/before", &json!({ "data": [{ "v": 3 }] }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.get("/configs/during").await.1["data"][0]["v"], 2);
    assert_eq!(app.get("/configs/before").await.1["data"][0]["v"], 3);
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (StatusCode::OK, Some("degraded")),
        "{ready}"
    );
    assert!(count(&app.metrics().await, "error") >= 2, "cache faults are counted");

    // Redis comes back (empty): the cache fills again, nothing is stale.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, ready) = app.get("/readyz").await;
        if ready["status"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "the cache did not reconnect: {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.get("/configs/before").await.1["data"][0]["v"], 3);
    assert_eq!(redis.command(&["EXISTS", "killed:config:before"]), ":1\r\n");
}

#[tokio::test]
async fn a_stalled_redis_costs_at_most_the_cache_timeout() {
    let redis = OwnRedis::start();
    let app = app_with(&redis, "stalled").await;
    app.create(&json!({ "name": "s", "data": [] })).await;
    // CLIENT PAUSE stops Redis answering every client for 3 s.
    assert_eq!(redis.command(&["CLIENT", "PAUSE", "3000", "ALL"]), "+OK\r\n");
    let started = Instant::now();
    let (status, _) = app.get("/configs/s").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?} with a 200 ms cache timeout"
    );
    assert!(count(&app.metrics().await, "error") >= 1);
}

#[tokio::test]
async fn keys_are_namespaced_per_prefix() {
    let redis = OwnRedis::start();
    let a = app_with(&redis, "tenant-a").await;
    a.create(&json!({ "name": "same", "data": [{ "who": "a" }] })).await;
    a.get("/configs/same").await;
    let keys = redis.command(&["KEYS", "*"]);
    assert!(keys.contains("tenant-a:config:same"), "{keys}");
    assert!(!keys.lines().any(|l| l == "same"), "{keys}");
}
