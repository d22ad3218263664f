//! The bounded per-connection queue between the broker and a gateway's
//! writer.
//!
//! Publishing never waits for a subscriber: [`Outbox::push_message`] takes a
//! short mutex, appends, and returns. When the queue is over its limits
//! (messages or bytes) the connection's [`OverflowPolicy`] decides: drop the
//! oldest messages and owe the client a gap notice naming what it lost, or
//! close the connection as a slow consumer. Either way the publisher moves
//! on, and what happened is counted.
//!
//! The writer side takes everything queued in one O(1) swap
//! ([`Outbox::next_batch`]), writes it and flushes once.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::message::Message;
use crate::position::Position;
use crate::protocol::{Gap, Outbound, Reply};
use crate::stats::{GapReason, Stats, Transport};
use crate::subject::Pattern;

/// What to do when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Drop the oldest queued messages; the client later receives a `gap`
    /// naming the positions it missed and can fetch them from history.
    #[default]
    DropOldest,
    /// Close the connection as a slow consumer.
    Disconnect,
}

/// Bounds of one connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueLimits {
    /// Most messages waiting to be written.
    pub max_messages: usize,
    /// Most message bytes (payload + subject) waiting to be written.
    #[serde(deserialize_with = "crate::units::size::deserialize")]
    pub max_bytes: usize,
    /// Most replies (acks, errors, pongs) waiting; a client that keeps
    /// sending commands without reading the answers is closed past this.
    pub max_replies: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_messages: 1024,
            max_bytes: 1 << 20,
            max_replies: 256,
        }
    }
}

/// Why a connection was closed. Every disconnect has one; it reaches the
/// client (as a final `err`), the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue overflowed under [`OverflowPolicy::Disconnect`].
    SlowConsumer,
    /// Too many replies were waiting for the client to read them.
    ReplyBacklog,
    /// The server is shutting down.
    Shutdown,
    /// Nothing arrived from the client, not even a heartbeat answer, for
    /// longer than the transport allows.
    IdleTimeout,
    /// A one-way stream reached the longest a stream may last; the client
    /// reconnects and resumes where it was.
    StreamExpired,
    /// The client sent a frame larger than the transport ever reads.
    FrameTooLarge { max: usize },
    /// The gateway closed the connection for breaking the protocol.
    ProtocolViolation(String),
    /// The transport's own framing was broken (a WebSocket frame with
    /// reserved bits or opcodes set, or unmasked from a client).
    InvalidFrame(String),
    /// A text frame was not valid UTF-8.
    InvalidUtf8,
    /// The token the connection was opened with expired.
    TokenExpired,
    /// The server is draining before a restart: reconnect, to another
    /// node if there is one, and resume. Spread over the drain window.
    Draining,
    /// An operator disconnected this connection (the admin API).
    Removed,
}

impl CloseReason {
    /// Stable snake_case code, also used as the metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ReplyBacklog => "reply_backlog",
            CloseReason::Shutdown => "shutdown",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::StreamExpired => "stream_expired",
            CloseReason::FrameTooLarge { .. } => "frame_too_large",
            CloseReason::ProtocolViolation(_) => "protocol_violation",
            CloseReason::InvalidFrame(_) => "invalid_frame",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Draining => "server_draining",
            CloseReason::Removed => "removed",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::SlowConsumer => {
                f.write_str("queue limit exceeded: the client does not read fast enough")
            }
            CloseReason::ReplyBacklog => {
                f.write_str("too many replies waiting: the client sends without reading")
            }
            CloseReason::Shutdown => f.write_str("server is shutting down"),
            CloseReason::IdleTimeout => f.write_str("nothing received from the client for too long"),
            CloseReason::StreamExpired => {
                f.write_str("the stream reached its maximum duration; reconnect to resume")
            }
            CloseReason::FrameTooLarge { max } => {
                write!(
                    f,
                    "a frame was larger than {max} bytes, the most this server reads"
                )
            }
            CloseReason::ProtocolViolation(why) => write!(f, "protocol violation: {why}"),
            CloseReason::InvalidFrame(why) => write!(f, "invalid frame: {why}"),
            CloseReason::InvalidUtf8 => f.write_str("a text frame was not valid UTF-8"),
            CloseReason::TokenExpired => {
                f.write_str("the token expired: reconnect with a new one and resume")
            }
            CloseReason::Draining => {
                f.write_str("the server is restarting: reconnect (another node will answer) and resume")
            }
            CloseReason::Removed => f.write_str("disconnected by an operator"),
        }
    }
}

