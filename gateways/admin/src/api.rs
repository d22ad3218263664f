//! The admin routes: every one but `/dashboard` (a page with no data in
//! it) takes the admin key as `Authorization: Bearer <key>`; `/metrics`
//! may be opened with `public_metrics`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use herald_broker::{CloseReason, Subject};
use herald_gateway::credentials::bearer;
use herald_gateway::{GatewayContext, HttpError, QueryParams};

use crate::AdminConfig;

/// Most entries one list answers.
const MAX_LIMIT: usize = 10_000;

#[derive(Debug)]
struct Admin {
    context: GatewayContext,
    config: AdminConfig,
}

/// The admin routes, `/metrics` and `/dashboard`.
pub fn router(context: GatewayContext, config: AdminConfig) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/admin/subjects", get(subjects))
        .route("/v1/admin/connections", get(connections))
        .route("/v1/admin/users/{user}/connections", delete(disconnect_user))
        .route("/v1/admin/history", delete(clear_history))
        .route("/v1/admin/drain", post(drain))
        .route("/dashboard", get(dashboard))
        .with_state(Arc::new(Admin { context, config }))
}

impl Admin {
    /// The admin key, or why not: 404 while the admin API is off, 401
    /// without the key or with another.
    fn check_key(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        if !self.config.is_enabled() {
            return Err(admin_disabled());
        }
        match bearer(headers)? {
            Some(key) if self.context.auth.is_operator_key(key) => Ok(()),
            Some(_) => Err(HttpError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credential",
                "this is not the admin key",
            )),
            None => Err(HttpError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin API takes the admin key: Authorization: Bearer <admin.key>",
            )),
        }
    }
}

fn admin_disabled() -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "admin_disabled",
        "the admin API and the dashboard are off: set admin.key",
    )
}

fn limit_of(query: &QueryParams) -> Result<usize, HttpError> {
    match query.one("limit") {
        None => Ok(100),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                HttpError::bad_request(
                    "invalid_query",
                    format!("limit={text:?}: expected a number from 1 to {MAX_LIMIT}"),
                )
            }),
    }
}

async fn metrics(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Result<Response, HttpError> {
    if !admin.config.public_metrics {
        admin.check_key(&headers)?;
    }
    let text = crate::metrics::render(&admin.context);
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// `?prefix=` (subjects starting with it), `?limit=` (100): the subjects
/// with the most subscribers first, then the largest histories.
async fn subjects(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    query: QueryParams,
) -> Result<Json<serde_json::Value>, HttpError> {
    admin.check_key(&headers)?;
    let limit = limit_of(&query)?;
    let prefix = query.one("prefix").unwrap_or("");
    let mut subjects = admin.context.broker.subjects();
    subjects.retain(|info| info.subject.starts_with(prefix));
    subjects.sort_by(|a, b| {
        (b.subscribers, b.history_bytes, &a.subject).cmp(&(a.subscribers, a.history_bytes, &b.subject))
    });
    let total = subjects.len();
    subjects.truncate(limit);
    Ok(Json(serde_json::json!({ "total": total, "subjects": subjects })))
}

/// `?user=` (one user's), `?limit=` (100): open streaming connections,
/// oldest first.
async fn connections(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    query: QueryParams,
) -> Result<Json<serde_json::Value>, HttpError> {
    admin.check_key(&headers)?;
    let limit = limit_of(&query)?;
    let mut connections = admin.context.broker.list_connections(query.one("user"));
    let total = connections.len();
    connections.truncate(limit);
    Ok(Json(
        serde_json::json!({ "total": total, "connections": connections }),
    ))
}

async fn disconnect_user(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, HttpError> {
    admin.check_key(&headers)?;
    let disconnected = admin.context.broker.disconnect_user(&user, &CloseReason::Removed);
    tracing::warn!(%user, disconnected, "admin: user disconnected");
    Ok(Json(
        serde_json::json!({ "user": user, "disconnected": disconnected }),
    ))
}

/// `?subject=` (one exact subject).
async fn clear_history(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    query: QueryParams,
) -> Result<Json<serde_json::Value>, HttpError> {
    admin.check_key(&headers)?;
    let Some(subject) = query.one("subject") else {
        return Err(HttpError::bad_request(
            "invalid_query",
            "name the subject: ?subject=...",
        ));
    };
    let limits = &admin.context.broker.config().subject_limits;
    let subject = Subject::parse(subject, limits)
        .map_err(|error| HttpError::bad_request("invalid_subject", format!("{subject:?}: {error}")))?;
    let cleared = admin.context.broker.clear_history(subject.as_str());
    tracing::warn!(subject = subject.as_str(), cleared, "admin: history cleared");
    Ok(Json(
        serde_json::json!({ "subject": subject.as_str(), "cleared": cleared }),
    ))
}

async fn drain(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Result<Response, HttpError> {
    admin.check_key(&headers)?;
    let already = admin.context.draining.is_cancelled();
    if !already {
        tracing::warn!("admin: drain requested");
        admin.context.draining.cancel();
    }
    let body = serde_json::json!({ "status": "draining", "already": already });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The page holds no data: it asks for the key, then reads everything
/// through the key-checked feed.
async fn dashboard(State(admin): State<Arc<Admin>>) -> Result<Response, HttpError> {
    if !admin.config.is_enabled() {
        return Err(admin_disabled());
    }
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        // The page runs only its own script and talks only to this server.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src data:",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    Ok((headers, include_str!("dashboard.html")).into_response())
}
