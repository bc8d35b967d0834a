//! What every handler shares, and the read path through the cache.

use crate::cache::{Cache, Lookup};
use crate::domain::{Config, ConfigName};
use crate::imports::Imports;
use crate::metrics::Metrics;
use crate::store::{DynStore, StoreError};
use shared::Secret;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Instrument;

/// Handler state; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The source of truth.
    pub store: DynStore,
    /// The read cache, when Redis is configured.
    pub cache: Option<Cache>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Bearer token required on writes, when configured.
    pub api_token: Option<Arc<Secret<String>>>,
    /// Largest accepted body, in bytes.
    pub max_body: usize,
    /// Bulk imports: the job records and the queue.
    pub imports: Imports,
    /// Set once shutdown begins; `/readyz` then answers 503.
    pub draining: Arc<AtomicBool>,
}

impl AppState {
    /// Reads a config: the cache first, then the store, filling the cache
    /// unless a write to this name was invalidated in between (see
    /// [`crate::cache`]).
    pub async fn read_config(&self, name: &ConfigName) -> Result<Option<Config>, StoreError> {
        let Some(cache) = &self.cache else {
            return self.store.get(name).await;
        };
        let ticket = match cache.get(name).await {
            Lookup::Hit(config) => return Ok(Some(config)),
            Lookup::Miss(ticket) => Some(ticket),
            Lookup::Failed => None,
        };
        let found = self.store.get(name).await?;
        if let (Some(config), Some(ticket)) = (&found, ticket) {
            cache.put(config, ticket).await;
        }
        Ok(found)
    }

    /// Runs `write`, a store write to the config `name`, then drops the
    /// cached entry, whatever the outcome except a [`StoreError::Conflict`]
    /// (which changed nothing): a write that timed out or lost its
    /// connection may still have landed, so it must invalidate too.
    ///
    /// The write and the invalidation run on a task of their own, so a
    /// client that disconnects mid-request (hyper then drops the handler)
    /// cannot leave a landed write with its stale entry still cached.
    pub async fn write<T, F>(&self, name: &ConfigName, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (cache, name) = (self.cache.clone(), name.clone());
        let task = tokio::spawn(
            async move {
                let outcome = write.await;
                if let Some(cache) = &cache {
                    if !matches!(outcome, Err(StoreError::Conflict)) {
                        cache.invalidate(&name).await;
                    }
                }
                outcome
            }
            // Keeps the request's span (and its id) on the task's events.
            .instrument(tracing::Span::current()),
        );
        task.await
            .map_err(|e| StoreError::Internal(format!("write task failed: {e}")))?
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