/// A connection's own number for one of its subscriptions, delivered with
/// each message the subscription brings.
///
/// A connection that gets each message once however many of its patterns
/// match (WebSocket, SSE) subscribes everything as [`WHOLE_CONNECTION`]; a
/// NATS connection subscribes each `SUB` under its own number, so a message
/// matching two of them is delivered twice, once per `sid`, as NATS does.
pub type SubscriptionId = u32;

/// The subscription id of connections that get each message once.
pub const WHOLE_CONNECTION: SubscriptionId = 0;

/// A subscription's handle in the router: the connection's outbox, compared
/// by identity, and the connection's id for the subscription.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) id: SubscriptionId,
}

impl Subscriber {
    pub(crate) fn new(outbox: &Arc<Outbox>, id: SubscriptionId) -> Subscriber {
        Subscriber {
            outbox: outbox.clone(),
            id,
        }
    }

    pub(crate) fn offer(&self, message: &Message) -> Offer {
        self.outbox.push_message(message, self.id)
    }
}

impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.outbox, &other.outbox) && self.id == other.id
    }
}

impl Eq for Subscriber {}

impl Hash for Subscriber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.outbox), state);
        self.id.hash(state);
    }
}

/// What became of one message offered to an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Queued, after dropping this many older messages.
    QueuedAfterDropping(usize),
    /// The message itself was larger than the whole byte limit and was dropped.
    DroppedTooLarge,
    /// The queue overflowed and the connection was closed.
    Evicted,
    /// The connection was already closed.
    Closed,
}

/// One connection's outbound queue.
///
/// Aligned to a cache line so that, inside its `Arc`, the queue does not
/// share a line with the reference counts: subscribing and unsubscribing
/// copy subscriber lists, touching every member's count, and without the
/// alignment that churn slowed concurrent fan-outs to the same subject
/// (`cargo bench -p herald-broker --bench router -- publish_under_churn`).
#[repr(align(64))]
pub struct Outbox {
    /// The door its connection came through: the label of what it is
    /// delivered. `None`: not counted (a waiting poll's queue, whose
    /// answer its gateway counts; a queue of a test).
    transport: Option<Transport>,
    stats: Arc<Stats>,
    limits: QueueLimits,
    policy: OverflowPolicy,
    state: Mutex<State>,
    /// Wakes the writer when the queue goes from empty to not empty.
    ready: Notify,
    /// Wakes a reader waiting in [`Outbox::reply_room`] once the writer has
    /// taken the queued replies.
    replies_taken: Notify,
    /// Set once closed; lets publishers skip the mutex for dead connections.
    closed: AtomicBool,
}

struct State {
    entries: VecDeque<Outbound>,
    message_count: usize,
    message_bytes: usize,
    reply_count: usize,
    /// Replies promised but not yet queued: answers to publishes a cluster
    /// has not confirmed yet. They count against `max_replies` like queued
    /// ones, so a client cannot pipeline past the bound while it waits.
    reserved_replies: usize,
    /// Gaps owed to the client for messages dropped since the last batch,
    /// one per subscription pattern. Delivered ahead of the next batch.
    owed_gaps: Vec<Gap>,
    /// The connection's subscriptions, to name the pattern in a gap notice.
    patterns: Vec<Pattern>,
    /// The transport queued an answer of its own (a WebSocket pong) that the
    /// writer must flush even if nothing else is queued.
    flush_owed: bool,
    /// While a subscription starts, the writer must not take its live
    /// messages ahead of its ack (or a resume's replay).
    subscribing: bool,
    /// Where the starting subscription's ack waits in `entries` for its
    /// position.
    subscription_ack: Option<usize>,
    close_reason: Option<CloseReason>,
}

impl Outbox {
    /// A queue counted nowhere: a waiting poll's, a test's.
    pub fn new(limits: QueueLimits, policy: OverflowPolicy) -> Outbox {
        /// What uncounted queues count into: never read, shared, so that a
        /// queue made per request allocates no counters of its own.
        static UNCOUNTED: LazyLock<Arc<Stats>> = LazyLock::new(Arc::default);
        Outbox::build(limits, policy, None, UNCOUNTED.clone())
    }

