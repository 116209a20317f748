//! The admin API, `/admin/v1/…`: JSON over bearer admin keys ([`super::access`]), every
//! operation one call into [`crate::admin`], errors in the API's one JSON error shape. The
//! OpenAPI 3.1 document is `docs/admin-openapi.json`, served at `/admin/v1/openapi.json`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use crate::admin::erase::ErasureReport;
use crate::admin::views::{
    AccessLog, CallDetail, CallPage, CallerView, ExportDocument, decode_cursor, page_size,
};
use crate::admin::{Actor, Admin, AdminError, parse_time};
use crate::error::ApiError;
use crate::http::access::AdminName;
use crate::state::AppState;
use crate::storage::admin::CallFilter;

/// The checked-in OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../../docs/admin-openapi.json");

/// The admin routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/openapi.json", get(openapi))
        .route("/admin/v1/calls", get(list_calls))
        .route("/admin/v1/calls/{session_id}", get(call))
        .route("/admin/v1/callers/{phone}", get(caller).delete(erase))
        .route("/admin/v1/callers/{phone}/export", get(export))
        .route("/admin/v1/callers/{phone}/access-log", get(access_log))
}

fn admin(state: &AppState) -> Admin<'_> {
    Admin {
        store: state.store.as_ref(),
        settings: &state.settings,
        journal: Some(state.engine.journal()),
        engine: Some(&state.engine),
    }
}

fn actor(name: &AdminName) -> Actor {
    Actor::Admin(name.0.clone())
}

/// A query string, its rejection in the API's error shape.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
}

/// A path parameter, its rejection in the API's error shape.
fn path(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
}

fn time(
    param: &'static str,
    raw: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, AdminError> {
    raw.map(|raw| parse_time(param, raw)).transpose()
}

fn invalid(param: &'static str, message: String) -> AdminError {
    AdminError::Invalid { param, message }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /admin/v1/calls` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    caller: Option<String>,
    assistant: Option<String>,
    platform: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

fn limit(raw: Option<&str>) -> Result<u32, AdminError> {
    let n = raw
        .map(|raw| {
            raw.trim()
                .parse::<u32>()
                .map_err(|_| invalid("limit", "limit must be a whole number".into()))
        })
        .transpose()?;
    page_size(n)
}

async fn list_calls(
    State(state): State<AppState>,
    Extension(name): Extension<AdminName>,
    q: Result<Query<CallsQuery>, QueryRejection>,
) -> Result<Json<CallPage>, ApiError> {
    let q = query(q)?;
    let admin = admin(&state);
    let caller_id = match q.caller.as_deref() {
        Some(raw) => {
            let key = admin.subject(raw, "caller")?;
            match state.store.get_caller_by_phone(&key).await? {
                Some(caller) => Some(caller.caller_id),
                // Nobody: an empty page, not every call.
                None => {
                    return Ok(Json(CallPage {
                        calls: Vec::new(),
                        next_cursor: None,
                    }));
                }
            }
        }
        None => None,
    };
    let filter = CallFilter {
        caller_id,
        assistant_id: q.assistant,
        platform: q
            .platform
            .map(|p| {
                p.parse().map_err(|_| {
                    invalid(
                        "platform",
                        "platform must be vapi, elevenlabs, retell or generic".into(),
                    )
                })
            })
            .transpose()?,
        status: q
            .status
            .map(|s| {
                s.parse().map_err(|_| {
                    invalid(
                        "status",
                        "status must be active, completed, ended or dropped".into(),
                    )
                })
            })
            .transpose()?,
        since: time("since", q.since.as_deref())?,
        until: time("until", q.until.as_deref())?,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: limit(q.limit.as_deref())?,
    };
    Ok(Json(admin.list_calls(&actor(&name), &filter).await?))
}

async fn call(
    State(state): State<AppState>,
    Extension(name): Extension<AdminName>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<CallDetail>, ApiError> {
    let raw = path(p)?;
    let session_id = Uuid::try_parse(&raw).map_err(|_| {
        invalid(
            "session_id",
            format!("{raw:?} is not a session id (a UUID)"),
        )
    })?;
    Ok(Json(admin(&state).call(&actor(&name), session_id).await?))
}

/// `GET /admin/v1/callers/{phone}` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

async fn caller(
    State(state): State<AppState>,
    Extension(name): Extension<AdminName>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<CallerView>, ApiError> {
    let (raw, q) = (path(p)?, query(q)?);
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = limit(q.limit.as_deref())?;
    Ok(Json(
        admin(&state)
            .caller(&actor(&name), &raw, after, limit)
            .await?,
    ))
}

async fn export(
    State(state): State<AppState>,
    Extension(name): Extension<AdminName>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<ExportDocument>, ApiError> {
    let raw = path(p)?;
    Ok(Json(admin(&state).export(&actor(&name), &raw).await?))
}

/// `DELETE /admin/v1/callers/{phone}` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseQuery {
    force: Option<String>,
}

async fn erase(
    State(state): State<AppState>,
    Extension(name): Extension<AdminName>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<EraseQuery>, QueryRejection>,
) -> Result<Json<ErasureReport>, ApiError> {
    let (raw, q) = (path(p)?, query(q)?);
    let force = match q.force.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(invalid("force", "force must be true or false".into()).into()),
    };
    Ok(Json(admin(&state).erase(&actor(&name), &raw, force).await?))
}

/// `GET /admin/v1/callers/{phone}/access-log` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessQuery {
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

async fn access_log(
    State(state): State<AppState>,
    Extension(name): Extension<AdminName>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<AccessQuery>, QueryRejection>,
) -> Result<Json<AccessLog>, ApiError> {
    let (raw, q) = (path(p)?, query(q)?);
    let window = (
        time("since", q.since.as_deref())?,
        time("until", q.until.as_deref())?,
    );
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>().map_err(|_| {
                invalid(
                    "cursor",
                    "cursor must be a next_cursor value returned by this API".into(),
                )
            })
        })
        .transpose()?;
    let limit = limit(q.limit.as_deref())?;
    Ok(Json(
        admin(&state)
            .access_log(&actor(&name), &raw, window, after, limit)
            .await?,
    ))
}
