//! What the broker counts for operators: plain atomics on the hot path,
//! read whole at scrape time by whoever exports them (the server's
//! `/metrics`). Nothing here allocates or locks per message; a publish
//! adds to a handful of counters once, not once per recipient.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::clock::Stamp;

/// Which door a session came through: the label of every per-transport
/// count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Http,
    WebSocket,
    Sse,
    LongPoll,
    WebTransport,
    Nats,
    /// Messages from other nodes of a cluster.
    Cluster,
    /// The broker's own (presence events, tests, embedding code).
    Internal,
}

impl Transport {
    pub const ALL: [Transport; 8] = [
        Transport::Http,
        Transport::WebSocket,
        Transport::Sse,
        Transport::LongPoll,
        Transport::WebTransport,
        Transport::Nats,
        Transport::Cluster,
        Transport::Internal,
    ];

    /// The metrics label and log field.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
            Transport::WebTransport => "webtransport",
            Transport::Nats => "nats",
            Transport::Cluster => "cluster",
            Transport::Internal => "internal",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The commands counted per op; anything else is `other`.
pub const OPS: [&str; 10] = [
    "sub", "unsub", "pub", "history", "presence", "ping", "auth", "refresh", "invalid", "other",
];

/// The error codes a command can be refused with (`docs/protocol.md`);
/// anything else is counted as `other`. A fixed table, so that counting a
/// refusal takes no lock: a client flooding bad commands must not make
/// every connection contend on one.
pub const REFUSAL_CODES: [&str; 39] = [
    "malformed_frame",
    "unknown_op",
    "missing_field",
    "invalid_subject",
    "subject_too_long",
    "reserved_subject",
    "invalid_token",
    "invalid_payload",
    "payload_too_large",
    "too_many_subjects",
    "too_many_subscriptions",
    "duplicate_subscription",
    "not_subscribed",
    "invalid_queue",
    "pattern_too_broad",
    "forbidden",
    "rate_limited",
    "no_presence",
    "refresh_refused",
    "not_caught_up",
    "cluster_unavailable",
    "cluster_busy",
    "cluster_refused",
    "unauthorized",
    "invalid_credential",
    "token_expired",
    "token_not_yet_valid",
    "token_rejected",
    "frame_too_large",
    "unsupported_media_type",
    "malformed_body",
    "body_too_large",
    "body_timeout",
    "unreadable_body",
    "batch_too_large",
    "invalid_query",
    "shutting_down",
    "server_draining",
    "other",
];

/// Where one (transport, op, code) counts in `Stats::commands_refused`.
fn refused_index(transport: Transport, op: usize, code: usize) -> usize {
    (transport.index() * OPS.len() + op) * REFUSAL_CODES.len() + code
}

/// Why a message did not reach a subscriber's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Dropped from a full queue under the `drop-oldest` policy.
    QueueFull,
    /// Larger than the subscriber's whole byte limit.
    TooLarge,
}

impl DropReason {
    pub const ALL: [DropReason; 2] = [DropReason::QueueFull, DropReason::TooLarge];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::TooLarge => "too_large",
        }
    }
}

/// Why a client was sent a `gap` notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// Its queue overflowed and messages were dropped.
    QueueFull,
    /// It resumed from a position history no longer (or only partly) holds.
    Resume,
    /// A clustered node lost messages before they reached it.
    Lost,
}

impl GapReason {
    pub const ALL: [GapReason; 3] = [GapReason::QueueFull, GapReason::Resume, GapReason::Lost];

    pub fn label(self) -> &'static str {
        match self {
            GapReason::QueueFull => "queue_full",
            GapReason::Resume => "resume",
            GapReason::Lost => "lost",
        }
    }
}

/// A histogram with fixed upper bounds, one atomic per bucket. Counted in
/// integers of its unit (nanoseconds, messages): no float on the hot path.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [u64],
    /// Per bucket, not cumulative; one more than `bounds` (+Inf).
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    /// Units in one exported unit (1e9: nanoseconds → seconds); divided
    /// by, so that bounds export exactly (`1e-06`, not `1.0000000000000002e-06`).
    units_per_exported: f64,
}

