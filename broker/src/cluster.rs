//! What a broker needs to be one node of a cluster.
//!
//! A clustered broker numbers nothing itself: positions must mean the same
//! on every node, so one ordered log outside the process (a JetStream
//! stream, see `herald-cluster`) gives every message its sequence. What a
//! client publishes is handed to the [`Upstream`]; what the log orders comes
//! back, to every node alike, through [`Broker::apply`](crate::Broker::apply),
//! which records and fans it out exactly as a local publish would. The
//! publisher's own node is no exception, so every node delivers in the log's
//! order.

use std::fmt;

use thiserror::Error;

use crate::message::{Envelope, Payload};
use crate::position::Position;
use crate::subject::Subject;

/// A message on its way to the cluster's log.
#[derive(Debug)]
pub struct Forwarded {
    pub subject: Subject,
    pub payload: Payload,
    pub envelope: Envelope,
    /// Set when the publisher asked not to receive its own message: the
    /// broker's key for that connection, carried to the log and back.
    pub echo_key: Option<u64>,
}

/// Told once whether a forwarded message was ordered: its position (when
/// the acknowledgement policy waits for one) or why it was not.
pub type Acknowledgement = Box<dyn FnOnce(Result<Option<Position>, ClusterError>) + Send>;

/// Where a clustered broker sends what its clients publish.
pub trait Upstream: Send + Sync + fmt::Debug {
    /// Hands `message` on; calls `done` exactly once, maybe from another
    /// thread. Must not block: a full pipeline is an immediate error.
    fn forward(&self, message: Forwarded, done: Acknowledgement);

    /// Whether a message forwarded now would be refused `cluster_busy`: a
    /// publisher that can be held back (a NATS client, by TCP) waits
    /// instead of losing it.
    fn is_busy(&self) -> bool {
        false
    }
}

/// Why the cluster did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClusterError {
    /// The node is not connected to the cluster: nothing can be ordered.
    #[error(
        "this node is not connected to the cluster ({state}); publish again shortly, or through another node"
    )]
    Unavailable { state: &'static str },
    /// Too many publishes are waiting for the cluster on this node.
    #[error("{pending} publishes are already waiting for the cluster on this node; slow down")]
    Busy { pending: usize },
    /// This node is this many messages behind the cluster: it takes no
    /// more publishes until it has caught up.
    #[error(
        "this node is {behind} messages behind the cluster; publish again shortly, or through another node"
    )]
    Behind { behind: u64 },
    /// Sent, but not confirmed in time: it may or may not have been stored.
    #[error("the cluster did not confirm this publish within {millis} ms; it may still be delivered")]
    Unconfirmed { millis: u64 },
    /// The cluster refused it (a stream limit, a permission).
    #[error("the cluster refused this publish: {reason}")]
    Refused { reason: String },
}

impl ClusterError {
    /// Every code [`ClusterError::code`] returns.
    pub const CODES: [&'static str; 3] = ["cluster_unavailable", "cluster_busy", "cluster_refused"];

    pub fn code(&self) -> &'static str {
        match self {
            ClusterError::Unavailable { .. } | ClusterError::Unconfirmed { .. } => "cluster_unavailable",
            ClusterError::Busy { .. } | ClusterError::Behind { .. } => "cluster_busy",
            ClusterError::Refused { .. } => "cluster_refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cluster_error_code_is_listed() {
        let errors = [
            ClusterError::Unavailable {
                state: "disconnected",
            },
            ClusterError::Busy { pending: 1 },
            ClusterError::Behind { behind: 1 },
            ClusterError::Unconfirmed { millis: 1 },
            ClusterError::Refused {
                reason: "limit".into(),
            },
        ];
        for error in errors {
            assert!(ClusterError::CODES.contains(&error.code()), "{error:?}");
        }
    }
}
