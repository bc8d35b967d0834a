//! `/imports` handlers: accept a bulk import (202, the items are written
//! by the workers, see [`crate::imports`]), and report on jobs. All of them
//! need the write token: a job's report names what was written.

use super::extract::{Authorized, is_json};
use crate::domain::import::{self, Envelope, EnvelopeError, ItemError, Job, Mode, SplitLimits};
use crate::domain::{QueryError, parse_query};
use crate::errors::{ApiError, REQUEST_ID};
use crate::imports::SubmitError;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

/// Content types of an NDJSON body (one item per line).
const NDJSON_TYPES: [&str; 4] = [
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
];

/// Default and largest page of `GET /imports`.
const JOBS_PAGE: (usize, usize) = (20, 100);
/// Default and largest page of a job's item errors.
const ERRORS_PAGE: (usize, usize) = (100, 1000);

/// `POST /imports?mode=create|upsert`: a JSON array or NDJSON of configs.
pub async fn submit(
    _: Authorized,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let mut mode = Mode::Create;
    for (key, value) in params(query.as_deref())? {
        match key.as_str() {
            "mode" => mode = Mode::parse(&value).map_err(|e| ApiError::BadQuery(QueryError::new("mode", e)))?,
            _ => {
                return Err(ApiError::BadQuery(QueryError::new(
                    key,
                    "unknown parameter (expected mode)",
                )));
            }
        }
    }
    let envelope = envelope(req.headers().get(header::CONTENT_TYPE))?;
    let settings = &state.imports.settings;
    // A full queue refuses before the body costs anything.
    if !state.imports.has_room().await? {
        return Err(ApiError::QueueFull(settings.max_queued));
    }
    let _slot = state
        .imports
        .parsing
        .acquire()
        .await
        .map_err(|_| ApiError::Internal("import parse slots closed".into()))?;
    let max = usize::try_from(settings.max_body.as_u64()).unwrap_or(usize::MAX);
    let body = Bytes::from_request(req, &state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(max)
        } else {
            ApiError::BadImport(rejection.body_text())
        }
    })?;
    let limits = SplitLimits {
        batch_size: settings.batch_size,
        max_item: state.max_body,
        max_items: settings.max_items,
    };
    // Parsing 16 MiB takes tens of milliseconds: not on a runtime thread.
    let batches = tokio::task::spawn_blocking(move || import::split(&body, envelope, limits))
        .await
        .map_err(|e| ApiError::Internal(format!("import parse task failed: {e}")))?
        .map_err(|e| match e {
            EnvelopeError::ItemTooLarge { .. } | EnvelopeError::TooManyItems { .. } => {
                ApiError::ItemTooLarge(e.to_string())
            }
            EnvelopeError::Malformed(_) | EnvelopeError::Empty => ApiError::BadImport(e.to_string()),
        })?;
    let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
    let job = state
        .imports
        .submit(mode, batches, request_id)
        .await
        .map_err(|e| match e {
            SubmitError::Full => ApiError::QueueFull(state.imports.settings.max_queued),
            SubmitError::Store(e) => e.into(),
        })?;
    let location = format!("/imports/{}", job.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(view(&job))).into_response())
}

/// `GET /imports?limit=`: recent jobs, newest first.
pub async fn list(
    _: Authorized,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut limit = JOBS_PAGE.0;
    for (key, value) in params(query.as_deref())? {
        match key.as_str() {
            "limit" => limit = page_size("limit", &value, JOBS_PAGE.1)?,
            _ => {
                return Err(ApiError::BadQuery(QueryError::new(
                    key,
                    "unknown parameter (expected limit)",
                )));
            }
        }
    }
    let jobs = state.imports.jobs.recent_jobs(limit).await?;
    Ok(Json(json!({ "imports": jobs.iter().map(view).collect::<Vec<_>>() })))
}

/// `GET /imports/{id}?errors_after=&errors_limit=`: a job, with a page of
/// its item errors by index.
pub async fn read(
    _: Authorized,
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (mut after, mut limit) = (None, ERRORS_PAGE.0);
    for (key, value) in params(query.as_deref())? {
        match key.as_str() {
            "errors_after" => {
                after = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| ApiError::BadQuery(QueryError::new("errors_after", "must be an item index")))?,
                );
            }
            "errors_limit" => limit = page_size("errors_limit", &value, ERRORS_PAGE.1)?,
            _ => {
                return Err(ApiError::BadQuery(QueryError::new(
                    key,
                    "unknown parameter (expected errors_after or errors_limit)",
                )));
            }
        }
    }
    let not_found = || ApiError::NotFound(format!("no import with id {id}"));
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let job = state.imports.jobs.job(&id).await?.ok_or_else(not_found)?;
    let errors: Vec<ItemError> = state.imports.jobs.item_errors(&id, after, limit).await?;
    let next = (errors.len() == limit)
        .then(|| errors.last().map(|e| e.index))
        .flatten();
    let mut body = view(&job);
    body["errors"] = json!(errors);
    body["next_errors_after"] = json!(next);
    Ok(Json(body))
}

/// The query's parameters, each at most once (like every other route).
fn params(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let pairs = parse_query(query).map_err(ApiError::BadQuery)?;
    for (i, (key, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(k, _)| k == key) {
            return Err(ApiError::BadQuery(QueryError::new(
                key.clone(),
                "is given more than once",
            )));
        }
    }
    Ok(pairs)
}

fn envelope(content_type: Option<&HeaderValue>) -> Result<Envelope, ApiError> {
    let essence = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if NDJSON_TYPES.contains(&essence.as_str()) {
        Ok(Envelope::Ndjson)
    } else if is_json(content_type) {
        Ok(Envelope::Array)
    } else {
        Err(ApiError::UnsupportedMediaType(
            "application/json (an array of configs) or application/x-ndjson (one config per line)",
        ))
    }
}

fn page_size(param: &'static str, value: &str, max: usize) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::BadQuery(QueryError::new(param, format!("must be an integer from 1 to {max}"))))
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A job as the API shows it.
fn view(job: &Job) -> Value {
    json!({
        "id": job.id,
        "state": job.state,
        "mode": job.mode,
        "total": job.total,
        "processed": job.counts.done(),
        "counts": job.counts,
        "created_at": time(job.created_at),
        "started_at": job.started_at.map(time),
        "finished_at": job.finished_at.map(time),
        "attempts": job.attempts,
        "error": job.error,
        "request_id": job.request_id,
        "location": format!("/imports/{}", job.id),
    })
}
