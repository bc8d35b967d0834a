//! Import workers: `worker.concurrency` jobs at once per process (inside
//! every app replica, or in `app worker` processes of their own).
//!
//! A worker takes a job ([`super::Queue`]), then for each batch from the
//! job's `next_batch`: moves its lease on (and, on Redis, its entry's idle
//! time), decides the batch's outcomes once (stored before any write),
//! writes the batch in one bulk write, invalidates the cached names, and
//! records the batch. A store fault retries the batch after
//! `worker.poll_interval`, holding the job; any other fault fails the job.
//! On shutdown a worker stops at a batch boundary and gives its job back at
//! once. Every state change is one log line with the job id and the id of
//! the request that created the job.
//!
//! Each pool also repairs the queue every half `claim_idle`: it reads the
//! queue depth from the store and, on Redis, puts back every unfinished job
//! that no live lease holds and whose stream entry is gone.

use super::redis_queue::{Entry, RedisQueue};
use super::{Imports, Queue, now_ms};
use crate::cache::Cache;
use crate::config::WorkerSettings;
use crate::domain::ConfigName;
use crate::domain::import::{self, Counts, Job, JobState};
use crate::store::{DynStore, StoreError};
use shared::shutdown::{CancellationToken, TaskTracker};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

/// A consumer of the group idle this long with nothing pending belongs to
/// a process that is gone.
const FORGET_CONSUMERS_AFTER: Duration = Duration::from_secs(3600);

/// One process's workers.
#[derive(Debug)]
pub struct Workers {
    /// The configs store the items go to.
    pub store: DynStore,
    /// The read cache whose entries a write drops.
    pub cache: Option<Cache>,
    /// Jobs and their queue.
    pub imports: Imports,
    /// `[worker]`.
    pub settings: WorkerSettings,
    /// This process's name in leases and in the consumer group.
    pub id: String,
    /// Whether the last look for work failed (so an outage is logged once
    /// when it begins and once when it ends, not every poll).
    pub queue_down: AtomicBool,
}

/// A job taken by a worker.
#[derive(Debug)]
struct Delivery {
    job: Job,
    /// The lease's owner: this process and this claim, so that two tasks
    /// of one process never both hold a job (a lease that ran out and was
    /// claimed again by another slot here is lost to the first).
    owner: String,
    /// The stream entry that carried it (Redis).
    entry: Option<String>,
}

/// How a batch went.
enum Step {
    Next,
    Retry,
    LostLease,
    Fail(String),
}

