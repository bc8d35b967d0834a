//! `GET /search`.

use crate::domain::SearchQuery;
use crate::errors::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::{Value, json};

/// `GET /search?name=NAME&data.KEY=VALUE...`: the matching elements.
pub async fn search(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    let query = SearchQuery::parse(query.as_deref()).map_err(ApiError::BadQuery)?;
    let candidates = state.store.search_candidates(&query).await?;
    let results = query.results(candidates);
    Ok(Json(json!({ "total": results.len(), "results": results })))
}
