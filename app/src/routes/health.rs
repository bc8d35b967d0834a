//! Probes: liveness, readiness with per-dependency checks, and version.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

/// `GET /healthz`: 200 while the process serves.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: `ready` (200), `degraded` (200, cache down) or 503 when
/// the store is unreachable or the app is shutting down. The answer says
/// which dependency is down, never the driver's message (host names,
/// addresses: the probe is reachable through the gateway); that is logged.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = match state.store.ping().await {
        Ok(()) => json!({ "status": "up", "kind": state.store.kind() }),
        Err(error) => {
            tracing::warn!(%error, "readiness: the store does not answer");
            json!({ "status": "down", "kind": state.store.kind() })
        }
    };
    let cache = match &state.cache {
        None => json!({ "status": "disabled" }),
        Some(cache) => match cache.ping().await {
            Ok(()) => json!({ "status": "up" }),
            Err(error) => {
                tracing::warn!(%error, "readiness: the cache does not answer");
                json!({ "status": "down" })
            }
        },
    };
    let store_up = store["status"] == "up";
    let cache_down = cache["status"] == "down";
    let draining = state.is_draining();
    let (code, status) = match (draining, store_up, cache_down) {
        (true, _, _) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        (false, false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (false, true, true) => (StatusCode::OK, "degraded"),
        (false, true, false) => (StatusCode::OK, "ready"),
    };
    (
        code,
        Json(json!({ "status": status, "checks": { "store": store, "cache": cache } })),
    )
}

/// `GET /version`.
pub async fn version() -> Json<Value> {
    Json(json!({
        "name": "app",
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("GIT_COMMIT"),
    }))
}
