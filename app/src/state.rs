//! What every handler shares, and the read path through the cache.

use crate::cache::{Cache, Lookup};
use crate::domain::{Config, ConfigName};
use crate::metrics::Metrics;
use crate::store::{DynStore, StoreError};
use shared::Secret;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Set once shutdown begins; `/readyz` then answers 503.
    pub draining: Arc<AtomicBool>,
}

impl AppState {
    /// Reads a config: the cache first, then the store, filling the cache.
    pub async fn read_config(&self, name: &ConfigName) -> Result<Option<Config>, StoreError> {
        let Some(cache) = &self.cache else {
            return self.store.get(name).await;
        };
        if let Lookup::Hit(config) = cache.get(name).await {
            return Ok(Some(config));
        }
        let found = self.store.get(name).await?;
        if let Some(config) = &found {
            cache.put(config).await;
        }
        Ok(found)
    }

    /// Called after every successful write: the store is written first,
    /// then the cached entry is dropped.
    pub async fn written(&self, name: &ConfigName) {
        if let Some(cache) = &self.cache {
            cache.invalidate(name).await;
        }
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
