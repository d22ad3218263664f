//! # herald-http
//!
//! Herald's HTTP API, for backends: publish (one message or a batch), read
//! history, check health. Every error is JSON `{"code","message"}` with the
//! HTTP status that fits it; the codes are the protocol's
//! (`docs/protocol.md`).
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/publish` | `{"subject","data"}` → `{"pos"}`; or `{"messages":[...]}` → `{"positions":[...]}` |
//! | `GET /v1/history?subject=&since=&limit=` | retained messages, oldest first |
//! | `GET /healthz` | `{"status":"ok"}` |
//!
//! Credentials: `Authorization: Bearer <api key>`. Without one, only what
//! anonymous access allows (by default: reading history, not publishing).

mod error;

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use herald_broker::{Access, Authenticator, Broker, Payload, Session};
use serde::Deserialize;
use serde_json::value::RawValue;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::ApiError;

/// Limits and browser access of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most messages in one batch publish.
    pub max_batch: usize,
    /// Origins allowed to call the API from a browser; `*` allows any.
    /// Empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Api {
    broker: Arc<Broker>,
    auth: Arc<Authenticator>,
    config: HttpConfig,
}

/// The API's routes.
pub fn router(broker: Arc<Broker>, auth: Arc<Authenticator>, config: HttpConfig) -> Router {
    let cors = cors_layer(&config.cors_origins);
    let body_limit = config.max_body_bytes;
    let api = Arc::new(Api { broker, auth, config });
    let router = Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/history", get(history))
        .route("/healthz", get(health))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(api);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
            ]),
    )
}

impl Api {
    /// A session with the caller's access; used for one request.
    fn session(&self, headers: &HeaderMap) -> Result<Session, ApiError> {
        let access: Arc<dyn Access> = self.auth.authenticate(bearer_token(headers))?;
        Ok(self.broker.session(access))
    }

    /// Publishing without a key, when anonymous publishing is off, is a
    /// missing credential (401), not a refused one (403).
    fn check_may_publish(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if bearer_token(headers).is_none() && !self.auth.anonymous_may_publish() {
            return Err(herald_broker::AuthError::Missing.into());
        }
        Ok(())
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    herald_broker::auth::bearer_credential(value)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Deserialize)]
struct PublishOne<'a> {
    subject: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Either one message (`subject`, `data`) or a batch (`messages`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(default)]
    subject: Option<String>,
    /// Present-but-null is a valid payload, so presence is tracked apart.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<Vec<PublishOne<'a>>>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

const PUBLISH_SHAPE: &str =
    r#"expected {"subject":..,"data":..} or {"messages":[{"subject":..,"data":..},..]}"#;

async fn publish(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    api.check_may_publish(&headers)?;
    let session = api.session(&headers)?;
    let body = body.map_err(ApiError::from_body_rejection)?;
    let parsed: PublishBody<'_> = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request("malformed_body", format!("{PUBLISH_SHAPE}: {error}")))?;
    match parsed {
        PublishBody {
            subject: Some(subject),
            data: Some(data),
            messages: None,
        } => {
            let payload = Payload::from_validated_json(&body, data.get());
            let position = session.publish(&subject, payload)?;
            Ok(Json(serde_json::json!({ "pos": position.token().as_str() })).into_response())
        }
        PublishBody {
            subject: None,
            data: None,
            messages: Some(messages),
        } => {
            if messages.len() > api.config.max_batch {
                return Err(ApiError::payload_too_large(
                    "batch_too_large",
                    format!(
                        "{} messages in one batch; the limit is {}",
                        messages.len(),
                        api.config.max_batch
                    ),
                ));
            }
            // Check the whole batch before publishing any of it, so a bad
            // message does not leave the batch half-published.
            for (index, message) in messages.iter().enumerate() {
                session
                    .check_publish(&message.subject, message.data.get().len())
                    .map_err(|error| ApiError::from(error).at_index(index))?;
            }
            let mut positions = Vec::with_capacity(messages.len());
            for (index, message) in messages.iter().enumerate() {
                let payload = Payload::from_validated_json(&body, message.data.get());
                let position = session
                    .publish(&message.subject, payload)
                    .map_err(|error| ApiError::from(error).at_index(index))?;
                positions.push(position.token().to_string());
            }
            Ok(Json(serde_json::json!({ "positions": positions })).into_response())
        }
        _ => Err(ApiError::bad_request("malformed_body", PUBLISH_SHAPE)),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    subject: String,
    since: Option<String>,
    limit: Option<usize>,
}

async fn history(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let session = api.session(&headers)?;
    let Query(query) =
        query.map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))?;
    let page = session.history(&query.subject, query.since.as_deref(), query.limit)?;
    let reply = herald_broker::Outbound::Reply(Box::new(herald_broker::Reply::History {
        id: None,
        subject: page.subject,
        gap: page.gap,
        messages: page.messages,
    }));
    let body = reply.encode(herald_broker::Encoding::Json);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}
