//! Bulk imports: `POST /imports` answers `202 Accepted` at once, workers
//! write the items in batches (docs/API.md, "Imports").
//!
//! Contract:
//!
//! - **The store is the record.** A job is accepted (202) only once its
//!   record and all its batches are in the store (MongoDB, or the embedded
//!   SQLite file) — the same durability as a single write. The queue only
//!   delivers job ids: losing it (Redis restarted without its data) loses
//!   no job, because every worker pool repairs it from the store
//!   ([`worker`]).
//! - **Delivery.** With Redis configured, a stream and a consumer group
//!   ([`redis_queue`]); without it, workers claim the oldest claimable job
//!   from the store directly, woken at once by a submission in the same
//!   process and otherwise polling every `worker.poll_interval`. Either
//!   way the job's lease in the store decides who holds it, and a job whose
//!   worker has shown no progress for `worker.claim_idle` is taken by
//!   another (`XAUTOCLAIM`, or the lease running out).
//! - **Each item once in effect.** A batch's outcomes are decided once and
//!   stored before it is written; counts and item errors come from that
//!   plan and are recorded with a compare-and-set on the job's next batch.
//!   A batch written again after a crash rewrites the same data (an insert
//!   of a name it created is skipped, an upsert writes the same data) and
//!   is counted once. A fresh plan is corrected by what its write saw (a
//!   name another write took meanwhile is a conflict, or in upsert mode an
//!   update); a plan stored by an earlier attempt stands, since the second
//!   write cannot tell another writer's config from its own. So the one
//!   gap: a single write that creates a name after the plan was stored and
//!   before the batch first lands, *and* a crash before the batch is
//!   recorded, counts that item as the plan said (created).
//! - **Bounds.** At most `imports.max_queued` jobs are queued or running
//!   (503 with `Retry-After` past it; a bound checked before storing, so
//!   concurrent submissions can pass it by their number); a body at most
//!   `imports.max_body`; an item at most `server.max_body`.

pub mod redis_queue;
pub mod worker;

use crate::config::ImportSettings;
use crate::domain::import::{Batches, Counts, Job, JobState, Mode};
use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::store::jobs::DynJobs;
use redis_queue::RedisQueue;
use std::sync::Arc;
use tokio::sync::{Notify, Semaphore};

/// How jobs reach workers.
#[derive(Debug)]
pub enum Queue {
    /// Workers claim jobs from the store (no Redis configured).
    Store,
    /// A Redis stream and consumer group.
    Redis(RedisQueue),
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// `imports.max_queued` jobs are queued or running.
    #[error("the import queue is full")]
    Full,
    /// The store could not take the job.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What handlers and workers share about imports; cheap to clone.
#[derive(Debug, Clone)]
pub struct Imports {
    /// The record of every job.
    pub jobs: DynJobs,
    /// The delivery.
    pub queue: Arc<Queue>,
    /// Wakes this process's idle workers when it accepts a job.
    pub wake: Arc<Notify>,
    /// `[imports]`.
    pub settings: ImportSettings,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Bodies being read and split at once in this process
    /// ([`PARSE_SLOTS`]): each costs about twice its size in memory.
    pub parsing: Arc<Semaphore>,
}

/// Import bodies read and split at once per process: at 16 MiB each, a
/// burst of imports costs at most about 64 MiB beside the replica's own
/// memory; the rest wait (the gateway bounds how many a client sends).
pub const PARSE_SLOTS: usize = 2;

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Imports {
    /// Whether the queue has room for one more job now (checked before a
    /// body is read, and again when the job is stored).
    pub async fn has_room(&self) -> Result<bool, StoreError> {
        Ok(self.unfinished().await? < self.settings.max_queued)
    }

    /// Jobs queued or running now, as the depth gauge also shows.
    async fn unfinished(&self) -> Result<u64, StoreError> {
        let unfinished = self.jobs.unfinished_jobs().await?;
        self.metrics.import_depth(unfinished);
        Ok(unfinished)
    }

    /// Stores a new job of `batches` and hands it to the queue. The job is
    /// accepted once stored: a queue that cannot take it now gets it from
    /// the workers' repair.
    pub async fn submit(&self, mode: Mode, batches: Batches, request_id: String) -> Result<Job, SubmitError> {
        let unfinished = self.unfinished().await?;
        if unfinished >= self.settings.max_queued {
            return Err(SubmitError::Full);
        }
        let job = Job {
            id: uuid::Uuid::new_v4().simple().to_string(),
            mode,
            state: JobState::Queued,
            total: batches.total,
            batches: u32::try_from(batches.batches.len()).unwrap_or(u32::MAX),
            next_batch: 0,
            counts: Counts::default(),
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
            request_id,
            attempts: 0,
            error: None,
        };
        self.jobs.create_job(&job, &batches.batches).await?;
        self.metrics.import_job(JobState::Queued.as_str());
        self.metrics.import_depth(unfinished + 1);
        tracing::info!(job = %job.id, request_id = %job.request_id, state = "queued", items = job.total, batches = job.batches, mode = ?job.mode, "import queued");
        match &*self.queue {
            Queue::Store => self.wake.notify_one(),
            Queue::Redis(queue) => match queue.publish(&job.id).await {
                Ok(entry) => {
                    if let Err(error) = self.jobs.set_queue_ref(&job.id, &entry).await {
                        tracing::warn!(job = %job.id, %error, "import queued; its queue entry was not recorded");
                    }
                }
                Err(error) => {
                    tracing::warn!(job = %job.id, %error, "import stored but not queued (Redis); the workers' repair queues it");
                }
            },
        }
        Ok(job)
    }
}
