//! [`JobStore`] on SQLite: three tables beside `configs`; every change to a
//! job is one conditional `UPDATE` (or one transaction), so processes that
//! share the file agree on who holds a job.

use super::{SqliteStore, internal};
use crate::domain::import::{Batch, Counts, ItemError, Job, JobState, Mode, Outcome};
use crate::store::StoreError;
use crate::store::jobs::{JobStore, Orphan, StoredBatch};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};

/// The tables, created with the store.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS import_jobs (
    id TEXT PRIMARY KEY NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    total INTEGER NOT NULL,
    batches INTEGER NOT NULL,
    next_batch INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL DEFAULT 0,
    invalid INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    request_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0,
    queue_ref TEXT
);
CREATE INDEX IF NOT EXISTS import_jobs_by_state ON import_jobs (state, created_at);
CREATE INDEX IF NOT EXISTS import_jobs_by_age ON import_jobs (created_at);
CREATE TABLE IF NOT EXISTS import_batches (
    job TEXT NOT NULL,
    n INTEGER NOT NULL,
    first INTEGER NOT NULL,
    items TEXT NOT NULL,
    plan TEXT,
    PRIMARY KEY (job, n)
);
CREATE TABLE IF NOT EXISTS import_errors (
    job TEXT NOT NULL,
    idx INTEGER NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (job, idx)
);
";

const COLUMNS: &str = "id, mode, state, total, batches, next_batch, created, updated, invalid, conflicts, \
                       created_at, started_at, finished_at, request_id, attempts, error";

fn job_from(row: &Row<'_>) -> rusqlite::Result<Job> {
    let text = |i: usize| -> rusqlite::Result<String> { row.get(i) };
    let bad = |what: &str, value: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("{what} {value:?}").into())
    };
    let count = |i: usize| -> rusqlite::Result<u64> { row.get::<_, i64>(i).map(|v| v.max(0).unsigned_abs()) };
    let time = |i: usize| -> rusqlite::Result<Option<u64>> {
        row.get::<_, Option<i64>>(i).map(|v| v.map(|v| v.max(0).unsigned_abs()))
    };
    let mode = text(1)?;
    let state = text(2)?;
    Ok(Job {
        id: text(0)?,
        mode: Mode::parse(&mode).map_err(|_| bad("mode", mode))?,
        state: JobState::parse(&state).ok_or_else(|| bad("state", state))?,
        total: count(3)?,
        batches: row.get(4)?,
        next_batch: row.get(5)?,
        counts: Counts {
            created: count(6)?,
            updated: count(7)?,
            invalid: count(8)?,
            conflicts: count(9)?,
        },
        created_at: count(10)?,
        started_at: time(11)?,
        finished_at: time(12)?,
        request_id: text(13)?,
        attempts: row.get(14)?,
        error: row.get(15)?,
    })
}

