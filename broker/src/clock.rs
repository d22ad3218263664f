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

    /// `now_millis` as of `stamp`, a reading just taken for a measurement:
    /// every publish needs both, and the system clock derives the one from
    /// the other instead of reading the time twice.
    fn millis_at(&self, stamp: Stamp) -> u64 {
        let _ = stamp;
        self.now_millis()
    }
}

/// A reading of the fast counter the broker times itself by (`quanta`'s
/// raw clock), taken by the broker's statistics.
#[derive(Debug, Clone, Copy)]
pub struct Stamp(pub(crate) u64);

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
    /// A raw reading at start.
    origin: u64,
    origin_unix_millis: u64,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let origin_unix_millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let clock = quanta::Clock::new();
        SystemClock {
            origin: clock.raw(),
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
        self.millis_at(Stamp(self.clock.raw()))
    }

    fn millis_at(&self, stamp: Stamp) -> u64 {
        // Raw readings of any quanta clock in the process count alike
        // (the time-stamp counter, or the OS clock's nanoseconds).
        let elapsed_nanos = self.clock.delta_as_nanos(self.origin, stamp.0);
        self.origin_unix_millis + elapsed_nanos / 1_000_000
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

    #[test]
    fn a_stamp_from_another_quanta_clock_reads_the_same_time() {
        let clock = SystemClock::new();
        let stats = quanta::Clock::new();
        let before = clock.millis_at(Stamp(stats.raw()));
        assert!(before.abs_diff(clock.now_millis()) <= 1);
        std::thread::sleep(Duration::from_millis(50));
        let after = clock.millis_at(Stamp(stats.raw()));
        assert!((50..500).contains(&(after - before)), "{before} → {after}");
        assert!(after.abs_diff(clock.now_millis()) <= 1);
    }
}
