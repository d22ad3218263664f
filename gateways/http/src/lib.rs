//! # herald-http
//!
//! Herald's HTTP API, for backends: publish (one message or a batch), read
//! history, check health. Every error is the kit's JSON `{"code","message"}`
//! with the HTTP status that fits it; the codes are the protocol's
//! (`docs/protocol.md`).
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/publish` | `{"subject","data"}` → `{"pos"}`; or `{"messages":[...]}` → `{"positions":[...]}`, all or nothing |
//! | `GET /v1/history?subject=&since=&limit=` | retained messages, oldest first |
//! | `GET /v1/presence?subject=` | who is present: exact count, first members |
//! | `GET /healthz` | `{"status":"ok"}`, with the cluster bridge's state in cluster mode |
//! | `GET /readyz` | 200 `{"status":"ready"}`, or 503 while draining (`draining`) or while the cluster bridge is not connected |
//!
//! Credentials: `Authorization: Bearer <api key or user token>`. Without
//! one, only what anonymous access allows (by default: nothing).
//!
//! A publish is checked before its body is read: the content type must be
//! JSON (a browser sends a cross-origin `text/plain` POST without asking
//! first; requiring JSON makes it ask), then the credential, then the
//! declared length. Only then is the body read, within `max_body` and
//! `body_read_timeout`: a client without a key cannot make the server hold
//! a body, and nobody can make it wait for one for ever.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use herald_broker::{Encoding, Envelope, Outbound, Payload, Publisher, Reply, Session, Transport};
use herald_gateway::credentials::bearer;
use herald_gateway::reads::read_history;
use herald_gateway::{GatewayContext, HttpError, QueryParams};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The `[http]` section of the configuration, with its comments.
pub const DEFAULT_CONFIG: &str = include_str!("http.default.toml");

/// Limits of the HTTP API: the `[http]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    #[serde(
        rename = "max_body",
        deserialize_with = "herald_broker::units::size::deserialize"
    )]
    pub max_body_bytes: usize,
    /// Most messages in one batch publish.
    pub max_batch: usize,
    /// Longest a request body may take to arrive once its headers have.
    #[serde(with = "herald_broker::units::duration")]
    pub body_read_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            body_read_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpConfig {
    /// Checks the settings; the message names the keys.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 || self.max_batch == 0 || self.body_read_timeout.is_zero() {
            return Err("http.max_body, http.max_batch and http.body_read_timeout must be positive".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Api {
    context: GatewayContext,
    config: HttpConfig,
}

/// The API's routes.
pub fn router(context: GatewayContext, config: HttpConfig) -> Router {
    Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/history", get(history))
        .route("/v1/presence", get(presence))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .with_state(Arc::new(Api { context, config }))
}

/// `/healthz` and `/readyz` alone: for the admin listener.
pub fn health_router(context: GatewayContext) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .with_state(Arc::new(Api {
            context,
            config: HttpConfig::default(),
        }))
}

impl Api {
    /// A session with the caller's access; used for one request.
    fn session(&self, headers: &HeaderMap) -> Result<Session, HttpError> {
        let access = self.context.authenticate(headers, &QueryParams::default())?;
        Ok(Session::on(Transport::Http, &self.context.broker, access))
    }

    /// The caller's publisher: its access and publish budget, no session.
    fn publisher(&self, headers: &HeaderMap) -> Result<Publisher, HttpError> {
        let access = self.context.authenticate(headers, &QueryParams::default())?;
        Ok(Publisher::new(Transport::Http, &self.context.broker, access))
    }

    /// Publishing without a key, when anonymous publishing is off, is a
    /// missing credential (401), not a refused one (403).
    fn check_may_publish(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        if bearer(headers)?.is_none() && !self.context.auth.anonymous_may_publish() {
            return Err(herald_broker::AuthError::Missing.into());
        }
        Ok(())
    }

    /// Reads a request body once the request has been let in: refused at
    /// once if it declares more than `max_body`, cut off past it, and
    /// abandoned after `body_read_timeout`.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, HttpError> {
        let max = self.config.max_body_bytes;
        let too_large =
            || HttpError::payload_too_large("body_too_large", format!("the body limit is {max} bytes"));
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max as u64) {
            return Err(too_large());
        }
        let timeout = self.config.body_read_timeout;
        match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(error)) => {
                let over_limit = std::error::Error::source(&error)
                    .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
                if over_limit {
                    Err(too_large())
                } else {
                    Err(HttpError::bad_request("unreadable_body", error.to_string()))
                }
            }
            Err(_elapsed) => Err(HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the body did not arrive within {timeout:?}"),
            )),
        }
    }
}

