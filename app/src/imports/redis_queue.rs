//! The import queue on Redis: one stream (`{prefix}:imports`) whose entries
//! carry a job id, read by the consumer group `workers`.
//!
//! - A worker reads new entries with `XREADGROUP` (blocking, on a client of
//!   its own so the block holds up no other command), keeps an entry
//!   pending while it works (`XCLAIM ... JUSTID` after each batch resets
//!   the entry's idle time), and `XACK`s and `XDEL`s it when the job ends.
//! - An entry idle longer than `worker.claim_idle` belongs to a worker that
//!   died: `XAUTOCLAIM` hands it to a live one.
//! - A consumer group that vanished (Redis restarted without its data) is
//!   made again on the next read; the jobs it carried are put back by
//!   [`super::worker`]'s repair from the store, which is the record.

use crate::cache::{CacheSettings, connect_client};
use fred::clients::Client;
use fred::error::Error;
use fred::prelude::{ClientLike, StreamsInterface};
use fred::types::Value;
use fred::types::config::Options;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The consumer group every worker reads in.
const GROUP: &str = "workers";

/// A connected queue; one per process.
#[derive(Clone)]
pub struct RedisQueue {
    commands: Client,
    reader: Client,
    stream: String,
    consumer: String,
    block: Duration,
    /// Where the next `XAUTOCLAIM` scan starts: each scans a few pending
    /// entries, so a dead worker's entry behind others still held by live
    /// workers is reached by later scans.
    cursor: Arc<Mutex<String>>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// An entry read from the stream: its id and the job it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Stream entry id.
    pub id: String,
    /// Import job id.
    pub job: String,
}

impl RedisQueue {
    /// Connects two clients (commands, and blocking reads of at most
    /// `block`); `consumer` names this process in the group.
    pub async fn connect(settings: &CacheSettings, consumer: String, block: Duration) -> anyhow::Result<Self> {
        let queue = Self {
            commands: connect_client(settings).await?,
            reader: connect_client(settings).await?,
            stream: format!("{}:imports", settings.key_prefix),
            consumer,
            block,
            cursor: Arc::new(Mutex::new("0-0".into())),
        };
        if let Err(error) = queue.ensure_group().await {
            tracing::warn!(%error, "import queue: Redis not ready at start-up; the consumer group is made on first use");
        }
        Ok(queue)
    }

