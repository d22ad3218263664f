//! Time, passed in rather than read: the broker asks a [`Clock`], so its
//! tests move time by hand and never sleep.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// "Now", in milliseconds since the Unix epoch, never going backwards.
///
/// One reading serves two purposes: history ages by it (so it must be
/// monotonic) and messages carry it to clients as their `ts` (so it must be
/// wall-clock time). [`SystemClock`] reconciles the two by reading the wall
/// clock once at start and advancing it with the monotonic clock.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now_millis(&self) -> u64;
}

/// The real clock: wall-clock time at start, advanced monotonically. It
/// never jumps when the system clock is set; over a long uptime it may drift
/// from the system clock by whatever NTP corrects in the meantime.
///
/// Every publish reads it: it advances by the CPU's time-stamp counter
/// where that is invariant (`quanta`, a few nanoseconds a read), and by the
/// OS's monotonic clock elsewhere.
#[derive(Debug)]
pub struct SystemClock {
    clock: quanta::Clock,
    origin: quanta::Instant,
    origin_unix_millis: u64,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let origin_unix_millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let clock = quanta::Clock::new();
        SystemClock {
            origin: clock.now(),
            clock,
            origin_unix_millis,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        let elapsed = self.clock.now().saturating_duration_since(self.origin);
        self.origin_unix_millis + elapsed.as_millis() as u64
    }
}

/// A clock that moves only when told to; for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock standing at the epoch (0 ms).
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// A clock standing at `unix_millis`.
    pub fn starting_at(unix_millis: u64) -> ManualClock {
        ManualClock {
            millis: AtomicU64::new(unix_millis),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.millis.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.millis.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_wall_clock_time() {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let clock = SystemClock::new();
        let first = clock.now_millis();
        assert!(first.abs_diff(wall) < 5_000, "{first} vs {wall}");
        assert!(clock.now_millis() >= first);
    }
}
