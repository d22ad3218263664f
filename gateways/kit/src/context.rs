//! What a gateway gets from the server that runs it.

use std::sync::Arc;

use herald_broker::{Authenticator, Broker, CloseReason};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::disconnect::{DisconnectCounters, DisconnectReason};
use crate::health::Health;
use crate::notices::Notices;
use crate::origins::AllowedOrigins;

/// Shared by every gateway of one server; cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayContext {
    pub broker: Arc<Broker>,
    /// Turns the credential a client presents into what it may do.
    pub auth: Arc<Authenticator>,
    /// Cancelled when the server starts shutting down: streaming
    /// connections then close with the reason `shutdown`, waiting requests
    /// answer at once.
    pub shutdown: CancellationToken,
    /// Cancelled when the server starts draining (SIGUSR1, `herald drain`,
    /// the admin API): `/readyz` answers 503, new streaming connections are
    /// refused (503 `server_draining`), open ones are closed in turn.
    pub draining: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them to finish.
    pub connections: TaskTracker,
    /// How many connections ended for each reason, across gateways.
    pub disconnects: Arc<DisconnectCounters>,
    /// Browser origins allowed to connect.
    pub origins: Arc<AllowedOrigins>,
    /// The cookie SSE and long polling read a token from ("": none).
    pub token_cookie: Arc<str>,
    /// How long a bidirectional connection whose token expired waits for
    /// a `refresh`.
    pub refresh_grace: std::time::Duration,
    /// The dependencies `/healthz` and `/readyz` report on.
    pub health: Health,
    /// Bounds on the log lines clients can cause.
    pub notices: Arc<Notices>,
    /// How long a streaming connection's writer gathers events before it
    /// writes them (`server.write_delay`; see [`crate::WriterConfig`]).
    pub write_delay: std::time::Duration,
}

impl GatewayContext {
    pub fn new(broker: Arc<Broker>, auth: Arc<Authenticator>) -> GatewayContext {
        GatewayContext {
            broker,
            auth,
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            connections: TaskTracker::new(),
            disconnects: Arc::new(DisconnectCounters::default()),
            origins: Arc::new(AllowedOrigins::default()),
            token_cookie: Arc::from(""),
            refresh_grace: std::time::Duration::from_secs(30),
            health: Health::default(),
            notices: Arc::default(),
            write_delay: std::time::Duration::ZERO,
        }
    }

    /// With the `[auth]` and `[server]` settings the gateways read at
    /// admission: the allowed origins, the token cookie, the refresh grace.
    pub fn with_admission(
        mut self,
        origins: AllowedOrigins,
        token_cookie: &str,
        refresh_grace: std::time::Duration,
    ) -> GatewayContext {
        self.origins = Arc::new(origins);
        self.token_cookie = Arc::from(token_cookie);
        self.refresh_grace = refresh_grace;
        self
    }

    /// Records a connection refused once connected, with the refusal's
    /// code (`invalid_credential`, `origin_not_allowed`, ...) in the log.
    pub fn refused(&self, transport: &'static str, code: &'static str) {
        self.disconnects.record(&DisconnectReason::Refused);
        if let Some(suppressed) = self.notices.refused.allow() {
            tracing::info!(transport, code, suppressed, "client refused");
        }
    }

    /// Records how a connection ended: once per connection, by the gateway
    /// that served it.
    pub fn disconnected(&self, transport: &'static str, session: u64, reason: &DisconnectReason) {
        if *reason == DisconnectReason::Refused {
            return self.refused(transport, reason.code());
        }
        self.disconnects.record(reason);
        match reason {
            // Notable: an operator wants to hear of these one by one.
            DisconnectReason::Closed(CloseReason::SlowConsumer) | DisconnectReason::WriteTimeout => {
                if let Some(suppressed) = self.notices.slow_consumer.allow() {
                    tracing::warn!(
                        transport,
                        session,
                        reason = reason.code(),
                        suppressed,
                        "slow consumer disconnected"
                    )
                }
            }
            _ => tracing::debug!(transport, session, reason = reason.code(), "connection closed"),
        }
    }
}
