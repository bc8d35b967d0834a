//! One contract for every [`Store`]: the same cases run against the
//! embedded SQLite store and against MongoDB.

mod common;

use app::domain::import::{Batch, Counts, Job, JobState, Mode};
use app::domain::{Config, ConfigName, SearchQuery, SearchResults};
use app::store::jobs::JobStore;
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
    search_finds_every_match,
    search_pages_by_name_then_index_and_counts_every_match,
    ping_answers,
    numbers_come_back_exactly_as_sent,
    batch_writes_skip_taken_names_and_upsert_replaces,
    the_import_job_store_keeps_a_job_through_its_life,
    a_leased_job_is_claimed_again_only_when_its_lease_runs_out,
);

async fn batch_writes_skip_taken_names_and_upsert_replaces<S: Store>(store: &S) {
    store.insert(&config("b", json!([{ "v": 0 }]))).await.expect("insert");
    let batch = [
        config("a", json!([{ "v": 1 }])),
        config("b", json!([{ "v": 1 }])),
        config("c", json!([])),
    ];
    assert_eq!(store.insert_many(&batch).await.expect("insert_many"), ["b"]);
    assert_eq!(
        store.get(&name("b")).await.expect("get").expect("b").data,
        config("b", json!([{ "v": 0 }])).data
    );
    let names = [name("a"), name("b"), name("x")];
    let refs: Vec<&ConfigName> = names.iter().collect();
    let mut found: Vec<String> = store
        .existing_names(&refs)
        .await
        .expect("existing")
        .into_iter()
        .collect();
    found.sort();
    assert_eq!(found, ["a", "b"]);
    let upserts = [config("b", json!([{ "v": 2 }])), config("d", json!([{ "v": 2 }]))];
    assert_eq!(
        store.upsert_many(&upserts).await.expect("upsert_many"),
        ["d"],
        "only d was created"
    );
    for n in ["b", "d"] {
        assert_eq!(
            store.get(&name(n)).await.expect("get").expect(n).data,
            upserts[0].data,
            "{n}"
        );
    }
    assert_eq!(store.list(None, 10).await.expect("list").len(), 4);
}

async fn the_import_job_store_keeps_a_job_through_its_life<S: JobStore>(store: &S) {
    common::exercise_job_store(store).await;
}

async fn a_leased_job_is_claimed_again_only_when_its_lease_runs_out<S: JobStore>(jobs: &S) {
    let job = |id: &str, created_at: u64| Job {
        id: id.into(),
        mode: Mode::Upsert,
        state: JobState::Queued,
        total: 1,
        batches: 1,
        next_batch: 0,
        counts: Counts::default(),
        created_at,
        started_at: None,
        finished_at: None,
        request_id: "r".into(),
        attempts: 0,
        error: None,
    };
    let batch = || {
        [Batch {
            first: 0,
            items: "[]".into(),
        }]
    };
    jobs.create_job(&job("bbbb", 2), &batch()).await.expect("create");
    jobs.create_job(&job("aaaa", 1), &batch()).await.expect("create");
    // The oldest first; a held job is not claimable while its lease runs.
    let first = jobs.claim(None, "w1", 10, 100).await.expect("claim").expect("a job");
    assert_eq!(first.id, "aaaa");
    let second = jobs.claim(None, "w2", 20, 100).await.expect("claim").expect("a job");
    assert_eq!(second.id, "bbbb");
    assert!(jobs.claim(None, "w3", 50, 150).await.expect("claim").is_none());
    assert!(jobs.claim(Some("aaaa"), "w3", 50, 150).await.expect("claim").is_none());
    // Run out: another worker takes it, the first can no longer renew or finish.
    let taken = jobs
        .claim(Some("aaaa"), "w3", 101, 200)
        .await
        .expect("claim")
        .expect("reclaimed");
    assert_eq!((taken.attempts, taken.started_at), (2, Some(10)));
    assert!(!jobs.renew("aaaa", "w1", 300).await.expect("renew"));
    assert!(
        !jobs
            .finish("aaaa", "w1", JobState::Done, None, 102)
            .await
            .expect("finish")
    );
    // Given back: claimable at once, the attempt not counted.
    jobs.release("aaaa", "w3").await.expect("release");
    let again = jobs
        .claim(None, "w4", 103, 300)
        .await
        .expect("claim")
        .expect("given back");
    assert_eq!((again.id.as_str(), again.attempts), ("aaaa", 2));
    assert!(
        jobs.finish("aaaa", "w4", JobState::Failed, Some("why"), 104)
            .await
            .expect("finish")
    );
    let failed = jobs.job("aaaa").await.expect("job").expect("stored");
    assert_eq!(
        (failed.state, failed.error.as_deref(), failed.finished_at),
        (JobState::Failed, Some("why"), Some(104))
    );
    assert!(
        jobs.claim(Some("aaaa"), "w5", 1_000, 2_000)
            .await
            .expect("claim")
            .is_none(),
        "finished"
    );
    assert_eq!(jobs.unfinished_jobs().await.expect("count"), 1);
    let recent: Vec<String> = jobs
        .recent_jobs(10)
        .await
        .expect("recent")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(recent, ["bbbb", "aaaa"]);
    jobs.set_queue_ref("bbbb", "1-0").await.expect("queue ref");
    let orphans = jobs.orphans(1_000).await.expect("orphans");
    assert_eq!((orphans.len(), orphans[0].queue_ref.as_deref()), (1, Some("1-0")));
}

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

