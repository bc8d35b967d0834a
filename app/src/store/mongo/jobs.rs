//! [`JobStore`] on MongoDB: collections `imports` (one document per job,
//! `_id` = job id), `import_batches` (`_id` = `JOB:N`) and `import_errors`
//! (`_id` = `JOB:INDEX`, so recording a batch twice stores its errors once),
//! in the configs' database. Every change to a job is one conditional
//! single-document update, which MongoDB applies atomically.

use super::{MongoStore, bounded, map_error};
use crate::domain::import::{Batch, Counts, ItemError, Job, JobState, Outcome};
use crate::store::StoreError;
use crate::store::jobs::{JobStore, Orphan, StoredBatch};
use async_trait::async_trait;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::ReturnDocument;
use mongodb::{Collection, IndexModel};
use std::future::IntoFuture;
use std::sync::atomic::Ordering;

fn to_doc<T: serde::Serialize>(value: &T) -> Result<Document, StoreError> {
    bson::to_document(value).map_err(|e| StoreError::Internal(e.to_string()))
}

fn from_doc<T: serde::de::DeserializeOwned>(doc: Document) -> Result<T, StoreError> {
    bson::from_document(doc).map_err(|e| StoreError::Internal(format!("stored import data: {e}")))
}

fn millis(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Claimable at `now`: queued, or running with its lease run out.
fn claimable(now: u64) -> Document {
    doc! { "$or": [
        { "state": "queued" },
        { "state": "running", "lease_until": { "$lt": millis(now) } },
    ] }
}

impl MongoStore {
    fn collection(&self, name: &str) -> Collection<Document> {
        self.client.database(&self.configs.namespace().db).collection(name)
    }

    fn jobs(&self) -> Collection<Document> {
        self.collection("imports")
    }

    fn batches(&self) -> Collection<Document> {
        self.collection("import_batches")
    }

    fn errors(&self) -> Collection<Document> {
        self.collection("import_errors")
    }

    /// The indexes the job queries use (claims by state and age, listings
    /// by age, error pages by index).
    pub(super) async fn ensure_job_indexes(&self) -> Result<(), StoreError> {
        if self.job_indexes_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let model = |keys: Document| IndexModel::builder().keys(keys).build();
        self.run(
            self.jobs()
                .create_indexes([
                    model(doc! { "state": 1, "created_at": 1 }),
                    model(doc! { "created_at": -1, "_id": -1 }),
                ])
                .max_time(self.timeout),
        )
        .await?;
        self.run(
            self.errors()
                .create_index(model(doc! { "job": 1, "index": 1 }))
                .max_time(self.timeout),
        )
        .await?;
        self.job_indexes_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Inserts documents unordered; ids already present are fine.
    async fn insert_idempotent(&self, to: Collection<Document>, docs: Vec<Document>) -> Result<(), StoreError> {
        if docs.is_empty() {
            return Ok(());
        }
        match bounded(to.insert_many(docs).ordered(false).into_future(), self.timeout).await? {
            Ok(_) => Ok(()),
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(failure)
                    if failure.write_concern_error.is_none()
                        && failure
                            .write_errors
                            .as_deref()
                            .unwrap_or_default()
                            .iter()
                            .all(|w| w.code == 11000) =>
                {
                    Ok(())
                }
                _ => Err(map_error(e)),
            },
        }
    }
}

#[async_trait]
impl JobStore for MongoStore {
    async fn create_job(&self, job: &Job, batches: &[Batch]) -> Result<(), StoreError> {
        self.ensure_job_indexes().await?;
        let docs = batches
            .iter()
            .enumerate()
            .map(|(n, b)| {
                doc! {
                    "_id": format!("{}:{n}", job.id),
                    "job": &job.id,
                    "n": n as i64,
                    "first": millis(b.first),
                    "items": &b.items,
                }
            })
            .collect();
        self.insert_idempotent(self.batches(), docs).await?;
        let mut record = to_doc(job)?;
        record.insert("_id", &job.id);
        record.insert("lease_until", 0_i64);
        // Absent until a claim sets it with `$min`.
        record.remove("started_at");
        self.run(self.jobs().insert_one(record)).await.map(drop)
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let found = self
            .run(self.jobs().find_one(doc! { "_id": id }).max_time(self.timeout))
            .await?;
        found.map(from_doc).transpose()
    }

    async fn recent_jobs(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let docs = self
            .find_all(
                &self.jobs(),
                Document::new(),
                Some(doc! { "created_at": -1, "_id": -1 }),
                Some(limit),
                Document::new(),
            )
            .await?;
        docs.into_iter().map(from_doc).collect()
    }

    async fn unfinished_jobs(&self) -> Result<u64, StoreError> {
        self.run(
            self.jobs()
                .count_documents(doc! { "state": { "$in": ["queued", "running"] } })
                .max_time(self.timeout),
        )
        .await
    }

    async fn item_errors(&self, id: &str, after: Option<u64>, limit: usize) -> Result<Vec<ItemError>, StoreError> {
        let after = after.map_or(-1, millis);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let docs = self
            .find_all(
                &self.errors(),
                doc! { "job": id, "index": { "$gt": after } },
                Some(doc! { "index": 1 }),
                Some(limit),
                doc! { "_id": 0, "job": 0 },
            )
            .await?;
        docs.into_iter().map(from_doc).collect()
    }

    async fn claim(
        &self,
        id: Option<&str>,
        worker: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<Option<Job>, StoreError> {
        let mut filter = claimable(now);
        if let Some(id) = id {
            filter.insert("_id", id);
        }
        let update = doc! {
            "$set": { "state": "running", "owner": worker, "lease_until": millis(lease_until) },
            "$inc": { "attempts": 1 },
            "$min": { "started_at": millis(now) },
        };
        let claimed = self
            .run(
                self.jobs()
                    .find_one_and_update(filter, update)
                    .sort(doc! { "created_at": 1, "_id": 1 })
                    .return_document(ReturnDocument::After)
                    .max_time(self.timeout),
            )
            .await?;
        claimed.map(from_doc).transpose()
    }

    async fn renew(&self, id: &str, worker: &str, lease_until: u64) -> Result<bool, StoreError> {
        let result = self
            .run(self.jobs().update_one(
                doc! { "_id": id, "owner": worker, "state": "running" },
                doc! { "$set": { "lease_until": millis(lease_until) } },
            ))
            .await?;
        Ok(result.matched_count == 1)
    }

    async fn batch(&self, id: &str, n: u32) -> Result<StoredBatch, StoreError> {
        let found = self
            .run(
                self.batches()
                    .find_one(doc! { "_id": format!("{id}:{n}") })
                    .max_time(self.timeout),
            )
            .await?
            .ok_or_else(|| StoreError::Internal(format!("import {id} has no batch {n}")))?;
        let first = found
            .get("first")
            .and_then(|b| match b {
                Bson::Int32(v) => Some(i64::from(*v)),
                Bson::Int64(v) => Some(*v),
                _ => None,
            })
            .ok_or_else(|| StoreError::Internal(format!("import {id} batch {n}: no first index")))?;
        let items = found
            .get_str("items")
            .map_err(|e| StoreError::Internal(format!("import {id} batch {n}: {e}")))?
            .to_string();
        let plan = match found.get("plan") {
            Some(plan) => Some(
                bson::from_bson::<Vec<Outcome>>(plan.clone())
                    .map_err(|e| StoreError::Internal(format!("import {id} batch {n} plan: {e}")))?,
            ),
            None => None,
        };
        Ok(StoredBatch {
            first: first.max(0).unsigned_abs(),
            items,
            plan,
        })
    }

    async fn keep_plan(&self, id: &str, n: u32, plan: &[Outcome]) -> Result<(Vec<Outcome>, bool), StoreError> {
        let key = format!("{id}:{n}");
        let plan = bson::to_bson(plan).map_err(|e| StoreError::Internal(e.to_string()))?;
        let stored = self
            .run(self.batches().update_one(
                doc! { "_id": &key, "plan": { "$exists": false } },
                doc! { "$set": { "plan": plan } },
            ))
            .await?;
        let kept = self
            .batch(id, n)
            .await?
            .plan
            .ok_or_else(|| StoreError::Internal(format!("import {id} batch {n}: plan not stored")))?;
        Ok((kept, stored.modified_count == 1))
    }

    async fn record_batch(&self, id: &str, n: u32, counts: Counts, errors: &[ItemError]) -> Result<bool, StoreError> {
        let docs = errors
            .iter()
            .map(|e| {
                let mut d = to_doc(e)?;
                d.insert("_id", format!("{id}:{}", e.index));
                d.insert("job", id);
                Ok(d)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.insert_idempotent(self.errors(), docs).await?;
        let result = self
            .run(self.jobs().update_one(
                doc! { "_id": id, "next_batch": i64::from(n) },
                doc! { "$inc": {
                    "next_batch": 1,
                    "counts.created": millis(counts.created),
                    "counts.updated": millis(counts.updated),
                    "counts.invalid": millis(counts.invalid),
                    "counts.conflicts": millis(counts.conflicts),
                } },
            ))
            .await?;
        Ok(result.modified_count == 1)
    }

    async fn finish(
        &self,
        id: &str,
        worker: &str,
        state: JobState,
        error: Option<&str>,
        now: u64,
    ) -> Result<bool, StoreError> {
        let result = self
            .run(self.jobs().update_one(
                doc! { "_id": id, "owner": worker, "state": "running" },
                doc! {
                    "$set": { "state": state.as_str(), "error": error, "finished_at": millis(now), "lease_until": 0_i64 },
                    "$unset": { "owner": "" },
                },
            ))
            .await?;
        if result.modified_count == 1 {
            // The items are written; only the record and the errors stay.
            // Best effort: left-over batches of a finished job are never read.
            if let Err(error) = self.run(self.batches().delete_many(doc! { "job": id })).await {
                tracing::warn!(job = id, %error, "finished import's batches not dropped");
            }
        }
        Ok(result.modified_count == 1)
    }

    async fn release(&self, id: &str, worker: &str) -> Result<(), StoreError> {
        self.run(self.jobs().update_one(
            doc! { "_id": id, "owner": worker, "state": "running" },
            doc! { "$set": { "lease_until": 0_i64 }, "$unset": { "owner": "" }, "$inc": { "attempts": -1 } },
        ))
        .await
        .map(drop)
    }

    async fn orphans(&self, now: u64) -> Result<Vec<Orphan>, StoreError> {
        let docs = self
            .find_all(
                &self.jobs(),
                claimable(now),
                Some(doc! { "created_at": 1 }),
                None,
                doc! { "_id": 1, "queue_ref": 1 },
            )
            .await?;
        Ok(docs
            .iter()
            .filter_map(|d| {
                Some(Orphan {
                    id: d.get_str("_id").ok()?.to_string(),
                    queue_ref: d.get_str("queue_ref").ok().map(str::to_string),
                })
            })
            .collect())
    }

    async fn set_queue_ref(&self, id: &str, queue_ref: &str) -> Result<(), StoreError> {
        self.run(
            self.jobs()
                .update_one(doc! { "_id": id }, doc! { "$set": { "queue_ref": queue_ref } }),
        )
        .await
        .map(drop)
    }
}