/// SQLite integers are signed.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("stored import data: {e}"))
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn create_job(&self, job: &Job, batches: &[Batch]) -> Result<(), StoreError> {
        let (job, batches) = (job.clone(), batches.to_vec());
        self.with_transaction(move |c| {
            let mut insert = c
                .prepare_cached("INSERT INTO import_batches (job, n, first, items) VALUES (?1, ?2, ?3, ?4)")
                .map_err(internal)?;
            for (n, batch) in batches.iter().enumerate() {
                insert
                    .execute(params![job.id, int(n as u64), int(batch.first), batch.items])
                    .map_err(internal)?;
            }
            c.execute(
                "INSERT INTO import_jobs (id, mode, state, total, batches, created_at, request_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    job.id,
                    if job.mode == Mode::Create { "create" } else { "upsert" },
                    job.state.as_str(),
                    int(job.total),
                    job.batches,
                    int(job.created_at),
                    job.request_id
                ],
            )
            .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let id = id.to_string();
        self.with_conn(move |c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM import_jobs WHERE id = ?1"))
                .and_then(|mut s| s.query_row([&id], job_from).optional())
                .map_err(internal)
        })
        .await
    }

    async fn recent_jobs(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM import_jobs ORDER BY created_at DESC, id DESC LIMIT ?1"
                ))
                .map_err(internal)?;
            let rows = stmt.query_map([limit], job_from).map_err(internal)?;
            rows.collect::<Result<_, _>>().map_err(internal)
        })
        .await
    }

    async fn unfinished_jobs(&self) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM import_jobs WHERE state IN ('queued', 'running')",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0).unsigned_abs())
            .map_err(internal)
        })
        .await
    }

    async fn item_errors(&self, id: &str, after: Option<u64>, limit: usize) -> Result<Vec<ItemError>, StoreError> {
        let id = id.to_string();
        let after = after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT error FROM import_errors WHERE job = ?1 AND idx > ?2 ORDER BY idx LIMIT ?3")
                .map_err(internal)?;
            let rows = stmt
                .query_map(params![id, after, limit], |r| r.get::<_, String>(0))
                .map_err(internal)?;
            rows.map(|r| serde_json::from_str(&r.map_err(internal)?).map_err(json_err))
                .collect()
        })
        .await
    }

    async fn claim(
        &self,
        id: Option<&str>,
        worker: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<Option<Job>, StoreError> {
        let (id, worker) = (id.map(str::to_string), worker.to_string());
        self.with_conn(move |c| {
            let claimable = "(state = 'queued' OR (state = 'running' AND lease_until < ?2))";
            let target = match id {
                Some(_) => format!("id = ?4 AND {claimable}"),
                None => format!("id = (SELECT id FROM import_jobs WHERE {claimable} ORDER BY created_at, id LIMIT 1)"),
            };
            let sql = format!(
                "UPDATE import_jobs SET state = 'running', owner = ?1, lease_until = ?3, attempts = attempts + 1, \
                 started_at = COALESCE(started_at, ?2) WHERE {target} RETURNING {COLUMNS}"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(internal)?;
            let claimed = match &id {
                Some(id) => stmt.query_row(params![worker, int(now), int(lease_until), id], job_from),
                None => stmt.query_row(params![worker, int(now), int(lease_until)], job_from),
            };
            claimed.optional().map_err(internal)
        })
        .await
    }

    async fn renew(&self, id: &str, worker: &str, lease_until: u64) -> Result<bool, StoreError> {
        let (id, worker) = (id.to_string(), worker.to_string());
        self.with_conn(move |c| {
            c.execute(
                "UPDATE import_jobs SET lease_until = ?3 WHERE id = ?1 AND owner = ?2 AND state = 'running'",
                params![id, worker, int(lease_until)],
            )
            .map(|n| n == 1)
            .map_err(internal)
        })
        .await
    }

    async fn batch(&self, id: &str, n: u32) -> Result<StoredBatch, StoreError> {
        let id = id.to_string();
        self.with_conn(move |c| {
            let (first, items, plan): (i64, String, Option<String>) = c
                .query_row(
                    "SELECT first, items, plan FROM import_batches WHERE job = ?1 AND n = ?2",
                    params![id, n],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(internal)?;
            let plan = plan.map(|p| serde_json::from_str(&p)).transpose().map_err(json_err)?;
            Ok(StoredBatch {
                first: first.max(0).unsigned_abs(),
                items,
                plan,
            })
        })
        .await
    }

    async fn keep_plan(&self, id: &str, n: u32, plan: &[Outcome]) -> Result<(Vec<Outcome>, bool), StoreError> {
        let id = id.to_string();
        let text = serde_json::to_string(plan).map_err(json_err)?;
        self.with_transaction(move |c| {
            let stored = c
                .execute(
                    "UPDATE import_batches SET plan = ?3 WHERE job = ?1 AND n = ?2 AND plan IS NULL",
                    params![id, n, text],
                )
                .map_err(internal)?;
            let kept: String = c
                .query_row(
                    "SELECT plan FROM import_batches WHERE job = ?1 AND n = ?2",
                    params![id, n],
                    |r| r.get(0),
                )
                .map_err(internal)?;
            Ok((serde_json::from_str(&kept).map_err(json_err)?, stored == 1))
        })
        .await
    }

    async fn record_batch(&self, id: &str, n: u32, counts: Counts, errors: &[ItemError]) -> Result<bool, StoreError> {
        let id = id.to_string();
        let errors: Vec<(u64, String)> = errors
            .iter()
            .map(|e| Ok((e.index, serde_json::to_string(e).map_err(json_err)?)))
            .collect::<Result<_, StoreError>>()?;
        // One transaction, the compare-and-set first: only the worker that
        // records the batch stores its errors.
        self.with_transaction(move |c| {
            let recorded = c
                .execute(
                    "UPDATE import_jobs SET next_batch = next_batch + 1, created = created + ?3, updated = updated + ?4, \
                     invalid = invalid + ?5, conflicts = conflicts + ?6 WHERE id = ?1 AND next_batch = ?2",
                    params![
                        id,
                        n,
                        int(counts.created),
                        int(counts.updated),
                        int(counts.invalid),
                        int(counts.conflicts)
                    ],
                )
                .map_err(internal)?;
            if recorded == 1 {
                let mut insert = c
                    .prepare_cached("INSERT OR IGNORE INTO import_errors (job, idx, error) VALUES (?1, ?2, ?3)")
                    .map_err(internal)?;
                for (index, error) in errors {
                    insert.execute(params![id, int(index), error]).map_err(internal)?;
                }
            }
            Ok(recorded == 1)
        })
        .await
    }

    async fn finish(
        &self,
        id: &str,
        worker: &str,
        state: JobState,
        error: Option<&str>,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (id, worker, error) = (id.to_string(), worker.to_string(), error.map(str::to_string));
        self.with_transaction(move |c| {
            let ended = c
                .execute(
                    "UPDATE import_jobs SET state = ?3, error = ?4, finished_at = ?5, owner = NULL, lease_until = 0 \
                     WHERE id = ?1 AND owner = ?2 AND state = 'running'",
                    params![id, worker, state.as_str(), error, int(now)],
                )
                .map_err(internal)?;
            if ended == 1 {
                // The items are written; only the record and the errors stay.
                c.execute("DELETE FROM import_batches WHERE job = ?1", [&id])
                    .map_err(internal)?;
            }
            Ok(ended == 1)
        })
        .await
    }

    async fn release(&self, id: &str, worker: &str) -> Result<(), StoreError> {
        let (id, worker) = (id.to_string(), worker.to_string());
        self.with_conn(move |c| {
            c.execute(
                "UPDATE import_jobs SET lease_until = 0, owner = NULL, attempts = MAX(attempts - 1, 0) \
                 WHERE id = ?1 AND owner = ?2 AND state = 'running'",
                params![id, worker],
            )
            .map(drop)
            .map_err(internal)
        })
        .await
    }

    async fn orphans(&self, now: u64) -> Result<Vec<Orphan>, StoreError> {
        self.with_conn(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, queue_ref FROM import_jobs WHERE state = 'queued' \
                     OR (state = 'running' AND lease_until < ?1) ORDER BY created_at",
                )
                .map_err(internal)?;
            let rows = stmt
                .query_map([int(now)], |r| {
                    Ok(Orphan {
                        id: r.get(0)?,
                        queue_ref: r.get(1)?,
                    })
                })
                .map_err(internal)?;
            rows.collect::<Result<_, _>>().map_err(internal)
        })
        .await
    }

    async fn set_queue_ref(&self, id: &str, queue_ref: &str) -> Result<(), StoreError> {
        let (id, queue_ref) = (id.to_string(), queue_ref.to_string());
        self.with_conn(move |c| {
            c.execute(
                "UPDATE import_jobs SET queue_ref = ?2 WHERE id = ?1",
                params![id, queue_ref],
            )
            .map(drop)
            .map_err(internal)
        })
        .await
    }
}
