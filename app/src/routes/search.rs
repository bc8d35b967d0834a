//! `GET /search`.

use crate::domain::{SearchQuery, SearchResults};
use crate::errors::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{RawQuery, State};

/// `GET /search?name=NAME&data.KEY=VALUE...[&limit=N][&after=CURSOR]`:
/// one page of the matching elements, ordered by config name and then by
/// the element's index in `data`, as
/// `{"total": N, "results": [{"name", "data"}...], "next": CURSOR or null}`.
///
/// - `limit`: results per page, 1 to 1000, default 100.
/// - `after`: the `next` of the previous page (an opaque cursor naming the
///   last result it returned); the page starts right after it.
/// - `total`: the exact number of matches of the whole query, the same on
///   every page.
/// - `next`: `null` on the last page.
///
/// A bad `limit` or `after` is a 400 naming the parameter, like any other
/// bad search parameter.
pub async fn search(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<SearchResults>, ApiError> {
    let query = SearchQuery::parse(query.as_deref()).map_err(ApiError::BadQuery)?;
    Ok(Json(state.store.search(&query).await?))
}