/// Full-precision numbers, as a client's JSON text carries them, come back
/// bit for bit, and a compare-and-swap against what was read matches (a
/// parse that rounded some 17-digit numbers made PATCH on them a 409).
async fn numbers_come_back_exactly_as_sent(store: &dyn Store) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let numbers: Vec<f64> = std::iter::from_fn(|| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        Some(f64::from_bits(state >> 2)) // positive, below 2^1022 by exponent
    })
    .filter(|f| f.is_finite())
    .take(300)
    .collect();
    let text = format!(
        r#"{{"name":"floats","data":[{}]}}"#,
        numbers
            .iter()
            .map(|f| format!(r#"{{"v":{f:?}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let sent: Config = serde_json::from_str(&text).expect("valid config");
    // The numbers of `c` that differ from those sent, as (sent, got).
    let changed = |c: &Config| -> Vec<(f64, f64)> {
        let value = serde_json::to_value(c).expect("value");
        let got = value["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|e| e["v"].as_f64().expect("number"));
        numbers.iter().copied().zip(got).filter(|(a, b)| a != b).collect()
    };
    assert_eq!(changed(&sent), [], "parsed as sent");
    store.insert(&sent).await.expect("insert");
    let stored = store.get(&name("floats")).await.expect("get").expect("there");
    assert_eq!(changed(&stored), [], "stored as sent");
    let next = config("floats", json!([{ "v": 1 }]));
    assert_eq!(store.replace(&next, Some(&stored)).await.expect("cas"), Replaced::Done);
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

async fn search(store: &dyn Store, query: &str) -> SearchResults {
    let query = SearchQuery::parse(Some(query)).expect("valid query");
    store.search(&query).await.expect("search")
}

fn positions(results: &SearchResults) -> Vec<String> {
    results
        .results
        .iter()
        .map(|h| format!("{}:{}", h.name, h.data["i"]))
        .collect()
}

async fn search_finds_every_match(store: &dyn Store) {
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
    let run = |q: &'static str| async move {
        let found = search(store, &format!("{q}&limit=1000")).await;
        assert_eq!(found.total as usize, found.results.len(), "{q}");
        assert_eq!(found.next, None, "{q}");
        found
            .results
            .into_iter()
            .map(|h| h.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(run("data.id=1412").await, ["n1", "n2", "n3"]);
    assert_eq!(run("data.id=1412&data.t=true").await, ["n1"]);
    assert_eq!(run("data.deep.k=v").await, ["n2"]);
    assert_eq!(run("data.z=null").await, ["n3"]);
    assert_eq!(run("name=n1").await, ["n1", "n1"]);
    assert!(run("name=n4&data.id=1412").await.is_empty());
    // Keys with characters SQLite's JSON paths treat specially.
    store
        .insert(&config("n5", json!([{ "a\\b": "v", "q\"k": "w", "u\\u0041": 1 }])))
        .await
        .expect("insert");
    assert_eq!(run("data.a%5Cb=v").await, ["n5"]);
    assert_eq!(run("data.q%22k=w").await, ["n5"]);
    assert_eq!(run("data.u%5Cu0041=1").await, ["n5"]);
}

async fn search_pages_by_name_then_index_and_counts_every_match(store: &dyn Store) {
    // Inserted out of order; elements 0.. carry their index as "i".
    let elements = |n: usize, hit: &dyn Fn(usize) -> bool| -> serde_json::Value {
        json!(
            (0..n)
                .map(|i| json!({ "i": i, "k": if hit(i) { "v" } else { "w" } }))
                .collect::<Vec<_>>()
        )
    };
    store
        .insert(&config("c", elements(3, &|_| true)))
        .await
        .expect("insert");
    store
        .insert(&config("a", elements(4, &|i| i != 1)))
        .await
        .expect("insert");
    store
        .insert(&config("b", elements(2, &|_| false)))
        .await
        .expect("insert");
    store
        .insert(&config("B", elements(1, &|_| true)))
        .await
        .expect("insert");
    let all = ["B:0", "a:0", "a:2", "a:3", "c:0", "c:1", "c:2"];

    let mut seen = Vec::new();
    let mut query = "data.k=v&limit=3".to_string();
    loop {
        let page = search(store, &query).await;
        assert_eq!(page.total, 7, "the total counts every page's matches: {query}");
        assert!(page.results.len() <= 3);
        seen.extend(positions(&page));
        match page.next {
            Some(next) => query = format!("data.k=v&limit=3&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, all);
    // A cursor inside a config's data resumes at the next element.
    let page = search(store, "data.k=v&limit=2&after=a.0").await;
    assert_eq!(positions(&page), ["a:2", "a:3"]);
    assert_eq!(page.next.map(|c| c.to_string()).as_deref(), Some("a.3"));
    // A cursor past the last match: an empty last page, the same total.
    let page = search(store, "data.k=v&after=c.2").await;
    assert_eq!((page.total, page.results.len(), page.next), (7, 0, None));
    // name narrows the count too.
    let page = search(store, "name=a&data.k=v&limit=1").await;
    assert_eq!((page.total, positions(&page)), (3, vec!["a:0".to_string()]));
}

async fn ping_answers(store: &dyn Store) {
    store.ping().await.expect("ping");
}