/// A histogram read at one moment: cumulative buckets, as exported.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum: f64,
    pub count: u64,
    /// `(upper bound, observations ≤ it)`, the last one `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl AtomicHistogram {
    fn new(bounds: &'static [u64], units_per_exported: f64) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            units_per_exported,
        }
    }

    fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (index, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = self
                .bounds
                .get(index)
                .map_or(f64::INFINITY, |bound| *bound as f64 / self.units_per_exported);
            buckets.push((bound, cumulative));
        }
        HistogramSnapshot {
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.units_per_exported,
            count: cumulative,
            buckets,
        }
    }
}

/// Publish to enqueue, in nanoseconds: 1 µs to 1 s.
const LATENCY_BOUNDS: &[u64] = &[
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
    1_000_000_000,
];

/// Messages waiting in a queue when its writer came for them.
const DEPTH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// The broker's counters since start.
#[derive(Debug)]
pub struct Stats {
    sessions: [AtomicI64; 8],
    published: [AtomicU64; 8],
    delivered: [AtomicU64; 8],
    /// Batches written out by connections' writers (one flush each).
    writes: [AtomicU64; 8],
    dropped: [AtomicU64; 2],
    gaps: [AtomicU64; 3],
    slow_consumers: AtomicU64,
    /// Successful commands, per transport and op.
    commands_ok: [[AtomicU64; OPS.len()]; 8],
    /// Refused commands, per transport, op and error code: one flat table
    /// indexed by [`refused_index`].
    commands_refused: Box<[AtomicU64]>,
    publish_latency: AtomicHistogram,
    queue_depth: AtomicHistogram,
    /// Reads the CPU's time-stamp counter where it is reliable (a few ns;
    /// the OS clock costs ~40 ns a read here, twice per publish).
    clock: quanta::Clock,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            sessions: Default::default(),
            published: Default::default(),
            delivered: Default::default(),
            writes: Default::default(),
            dropped: Default::default(),
            gaps: Default::default(),
            slow_consumers: AtomicU64::new(0),
            commands_ok: Default::default(),
            commands_refused: (0..Transport::ALL.len() * OPS.len() * REFUSAL_CODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            publish_latency: AtomicHistogram::new(LATENCY_BOUNDS, 1e9),
            queue_depth: AtomicHistogram::new(DEPTH_BOUNDS, 1.0),
            clock: quanta::Clock::new(),
        }
    }
}

/// Every counter of [`Stats`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    /// Open sessions (for HTTP and long polling: requests in flight).
    pub sessions: Vec<(Transport, i64)>,
    pub published: Vec<(Transport, u64)>,
    pub delivered: Vec<(Transport, u64)>,
    /// Batches written (flushed) to connections, per transport.
    pub writes: Vec<(Transport, u64)>,
    pub dropped: Vec<(DropReason, u64)>,
    pub gaps: Vec<(GapReason, u64)>,
    pub slow_consumers: u64,
    /// `(transport, op, outcome)`: outcome `ok` or the error code.
    pub commands: Vec<(Transport, &'static str, &'static str, u64)>,
    pub publish_latency: HistogramSnapshot,
    pub queue_depth: HistogramSnapshot,
}

/// Counts one open request of a transport without sessions (long
/// polling) until dropped.
#[derive(Debug)]
pub struct OpenRequest {
    stats: std::sync::Arc<Stats>,
    transport: Transport,
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.stats.session_closed(self.transport);
    }
}

impl Stats {
    /// Counts an open request on `transport` while the guard lives.
    pub fn open_request(self: &std::sync::Arc<Self>, transport: Transport) -> OpenRequest {
        self.session_opened(transport);
        OpenRequest {
            stats: self.clone(),
            transport,
        }
    }

