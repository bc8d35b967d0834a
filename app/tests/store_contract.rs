//! One contract for every [`Store`]: the same cases run against the
//! embedded SQLite store and against MongoDB.

mod common;

use app::domain::{Config, ConfigName, SearchQuery};
use app::store::mongo::MongoStore;
use app::store::sqlite::SqliteStore;
use app::store::{Replaced, Store, StoreError};
use serde_json::json;
use std::time::Duration;

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $case() {
                let dir = tempfile::tempdir().expect("dir");
                let store = super::SqliteStore::open(dir.path(), super::Duration::from_secs(3)).expect("open");
                super::$case(&store).await;
            })*
        }
        mod mongodb {
            $(#[tokio::test] async fn $case() {
                let store = super::MongoStore::connect(&super::common::mongo_uri(), &super::common::unique("c"), "configs", super::Duration::from_secs(3))
                    .await
                    .expect("connect");
                super::$case(&store).await;
            })*
        }
    };
}

contract!(
    insert_then_get_returns_the_same_config,
    a_duplicate_insert_is_a_conflict,
    list_is_sorted_and_pages_after_a_name,
    replace_is_unconditional_or_compare_and_swap,
    delete_reports_whether_it_removed,
    search_candidates_include_every_match,
    ping_answers,
);

fn config(name: &str, data: serde_json::Value) -> Config {
    serde_json::from_value(json!({ "name": name, "data": data })).expect("valid config")
}

fn name(n: &str) -> ConfigName {
    ConfigName::parse(n).expect("valid name")
}

async fn insert_then_get_returns_the_same_config(store: &dyn Store) {
    let c = config(
        "a",
        json!([{ "i": 1, "f": 2.5, "b": false, "n": null, "s": "x", "arr": [1, "2"], "o": { "k": [] } }]),
    );
    store.insert(&c).await.expect("insert");
    assert_eq!(store.get(&name("a")).await.expect("get"), Some(c));
    assert_eq!(store.get(&name("b")).await.expect("get"), None);
}

async fn a_duplicate_insert_is_a_conflict(store: &dyn Store) {
    store.insert(&config("a", json!([]))).await.expect("insert");
    let err = store
        .insert(&config("a", json!([{ "x": 1 }])))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, StoreError::Conflict), "{err}");
    assert_eq!(store.get(&name("a")).await.expect("get"), Some(config("a", json!([]))));
}

async fn list_is_sorted_and_pages_after_a_name(store: &dyn Store) {
    for n in ["b", "D", "a", "c", "_"] {
        store.insert(&config(n, json!([]))).await.expect("insert");
    }
    let names = |cs: Vec<Config>| cs.into_iter().map(|c| c.name.to_string()).collect::<Vec<_>>();
    // Byte order, as both MongoDB and SQLite sort by default.
    assert_eq!(
        names(store.list(None, 10).await.expect("list")),
        ["D", "_", "a", "b", "c"]
    );
    assert_eq!(names(store.list(None, 2).await.expect("list")), ["D", "_"]);
    assert_eq!(names(store.list(Some(&name("_")), 2).await.expect("list")), ["a", "b"]);
    assert!(store.list(Some(&name("c")), 2).await.expect("list").is_empty());
}

async fn replace_is_unconditional_or_compare_and_swap(store: &dyn Store) {
    let v1 = config("r", json!([{ "v": 1 }]));
    let v2 = config("r", json!([{ "v": 2 }]));
    let v3 = config("r", json!([{ "v": 3 }]));
    assert_eq!(store.replace(&v1, None).await.expect("replace"), Replaced::NotFound);
    store.insert(&v1).await.expect("insert");
    assert_eq!(store.replace(&v2, Some(&v1)).await.expect("cas"), Replaced::Done);
    assert_eq!(
        store.replace(&v3, Some(&v1)).await.expect("stale cas"),
        Replaced::Changed
    );
    assert_eq!(store.get(&name("r")).await.expect("get"), Some(v2.clone()));
    assert_eq!(store.replace(&v3, None).await.expect("replace"), Replaced::Done);
    assert_eq!(store.get(&name("r")).await.expect("get"), Some(v3));
    assert_eq!(
        store.replace(&config("zz", json!([])), Some(&v2)).await.expect("cas"),
        Replaced::NotFound
    );
}

async fn delete_reports_whether_it_removed(store: &dyn Store) {
    store.insert(&config("d", json!([]))).await.expect("insert");
    assert!(store.delete(&name("d")).await.expect("delete"));
    assert!(!store.delete(&name("d")).await.expect("delete"));
    assert_eq!(store.get(&name("d")).await.expect("get"), None);
}

async fn search_candidates_include_every_match(store: &dyn Store) {
    store
        .insert(&config("n1", json!([{ "id": 1412, "t": true }, { "id": "x" }])))
        .await
        .expect("insert");
    store
        .insert(&config("n2", json!([{ "id": "1412", "deep": { "k": "v" } }])))
        .await
        .expect("insert");
    store
        .insert(&config("n3", json!([{ "id": 1412.0, "z": null }])))
        .await
        .expect("insert");
    store
        .insert(&config("n4", json!([{ "other": 1412 }])))
        .await
        .expect("insert");
    let run = |q: &str| {
        let query = SearchQuery::parse(Some(q)).expect("valid query");
        async move {
            let candidates = store.search_candidates(&query).await.expect("search");
            query
                .results(candidates)
                .into_iter()
                .map(|h| h.name.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(run("data.id=1412").await, ["n1", "n2", "n3"]);
    assert_eq!(run("data.id=1412&data.t=true").await, ["n1"]);
    assert_eq!(run("data.deep.k=v").await, ["n2"]);
    assert_eq!(run("data.z=null").await, ["n3"]);
    assert_eq!(run("name=n1").await, ["n1", "n1"]);
    assert!(run("name=n4&data.id=1412").await.is_empty());
}

async fn ping_answers(store: &dyn Store) {
    store.ping().await.expect("ping");
}