/// A publish must say it is JSON: `application/json`, parameters allowed.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), HttpError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        return Ok(());
    }
    Err(HttpError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "a publish is JSON: send it with Content-Type: application/json",
    ))
}

/// Liveness: 200 while the process answers, whatever its dependencies
/// say (a node cut off from its cluster still serves its own clients);
/// their state is in the body.
async fn health(State(api): State<Arc<Api>>) -> Json<serde_json::Value> {
    Json(api.context.health.body("ok"))
}

/// Readiness: 200 once every dependency is ready (in cluster mode: the
/// bridge is connected and caught up), 503 otherwise and while draining,
/// so a load balancer sends new clients elsewhere.
async fn ready(State(api): State<Arc<Api>>) -> Response {
    let health = &api.context.health;
    if api.context.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(health.body("draining"))).into_response();
    }
    match health.is_ready() {
        true => Json(health.body("ready")).into_response(),
        false => (StatusCode::SERVICE_UNAVAILABLE, Json(health.body("not_ready"))).into_response(),
    }
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

/// A publish body, read: one message or a batch.
#[derive(Debug)]
pub enum Publish {
    One(String, Payload),
    Batch(Vec<(String, Payload)>),
}

/// Reads a publish body (`{"subject","data"}` or `{"messages":[..]}`): the
/// shape, each payload, and the batch size against `max_batch`. Subjects
/// and permissions are the session's to check.
pub fn parse_publish(body: &Bytes, max_batch: usize) -> Result<Publish, HttpError> {
    let parsed: PublishBody<'_> = serde_json::from_slice(body)
        .map_err(|error| HttpError::bad_request("malformed_body", format!("{PUBLISH_SHAPE}: {error}")))?;
    match parsed {
        PublishBody {
            subject: Some(subject),
            data: Some(data),
            messages: None,
        } => Ok(Publish::One(
            subject,
            Payload::from_validated_json(body, data.get())?,
        )),
        PublishBody {
            subject: None,
            data: None,
            messages: Some(messages),
        } => {
            if messages.len() > max_batch {
                return Err(HttpError::payload_too_large(
                    "batch_too_large",
                    format!(
                        "{} messages in one batch; the limit is {max_batch}",
                        messages.len()
                    ),
                ));
            }
            let batch = messages
                .into_iter()
                .enumerate()
                .map(|(index, message)| {
                    let payload = Payload::from_validated_json(body, message.data.get())
                        .map_err(|error| HttpError::from(error).at_index(index))?;
                    Ok((message.subject, payload))
                })
                .collect::<Result<_, HttpError>>()?;
            Ok(Publish::Batch(batch))
        }
        _ => Err(HttpError::bad_request("malformed_body", PUBLISH_SHAPE)),
    }
}

