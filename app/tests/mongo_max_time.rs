//! Every MongoDB command that can carry `maxTimeMS` carries the store
//! timeout, so the server itself stops work the app stopped waiting for.
//! Seen through the driver's command monitoring on the real server, which
//! must answer every one of them.

mod common;

use app::domain::{Config, ConfigName, SearchQuery};
use app::store::Store;
use app::store::mongo::MongoStore;
use mongodb::bson::Bson;
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use mongodb::options::ClientOptions;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Commands the driver can bound with `maxTimeMS`, and that the store uses.
const BOUNDED: [&str; 6] = ["find", "aggregate", "count", "findAndModify", "createIndexes", "ping"];

/// What the monitor saw: per request id, the command's name and its
/// `maxTimeMS` (if any), and whether it succeeded.
#[derive(Debug, Default)]
struct Seen {
    started: BTreeMap<i32, (String, Option<i64>)>,
    succeeded: Vec<i32>,
    failed: Vec<(String, String)>,
}

fn max_time_ms(value: Option<&Bson>) -> Option<i64> {
    match value? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

async fn monitored_store(timeout: Duration) -> (MongoStore, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut options = ClientOptions::parse(common::mongo_uri()).await.expect("URI");
    let record = seen.clone();
    options.command_event_handler = Some(EventHandler::callback(move |event: CommandEvent| {
        let mut seen = record.lock().expect("lock");
        match event {
            CommandEvent::Started(e) => {
                let max = max_time_ms(e.command.get("maxTimeMS"));
                seen.started.insert(e.request_id, (e.command_name, max));
            }
            CommandEvent::Succeeded(e) => seen.succeeded.push(e.request_id),
            CommandEvent::Failed(e) => seen.failed.push((e.command_name, e.failure.to_string())),
            _ => {}
        }
    }));
    let store = MongoStore::connect_with_options(options, &common::unique("maxtime"), "configs", timeout)
        .await
        .expect("connect");
    (store, seen)
}

fn config(name: &str, data: serde_json::Value) -> Config {
    serde_json::from_value(json!({ "name": name, "data": data })).expect("valid")
}

#[tokio::test]
async fn every_read_count_and_find_and_modify_carries_the_store_timeout_as_max_time_ms() {
    let timeout = Duration::from_millis(2345);
    let (store, seen) = monitored_store(timeout).await;
    let a = ConfigName::parse("a").expect("name");
    store.ping().await.expect("ping");
    store.insert(&config("a", json!([{ "k": 1 }]))).await.expect("insert");
    store.get(&a).await.expect("get");
    store.list(None, 10).await.expect("list");
    let v2 = config("a", json!([{ "k": 2 }]));
    store.replace(&v2, None).await.expect("replace");
    // A lost compare-and-swap counts the documents to tell Changed from NotFound.
    let stale = config("a", json!([{ "k": 1 }]));
    store.replace(&config("a", json!([])), Some(&stale)).await.expect("cas");
    let query = SearchQuery::parse(Some("data.k=2")).expect("query");
    assert_eq!(store.search(&query).await.expect("search").total, 1);
    assert!(store.delete(&a).await.expect("delete"));
    // The batch writes and the import job store, as a worker uses them.
    let batch = [config("b", json!([])), config("c", json!([]))];
    assert!(store.insert_many(&batch).await.expect("insert_many").is_empty());
    store.upsert_many(&batch).await.expect("upsert_many");
    let names: Vec<&ConfigName> = batch.iter().map(|c| &c.name).collect();
    assert_eq!(store.existing_names(&names).await.expect("existing").len(), 2);
    common::exercise_job_store(&store).await;

    let seen = seen.lock().expect("lock");
    assert!(seen.failed.is_empty(), "the server refused: {:?}", seen.failed);
    let mut names = std::collections::BTreeSet::new();
    for (id, (name, max)) in &seen.started {
        if !BOUNDED.contains(&name.as_str()) {
            continue;
        }
        names.insert(name.as_str());
        assert_eq!(
            *max,
            Some(2345),
            "{name} was sent without maxTimeMS = the store timeout"
        );
        assert!(seen.succeeded.contains(id), "{name} got no answer");
    }
    for expected in ["find", "aggregate", "findAndModify", "createIndexes", "ping"] {
        assert!(names.contains(expected), "{expected} never sent: {:?}", seen.started);
    }
}
