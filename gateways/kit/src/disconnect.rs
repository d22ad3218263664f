//! Why a connection ended. Every connection ends with exactly one
//! [`DisconnectReason`]; it reaches the log, a counter per reason and,
//! where the transport still can, the client (a final `err` event).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_broker::CloseReason;

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The server closed it and told the client why, in a final `err`.
    Closed(CloseReason),
    /// The client closed it.
    ClientClosed,
    /// Reading from the client failed (reset, malformed transport framing).
    ReadError,
    /// Writing to the client failed.
    WriteError,
    /// A write made no progress for `write_timeout`: the client stopped
    /// reading. A slow consumer the queue did not catch; counted as one.
    WriteTimeout,
    /// After a close, the final events could not be delivered in time.
    CloseTimeout,
    /// Refused once connected (a bad credential, a foreign origin, no
    /// `auth` in time): told why in an `err`, then closed with a 4xxx code.
    Refused,
}

/// Every code a [`DisconnectReason`] can have, in counter order.
pub const DISCONNECT_CODES: [&str; 18] = [
    "slow_consumer",
    "reply_backlog",
    "shutdown",
    "idle_timeout",
    "stream_expired",
    "frame_too_large",
    "protocol_violation",
    "invalid_frame",
    "invalid_utf8",
    "token_expired",
    "server_draining",
    "removed",
    "client_closed",
    "read_error",
    "write_error",
    "write_timeout",
    "close_timeout",
    "refused",
];

impl DisconnectReason {
    /// Stable snake_case code: the log field and the metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            DisconnectReason::Closed(reason) => reason.code(),
            DisconnectReason::ClientClosed => "client_closed",
            DisconnectReason::ReadError => "read_error",
            DisconnectReason::WriteError => "write_error",
            DisconnectReason::WriteTimeout => "write_timeout",
            DisconnectReason::CloseTimeout => "close_timeout",
            DisconnectReason::Refused => "refused",
        }
    }

    fn counter_index(&self) -> usize {
        let code = self.code();
        DISCONNECT_CODES
            .iter()
            .position(|known| *known == code)
            .expect("every reason's code is listed in DISCONNECT_CODES")
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Closed(reason) => reason.fmt(f),
            other => f.write_str(other.code()),
        }
    }
}

/// Connections ended, per reason, since start.
#[derive(Debug, Default)]
pub struct DisconnectCounters {
    counts: [AtomicU64; DISCONNECT_CODES.len()],
}

impl DisconnectCounters {
    pub fn record(&self, reason: &DisconnectReason) {
        self.counts[reason.counter_index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for one code (0 for a code that is not a reason).
    pub fn count(&self, code: &str) -> u64 {
        DISCONNECT_CODES
            .iter()
            .position(|known| *known == code)
            .map_or(0, |index| self.counts[index].load(Ordering::Relaxed))
    }

    /// Every reason with a non-zero count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        DISCONNECT_CODES
            .iter()
            .zip(&self.counts)
            .map(|(code, count)| (*code, count.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter() {
        let reasons = [
            DisconnectReason::Closed(CloseReason::SlowConsumer),
            DisconnectReason::Closed(CloseReason::ReplyBacklog),
            DisconnectReason::Closed(CloseReason::Shutdown),
            DisconnectReason::Closed(CloseReason::IdleTimeout),
            DisconnectReason::Closed(CloseReason::StreamExpired),
            DisconnectReason::Closed(CloseReason::FrameTooLarge { max: 1 }),
            DisconnectReason::Closed(CloseReason::ProtocolViolation("flood".into())),
            DisconnectReason::Closed(CloseReason::InvalidFrame("reserved bits".into())),
            DisconnectReason::Closed(CloseReason::InvalidUtf8),
            DisconnectReason::Closed(CloseReason::TokenExpired),
            DisconnectReason::Closed(CloseReason::Draining),
            DisconnectReason::Closed(CloseReason::Removed),
            DisconnectReason::ClientClosed,
            DisconnectReason::ReadError,
            DisconnectReason::WriteError,
            DisconnectReason::WriteTimeout,
            DisconnectReason::CloseTimeout,
            DisconnectReason::Refused,
        ];
        let counters = DisconnectCounters::default();
        for (index, reason) in reasons.iter().enumerate() {
            for _ in 0..=index {
                counters.record(reason);
            }
        }
        for (index, reason) in reasons.iter().enumerate() {
            assert_eq!(counters.count(reason.code()), index as u64 + 1, "{reason:?}");
        }
        assert_eq!(counters.snapshot().len(), DISCONNECT_CODES.len());
    }
}