    pub(crate) fn session_opened(&self, transport: Transport) {
        self.sessions[transport.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_closed(&self, transport: Transport) {
        self.sessions[transport.index()].fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn published(&self, transport: Transport, count: u64) {
        self.published[transport.index()].fetch_add(count, Ordering::Relaxed);
    }

    /// Messages handed to clients of `transport` outside any queue (long
    /// polling reads them from history).
    pub fn delivered(&self, transport: Transport, count: u64) {
        if count > 0 {
            self.delivered[transport.index()].fetch_add(count, Ordering::Relaxed);
        }
    }

    pub(crate) fn wrote(&self, transport: Transport) {
        self.writes[transport.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self, reason: DropReason, count: u64) {
        self.dropped[reason as usize].fetch_add(count, Ordering::Relaxed);
    }

    pub fn gaps(&self, reason: GapReason, count: u64) {
        if count > 0 {
            self.gaps[reason as usize].fetch_add(count, Ordering::Relaxed);
        }
    }

    pub(crate) fn slow_consumer(&self, count: u64) {
        self.slow_consumers.fetch_add(count, Ordering::Relaxed);
    }

    /// A timestamp for [`Stats::publish_latency_since`]: a measurement, not
    /// the broker's notion of time (that is its `Clock`).
    pub(crate) fn timer(&self) -> Stamp {
        Stamp(self.clock.raw())
    }

    pub(crate) fn publish_latency_since(&self, started: Stamp) {
        let nanos = self.clock.delta_as_nanos(started.0, self.clock.raw());
        self.publish_latency.observe(nanos);
    }

    pub(crate) fn queue_depth(&self, messages: usize) {
        self.queue_depth.observe(messages as u64);
    }

    /// Counts one command: `Ok` or its error code.
    pub fn command(&self, transport: Transport, op: &str, outcome: Result<(), &'static str>) {
        let op = OPS.iter().position(|known| *known == op).unwrap_or(OPS.len() - 1);
        match outcome {
            Ok(()) => {
                self.commands_ok[transport.index()][op].fetch_add(1, Ordering::Relaxed);
            }
            Err(code) => {
                let code = REFUSAL_CODES
                    .iter()
                    .position(|known| *known == code)
                    .unwrap_or(REFUSAL_CODES.len() - 1);
                self.commands_refused[refused_index(transport, op, code)].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let per_transport = |counts: &[AtomicU64; 8]| {
            Transport::ALL
                .iter()
                .map(|transport| (*transport, counts[transport.index()].load(Ordering::Relaxed)))
                .collect()
        };
        let mut commands = Vec::new();
        for transport in Transport::ALL {
            for (index, op) in OPS.iter().enumerate() {
                let ok = self.commands_ok[transport.index()][index].load(Ordering::Relaxed);
                if ok > 0 {
                    commands.push((transport, *op, "ok", ok));
                }
                for (code_index, code) in REFUSAL_CODES.iter().enumerate() {
                    let count = self.commands_refused[refused_index(transport, index, code_index)]
                        .load(Ordering::Relaxed);
                    if count > 0 {
                        commands.push((transport, *op, *code, count));
                    }
                }
            }
        }
        StatsSnapshot {
            sessions: Transport::ALL
                .iter()
                .map(|transport| {
                    (
                        *transport,
                        self.sessions[transport.index()].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            published: per_transport(&self.published),
            delivered: per_transport(&self.delivered),
            writes: per_transport(&self.writes),
            dropped: DropReason::ALL
                .iter()
                .map(|reason| (*reason, self.dropped[*reason as usize].load(Ordering::Relaxed)))
                .collect(),
            gaps: GapReason::ALL
                .iter()
                .map(|reason| (*reason, self.gaps[*reason as usize].load(Ordering::Relaxed)))
                .collect(),
            slow_consumers: self.slow_consumers(),
            commands,
            publish_latency: self.publish_latency.snapshot(),
            queue_depth: self.queue_depth.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_an_infinite_last() {
        let histogram = AtomicHistogram::new(&[1_000, 10_000], 1e9);
        for nanos in [500, 1_000, 3_000, 10_000, 11_000, 500_000] {
            histogram.observe(nanos);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 6);
        assert!((snapshot.sum - 525.5e-6).abs() < 1e-12, "{}", snapshot.sum);
        assert_eq!(snapshot.buckets, vec![(1e-6, 2), (1e-5, 4), (f64::INFINITY, 6)]);
    }

    #[test]
    fn commands_count_per_transport_op_and_outcome() {
        let stats = Stats::default();
        stats.command(Transport::WebSocket, "pub", Ok(()));
        stats.command(Transport::WebSocket, "pub", Ok(()));
        stats.command(Transport::WebSocket, "pub", Err("forbidden"));
        stats.command(Transport::Sse, "nonsense", Ok(()));
        stats.command(Transport::Http, "pub", Err("a_code_nobody_listed"));
        let commands = stats.snapshot().commands;
        assert!(commands.contains(&(Transport::WebSocket, "pub", "ok", 2)));
        assert!(commands.contains(&(Transport::WebSocket, "pub", "forbidden", 1)));
        assert!(commands.contains(&(Transport::Sse, "other", "ok", 1)));
        assert!(commands.contains(&(Transport::Http, "pub", "other", 1)));
        assert_eq!(commands.len(), 4);
    }
}
