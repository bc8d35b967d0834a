//! The HTTP surface: the API router (with its layers ordered in one place)
//! and the admin router (metrics, never on the API port).

mod configs;
mod extract;
mod health;
mod imports;
mod search;

use crate::errors::{ApiError, REQUEST_ID};
use crate::state::AppState;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::time::Instant;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use shared::request_id::HEADER as X_REQUEST_ID;

/// The API router with its middleware, outermost first.
pub fn api(state: AppState) -> Router {
    let max_body = state.max_body;
    let max_import = usize::try_from(state.imports.settings.max_body.as_u64()).unwrap_or(usize::MAX);
    Router::new()
        // Imports have their own body bound; this layer, inside the
        // router-wide one below, takes precedence on these routes.
        .route(
            "/imports",
            post(imports::submit)
                .get(imports::list)
                .layer(DefaultBodyLimit::max(max_import)),
        )
        .route("/imports/{id}", get(imports::read))
        .route("/configs", get(configs::list).post(configs::create))
        .route("/configs/", get(configs::list).post(configs::create))
        .route(
            "/configs/{name}",
            get(configs::read)
                .put(configs::replace)
                .patch(configs::patch)
                .delete(configs::remove),
        )
        .route("/search", get(search::search))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/version", get(health::version))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                // Outermost: every later layer, log line and problem body sees the id.
                .layer(middleware::from_fn(request_id))
                // A span per request carrying the id, so store and cache events inherit it.
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(&X_REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }))
                // Counts what clients actually received, errors included.
                .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
                // Bounds bodies before any extractor buffers them (413).
                .layer(DefaultBodyLimit::max(max_body)),
        )
        .with_state(state)
}

/// The admin router: `/metrics` in Prometheus text format, and `/healthz`.
pub fn admin(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::healthz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such path".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Takes the client's `X-Request-Id` when safe (see `shared::request_id`),
/// else makes one; sets it on the request and the response and scopes it
/// for problem bodies.
async fn request_id(mut req: Request, next: Next) -> Response {
    let value = shared::request_id::accept_or_generate(req.headers().get(&X_REQUEST_ID));
    let id = shared::request_id::text(&value).to_string();
    req.headers_mut().insert(X_REQUEST_ID.clone(), value.clone());
    let mut response = REQUEST_ID.scope(id, next.run(req)).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    response
}

async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let response = next.run(req).await;
    state.metrics.observe_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
