//! MongoDB store: one collection of `{name, data}` documents with a unique
//! index on `name`.
//!
//! Every operation is bounded by the configured timeout, and server
//! selection by the same, so an outage is a prompt [`StoreError::Unavailable`]
//! (a 503) rather than the driver's default 30 s wait. The client-side
//! bound only abandons an operation; every command that accepts it also
//! carries the same bound as `maxTimeMS`, so MongoDB itself stops work
//! nobody waits for any more (a slow search would otherwise keep scanning
//! after its 503). The driver offers `maxTimeMS` on reads, counts,
//! `findAndModify` and index builds, not on `insert`: writes by name
//! therefore go through `findAndModify`, and inserts (one index probe and
//! one document) rely on the client-side bound alone. The unique index is
//! created at start-up; if MongoDB is down then, it is created before the
//! first write once MongoDB answers, so no duplicate can ever slip in.

mod jobs;

use super::{Replaced, Store, StoreError};
use crate::domain::{Config, ConfigName, PageCollector, SearchQuery, SearchResults};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, CreateIndexOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, IndexModel};
use std::collections::HashSet;
use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// MongoDB-backed [`Store`].
#[derive(Debug)]
pub struct MongoStore {
    client: Client,
    configs: Collection<Config>,
    timeout: Duration,
    index_ready: AtomicBool,
    job_indexes_ready: AtomicBool,
}

impl MongoStore {
    /// Builds the client (no I/O for plain `mongodb://` URIs) and tries to
    /// create the unique index, logging a warning if MongoDB is not there yet.
    pub async fn connect(uri: &str, database: &str, collection: &str, timeout: Duration) -> Result<Self, StoreError> {
        let options = bounded(ClientOptions::parse(uri).into_future(), timeout)
            .await?
            .map_err(|e| StoreError::Internal(format!("invalid MongoDB URI: {e}")))?;
        Self::connect_with_options(options, database, collection, timeout).await
    }

    /// [`MongoStore::connect`] from parsed client options, which may carry
    /// more than a URI can (tests attach a command event handler to see
    /// what is sent). The app name and the timeouts are set here.
    pub async fn connect_with_options(
        mut options: ClientOptions,
        database: &str,
        collection: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        options.app_name = Some("app".into());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        let client = Client::with_options(options).map_err(|e| StoreError::Internal(e.to_string()))?;
        let configs = client.database(database).collection::<Config>(collection);
        let store = Self {
            client,
            configs,
            timeout,
            index_ready: AtomicBool::new(false),
            job_indexes_ready: AtomicBool::new(false),
        };
        if let Err(error) = store.ensure_job_indexes().await {
            tracing::warn!(%error, "MongoDB import indexes not created at start-up; created before the first import");
        }
        if let Err(error) = store.ensure_index().await {
            tracing::warn!(%error, "MongoDB not reachable at start-up; the unique index will be created on first use");
        }
        Ok(store)
    }

    /// Creates the unique index on `name` unless done already.
    async fn ensure_index(&self) -> Result<(), StoreError> {
        if self.index_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let model = IndexModel::builder()
            .keys(doc! { "name": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("name_unique".to_string())
                    .build(),
            )
            .build();
        let bound = CreateIndexOptions::builder().max_time(self.timeout).build();
        self.run(self.configs.create_index(model).with_options(bound)).await?;
        self.index_ready.store(true, Ordering::Release);
        tracing::info!("MongoDB unique index on name is in place");
        Ok(())
    }

    /// Closes the connection pool.
    pub async fn shutdown(&self) {
        self.client.clone().shutdown().await;
    }

    /// The collection as plain documents, for writes that only need to
    /// know whether a document matched (their answer is just its `_id`).
    fn raw(&self) -> Collection<Document> {
        self.configs.clone_with_type()
    }

    async fn run<T>(&self, op: impl IntoFuture<Output = mongodb::error::Result<T>>) -> Result<T, StoreError> {
        bounded(op.into_future(), self.timeout).await?.map_err(map_error)
    }

    /// The documents of `collection` that `filter` matches, in `sort`
    /// order, at most `limit` (all when `None`), with `projection` (an
    /// empty one: whole documents): one bounded find (client-side and
    /// `maxTimeMS`), collected.
    async fn find_all(
        &self,
        collection: &Collection<Document>,
        filter: Document,
        sort: Option<Document>,
        limit: Option<i64>,
        projection: Document,
    ) -> Result<Vec<Document>, StoreError> {
        self.run(async {
            let mut find = collection
                .find(filter)
                .limit(limit.unwrap_or(0))
                .projection(projection)
                .max_time(self.timeout);
            if let Some(sort) = sort {
                find = find.sort(sort);
            }
            find.await?.try_collect().await
        })
        .await
    }
}

async fn bounded<T>(op: impl Future<Output = T>, timeout: Duration) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, op)
        .await
        .map_err(|_| StoreError::Unavailable(format!("MongoDB did not answer within {timeout:?}")))
}

