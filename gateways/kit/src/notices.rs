//! Log lines a client can cause, bounded: a refused client or a slow
//! consumer is logged one by one while they are few, but a flood of them
//! (bad tokens from a botnet, thousands of readers that stop at once) must
//! not turn into a flood of log lines. Each kind gets at most
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`]; the first line after a
//! suppressed stretch says how many were left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one allowance lasts.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Lines of one kind logged per window, at most.
pub const LINES_PER_WINDOW: u32 = 10;

/// One kind of notice's allowance.
#[derive(Debug, Default)]
pub struct NoticeLimiter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    window_start: Option<Instant>,
    logged_in_window: u32,
    suppressed: u64,
}

impl NoticeLimiter {
    /// Whether to log one more now; `Some(n)`: yes, and `n` were left out
    /// since the last line.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let expired = state
            .window_start
            .is_none_or(|start| now.duration_since(start) >= WINDOW);
        if expired {
            state.window_start = Some(now);
            state.logged_in_window = 0;
        }
        if state.logged_in_window >= LINES_PER_WINDOW {
            state.suppressed += 1;
            return None;
        }
        state.logged_in_window += 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

/// The limiters of the notices a client can cause.
#[derive(Debug, Default)]
pub struct Notices {
    pub refused: NoticeLimiter,
    pub slow_consumer: NoticeLimiter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_allowance_and_the_next_line_counts_the_rest() {
        let limiter = NoticeLimiter::default();
        let start = Instant::now();
        let logged = (0..1000)
            .filter(|n| limiter.allow_at(start + Duration::from_micros(*n)).is_some())
            .count();
        assert_eq!(logged, LINES_PER_WINDOW as usize);
        assert_eq!(
            limiter.allow_at(start + WINDOW),
            Some(1000 - LINES_PER_WINDOW as u64)
        );
        assert_eq!(limiter.allow_at(start + WINDOW), Some(0));
    }
}
