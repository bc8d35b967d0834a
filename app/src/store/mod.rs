//! Storage: one trait, two implementations.
//!
//! - [`mongo::MongoStore`]: production, MongoDB through the official driver.
//! - [`sqlite::SqliteStore`]: the embedded default, an on-disk SQLite database
//!   in WAL mode that several app processes on one machine share.
//!
//! Both pass the same contract suite (`tests/store_contract.rs`).

pub mod jobs;
pub mod mongo;
pub mod sqlite;

use crate::domain::{Config, ConfigName, SearchQuery, SearchResults};
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::Arc;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A config with this name already exists (unique index).
    #[error("a config with this name already exists")]
    Conflict,
    /// The store did not answer in time or could not be reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or corrupt data.
    #[error("store failure: {0}")]
    Internal(String),
}

/// Outcome of a conditional replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// The new data is stored.
    Done,
    /// No config has this name.
    NotFound,
    /// The config exists but no longer holds the expected data.
    Changed,
}

/// The operations the API needs. Every method is bounded in time by the
/// implementation: an unreachable store is a prompt [`StoreError::Unavailable`].
#[async_trait]
pub trait Store: std::fmt::Debug + Send + Sync + 'static {
    /// Short name for logs and `/readyz` (`mongodb`, `sqlite`).
    fn kind(&self) -> &'static str;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Up to `limit` configs with names greater than `after`, sorted by name.
    async fn list(&self, after: Option<&ConfigName>, limit: usize) -> Result<Vec<Config>, StoreError>;

    /// The config with this name, if any.
    async fn get(&self, name: &ConfigName) -> Result<Option<Config>, StoreError>;

    /// Stores a new config; [`StoreError::Conflict`] if the name is taken.
    async fn insert(&self, config: &Config) -> Result<(), StoreError>;

    /// Replaces the data of `config.name`. With `expected`, only if the
    /// stored data still equals it (compare-and-swap, for read-modify-write).
    async fn replace(&self, config: &Config, expected: Option<&Config>) -> Result<Replaced, StoreError>;

    /// Deletes a config; `false` if there was none.
    async fn delete(&self, name: &ConfigName) -> Result<bool, StoreError>;

    /// The page of `query`'s results that `query.page` asks for, with the
    /// exact count of all of them. The store narrows candidates (a superset
    /// of the configs holding a result) and streams them, in name order,
    /// through a [`crate::domain::PageCollector`], which picks the exact
    /// elements: memory is bounded by the page and one candidate (plus the
    /// driver's batch), never by the number of matches.
    async fn search(&self, query: &SearchQuery) -> Result<SearchResults, StoreError>;

    /// Which of `names` the store holds (one query: imports plan a batch
    /// with it).
    async fn existing_names(&self, names: &[&ConfigName]) -> Result<HashSet<String>, StoreError>;

    /// Stores new configs in one batch (a MongoDB unordered bulk insert, one
    /// SQLite transaction); a name that is taken is skipped, not an error,
    /// and returned.
    async fn insert_many(&self, configs: &[Config]) -> Result<Vec<String>, StoreError>;

    /// Creates or replaces the data of each config in one batch; names must
    /// be distinct. Returns the names it created (the rest it replaced).
    async fn upsert_many(&self, configs: &[Config]) -> Result<Vec<String>, StoreError>;
}

/// A shared store handle.
pub type DynStore = Arc<dyn Store>;
