//! # herald-websocket
//!
//! Herald's WebSocket gateway: `GET /ws` upgrades to a WebSocket whose
//! frames are the client protocol (`docs/protocol.md`), JSON text frames by
//! default or MessagePack binary frames when the client asks for the
//! `herald.msgpack` subprotocol, one event per frame or, with a `.batch`
//! subprotocol, as many as one write holds. It is the adapter between WebSocket frames
//! and a broker [`Session`](herald_broker::Session); credentials, limits,
//! the writer loop and disconnect reasons come from the gateway kit
//! (`herald-gateway`). No routing happens here.
//!
//! Each connection is one task that reads and writes concurrently: the
//! reader decodes every frame and hands it to the session; the kit's writer
//! driver waits for the outbox, takes everything queued, feeds it to the
//! socket and flushes once per batch.

mod connection;
mod socket;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use herald_gateway::{GatewayContext, QueryParams};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as FrameLimits;

/// Subprotocol selecting MessagePack binary frames.
pub const MSGPACK_PROTOCOL: &str = "herald.msgpack";
/// Subprotocol selecting JSON text frames (also the default without one).
pub const JSON_PROTOCOL: &str = "herald.json";
/// Subprotocol selecting MessagePack binary frames, several events per
/// frame: values back to back.
pub const MSGPACK_BATCH_PROTOCOL: &str = "herald.msgpack.batch";
/// Subprotocol selecting JSON text frames, several events per frame: one
/// per line.
pub const JSON_BATCH_PROTOCOL: &str = "herald.json.batch";

/// The `[websocket]` section of the configuration, with its comments.
pub const DEFAULT_CONFIG: &str = include_str!("websocket.default.toml");

/// Limits and timers of the WebSocket gateway: the `[websocket]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Serve `GET /ws`.
    pub enabled: bool,
    /// Largest command frame answered normally; a larger one gets an
    /// `err` with code `frame_too_large` and the connection stays open.
    #[serde(
        rename = "max_frame",
        deserialize_with = "herald_broker::units::size::deserialize"
    )]
    pub max_frame_bytes: usize,
    /// Frames beyond this size are not even read: the connection is closed
    /// with 1009 (message too big).
    #[serde(
        rename = "hard_frame_limit",
        deserialize_with = "herald_broker::units::size::deserialize"
    )]
    pub hard_frame_limit_bytes: usize,
    /// How often the server pings.
    #[serde(with = "herald_broker::units::duration")]
    pub heartbeat_interval: Duration,
    /// A connection from which nothing (not even a pong) arrives for this
    /// long is closed with `idle_timeout`.
    #[serde(with = "herald_broker::units::duration")]
    pub idle_timeout: Duration,
    /// A write that takes longer than this means the client stopped
    /// reading: the connection is closed as a slow consumer.
    #[serde(with = "herald_broker::units::duration")]
    pub write_timeout: Duration,
    /// Commands a connection may send per second before it is closed for
    /// flooding (counted over one-second windows).
    pub max_commands_per_second: u32,
    /// A connection opened without a credential (where anonymous access is
    /// off) must send its `auth` command within this long.
    #[serde(with = "herald_broker::units::duration")]
    pub auth_timeout: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_frame_bytes: 64 * 1024,
            hard_frame_limit_bytes: 1024 * 1024,
            heartbeat_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(50),
            write_timeout: Duration::from_secs(10),
            max_commands_per_second: 1000,
            auth_timeout: Duration::from_secs(10),
        }
    }
}

impl WebSocketConfig {
    /// Checks the settings against each other; the message names the keys.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval >= self.idle_timeout {
            return Err("websocket.heartbeat_interval must be shorter than websocket.idle_timeout".into());
        }
        if self.max_frame_bytes > self.hard_frame_limit_bytes {
            return Err("websocket.max_frame must not exceed websocket.hard_frame_limit".into());
        }
        if self.write_timeout.is_zero() || self.max_commands_per_second == 0 || self.auth_timeout.is_zero() {
            return Err(
                "websocket.write_timeout, websocket.max_commands_per_second and websocket.auth_timeout must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Gateway {
    context: GatewayContext,
    config: WebSocketConfig,
}

/// The gateway's routes: `GET /ws`.
pub fn router(context: GatewayContext, config: WebSocketConfig) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .with_state(Arc::new(Gateway { context, config }))
}

async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    query: QueryParams,
    headers: HeaderMap,
    upgrade: socket::Upgrade,
) -> Response {
    let admission = gateway.context.admission(&headers, &query);
    let limit = gateway.config.hard_frame_limit_bytes;
    let limits = FrameLimits::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        // tungstenite allocates its read buffer up front (128 KiB by
        // default) and keeps it: a small one keeps an idle connection small,
        // a larger frame grows it as needed, and a busy client is read in
        // bulk by the socket (docs/benchmarks.md, memory per connection).
        .read_buffer_size(socket::READ_BUFFER)
        // It writes only pongs and close replies, into a buffer of ours.
        .write_buffer_size(0);
    let framing = upgrade.framing();
    let connections = gateway.context.connections.clone();
    upgrade.on_upgrade(limits, move |socket| {
        connections.track_future(connection::serve(socket, admission, framing, gateway))
    })
}
