//! Import jobs in the store: the durable record of every accepted job, its
//! batches, their plans and the item errors; and the lease that decides
//! which worker holds a job.
//!
//! The store, not the queue, is the record: a job is accepted once its
//! record and every batch are stored, so losing the queue (Redis restarted
//! without its data) loses no job (see [`crate::imports`]).
//!
//! A lease is an owner and a deadline (milliseconds since the epoch, by the
//! app's clock). A job can be claimed when it is `queued`, or `running`
//! with its lease run out (its worker died or stalled). Every write that
//! moves a job on names the batch it expects (`next_batch`), so two workers
//! that both think they hold a job record each batch once.
//!
//! Both stores implement it (`store::sqlite`, `store::mongo`) and pass the
//! same contract tests (`tests/store_contract.rs`).

use super::StoreError;
use crate::domain::import::{Batch, Counts, ItemError, Job, JobState, Outcome};
use async_trait::async_trait;
use std::sync::Arc;

/// A batch as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// The index of its first item in the import.
    pub first: u64,
    /// Its items: a JSON array text, as accepted.
    pub items: String,
    /// The outcomes decided for it, once a worker has.
    pub plan: Option<Vec<Outcome>>,
}

/// A job the queue may have lost: unfinished and held by no live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The job.
    pub id: String,
    /// Its entry in the queue, when one was made.
    pub queue_ref: Option<String>,
}

/// Import job persistence. Every method is bounded in time like
/// [`super::Store`]'s.
#[async_trait]
pub trait JobStore: std::fmt::Debug + Send + Sync + 'static {
    /// Stores a new job and its batches; the job exists only once all are
    /// stored.
    async fn create_job(&self, job: &Job, batches: &[Batch]) -> Result<(), StoreError>;

    /// The job with this id.
    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// Up to `limit` jobs, newest first.
    async fn recent_jobs(&self, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Jobs not yet `done` or `failed` (the queue's bound counts these).
    async fn unfinished_jobs(&self) -> Result<u64, StoreError>;

    /// Up to `limit` item errors of a job with an index greater than
    /// `after`, by index.
    async fn item_errors(&self, id: &str, after: Option<u64>, limit: usize) -> Result<Vec<ItemError>, StoreError>;

    /// Leases a claimable job to `worker` until `lease_until`: the job `id`
    /// when given, else the oldest claimable one. Counts an attempt and
    /// returns the job as it is now.
    async fn claim(
        &self,
        id: Option<&str>,
        worker: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<Option<Job>, StoreError>;

    /// Moves `worker`'s lease on; `false` if it no longer holds the job.
    async fn renew(&self, id: &str, worker: &str, lease_until: u64) -> Result<bool, StoreError>;

    /// Batch `n` of a job.
    async fn batch(&self, id: &str, n: u32) -> Result<StoredBatch, StoreError>;

    /// Stores `plan` as batch `n`'s unless one is stored already; returns
    /// the stored one, and whether this call stored it.
    async fn keep_plan(&self, id: &str, n: u32, plan: &[Outcome]) -> Result<(Vec<Outcome>, bool), StoreError>;

    /// Records batch `n` as written: its errors (idempotent by index), then
    /// its counts and `next_batch = n + 1`, only if `next_batch` is `n`.
    /// `false`: it was recorded already.
    async fn record_batch(&self, id: &str, n: u32, counts: Counts, errors: &[ItemError]) -> Result<bool, StoreError>;

    /// Ends `worker`'s job as `done` or `failed` and drops its batches
    /// (the record and the item errors stay); `false` if it no longer held
    /// it.
    async fn finish(
        &self,
        id: &str,
        worker: &str,
        state: JobState,
        error: Option<&str>,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Gives a held job back at once (on shutdown), without counting the
    /// attempt.
    async fn release(&self, id: &str, worker: &str) -> Result<(), StoreError>;

    /// Unfinished jobs that no live lease holds at `now`.
    async fn orphans(&self, now: u64) -> Result<Vec<Orphan>, StoreError>;

    /// Remembers the queue entry that carries a job.
    async fn set_queue_ref(&self, id: &str, queue_ref: &str) -> Result<(), StoreError>;
}

/// A shared job store handle.
pub type DynJobs = Arc<dyn JobStore>;
