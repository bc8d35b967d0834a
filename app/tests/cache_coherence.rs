//! The cache never serves a value older than an acknowledged (or possibly
//! landed) write: a fill that raced with a write's invalidation is refused,
//! and a write whose outcome is unknown still invalidates. Real Redis and
//! the real MongoDB-protocol server, each test with its own key prefix and
//! database.

mod common;

use app::cache::{Cache, CacheSettings, Lookup};
use app::domain::{Config, ConfigName};
use app::metrics::Metrics;
use common::tcp_proxy::TcpProxy;
use common::{Backend, Options, mongo_addr, spawn_with, unique};
use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn cache() -> Cache {
    let settings = CacheSettings {
        url: common::redis_url(),
        password: None,
        key_prefix: unique("race"),
        ttl: Duration::from_secs(60),
        timeout: Duration::from_secs(1),
    };
    Cache::connect(settings, Arc::new(Metrics::default()))
        .await
        .expect("cache")
}

fn config(version: u32) -> Config {
    serde_json::from_value(json!({ "name": "raced", "data": [{ "v": version }] })).expect("valid")
}

#[tokio::test]
async fn a_fill_that_raced_with_an_invalidation_never_stores_the_stale_value() {
    let cache = cache().await;
    let name = ConfigName::parse("raced").expect("name");
    // Twice: with no version yet, and with the version the first round left.
    for round in 1..=2 {
        // A read misses and reads version `round` from the store...
        let Lookup::Miss(ticket) = cache.get(&name).await else {
            panic!("round {round}: expected a miss");
        };
        // ...meanwhile a write of `round + 1` lands and invalidates...
        cache.invalidate(&name).await;
        // ...then the read's fill arrives with what it read before the write.
        cache.put(&config(round), ticket).await;
        assert!(
            matches!(cache.get(&name).await, Lookup::Miss(_)),
            "round {round}: the stale value was cached over the invalidation"
        );
        // A read that starts after the write fills as usual.
        let Lookup::Miss(ticket) = cache.get(&name).await else {
            panic!("round {round}: expected a miss");
        };
        cache.put(&config(round + 1), ticket).await;
        match cache.get(&name).await {
            Lookup::Hit(cached) => assert_eq!(cached, config(round + 1)),
            other => panic!("round {round}: a fresh fill was refused: {other:?}"),
        }
        cache.invalidate(&name).await;
    }
}

#[tokio::test]
async fn a_write_with_an_unknown_outcome_still_invalidates() {
    let proxy = TcpProxy::start(mongo_addr()).await;
    let database = unique("unknown");
    let app = spawn_with(
        Backend::MongoRedis,
        Options {
            env: vec![
                (
                    "MONGODB_URI".into(),
                    format!("mongodb://{}/?directConnection=true", proxy.addr),
                ),
                ("MONGODB_DATABASE".into(), database.clone()),
                ("APP_STORE_TIMEOUT".into(), "1s".into()),
            ],
            ..Options::default()
        },
    )
    .await;
    app.create(&json!({ "name": "c", "data": [{ "v": 1 }] })).await;
    assert_eq!(app.get("/configs/c").await.1["data"][0]["v"], 1, "read and cached");

    // MongoDB acts on the PUT, but its reply never reaches the app: 503.
    proxy.hold_replies(true);
    let (status, _) = app
        .send_json(Method::PUT, "/configs/c", &json!({ "data": [{ "v": 2 }] }))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The write did land (read directly, around the proxy).
    let direct = mongodb::Client::with_uri_str(common::mongo_uri())
        .await
        .expect("client");
    let stored = direct
        .database(&database)
        .collection::<Document>("configs")
        .find_one(doc! { "name": "c" })
        .await
        .expect("find")
        .expect("the config");
    assert_eq!(
        stored.get_array("data").expect("data")[0]
            .as_document()
            .expect("object")
            .get_i64("v"),
        Ok(2)
    );
    proxy.hold_replies(false);

    // So the cached v1 must be gone: the next successful read is v2.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = app.get("/configs/c").await;
        if status == StatusCode::OK {
            assert_eq!(
                body["data"][0]["v"], 2,
                "the cache served a value the store no longer holds"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the app did not recover: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
