//! `/configs` handlers: parse, validate through `domain`, call the store,
//! keep the cache coherent (every write goes through [`AppState::write`],
//! which invalidates the cached entry even when the write's outcome is
//! unknown).

use super::extract::{Authorized, JsonBody, NameInPath};
use crate::domain::{self, Config, ListParams};
use crate::errors::ApiError;
use crate::state::AppState;
use crate::store::Replaced;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Read-modify-write attempts of a PATCH before giving up with 409.
const PATCH_ATTEMPTS: usize = 5;

/// `GET /configs?limit=&after=`: a page sorted by name and the cursor of the next.
pub async fn list(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let params = ListParams::parse(query.as_deref()).map_err(ApiError::BadQuery)?;
    let mut page = state.store.list(params.after.as_ref(), params.limit + 1).await?;
    let next = if page.len() > params.limit {
        page.truncate(params.limit);
        page.last().map(|c| c.name.clone())
    } else {
        None
    };
    Ok(Json(json!({ "configs": page, "next": next })).into_response())
}

/// `POST /configs`: 201 with `Location`.
pub async fn create(
    _: Authorized,
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let config = domain::new_config(body).map_err(ApiError::Invalid)?;
    let (store, name) = (state.store.clone(), config.name.clone());
    let config = state
        .write(&name, async move { store.insert(&config).await.map(|()| config) })
        .await?;
    tracing::info!(name = %config.name, "config created");
    let location = format!("/configs/{}", config.name);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(config)).into_response())
}

/// `GET /configs/{name}`, through the cache.
pub async fn read(State(state): State<AppState>, NameInPath(name): NameInPath) -> Result<Json<Config>, ApiError> {
    state
        .read_config(&name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no config named {name}")))
}

/// `PUT /configs/{name}`: replaces `data`; never creates.
pub async fn replace(
    _: Authorized,
    State(state): State<AppState>,
    NameInPath(name): NameInPath,
    JsonBody(body): JsonBody,
) -> Result<Json<Config>, ApiError> {
    let config = domain::replacement(&name, body).map_err(ApiError::Invalid)?;
    let store = state.store.clone();
    let replace = async move { store.replace(&config, None).await.map(|r| (r, config)) };
    match state.write(&name, replace).await? {
        (Replaced::Done, config) => Ok(Json(config)),
        (Replaced::NotFound | Replaced::Changed, _) => Err(ApiError::NotFound(format!("no config named {name}"))),
    }
}

/// `PATCH /configs/{name}`: JSON Merge Patch, applied with compare-and-swap
/// so a concurrent writer's change is never silently overwritten.
pub async fn patch(
    _: Authorized,
    State(state): State<AppState>,
    NameInPath(name): NameInPath,
    JsonBody(patch): JsonBody,
) -> Result<Json<Config>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no config named {name}"));
    for _ in 0..PATCH_ATTEMPTS {
        let current = state.store.get(&name).await?.ok_or_else(not_found)?;
        let updated = domain::merge_patch(&current, &patch).map_err(ApiError::Invalid)?;
        let store = state.store.clone();
        let swap = async move { store.replace(&updated, Some(&current)).await.map(|r| (r, updated)) };
        match state.write(&name, swap).await? {
            (Replaced::Done, updated) => return Ok(Json(updated)),
            (Replaced::NotFound, _) => return Err(not_found()),
            (Replaced::Changed, _) => continue,
        }
    }
    Err(ApiError::Conflict(
        "the config kept changing concurrently; retry".into(),
    ))
}

/// `DELETE /configs/{name}`: 204.
pub async fn remove(
    _: Authorized,
    State(state): State<AppState>,
    NameInPath(name): NameInPath,
) -> Result<StatusCode, ApiError> {
    let (store, target) = (state.store.clone(), name.clone());
    if state.write(&name, async move { store.delete(&target).await }).await? {
        tracing::info!(%name, "config deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no config named {name}")))
    }
}
