//! The embedded default store: SQLite on disk, WAL mode, shared by every
//! app process that points at the same directory.
//!
//! SQLite calls block, so each runs on tokio's blocking pool with one
//! connection from a small pool; WAL lets readers run beside the writer, and
//! `busy_timeout` makes writers of several processes queue instead of fail.

mod jobs;

use super::{Replaced, Store, StoreError};
use crate::domain::{Config, ConfigName, DataElement, PageCollector, SearchQuery, SearchResults};
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections kept open per process.
const POOL_SIZE: usize = 4;

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: Arc<Pool>,
    path: PathBuf,
    timeout: Duration,
}

#[derive(Debug)]
struct Pool {
    idle: Mutex<Vec<Connection>>,
    path: PathBuf,
    busy_timeout: Duration,
}

impl SqliteStore {
    /// Opens (creating if needed) `configs.sqlite3` in `dir`; `timeout`
    /// bounds each operation, including waiting for another process's lock.
    pub fn open(dir: &Path, timeout: Duration) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("configs.sqlite3");
        let pool = Pool {
            idle: Mutex::new(Vec::new()),
            path: path.clone(),
            busy_timeout: timeout,
        };
        let conn = pool.connect()?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS configs (
                 name TEXT PRIMARY KEY NOT NULL,
                 data TEXT NOT NULL
             );",
        )
        .map_err(internal)?;
        conn.execute_batch(jobs::SCHEMA).map_err(internal)?;
        pool.put(conn);
        Ok(Self {
            pool: Arc::new(pool),
            path,
            timeout,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one transaction (`BEGIN IMMEDIATE`: it takes the write
    /// lock first, so it never fails half-way on another process's lock).
    async fn with_transaction<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.with_conn(move |c| {
            c.execute_batch("BEGIN IMMEDIATE").map_err(internal)?;
            match f(c) {
                Ok(value) => {
                    c.execute_batch("COMMIT").map_err(internal)?;
                    Ok(value)
                }
                Err(e) => {
                    let _ = c.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })
        .await
    }

    /// Runs `f` with a pooled connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let task = tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            pool.put(conn);
            result
        });
        // The busy timeout bounds lock waits; this bounds everything else.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StoreError::Internal(format!("sqlite task failed: {join}"))),
            Err(_) => Err(StoreError::Unavailable("sqlite operation timed out".into())),
        }
    }
}

impl Pool {
    fn connect(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", self.path.display())))?;
        conn.busy_timeout(self.busy_timeout).map_err(internal)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(internal)?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        pooled.map_or_else(|| self.connect(), Ok)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(conn);
        }
    }
}

fn internal(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            ) =>
        {
            // Conditions that pass (a lock, a full or failing disk): retry later.
            StoreError::Unavailable(format!("sqlite: {e}"))
        }
        other => StoreError::Internal(other.to_string()),
    }
}

fn encode(data: &[DataElement]) -> Result<String, StoreError> {
    serde_json::to_string(data).map_err(|e| StoreError::Internal(e.to_string()))
}

fn decode(name: String, data: &str) -> Result<Config, StoreError> {
    let name = ConfigName::parse(&name).map_err(|e| StoreError::Internal(format!("stored name {name:?}: {e}")))?;
    let data = serde_json::from_str(data).map_err(|e| StoreError::Internal(format!("stored data of {name}: {e}")))?;
    Ok(Config { name, data })
}