    /// Makes the stream and the group unless they exist.
    async fn ensure_group(&self) -> Result<(), Error> {
        match self
            .commands
            .xgroup_create::<Value, _, _, _>(&self.stream, GROUP, "0", true)
            .await
        {
            Err(e) if !e.details().contains("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    /// Appends an entry for `job`; returns its id.
    pub async fn publish(&self, job: &str) -> Result<String, Error> {
        self.commands
            .xadd(&self.stream, false, None::<()>, "*", vec![("job", job)])
            .await
    }

    /// The next new entry for this consumer, waiting up to the block time.
    pub async fn read(&self) -> Result<Option<Entry>, Error> {
        let options = Options {
            timeout: Some(self.block + Duration::from_secs(2)),
            ..Options::default()
        };
        let block_ms = u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX);
        let read = self
            .reader
            .with_options(&options)
            .xreadgroup::<Value, _, _, _, _>(GROUP, &self.consumer, Some(1), Some(block_ms), false, &self.stream, ">")
            .await;
        match read {
            Ok(value) => Ok(entries(value).into_iter().next()),
            Err(e) if e.details().contains("NOGROUP") => {
                self.ensure_group().await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes over one entry idle longer than `min_idle` (its worker died).
    pub async fn autoclaim(&self, min_idle: Duration) -> Result<Option<Entry>, Error> {
        let min_idle = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let start = self.cursor.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let claimed = self
            .commands
            .xautoclaim::<Value, _, _, _, _>(
                &self.stream,
                GROUP,
                &self.consumer,
                min_idle,
                start.as_str(),
                Some(1),
                false,
            )
            .await;
        match claimed {
            Ok(value) => {
                // Redis answers where to go on from ("0-0": the scan is done).
                if let Value::Array(parts) = &value {
                    if let Some(next) = parts.first().and_then(Value::as_string) {
                        *self.cursor.lock().unwrap_or_else(PoisonError::into_inner) = next;
                    }
                }
                Ok(entries(value).into_iter().next())
            }
            Err(e) if e.details().contains("NOGROUP") => {
                self.ensure_group().await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Shows the entry's worker alive: resets its idle time.
    pub async fn touch(&self, entry: &str) -> Result<(), Error> {
        self.commands
            .xclaim::<Value, _, _, _, _>(
                &self.stream,
                GROUP,
                &self.consumer,
                0,
                entry,
                None,
                None,
                None,
                false,
                true,
            )
            .await
            .map(drop)
    }

    /// Removes a finished job's entry.
    pub async fn done(&self, entry: &str) -> Result<(), Error> {
        self.commands.xack::<Value, _, _, _>(&self.stream, GROUP, entry).await?;
        self.commands.xdel::<Value, _, _>(&self.stream, entry).await.map(drop)
    }

    /// Whether the stream still holds the entry.
    pub async fn holds(&self, entry: &str) -> Result<bool, Error> {
        let found: Value = self.commands.xrange(&self.stream, entry, entry, Some(1)).await?;
        Ok(matches!(found, Value::Array(items) if !items.is_empty()))
    }

    /// The group's consumers: name, pending entries, idle milliseconds.
    async fn consumers(&self) -> Result<Vec<(String, i64, i64)>, Error> {
        let info: Value = self.commands.xinfo_consumers(&self.stream, GROUP).await?;
        let Value::Array(consumers) = info else {
            return Ok(Vec::new());
        };
        Ok(consumers.into_iter().filter_map(consumer).collect())
    }

    /// Removes consumers that hold nothing pending and have been idle
    /// longer than `idle_over`: every process start joins under a new name,
    /// and without this the group would list every process that ever ran.
    /// (A live consumer removed this way is made again by its next read.)
    pub async fn forget_idle_consumers(&self, idle_over: Duration) -> Result<usize, Error> {
        let idle_over = i64::try_from(idle_over.as_millis()).unwrap_or(i64::MAX);
        let mut forgotten = 0;
        for (name, pending, idle) in self.consumers().await? {
            if pending == 0 && idle > idle_over && name != self.consumer {
                self.commands
                    .xgroup_delconsumer::<Value, _, _, _>(&self.stream, GROUP, &name)
                    .await?;
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// Leaves the group on shutdown, when this process holds nothing
    /// pending (what it holds stays, for `XAUTOCLAIM`).
    pub async fn leave(&self) {
        let mine = self
            .consumers()
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|(name, _, _)| *name == self.consumer));
        if matches!(mine, Some((_, 0, _))) {
            let _ = self
                .commands
                .xgroup_delconsumer::<Value, _, _, _>(&self.stream, GROUP, &self.consumer)
                .await;
        }
    }

    /// Closes both connections.
    pub async fn shutdown(&self) {
        let _ = self.reader.quit().await;
        let _ = self.commands.quit().await;
    }
}

/// One consumer of an `XINFO CONSUMERS` reply (`[name, N, pending, N,
/// idle, N, ...]`, or a map): its name, pending count and idle time.
fn consumer(value: Value) -> Option<(String, i64, i64)> {
    let pairs: Vec<(String, Value)> = match value {
        Value::Array(fields) => fields
            .chunks(2)
            .filter_map(|pair| Some((pair.first()?.as_string()?, pair.get(1)?.clone())))
            .collect(),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v)))
            .collect(),
        _ => return None,
    };
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    Some((
        get("name")?.as_string()?,
        get("pending")?.as_i64()?,
        get("idle")?.as_i64()?,
    ))
}

/// The `(id, job)` entries anywhere in a stream reply (`XREADGROUP`,
/// `XAUTOCLAIM`, either protocol): arrays `[ID, [field, value, ...]]`.
fn entries(value: Value) -> Vec<Entry> {
    let mut found = Vec::new();
    collect(value, &mut found);
    found
}

fn collect(value: Value, found: &mut Vec<Entry>) {
    match value {
        Value::Array(items) => {
            if let [id, Value::Array(fields)] = items.as_slice() {
                let job = fields
                    .chunks(2)
                    .find(|pair| pair[0].as_str().as_deref() == Some("job"))
                    .and_then(|pair| pair.get(1))
                    .and_then(Value::as_string);
                if let (Some(id), Some(job)) = (id.as_string(), job) {
                    if id.contains('-') {
                        found.push(Entry { id, job });
                        return;
                    }
                }
            }
            for item in items {
                collect(item, found);
            }
        }
        Value::Map(map) => {
            for (_, item) in map.inner() {
                collect(item, found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    #[test]
    fn entries_are_found_in_read_and_autoclaim_replies() {
        let entry = |id: &str, job: &str| Value::Array(vec![s(id), Value::Array(vec![s("job"), s(job)])]);
        // XREADGROUP (RESP2): [[stream, [entry, ...]]]
        let read = Value::Array(vec![Value::Array(vec![
            s("p:imports"),
            Value::Array(vec![entry("1-0", "a"), entry("2-0", "b")]),
        ])]);
        let ids: Vec<(String, String)> = entries(read).into_iter().map(|e| (e.id, e.job)).collect();
        assert_eq!(ids, [("1-0".into(), "a".into()), ("2-0".into(), "b".into())]);
        // XAUTOCLAIM (Redis 7): [next, [entry, ...], [deleted ids]]
        let claimed = Value::Array(vec![
            s("0-0"),
            Value::Array(vec![entry("3-1", "c")]),
            Value::Array(vec![s("4-0")]),
        ]);
        assert_eq!(
            entries(claimed),
            [Entry {
                id: "3-1".into(),
                job: "c".into()
            }]
        );
        assert!(entries(Value::Null).is_empty());
    }

    #[test]
    fn consumers_are_read_from_xinfo() {
        let reply = Value::Array(vec![
            s("name"),
            s("host-1"),
            s("pending"),
            Value::Integer(2),
            s("idle"),
            Value::Integer(7_000),
            s("inactive"),
            Value::Integer(9_000),
        ]);
        assert_eq!(consumer(reply), Some(("host-1".into(), 2, 7_000)));
        assert_eq!(consumer(Value::Null), None);
    }
}
