//! # herald-websocket
//!
//! Herald's WebSocket gateway: `GET /ws` upgrades to a WebSocket whose
//! frames are the client protocol (`docs/protocol.md`), JSON text frames by
//! default or MessagePack binary frames when the client asks for the
//! `herald.msgpack` subprotocol. It owns only the transport: decoding frames
//! into commands for a broker [`Session`], writing what the session's outbox
//! yields, heartbeats, limits and closing with a reason. No routing happens
//! here.
//!
//! Each connection is one task that reads and writes concurrently: the
//! reader decodes every frame and hands it to the session; the writer waits
//! for the outbox, takes everything queued, feeds it to the socket and
//! flushes once per batch.

mod connection;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_broker::{Authenticator, Broker, Encoding};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Subprotocol selecting MessagePack binary frames.
pub const MSGPACK_PROTOCOL: &str = "herald.msgpack";
/// Subprotocol selecting JSON text frames (also the default without one).
pub const JSON_PROTOCOL: &str = "herald.json";

/// Limits and timers of the WebSocket gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketConfig {
    /// Largest command frame answered normally; a larger one gets an
    /// `err` with code `frame_too_large` and the connection stays open.
    pub max_frame_bytes: usize,
    /// Frames beyond this size are not even read: the connection is closed
    /// with 1009 (message too big).
    pub hard_frame_limit_bytes: usize,
    /// How often the server pings.
    pub heartbeat_interval: Duration,
    /// A connection from which nothing (not even a pong) arrives for this
    /// long is considered dead and dropped.
    pub idle_timeout: Duration,
    /// A flush that takes longer than this means the client stopped
    /// reading: the connection is closed as a slow consumer.
    pub write_timeout: Duration,
    /// Commands a connection may send per second before it is closed for
    /// flooding (counted over one-second windows).
    pub max_commands_per_second: u32,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            hard_frame_limit_bytes: 1024 * 1024,
            heartbeat_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(50),
            write_timeout: Duration::from_secs(10),
            max_commands_per_second: 1000,
        }
    }
}

/// What the gateway needs from the process that runs it.
#[derive(Debug, Clone)]
pub struct WebSocketGateway {
    pub broker: Arc<Broker>,
    pub auth: Arc<Authenticator>,
    pub config: WebSocketConfig,
    /// Cancelled when the server shuts down: every connection then closes
    /// with 1001 (going away).
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them to finish.
    pub connections: TaskTracker,
}

/// The gateway's routes: `GET /ws`.
pub fn router(gateway: WebSocketGateway) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .with_state(Arc::new(gateway))
}

#[derive(Deserialize)]
struct ConnectParams {
    /// API key, for browsers that cannot set an Authorization header.
    token: Option<String>,
}

async fn upgrade(
    State(gateway): State<Arc<WebSocketGateway>>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if gateway.shutdown.is_cancelled() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        );
    }
    let credential = bearer_token(&headers).or(params.token.as_deref());
    let access = match gateway.auth.authenticate(credential) {
        Ok(access) => access,
        Err(error) => return error_response(StatusCode::UNAUTHORIZED, error.code(), &error.to_string()),
    };
    let upgrade = upgrade
        .protocols([MSGPACK_PROTOCOL, JSON_PROTOCOL])
        .max_message_size(gateway.config.hard_frame_limit_bytes)
        .max_frame_size(gateway.config.hard_frame_limit_bytes)
        // tungstenite allocates its read buffer up front: 128 KiB by default,
        // which would dominate an idle connection's memory. Commands are
        // small, and a larger frame grows the buffer as it needs to
        // (docs/benchmarks.md: 7.9 KB per idle connection at 4 KiB, 4.8 KB
        // at 1 KiB, same fan-out throughput).
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024);
    let encoding = match upgrade.selected_protocol() {
        Some(protocol) if protocol == MSGPACK_PROTOCOL => Encoding::MsgPack,
        _ => Encoding::Json,
    };
    let connections = gateway.connections.clone();
    upgrade.on_upgrade(move |socket| {
        let session = gateway.broker.session(access);
        connections.track_future(connection::serve(socket, session, encoding, gateway))
    })
}

/// The key from `Authorization: Bearer <key>`, if present.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    herald_broker::auth::bearer_credential(value)
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "code": code, "message": message })),
    )
        .into_response()
}