fn map_error(e: mongodb::error::Error) -> StoreError {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000 => StoreError::Conflict,
        ErrorKind::BsonDeserialization(_) | ErrorKind::BsonSerialization(_) | ErrorKind::InvalidArgument { .. } => {
            StoreError::Internal(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// `maxTimeMS` for a command written by hand.
fn max_time_ms(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

fn to_bson<T: serde::Serialize>(value: &T) -> Result<Bson, StoreError> {
    mongodb::bson::to_bson(value).map_err(|e| StoreError::Internal(e.to_string()))
}

/// The values a query text may match (docs/API.md typed matching): the string,
/// and the number, boolean or null it spells.
fn candidates_for(text: &str) -> Vec<Bson> {
    let mut values = vec![Bson::String(text.to_string())];
    if let Ok(i) = text.parse::<i64>() {
        values.push(Bson::Int64(i));
    } else if let Ok(f) = text.parse::<f64>() {
        if f.is_finite() {
            values.push(Bson::Double(f));
        }
    }
    match text {
        "true" => values.push(Bson::Boolean(true)),
        "false" => values.push(Bson::Boolean(false)),
        "null" => values.push(Bson::Null),
        _ => {}
    }
    values
}

#[async_trait]
impl Store for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let ping = doc! { "ping": 1, "maxTimeMS": max_time_ms(self.timeout) };
        self.run(self.client.database("admin").run_command(ping)).await?;
        self.ensure_index().await
    }

    async fn list(&self, after: Option<&ConfigName>, limit: usize) -> Result<Vec<Config>, StoreError> {
        let filter = after.map_or_else(Document::new, |a| doc! { "name": { "$gt": a.as_str() } });
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async {
            self.configs
                .find(filter)
                .sort(doc! { "name": 1 })
                .limit(limit)
                .projection(doc! { "_id": 0 })
                .max_time(self.timeout)
                .await?
                .try_collect()
                .await
        })
        .await
    }

    async fn get(&self, name: &ConfigName) -> Result<Option<Config>, StoreError> {
        self.run(
            self.configs
                .find_one(doc! { "name": name.as_str() })
                .projection(doc! { "_id": 0 })
                .max_time(self.timeout),
        )
        .await
    }

    async fn insert(&self, config: &Config) -> Result<(), StoreError> {
        self.ensure_index().await?;
        self.run(self.configs.insert_one(config)).await.map(drop)
    }

    async fn replace(&self, config: &Config, expected: Option<&Config>) -> Result<Replaced, StoreError> {
        let mut filter = doc! { "name": config.name.as_str() };
        if let Some(old) = expected {
            filter.insert("data", to_bson(&old.data)?);
        }
        let update = doc! { "$set": { "data": to_bson(&config.data)? } };
        let matched = self
            .run(
                self.raw()
                    .find_one_and_update(filter, update)
                    .projection(doc! { "_id": 1 })
                    .return_document(ReturnDocument::Before)
                    .max_time(self.timeout),
            )
            .await?;
        if matched.is_some() {
            return Ok(Replaced::Done);
        }
        if expected.is_none() {
            return Ok(Replaced::NotFound);
        }
        let exists = self
            .run(
                self.configs
                    .count_documents(doc! { "name": config.name.as_str() })
                    .limit(1)
                    .max_time(self.timeout),
            )
            .await?;
        Ok(if exists == 1 {
            Replaced::Changed
        } else {
            Replaced::NotFound
        })
    }

    async fn delete(&self, name: &ConfigName) -> Result<bool, StoreError> {
        let deleted = self
            .run(
                self.raw()
                    .find_one_and_delete(doc! { "name": name.as_str() })
                    .projection(doc! { "_id": 1 })
                    .max_time(self.timeout),
            )
            .await?;
        Ok(deleted.is_some())
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults, StoreError> {
        let filter = search_filter(query);
        self.run(async {
            // One batch at a time (at most 16 MiB, MongoDB's bound), never
            // every candidate: the collector keeps only the page.
            let mut cursor = self
                .configs
                .find(filter)
                .sort(doc! { "name": 1 })
                .projection(doc! { "_id": 0 })
                .max_time(self.timeout)
                .await?;
            let mut page = PageCollector::new(query);
            while let Some(config) = cursor.try_next().await? {
                page.offer(config);
            }
            Ok(page.finish())
        })
        .await
    }

    async fn existing_names(&self, names: &[&ConfigName]) -> Result<HashSet<String>, StoreError> {
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        let found = self
            .find_all(
                &self.raw(),
                doc! { "name": { "$in": names } },
                None,
                None,
                doc! { "_id": 0, "name": 1 },
            )
            .await?;
        Ok(found
            .iter()
            .filter_map(|d| d.get_str("name").ok().map(str::to_string))
            .collect())
    }

    async fn insert_many(&self, configs: &[Config]) -> Result<Vec<String>, StoreError> {
        if configs.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_index().await?;
        let inserted = bounded(
            self.configs.insert_many(configs).ordered(false).into_future(),
            self.timeout,
        )
        .await?;
        let Err(error) = inserted else {
            return Ok(Vec::new());
        };
        // Unordered: every other document is in; report the taken names.
        if let ErrorKind::InsertMany(failure) = error.kind.as_ref() {
            let write_errors = failure.write_errors.as_deref().unwrap_or_default();
            if failure.write_concern_error.is_none() && write_errors.iter().all(|w| w.code == 11000) {
                return Ok(write_errors
                    .iter()
                    .filter_map(|w| configs.get(w.index))
                    .map(|c| c.name.as_str().to_string())
                    .collect());
            }
        }
        Err(map_error(error))
    }

    async fn upsert_many(&self, configs: &[Config]) -> Result<Vec<String>, StoreError> {
        if configs.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_index().await?;
        let updates = configs
            .iter()
            .map(|c| {
                Ok(doc! {
                    "q": { "name": c.name.as_str() },
                    "u": { "$set": { "data": to_bson(&c.data)? } },
                    "upsert": true,
                })
            })
            .collect::<Result<Vec<Document>, StoreError>>()?;
        let command = doc! {
            "update": self.configs.name(),
            "updates": updates,
            "ordered": false,
            "maxTimeMS": max_time_ms(self.timeout),
        };
        let reply = self
            .run(self.client.database(&self.configs.namespace().db).run_command(command))
            .await?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            if !errors.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "{} of {} upserts failed, first: {:?}",
                    errors.len(),
                    configs.len(),
                    errors[0]
                )));
            }
        }
        // `upserted` lists the statements that inserted, by index.
        let upserted = reply.get_array("upserted").map(Vec::as_slice).unwrap_or_default();
        Ok(upserted
            .iter()
            .filter_map(|u| match u.as_document()?.get("index")? {
                Bson::Int32(i) => usize::try_from(*i).ok(),
                Bson::Int64(i) => usize::try_from(*i).ok(),
                _ => None,
            })
            .filter_map(|i| configs.get(i))
            .map(|c| c.name.as_str().to_string())
            .collect())
    }
}

/// Narrows by name and by `$elemMatch` on the conditions; typed matching
/// is done again, exactly, by [`PageCollector`].
fn search_filter(query: &SearchQuery) -> Document {
    let mut filter = Document::new();
    if let Some(name) = &query.name {
        filter.insert("name", name.as_str());
    }
    if !query.conditions.is_empty() {
        // Keys are validated (no '.', no leading '$'), so the joined
        // path addresses exactly the nested keys of the condition.
        let mut each = Document::new();
        for cond in &query.conditions {
            each.insert(cond.path.join("."), doc! { "$in": candidates_for(&cond.value) });
        }
        filter.insert("data", doc! { "$elemMatch": each });
    }
    filter
}
