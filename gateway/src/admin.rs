//! The admin listener (never published): `/healthz` (the process serves),
//! `/readyz` (not draining and at least one upstream replica available) and
//! `/metrics` (Prometheus text).

use crate::metrics::Metrics;
use crate::reload::Reloader;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// The configuration in force (its upstreams).
    pub reloader: Arc<Reloader>,
    /// Set when shutdown begins.
    pub draining: Arc<AtomicBool>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let current = state.reloader.upstreams();
    let upstreams: serde_json::Map<String, serde_json::Value> = current
        .iter()
        .map(|u| {
            (
                u.name.clone(),
                json!({ "available": u.available_count(), "total": u.endpoints().len() }),
            )
        })
        .collect();
    let any_available = current.iter().any(|u| u.available_count() > 0);
    let draining = state.draining.load(Ordering::Acquire);
    let (code, status) = match (draining, any_available) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
        (false, true) => (StatusCode::OK, "ready"),
    };
    (code, Json(json!({ "status": status, "upstreams": upstreams })))
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}
