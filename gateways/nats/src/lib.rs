//! # herald-nats
//!
//! The NATS gateway: NATS's client protocol on a TCP listener of its own
//! (`[nats] listen`, 127.0.0.1:4222 by default), so that backends publish
//! and subscribe with any NATS client library, unmodified. Behind it is the
//! same broker every other transport uses: a message published here reaches
//! WebSocket, SSE and long-poll subscribers with a position and history, and
//! the reverse; permissions are checked on every `SUB` and `PUB` as
//! anywhere else.
//!
//! | module | owns |
//! |---|---|
//! | [`parser`] | bytes → client operations, within the line and payload limits |
//! | `connection` | one client: INFO/CONNECT, the reader, the writer (`MSG`/`HMSG`, `+OK`, `-ERR`, `PING`) |
//!
//! What maps to what: each `SUB` is a broker subscription under its own id
//! (the `sid`), so a message matching two of them arrives twice, as on
//! nats-server; `SUB subject queue sid` joins a queue group that members on
//! other transports may share; `UNSUB sid max` ends a subscription after
//! `max` messages. Errors are nats-server's strings (`-ERR 'Unknown
//! Protocol Operation'`, `'Maximum Payload Violation'`, `'Permissions
//! Violation for Publish to "x"'`...); the fatal ones close the connection
//! after the `-ERR`, as there. What is not supported (JetStream's API,
//! cluster routes, TLS on this port) is listed in `docs/nats.md`.

pub mod parser;

mod connection;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_gateway::GatewayContext;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The `[nats]` section of the defaults, with its comments.
pub const DEFAULT_CONFIG: &str = include_str!("nats.default.toml");

/// The `[nats]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Listen for NATS clients.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Connections open at once on this listener.
    pub max_connections: usize,
    /// Longest protocol line, in bytes.
    #[serde(deserialize_with = "herald_broker::units::size::deserialize")]
    pub max_control_line: usize,
    /// How long a client has to send CONNECT.
    #[serde(with = "herald_broker::units::duration")]
    pub auth_timeout: Duration,
    /// How often the server pings a quiet connection.
    #[serde(with = "herald_broker::units::duration")]
    pub ping_interval: Duration,
    /// Unanswered pings after which the connection is stale.
    pub max_pings_out: u32,
    /// A write that makes no progress for this long closes the connection.
    #[serde(with = "herald_broker::units::duration")]
    pub write_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 4222)),
            max_connections: 10_000,
            max_control_line: 4096,
            auth_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(120),
            max_pings_out: 2,
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl NatsConfig {
    /// Checks the settings; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.auth_timeout.is_zero() || self.ping_interval.is_zero() || self.write_timeout.is_zero() {
            return Err(
                "nats.auth_timeout, nats.ping_interval and nats.write_timeout must be positive".into(),
            );
        }
        if self.max_control_line < 64 {
            return Err("nats.max_control_line must be at least 64 bytes".into());
        }
        if self.max_connections == 0 {
            return Err("nats.max_connections must be at least 1".into());
        }
        Ok(())
    }
}

/// What every connection of the listener shares.
#[derive(Debug)]
struct Gateway {
    context: GatewayContext,
    config: NatsConfig,
    /// Where clients reached this server, for INFO.
    address: SocketAddr,
    /// One permit per open connection.
    connections: Semaphore,
}

/// Accepts NATS clients on `listener` until the server shuts down; each
/// connection runs on the context's task tracker, so shutdown waits for it.
pub async fn serve(listener: TcpListener, context: GatewayContext, config: NatsConfig) {
    let address = listener.local_addr().unwrap_or(config.listen);
    let gateway = Arc::new(Gateway {
        connections: Semaphore::new(config.max_connections),
        context,
        config,
        address,
    });
    let shutdown = gateway.context.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset while queued:
                // wait a moment rather than spin.
                tracing::warn!(%error, "nats: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let gateway = gateway.clone();
        gateway
            .context
            .connections
            .clone()
            .spawn(async move { connection::serve(socket, peer, gateway).await });
    }
}