async fn publish(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Result<Response, HttpError> {
    let answer = publish_counted(&api, headers, body).await;
    let outcome = answer.as_ref().map(drop).map_err(|error| error.code);
    api.context
        .broker
        .stats()
        .command(Transport::Http, "pub", outcome);
    answer
}

async fn publish_counted(api: &Api, headers: HeaderMap, body: Body) -> Result<Response, HttpError> {
    check_json_content_type(&headers)?;
    api.check_may_publish(&headers)?;
    let _in_flight = api.context.broker.stats().open_request(Transport::Http);
    let publisher = api.publisher(&headers)?;
    let body = api.read_body(&headers, body).await?;
    match parse_publish(&body, api.config.max_batch)? {
        Publish::One(subject, payload) => {
            let (done, position) = acknowledgement();
            publisher.submit(&subject, payload, Envelope::default(), None, done)?;
            let position = position.await?;
            Ok(Json(serde_json::json!({ "pos": token(position) })).into_response())
        }
        Publish::Batch(batch) if !api.context.broker.is_clustered() => {
            let positions: Vec<_> = publisher.publish_batch(batch)?.into_iter().map(Some).collect();
            Ok(
                Json(
                    serde_json::json!({ "positions": positions.into_iter().map(token).collect::<Vec<_>>() }),
                )
                .into_response(),
            )
        }
        // A cluster orders each message on its own: the batch is checked
        // whole, then sent in order; positions are consecutive only when no
        // other node published in between.
        Publish::Batch(batch) => {
            let mut pending = Vec::with_capacity(batch.len());
            publisher.submit_batch(batch, |_| {
                let (done, position) = acknowledgement();
                pending.push(position);
                done
            })?;
            let mut positions = Vec::with_capacity(pending.len());
            for position in pending {
                positions.push(token(position.await?));
            }
            Ok(Json(serde_json::json!({ "positions": positions })).into_response())
        }
    }
}

/// A position as the publish reply shows it: its token, or null when the
/// cluster's acknowledgement policy does not wait for one (`sent`).
fn token(position: Option<herald_broker::Position>) -> serde_json::Value {
    position.map_or(serde_json::Value::Null, |position| {
        position.token().as_str().into()
    })
}

/// An acknowledgement to submit with a message, and the wait for it:
/// immediate on a single node, the cluster's answer on a clustered one.
fn acknowledgement() -> (
    herald_broker::Acknowledgement,
    impl std::future::Future<Output = Result<Option<herald_broker::Position>, HttpError>>,
) {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let done: herald_broker::Acknowledgement = Box::new(move |result| {
        let _ = sender.send(result);
    });
    let position = async move {
        match receiver.await {
            Ok(result) => result.map_err(HttpError::from),
            Err(_) => Err(HttpError::from(herald_broker::ClusterError::Unavailable {
                state: "stopped",
            })),
        }
    };
    (done, position)
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
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let session = api.session(&headers)?;
    let query = query_of(query)?;
    let wide = herald_broker::names_wildcards(&query.subject);
    let page = read_history(wide, move || {
        session.history(&query.subject, query.since.as_deref(), query.limit)
    })
    .await?;
    Ok(json_reply(Reply::History {
        id: None,
        subject: page.subject,
        gap: page.gap,
        messages: page.messages,
    }))
}

#[derive(Deserialize)]
struct PresenceQuery {
    subject: String,
}

/// `{"op":"presence","subject":..,"count":..,"members":[{"user","info"}],"truncated":..}`:
/// the same body as the protocol's `presence` event.
async fn presence(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let session = api.session(&headers)?;
    let query = query_of(query)?;
    let (count, members) = session.presence(&query.subject)?;
    Ok(json_reply(Reply::Presence {
        id: None,
        subject: query.subject,
        count,
        members,
    }))
}

/// A query string, or 400 `invalid_query` saying what is wrong with it.
fn query_of<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, HttpError> {
    query
        .map(|Query(query)| query)
        .map_err(|rejection| HttpError::bad_request("invalid_query", rejection.body_text()))
}

/// A protocol reply as the JSON body: the bytes a WebSocket client gets.
fn json_reply(reply: Reply) -> Response {
    let body = Outbound::Reply(Box::new(reply)).encode(Encoding::Json);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