    /// A queue of a connection on `transport`, counted in `stats`.
    pub fn metered(
        limits: QueueLimits,
        policy: OverflowPolicy,
        transport: Transport,
        stats: Arc<Stats>,
    ) -> Outbox {
        Outbox::build(limits, policy, Some(transport), stats)
    }

    fn build(
        limits: QueueLimits,
        policy: OverflowPolicy,
        transport: Option<Transport>,
        stats: Arc<Stats>,
    ) -> Outbox {
        Outbox {
            transport,
            stats,
            limits,
            policy,
            state: Mutex::new(State {
                entries: VecDeque::new(),
                message_count: 0,
                message_bytes: 0,
                reply_count: 0,
                reserved_replies: 0,
                owed_gaps: Vec::new(),
                flush_owed: false,
                patterns: Vec::new(),
                subscribing: false,
                subscription_ack: None,
                close_reason: None,
            }),
            ready: Notify::new(),
            replies_taken: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// The transport its deliveries are counted under; `None`: uncounted.
    pub fn transport(&self) -> Option<Transport> {
        self.transport
    }

    /// How many patterns the connection subscribes to.
    pub fn pattern_count(&self) -> usize {
        self.lock().patterns.len()
    }

    pub fn policy(&self) -> OverflowPolicy {
        self.policy
    }

    /// A poisoned lock means a panic happened while the queue was being
    /// changed; its counters are still consistent (every mutation is a
    /// handful of statements that do not panic), so keep serving.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Offers a message, for the connection's subscription `id`. Never
    /// blocks beyond the queue's own short mutex.
    pub fn push_message(&self, message: &Message, id: SubscriptionId) -> Offer {
        // Relaxed: a stale `false` only means taking the lock and finding
        // `close_reason` set, which is checked again below.
        if self.closed.load(Ordering::Relaxed) {
            return Offer::Closed;
        }
        let size = message.size();
        let mut state = self.lock();
        if state.close_reason.is_some() {
            return Offer::Closed;
        }
        let mut dropped = 0;
        if state.message_count + 1 > self.limits.max_messages
            || state.message_bytes + size > self.limits.max_bytes
        {
            match self.policy {
                OverflowPolicy::Disconnect => {
                    self.close_locked(&mut state, CloseReason::SlowConsumer);
                    drop(state);
                    self.ready.notify_one();
                    return Offer::Evicted;
                }
                OverflowPolicy::DropOldest => {
                    if size > self.limits.max_bytes {
                        state.owe_gap_for(message);
                        return Offer::DroppedTooLarge;
                    }
                    while state.message_count > 0
                        && (state.message_count + 1 > self.limits.max_messages
                            || state.message_bytes + size > self.limits.max_bytes)
                    {
                        state.drop_oldest_message();
                        dropped += 1;
                    }
                }
            }
        }
        let was_empty = state.entries.is_empty();
        state.entries.push_back(match id {
            WHOLE_CONNECTION => Outbound::Message(message.clone()),
            id => Outbound::Delivery(Box::new((id, message.clone()))),
        });
        state.message_count += 1;
        state.message_bytes += size;
        // Wake the writer when the queue stops being empty, and once more
        // when it reaches half its limits: a writer gathering a batch
        // (`write_delay`) then writes before anything is dropped.
        let half_full = state.message_count == self.limits.max_messages.div_ceil(2)
            || (state.message_bytes >= self.limits.max_bytes.div_ceil(2)
                && state.message_bytes - size < self.limits.max_bytes.div_ceil(2));
        let wake = (was_empty || half_full) && !state.subscribing;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        if dropped == 0 {
            Offer::Queued
        } else {
            Offer::QueuedAfterDropping(dropped)
        }
    }

    /// Queues a reply (ack, error, pong, history). Replies are never dropped;
    /// a client that lets too many pile up is closed instead.
    pub fn push_reply(&self, reply: Reply) {
        let mut state = self.lock();
        self.push_reply_locked(&mut state, reply);
        let wake = !state.subscribing;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Waits until one more reply fits under the reply limit (or the
    /// connection is closed). A transport's reader calls it before reading
    /// the next command, so a client that pipelines hundreds of commands is
    /// slowed to the pace at which it reads the answers instead of being
    /// closed for a backlog it did not cause: each command queues at most
    /// one reply.
    pub async fn reply_room(&self) {
        loop {
            let taken = self.replies_taken.notified();
            tokio::pin!(taken);
            // Registered before checking, so a take in between is not missed.
            taken.as_mut().enable();
            {
                let state = self.lock();
                let promised = state.reply_count + state.reserved_replies;
                if promised < self.limits.max_replies || state.close_reason.is_some() {
                    return;
                }
            }
            taken.await;
        }
    }

    /// How many more replies fit now; none once the connection is closed.
    /// A reader that handles a read's commands one after another takes
    /// this once, counts one down per command (each queues at most one
    /// reply), and waits in [`Outbox::reply_room`] when it runs out: one
    /// lock per batch of commands instead of one per command.
    pub fn reply_room_left(&self) -> usize {
        let state = self.lock();
        if state.close_reason.is_some() {
            return 0;
        }
        self.limits
            .max_replies
            .saturating_sub(state.reply_count + state.reserved_replies)
    }

    /// Counts an answer the transport queued itself, outside this queue (a
    /// WebSocket library answers each ping with a pong in its own buffer): it
    /// counts as a reply, so [`Outbox::reply_room`] applies backpressure to
    /// a client that pings without reading, and the writer is woken to
    /// flush it out.
    pub fn push_transport_reply(&self) {
        let mut state = self.lock();
        if state.close_reason.is_some() {
            return;
        }
        if state.reply_count >= self.limits.max_replies {
            self.close_locked(&mut state, CloseReason::ReplyBacklog);
        } else {
            state.reply_count += 1;
            state.flush_owed = true;
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Queues a reply, or closes the connection past the reply limit;
    /// returns where the reply sits in the queue.
    fn push_reply_locked(&self, state: &mut State, reply: Reply) -> Option<usize> {
        if state.close_reason.is_some() {
            return None;
        }
        if state.reply_count >= self.limits.max_replies {
            self.close_locked(state, CloseReason::ReplyBacklog);
            return None;
        }
        queue_reply_locked(state, reply);
        Some(state.entries.len() - 1)
    }

    /// Promises a reply that will come later ([`Outbox::fulfil_reply`]):
    /// it counts against `max_replies` from now on.
    pub fn reserve_reply(&self) {
        self.lock().reserved_replies += 1;
    }

    /// Keeps a promise made with [`Outbox::reserve_reply`]: queues `reply`
    /// (none: the promise is released with nothing to say). Never refused
    /// for the backlog, since its room was taken when it was promised.
    pub fn fulfil_reply(&self, reply: Option<Reply>) {
        let mut state = self.lock();
        state.reserved_replies = state.reserved_replies.saturating_sub(1);
        let Some(reply) = reply else {
            drop(state);
            self.replies_taken.notify_waiters();
            return;
        };
        if state.close_reason.is_some() {
            return;
        }
        queue_reply_locked(&mut state, reply);
        let wake = !state.subscribing;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Closes the connection: whatever is queued is discarded and the client
    /// is sent one final `err` carrying the reason's code. Idempotent.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.close_reason.is_none() {
            self.close_locked(&mut state, reason);
        }
        drop(state);
        self.ready.notify_one();
    }

    fn close_locked(&self, state: &mut State, reason: CloseReason) {
        state.entries.clear();
        state.subscription_ack = None;
        state.owed_gaps.clear();
        state.message_count = 0;
        state.message_bytes = 0;
        state.reply_count = 0;
        state.entries.push_back(Outbound::Reply(Box::new(Reply::Error {
            id: None,
            code: reason.code(),
            message: reason.to_string(),
        })));
        state.close_reason = Some(reason);
        self.closed.store(true, Ordering::Relaxed);
        self.replies_taken.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close_reason.clone()
    }

    /// Waits for events, then moves all of them into `batch` (which should be
    /// empty; its allocation is swapped in for reuse). Owed gap notices come
    /// first. Returns the close reason once the connection is closed and its
    /// final events have been taken.
    pub async fn next_batch(&self, batch: &mut VecDeque<Outbound>) -> Result<(), CloseReason> {
        loop {
            if let Some(result) = self.try_take_batch(batch) {
                return result;
            }
            self.ready.notified().await;
        }
    }

    /// Counts one batch written out to the connection (one flush), under
    /// its transport: deliveries per write is what gathering saves.
    pub fn count_write(&self) {
        if let Some(transport) = self.transport {
            self.stats.wrote(transport);
        }
    }

    /// Waits until [`Outbox::try_take_batch`] would take something (or
    /// report the close), without taking it: a writer that gathers for a
    /// moment before writing waits here first.
    pub async fn ready(&self) {
        loop {
            if self.has_work() {
                return;
            }
            self.ready.notified().await;
        }
    }

    /// Waits for the queue's next wake-up. Once it holds something, a queue
    /// wakes its writer again only for what should not wait: a reply, the
    /// close, or filling up to half its limits ([`Outbox::is_urgent`]).
    pub async fn nudged(&self) {
        self.ready.notified().await;
    }

    /// Whether what is queued should be written now rather than gathered
    /// further: a reply (a client may be waiting on it), the close, or half
    /// the queue's message or byte limit reached (waiting longer would risk
    /// dropping messages).
    pub fn is_urgent(&self) -> bool {
        let state = self.lock();
        state.close_reason.is_some()
            || state.reply_count > 0
            || state.flush_owed
            || !state.owed_gaps.is_empty()
            || state.message_count >= self.limits.max_messages.div_ceil(2)
            || state.message_bytes >= self.limits.max_bytes.div_ceil(2)
    }

    fn has_work(&self) -> bool {
        let state = self.lock();
        if state.close_reason.is_some() {
            return true;
        }
        !state.subscribing && (!state.entries.is_empty() || !state.owed_gaps.is_empty() || state.flush_owed)
    }

    /// Takes what is ready without waiting; `None` when there is nothing.
    pub fn try_take_batch(&self, batch: &mut VecDeque<Outbound>) -> Option<Result<(), CloseReason>> {
        let mut state = self.lock();
        let held_for_replay = state.subscribing && state.close_reason.is_none();
        if !held_for_replay && (!state.entries.is_empty() || !state.owed_gaps.is_empty() || state.flush_owed)
        {
            state.flush_owed = false;
            if state.message_count > 0 {
                self.stats.queue_depth(state.message_count);
            }
            self.stats
                .gaps(GapReason::QueueFull, state.owed_gaps.len() as u64);
            batch.clear();
            std::mem::swap(&mut state.entries, batch);
            for gap in state.owed_gaps.drain(..).rev() {
                batch.push_front(Outbound::Gap(Box::new(gap)));
            }
            state.message_count = 0;
            state.message_bytes = 0;
            let replies_were_queued = std::mem::take(&mut state.reply_count) > 0;
            drop(state);
            if replies_were_queued {
                self.replies_taken.notify_waiters();
            }
            return Some(Ok(()));
        }
        state.close_reason.clone().map(Err)
    }

    /// Queues a gap on each of this connection's patterns for positions
    /// `from..=to`, lost before they reached this node (a clustered node
    /// whose log discarded them while it was away): on which subjects they
    /// were is not known, so every pattern is told. Queued after what is
    /// already queued, which all comes before `from`.
    pub(crate) fn owe_lost(&self, from: Position, to: Position) {
        let mut state = self.lock();
        if state.close_reason.is_some() || state.patterns.is_empty() {
            return;
        }
        let was_empty = state.entries.is_empty();
        let gaps: Vec<Outbound> = state
            .patterns
            .iter()
            .map(|pattern| {
                Outbound::Gap(Box::new(Gap {
                    subject: pattern.clone(),
                    from,
                    to,
                    missed: None,
                }))
            })
            .collect();
        self.stats.gaps(GapReason::Lost, gaps.len() as u64);
        state.entries.extend(gaps);
        let wake = was_empty && !state.subscribing;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }

    pub(crate) fn add_pattern(&self, pattern: &Pattern) {
        let mut state = self.lock();
        if !state.patterns.contains(pattern) {
            state.patterns.push(pattern.clone());
        }
    }

    pub(crate) fn remove_pattern(&self, pattern: &Pattern) {
        self.lock().patterns.retain(|p| p != pattern);
    }

    /// Starts a subscription: the writer is held back until
    /// [`Outbox::finish_subscription`], and the subscription's `ack` (its
    /// position not yet known) is queued now, ahead of every message the
    /// subscription will bring.
    pub(crate) fn begin_subscription(&self, ack: Option<Reply>) {
        let mut state = self.lock();
        state.subscribing = true;
        state.subscription_ack = ack.and_then(|ack| self.push_reply_locked(&mut state, ack));
    }

    /// Finishes a subscription: the ack gets its `position`, and a resume's
    /// gaps and replayed messages are merged with the live messages for
    /// `patterns` that arrived meanwhile: ack, gaps, then messages in
    /// position order, each once.
    ///
    /// Position order, not "replay, then live": history is read one subject
    /// at a time, so a live message of a subject read early can be older
    /// than a replayed message of a subject read late. A client resumes from
    /// the last position it saw, which is only safe if it saw them in order.
    /// Without a replay nothing moves: the ack already precedes everything
    /// the subscription brought, so starting one costs O(1) however full the
    /// queue.
    pub(crate) fn finish_subscription(
        &self,
        patterns: &[Pattern],
        position: Position,
        gaps: Vec<Gap>,
        replay: Vec<Message>,
    ) {
        let mut state = self.lock();
        state.subscribing = false;
        let ack_index = state.subscription_ack.take();
        if state.close_reason.is_none() {
            if let Some(Outbound::Reply(reply)) = ack_index.and_then(|index| state.entries.get_mut(index)) {
                if let Reply::Ack { position: slot, .. } = &mut **reply {
                    *slot = Some(position);
                }
            }
            self.stats.gaps(GapReason::Resume, gaps.len() as u64);
            if !gaps.is_empty() || !replay.is_empty() {
                let ack = match ack_index.and_then(|index| state.entries.remove(index)) {
                    Some(Outbound::Reply(reply)) => Some(*reply),
                    _ => None,
                };
                state.merge_replay(patterns, ack, gaps, replay);
            }
        }
        let wake = !state.entries.is_empty();
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }
}

impl State {
    fn drop_oldest_message(&mut self) {
        let index = self
            .entries
            .iter()
            .position(|entry| entry.message().is_some())
            .expect("message_count > 0 means a message is queued");
        let removed = self.entries.remove(index);
        let message = removed
            .as_ref()
            .and_then(Outbound::message)
            .expect("index points at a message");
        if let Some(ack_index) = &mut self.subscription_ack {
            if index < *ack_index {
                *ack_index -= 1;
            }
        }
        self.message_count -= 1;
        self.message_bytes -= message.size();
        self.owe_gap_for(message);
    }

    /// Records that `message` will not be delivered, under the first of the
    /// connection's patterns that matches it.
    fn owe_gap_for(&mut self, message: &Message) {
        let subject = message.subject().as_str();
        let Some(pattern) = self.patterns.iter().find(|p| p.matches(subject)) else {
            // Unsubscribed since it was queued: nothing is owed.
            return;
        };
        let position = message.position();
        match self.owed_gaps.iter_mut().find(|gap| &gap.subject == pattern) {
            Some(gap) => {
                gap.from = gap.from.min(position);
                gap.to = gap.to.max(position);
                gap.missed = gap.missed.map(|n| n + 1);
            }
            None => {
                let subject = pattern.clone();
                self.owed_gaps.push(Gap {
                    subject,
                    from: position,
                    to: position,
                    missed: Some(1),
                });
            }
        }
    }

    fn merge_replay(
        &mut self,
        patterns: &[Pattern],
        ack: Option<Reply>,
        gaps: Vec<Gap>,
        mut replay: Vec<Message>,
    ) {
        // `replay` is in position order, so membership is a binary search.
        let replayed_count = replay.len();
        let subscribed = |message: &Message| {
            let subject = message.subject().as_str();
            patterns.iter().any(|pattern| pattern.matches(subject))
        };
        self.entries.retain(|entry| {
            let Some(message) = entry.message().filter(|message| subscribed(message)) else {
                return true;
            };
            let replayed = replay[..replayed_count]
                .binary_search_by_key(&message.position(), Message::position)
                .is_ok();
            if !replayed {
                replay.push(message.clone());
            }
            false
        });
        replay.sort_by_key(Message::position);
        self.entries.extend(ack.map(|ack| Outbound::Reply(Box::new(ack))));
        self.entries
            .extend(gaps.into_iter().map(|gap| Outbound::Gap(Box::new(gap))));
        self.entries.extend(replay.into_iter().map(Outbound::Message));
        self.message_count = 0;
        self.message_bytes = 0;
        for entry in &self.entries {
            if let Some(message) = entry.message() {
                self.message_count += 1;
                self.message_bytes += message.size();
            }
        }
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Outbox")
            .field("policy", &self.policy)
            .field("messages", &state.message_count)
            .field("bytes", &state.message_bytes)
            .field("close_reason", &state.close_reason)
            .finish()
    }
}

/// Queues a reply and counts it; the caller has checked the room.
fn queue_reply_locked(state: &mut State, reply: Reply) {
    state.entries.push_back(Outbound::Reply(Box::new(reply)));
    state.reply_count += 1;
}
