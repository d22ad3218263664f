//! What a gateway gets from the server that runs it.

use std::sync::Arc;

use herald_broker::{Authenticator, Broker};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::disconnect::{DisconnectCounters, DisconnectReason};

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
    /// Tracks connection tasks, so shutdown can wait for them to finish.
    pub connections: TaskTracker,
    /// How many connections ended for each reason, across gateways.
    pub disconnects: Arc<DisconnectCounters>,
}

impl GatewayContext {
    pub fn new(broker: Arc<Broker>, auth: Arc<Authenticator>) -> GatewayContext {
        GatewayContext {
            broker,
            auth,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            disconnects: Arc::new(DisconnectCounters::default()),
        }
    }

    /// Records how a connection ended: once per connection, by the gateway
    /// that served it.
    pub fn disconnected(&self, transport: &'static str, session: u64, reason: &DisconnectReason) {
        self.disconnects.record(reason);
        tracing::debug!(transport, session, reason = reason.code(), "connection closed");
    }
}
