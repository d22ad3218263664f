//! Per-connection limits that every bidirectional transport applies.

use std::time::Duration;

use herald_broker::CloseReason;
use tokio::time::Instant;

/// At most `max_per_second` commands per connection, counted over
/// one-second windows. Cheap enough to call on every frame.
#[derive(Debug)]
pub struct CommandRateLimiter {
    /// The transport's limit, for connections without a rate of their own.
    transport_limit: u32,
    max_per_second: u32,
    window_start: Instant,
    in_window: u32,
}

impl CommandRateLimiter {
    pub fn new(max_per_second: u32) -> CommandRateLimiter {
        CommandRateLimiter {
            transport_limit: max_per_second,
            max_per_second,
            window_start: Instant::now(),
            in_window: 0,
        }
    }

    /// Fits the limit to the connection's access: its own rate (an API
    /// key's `max_commands_per_second`, `Session::max_commands_per_second`)
    /// or the transport's. Called when the access is set or replaced; the
    /// window's count is kept.
    pub fn fit(&mut self, own: Option<u32>) {
        self.max_per_second = own.unwrap_or(self.transport_limit);
    }

    /// Counts one command; past the limit, the reason to close with.
    pub fn admit(&mut self) -> Result<(), CloseReason> {
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.in_window = 0;
        }
        self.in_window += 1;
        if self.in_window > self.max_per_second {
            return Err(CloseReason::ProtocolViolation(format!(
                "more than {} commands in one second",
                self.max_per_second
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_window_admits_its_limit_and_the_next_window_starts_afresh() {
        let mut limiter = CommandRateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.admit().is_ok());
        }
        assert_eq!(limiter.admit().unwrap_err().code(), "protocol_violation");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.admit().is_ok());
    }
}