impl Workers {
    /// Runs until `stop` fires, then waits for every job in hand to reach a
    /// batch boundary and be given back.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tracing::info!(worker = %self.id, concurrency = self.settings.concurrency, "import workers started");
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let tasks = TaskTracker::new();
        tasks.spawn(self.clone().repair(stop.clone()));
        let mut last_autoclaim: Option<Instant> = None;
        loop {
            let permit = tokio::select! {
                () = stop.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            if stop.is_cancelled() {
                break;
            }
            // Not cancelled mid-way: a job claimed is always worked or
            // given back (`work` gives it back at once when stopping).
            if let Some(delivery) = self.next(&mut last_autoclaim, &stop).await {
                let (me, stop) = (self.clone(), stop.clone());
                let span = tracing::info_span!("import", job = %delivery.job.id, request_id = %delivery.job.request_id);
                tasks.spawn(
                    async move {
                        me.work(delivery, &stop).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
        tasks.close();
        tasks.wait().await;
        if let Queue::Redis(queue) = &*self.imports.queue {
            queue.leave().await;
        }
        tracing::info!(worker = %self.id, "import workers stopped");
    }

    /// A fresh lease owner for one claim.
    fn owner(&self) -> String {
        format!("{}/{}", self.id, &uuid::Uuid::new_v4().simple().to_string()[..8])
    }

    fn lease(&self) -> (u64, u64) {
        let now = now_ms();
        let idle = u64::try_from(self.settings.claim_idle.as_millis()).unwrap_or(u64::MAX);
        (now, now.saturating_add(idle))
    }

    /// Logs the queue going down or coming back, once each.
    fn queue_health(&self, failure: Option<&dyn std::fmt::Display>) {
        match failure {
            Some(error) => {
                if !self.queue_down.swap(true, Ordering::AcqRel) {
                    tracing::warn!(%error, "import queue: cannot look for work; retrying every poll_interval");
                }
            }
            None => {
                if self.queue_down.swap(false, Ordering::AcqRel) {
                    tracing::info!("import queue: reachable again");
                }
            }
        }
    }

    /// The next job, or `None` after waiting a while for one (at most
    /// `poll_interval`, less when `stop` fires).
    async fn next(&self, last_autoclaim: &mut Option<Instant>, stop: &CancellationToken) -> Option<Delivery> {
        match &*self.imports.queue {
            Queue::Store => {
                let (now, until) = self.lease();
                let owner = self.owner();
                match self.imports.jobs.claim(None, &owner, now, until).await {
                    Ok(Some(job)) => {
                        self.queue_health(None);
                        return Some(Delivery {
                            job,
                            owner,
                            entry: None,
                        });
                    }
                    Ok(None) => self.queue_health(None),
                    Err(error) => self.queue_health(Some(&error)),
                }
                tokio::select! {
                    () = self.imports.wake.notified() => {}
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = stop.cancelled() => {}
                }
                None
            }
            Queue::Redis(queue) => {
                let due = last_autoclaim.is_none_or(|at| at.elapsed() >= self.settings.claim_idle / 2);
                let mut read = Ok(None);
                if due {
                    *last_autoclaim = Some(Instant::now());
                    read = queue.autoclaim(self.settings.claim_idle).await;
                }
                if matches!(read, Ok(None)) {
                    read = queue.read().await;
                }
                match read {
                    Ok(Some(entry)) => {
                        self.queue_health(None);
                        self.take(queue, entry).await
                    }
                    Ok(None) => {
                        self.queue_health(None);
                        None
                    }
                    Err(error) => {
                        self.queue_health(Some(&error));
                        tokio::select! {
                            () = tokio::time::sleep(self.settings.poll_interval) => {}
                            () = stop.cancelled() => {}
                        }
                        None
                    }
                }
            }
        }
    }

    /// Leases the job a stream entry carries. An entry whose job is
    /// finished or unknown is removed; one whose job another worker holds
    /// stays pending, for `XAUTOCLAIM` to bring back if that worker dies.
    async fn take(&self, queue: &RedisQueue, entry: Entry) -> Option<Delivery> {
        let (now, until) = self.lease();
        let owner = self.owner();
        match self.imports.jobs.claim(Some(&entry.job), &owner, now, until).await {
            Ok(Some(job)) => Some(Delivery {
                job,
                owner,
                entry: Some(entry.id),
            }),
            Ok(None) => {
                let job = self.imports.jobs.job(&entry.job).await;
                if matches!(&job, Ok(None)) || matches!(&job, Ok(Some(job)) if job.state.is_finished()) {
                    let _ = queue.done(&entry.id).await;
                }
                None
            }
            Err(error) => {
                tracing::warn!(job = %entry.job, %error, "import queue: cannot lease a delivered job");
                None
            }
        }
    }

    async fn work(&self, delivery: Delivery, stop: &CancellationToken) {
        let job = &delivery.job;
        let metrics = &self.imports.metrics;
        metrics.import_claim(if job.attempts <= 1 { "first" } else { "reclaimed" });
        // A job whose batches are all recorded is done, however often taken.
        if job.attempts > self.settings.max_attempts && job.next_batch < job.batches {
            let why = format!("gave up after {} attempts", self.settings.max_attempts);
            self.end(&delivery, JobState::Failed, Some(&why)).await;
            return;
        }
        metrics.import_job(JobState::Running.as_str());
        tracing::info!(state = "running", attempt = job.attempts, next_batch = job.next_batch, batches = job.batches, worker = %self.id, "import running");
        let mut n = job.next_batch;
        while n < job.batches {
            if stop.is_cancelled() {
                self.give_back(&delivery).await;
                return;
            }
            match self.step(&delivery, n).await {
                Step::Next => n += 1,
                Step::Retry => {
                    metrics.import_retry();
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(self.settings.poll_interval) => {}
                    }
                }
                Step::LostLease => {
                    tracing::warn!(
                        batch = n,
                        "import taken over by another worker (this one was too slow); leaving it"
                    );
                    return;
                }
                Step::Fail(why) => {
                    self.end(&delivery, JobState::Failed, Some(&why)).await;
                    return;
                }
            }
        }
        self.end(&delivery, JobState::Done, None).await;
    }

    /// Keeps the lease, then writes and records batch `n`.
    async fn step(&self, delivery: &Delivery, n: u32) -> Step {
        let job = &delivery.job;
        let (_, until) = self.lease();
        match self.imports.jobs.renew(&job.id, &delivery.owner, until).await {
            Ok(true) => {}
            Ok(false) => return Step::LostLease,
            Err(error) => return self.fault(n, error),
        }
        if let (Queue::Redis(queue), Some(entry)) = (&*self.imports.queue, &delivery.entry) {
            if let Err(error) = queue.touch(entry).await {
                tracing::debug!(%error, "import queue: entry not touched");
            }
        }
        match self.batch(job, n).await {
            Ok(()) => Step::Next,
            Err(error) => self.fault(n, error),
        }
    }

    fn fault(&self, n: u32, error: StoreError) -> Step {
        match error {
            StoreError::Unavailable(why) => {
                tracing::warn!(batch = n, error = %why, "import batch waits: the store is unavailable");
                Step::Retry
            }
            other => Step::Fail(format!("batch {n}: {other}")),
        }
    }

    /// Plans (once), writes and records batch `n`.
    async fn batch(&self, job: &Job, n: u32) -> Result<(), StoreError> {
        let jobs = &self.imports.jobs;
        let stored = jobs.batch(&job.id, n).await?;
        // Parsing and checking up to a MiB of items: not on a runtime thread.
        let text = stored.items;
        let (raw, items) = tokio::task::spawn_blocking(move || import::parse_batch(&text))
            .await
            .map_err(|e| StoreError::Internal(format!("batch parse task failed: {e}")))?
            .map_err(StoreError::Internal)?;
        let (mut outcomes, fresh) = match stored.plan {
            Some(plan) => (plan, false),
            None => {
                let names: Vec<&ConfigName> = items.iter().flatten().map(|c| &c.name).collect();
                let existing = self.store.existing_names(&names).await?;
                let plan = import::plan(job.mode, &items, &existing);
                // Only the worker whose plan was stored corrects it.
                jobs.keep_plan(&job.id, n, &plan).await?
            }
        };
        let writes = import::writes(job.mode, &items, &outcomes);
        let written: Vec<ConfigName> = writes.iter().map(|c| c.name.clone()).collect();
        let written_now = match job.mode {
            import::Mode::Create => self.store.insert_many(&writes).await,
            import::Mode::Upsert => self.store.upsert_many(&writes).await,
        };
        // Whatever the outcome, the batch may have landed in part.
        if let Some(cache) = &self.cache {
            cache.invalidate_many(&written).await;
        }
        let names = written_now?;
        if fresh {
            // A single write may have created a name between the plan's look
            // and this write: what the write saw wins. (A plan stored by an
            // earlier attempt stands: this write may meet its own items.)
            import::correct(job.mode, &items, &mut outcomes, &names);
        }
        let errors = import::item_errors(stored.first, &raw, &items, &outcomes);
        let counts = Counts::of(&outcomes);
        if jobs.record_batch(&job.id, n, counts, &errors).await? {
            let metrics = &self.imports.metrics;
            metrics.import_items("created", counts.created);
            metrics.import_items("updated", counts.updated);
            metrics.import_items("invalid", counts.invalid);
            metrics.import_items("conflict", counts.conflicts);
        }
        Ok(())
    }

    /// Ends a job and removes its queue entry.
    async fn end(&self, delivery: &Delivery, state: JobState, error: Option<&str>) {
        let job = &delivery.job;
        match self
            .imports
            .jobs
            .finish(&job.id, &delivery.owner, state, error, now_ms())
            .await
        {
            Ok(true) => {
                self.imports.metrics.import_job(state.as_str());
                if let Ok(depth) = self.imports.jobs.unfinished_jobs().await {
                    self.imports.metrics.import_depth(depth);
                }
                let counts = match self.imports.jobs.job(&job.id).await {
                    Ok(Some(now)) => now.counts,
                    _ => Counts::default(),
                };
                let elapsed_ms = now_ms().saturating_sub(job.started_at.unwrap_or(job.created_at));
                match error {
                    None => tracing::info!(
                        state = state.as_str(),
                        total = job.total,
                        created = counts.created,
                        updated = counts.updated,
                        invalid = counts.invalid,
                        conflicts = counts.conflicts,
                        elapsed_ms,
                        "import done"
                    ),
                    Some(why) => tracing::error!(
                        state = state.as_str(),
                        error = why,
                        created = counts.created,
                        updated = counts.updated,
                        "import failed"
                    ),
                }
            }
            // Its entry is the new holder's now: leave it.
            Ok(false) => {
                tracing::warn!("import finished by another worker");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "import not marked finished; the next worker to take it will");
                return;
            }
        }
        if let (Queue::Redis(queue), Some(entry)) = (&*self.imports.queue, &delivery.entry) {
            if let Err(error) = queue.done(entry).await {
                tracing::warn!(%error, "import queue: finished job's entry not removed; it is dropped when next read");
            }
        }
    }

    /// Gives a job back on shutdown: releases the lease and, on Redis,
    /// queues it afresh so another worker takes it now.
    async fn give_back(&self, delivery: &Delivery) {
        let job = &delivery.job;
        if let Err(error) = self.imports.jobs.release(&job.id, &delivery.owner).await {
            tracing::warn!(%error, "import not released; another worker takes it after claim_idle");
            return;
        }
        if let (Queue::Redis(queue), Some(entry)) = (&*self.imports.queue, &delivery.entry) {
            if let Ok(fresh) = queue.publish(&job.id).await {
                let _ = self.imports.jobs.set_queue_ref(&job.id, &fresh).await;
                let _ = queue.done(entry).await;
            }
        }
        tracing::info!(state = "queued", "import given back (shutting down)");
        self.imports.metrics.import_job(JobState::Queued.as_str());
    }

    /// Every half `claim_idle`: the queue depth, and on Redis the jobs the
    /// stream lost.
    async fn repair(self: Arc<Self>, stop: CancellationToken) {
        let period = (self.settings.claim_idle / 2).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            if let Ok(depth) = self.imports.jobs.unfinished_jobs().await {
                self.imports.metrics.import_depth(depth);
            }
            let Queue::Redis(queue) = &*self.imports.queue else {
                continue;
            };
            match queue.forget_idle_consumers(FORGET_CONSUMERS_AFTER).await {
                Ok(0) | Err(_) => {}
                Ok(n) => tracing::info!(
                    consumers = n,
                    "import queue: forgot consumers idle for an hour with nothing pending"
                ),
            }
            let orphans = match self.imports.jobs.orphans(now_ms()).await {
                Ok(orphans) => orphans,
                Err(error) => {
                    tracing::warn!(%error, "import repair: cannot read unfinished jobs");
                    continue;
                }
            };
            for orphan in orphans {
                let held = match &orphan.queue_ref {
                    Some(entry) => queue.holds(entry).await,
                    None => Ok(false),
                };
                if !matches!(held, Ok(false)) {
                    continue;
                }
                if let Ok(entry) = queue.publish(&orphan.id).await {
                    let _ = self.imports.jobs.set_queue_ref(&orphan.id, &entry).await;
                    self.imports.metrics.import_claim("republished");
                    tracing::warn!(job = %orphan.id, "import put back on the queue: its entry was lost (Redis restarted without its data?)");
                }
            }
        }
    }
}