fn collect(rows: impl Iterator<Item = rusqlite::Result<(String, String)>>) -> Result<Vec<Config>, StoreError> {
    rows.map(|r| {
        let (name, data) = r.map_err(internal)?;
        decode(name, &data)
    })
    .collect()
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(internal))
            .await
    }

    async fn list(&self, after: Option<&ConfigName>, limit: usize) -> Result<Vec<Config>, StoreError> {
        let after = after.map(|n| n.as_str().to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT name, data FROM configs WHERE name > ?1 ORDER BY name LIMIT ?2")
                .map_err(internal)?;
            let rows = stmt
                .query_map(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(internal)?;
            collect(rows)
        })
        .await
    }

    async fn get(&self, name: &ConfigName) -> Result<Option<Config>, StoreError> {
        let name = name.as_str().to_string();
        self.with_conn(move |c| {
            let row: Option<(String, String)> = c
                .prepare_cached("SELECT name, data FROM configs WHERE name = ?1")
                .and_then(|mut s| s.query_row([&name], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(internal)?;
            row.map(|(n, d)| decode(n, &d)).transpose()
        })
        .await
    }

    async fn insert(&self, config: &Config) -> Result<(), StoreError> {
        let name = config.name.as_str().to_string();
        let data = encode(&config.data)?;
        self.with_conn(move |c| {
            match c.execute("INSERT INTO configs (name, data) VALUES (?1, ?2)", params![name, data]) {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    Err(StoreError::Conflict)
                }
                Err(e) => Err(internal(e)),
            }
        })
        .await
    }

    async fn replace(&self, config: &Config, expected: Option<&Config>) -> Result<Replaced, StoreError> {
        let name = config.name.as_str().to_string();
        let data = encode(&config.data)?;
        let expected = expected.map(|e| encode(&e.data)).transpose()?;
        self.with_conn(move |c| {
            let changed = match &expected {
                None => c.execute("UPDATE configs SET data = ?2 WHERE name = ?1", params![name, data]),
                Some(old) => c.execute(
                    "UPDATE configs SET data = ?2 WHERE name = ?1 AND data = ?3",
                    params![name, data, old],
                ),
            }
            .map_err(internal)?;
            if changed == 1 {
                return Ok(Replaced::Done);
            }
            let exists: bool = c
                .query_row("SELECT EXISTS(SELECT 1 FROM configs WHERE name = ?1)", [&name], |r| {
                    r.get(0)
                })
                .map_err(internal)?;
            Ok(if exists { Replaced::Changed } else { Replaced::NotFound })
        })
        .await
    }

    async fn delete(&self, name: &ConfigName) -> Result<bool, StoreError> {
        let name = name.as_str().to_string();
        self.with_conn(move |c| {
            c.execute("DELETE FROM configs WHERE name = ?1", [&name])
                .map(|n| n == 1)
                .map_err(internal)
        })
        .await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults, StoreError> {
        let (sql, args) = candidate_sql(query);
        let query = query.clone();
        self.with_conn(move |c| {
            let mut stmt = c.prepare(&sql).map_err(internal)?;
            // Rows are stepped one at a time (the name index gives the
            // order, so there is no sorter holding them all).
            let mut rows = stmt.query(rusqlite::params_from_iter(args.iter())).map_err(internal)?;
            let mut page = PageCollector::new(&query);
            while let Some(row) = rows.next().map_err(internal)? {
                let name: String = row.get(0).map_err(internal)?;
                let data = row.get_ref(1).map_err(internal)?;
                let data = data.as_str().map_err(|e| StoreError::Internal(e.to_string()))?;
                page.offer(decode(name, data)?);
            }
            Ok(page.finish())
        })
        .await
    }

    async fn existing_names(&self, names: &[&ConfigName]) -> Result<HashSet<String>, StoreError> {
        let names: Vec<String> = names.iter().map(|n| n.as_str().to_string()).collect();
        self.with_conn(move |c| {
            let mut found = HashSet::new();
            let mut stmt = c
                .prepare_cached("SELECT 1 FROM configs WHERE name = ?1")
                .map_err(internal)?;
            for name in names {
                if stmt.exists([&name]).map_err(internal)? {
                    found.insert(name);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn insert_many(&self, configs: &[Config]) -> Result<Vec<String>, StoreError> {
        let rows = encode_all(configs)?;
        self.with_transaction(move |c| {
            let mut stmt = c
                .prepare_cached("INSERT INTO configs (name, data) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")
                .map_err(internal)?;
            let mut taken = Vec::new();
            for (name, data) in rows {
                if stmt.execute(params![name, data]).map_err(internal)? == 0 {
                    taken.push(name);
                }
            }
            Ok(taken)
        })
        .await
    }

    async fn upsert_many(&self, configs: &[Config]) -> Result<Vec<String>, StoreError> {
        let rows = encode_all(configs)?;
        self.with_transaction(move |c| {
            // In the write transaction, so the look and the write agree.
            let mut exists = c
                .prepare_cached("SELECT 1 FROM configs WHERE name = ?1")
                .map_err(internal)?;
            let mut stmt = c
                .prepare_cached(
                    "INSERT INTO configs (name, data) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                )
                .map_err(internal)?;
            let mut created = Vec::new();
            for (name, data) in rows {
                let existed = exists.exists([&name]).map_err(internal)?;
                stmt.execute(params![name, data]).map_err(internal)?;
                if !existed {
                    created.push(name);
                }
            }
            Ok(created)
        })
        .await
    }
}

fn encode_all(configs: &[Config]) -> Result<Vec<(String, String)>, StoreError> {
    configs
        .iter()
        .map(|c| Ok((c.name.as_str().to_string(), encode(&c.data)?)))
        .collect()
}

/// Narrows by name and, per condition, by the text or numeric value at the
/// path inside some element (`json_each`). Loose on purpose: booleans and
/// nulls come back as candidates and [`PageCollector`] decides.
fn candidate_sql(query: &SearchQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as Sql;
    let mut sql = String::from("SELECT name, data FROM configs c WHERE 1");
    let mut args: Vec<Sql> = Vec::new();
    if let Some(name) = &query.name {
        args.push(Sql::Text(name.as_str().to_string()));
        sql.push_str(&format!(" AND c.name = ?{}", args.len()));
    }
    if !query.conditions.is_empty() {
        sql.push_str(" AND EXISTS (SELECT 1 FROM json_each(c.data) e WHERE 1");
        // A key holding `"` cannot be written as an SQLite JSON path label,
        // and SQLite reads a `\` in one as a JSON escape (`a\b` would name
        // another key): such conditions do not narrow the candidates here;
        // the page collector, which checks every condition, matches them.
        for cond in query
            .conditions
            .iter()
            .filter(|c| c.path.iter().all(|s| !s.contains(['"', '\\'])))
        {
            let path = cond.path.iter().map(|seg| format!(".\"{seg}\"")).collect::<String>();
            args.push(Sql::Text(format!("${path}")));
            let p = args.len();
            args.push(Sql::Text(cond.value.clone()));
            let mut alternatives = vec![format!("json_extract(e.value, ?{p}) = ?{}", args.len())];
            let number = match (cond.value.parse::<i64>(), cond.value.parse::<f64>()) {
                (Ok(i), _) => Some(Sql::Integer(i)),
                (_, Ok(f)) if f.is_finite() => Some(Sql::Real(f)),
                _ => None,
            };
            if let Some(n) = number {
                args.push(n);
                alternatives.push(format!("json_extract(e.value, ?{p}) = ?{}", args.len()));
            }
            if matches!(cond.value.as_str(), "true" | "false" | "null") {
                alternatives.push(format!("json_type(e.value, ?{p}) IN ('true', 'false', 'null')"));
            }
            sql.push_str(&format!(" AND ({})", alternatives.join(" OR ")));
        }
        sql.push(')');
    }
    sql.push_str(" ORDER BY c.name");
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_candidates_stream_in_name_index_order_without_a_sorter() {
        // A sorter (`USE TEMP B-TREE FOR ORDER BY`) would hold every
        // candidate before the first one reaches the page collector.
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(dir.path(), Duration::from_secs(1)).expect("open");
        let conn = store.pool.take().expect("connection");
        for q in [
            "data.k=v",
            "name=a",
            "name=a&data.k=1&data.x.y=true",
            "data.k=v&after=a.1&limit=5",
        ] {
            let query = SearchQuery::parse(Some(q)).expect("valid");
            let (sql, args) = candidate_sql(&query);
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("plan");
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(3))
                .expect("plan rows")
                .collect::<Result<_, _>>()
                .expect("plan text");
            assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "{q}: {plan:?}");
        }
    }
}
