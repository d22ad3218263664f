//! The [`Broker`]: one per process, shared by every gateway.
//!
//! It numbers messages, records them in history and fans them out through
//! the router into subscribers' outboxes. The publish path, in order:
//! validate the subject (no allocation) → look up the subject's channel
//! (shard read-lock) → under the publish-order lock: take the next sequence,
//! build the message (one allocation), record it, match, offer it to each
//! subscriber's outbox → count.
//!
//! ## Why one publish-order lock
//!
//! A connection subscribed to several subjects (a wildcard, or several
//! channels) resumes with one token: the position of the last message it
//! received. That is only lossless if every connection receives messages in
//! position order across subjects, and that needs numbering and enqueueing
//! to happen as one step: were they separate, publisher A could take
//! position 10, publisher B position 11, B enqueue first, and a client that
//! disconnected after 11 would resume past 10 without ever seeing it (the
//! `resuming_while_publishing_loses_nothing_and_repeats_nothing` test caught
//! exactly this). So numbering → record → match → enqueue runs under one
//! mutex. What it guards is short and never waits: a router lookup that
//! subscription churn cannot stall (see `router`), and try-enqueues into
//! bounded queues. Validation, channel lookup and all socket I/O stay
//! outside it, in parallel.
//!
//! ## Lock order (the one place it is written down)
//!
//! `publish_order` → a channel's ring → a router shard or the wildcard trie
//! (read) → an outbox. Each is released before the next is taken except
//! `publish_order`, which spans the rest. Subscribing takes the router
//! (write), then rings, then the outbox, one at a time; the history sweep
//! takes a history shard, then rings. No path takes them in another order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::clock::{Clock, SystemClock};
use crate::history::{History, HistoryError, HistoryLimits, Replay, Sequences};
use crate::message::{Message, Payload, PayloadError};
use crate::outbox::{Offer, OverflowPolicy, QueueLimits};
use crate::position::Position;
use crate::router::{Matches, Router};
use crate::session::{Access, Session, SubscriberRef};
use crate::subject::{validate_subject, Pattern, SubjectError, SubjectLimits};

/// Everything the broker can be configured with. Every field has a default
/// that is safe for a single node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub subject_limits: SubjectLimits,
    /// Largest accepted payload (the JSON text of `data`), in bytes.
    pub max_payload_bytes: usize,
    pub history: HistoryLimits,
    /// Queue bounds of each connection.
    pub queue: QueueLimits,
    /// What happens to a connection whose queue overflows.
    pub overflow_policy: OverflowPolicy,
    /// Patterns one connection may hold at once.
    pub max_subscriptions_per_session: usize,
    /// Most messages one `history` request returns.
    pub max_history_page: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            subject_limits: SubjectLimits::default(),
            max_payload_bytes: 64 * 1024,
            history: HistoryLimits::default(),
            queue: QueueLimits::default(),
            overflow_policy: OverflowPolicy::default(),
            max_subscriptions_per_session: 1024,
            max_history_page: 1000,
        }
    }
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishError {
    #[error(transparent)]
    Subject(#[from] SubjectError),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl PublishError {
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::Subject(error) => error.code(),
            PublishError::Payload(error) => error.code(),
            PublishError::History(HistoryError::TooManySubjects { .. }) => "too_many_subjects",
        }
    }
}

/// Counters since start. Updated once per publish, not once per recipient.
#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    slow_consumers: AtomicU64,
}

/// A snapshot of the broker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    pub published: u64,
    /// Messages queued to a subscriber.
    pub delivered: u64,
    /// Messages dropped by full queues (each reported to its client as a gap).
    pub dropped: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    pub subscriptions: u64,
    pub history_subjects: u64,
}

/// The fan-out core.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    clock: Arc<dyn Clock>,
    /// Identity of this broker's numbering; changes at every start since
    /// history is in memory.
    epoch: u32,
    /// The last sequence handed out; node-wide, so positions of different
    /// subjects compare.
    last_sequence: AtomicU64,
    /// Serialises numbering with enqueueing; see the module docs.
    publish_order: Mutex<()>,
    router: Router<SubscriberRef>,
    history: History,
    counters: Counters,
    next_session_id: AtomicU64,
}

impl Broker {
    /// A broker on the system clock with a fresh random epoch.
    pub fn new(config: BrokerConfig) -> Arc<Broker> {
        let epoch = ahash::RandomState::new().hash_one(std::process::id()) as u32;
        Broker::with_clock(config, Arc::new(SystemClock::new()), epoch)
    }

    /// A broker with a given clock and epoch; for tests and simulations.
    pub fn with_clock(config: BrokerConfig, clock: Arc<dyn Clock>, epoch: u32) -> Arc<Broker> {
        let history = History::new(config.history);
        Arc::new(Broker {
            config,
            clock,
            epoch,
            last_sequence: AtomicU64::new(0),
            publish_order: Mutex::new(()),
            router: Router::new(),
            history,
            counters: Counters::default(),
            next_session_id: AtomicU64::new(1),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The position of the last message published, or sequence 0.
    pub fn last_position(&self) -> Position {
        Position::new(self.epoch, self.last_sequence.load(Ordering::Acquire))
    }

    /// Opens a session for one client connection.
    pub fn session(self: &Arc<Self>, access: Arc<dyn Access>) -> Session {
        let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        Session::new(self.clone(), id, access)
    }

    /// Publishes `payload` on `subject`, unchecked by any permission: the
    /// trusted path for servers. Clients publish through a [`Session`].
    pub fn publish(&self, subject: &str, payload: Payload) -> Result<Position, PublishError> {
        validate_subject(subject, &self.config.subject_limits)?;
        if payload.len() > self.config.max_payload_bytes {
            return Err(PayloadError::TooLarge {
                size: payload.len(),
                max: self.config.max_payload_bytes,
            }
            .into());
        }
        loop {
            let channel = self.history.channel(subject)?;
            // Poisoning can only come from a panic in code that leaves no
            // state half-changed behind this lock (it guards no data).
            let order = self
                .publish_order
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut ring = channel.lock();
            if ring.is_retired() {
                // Swept between lookup and lock; look it up afresh.
                continue;
            }
            // Only ever written under `publish_order`; atomic so that
            // `last_position` can read it without the lock.
            let sequence = self.last_sequence.load(Ordering::Relaxed) + 1;
            self.last_sequence.store(sequence, Ordering::Release);
            let position = Position::new(self.epoch, sequence);
            let now = self.clock.now_millis();
            let message = Message::new(channel.subject.clone(), position, now, payload);
            ring.record(message.clone(), self.history.limits(), now);
            drop(ring);
            let matches = self.router.matches(subject);
            self.fan_out(&matches, &message);
            drop(order);
            self.counters.published.fetch_add(1, Ordering::Relaxed);
            return Ok(position);
        }
    }

    fn fan_out(&self, matches: &Matches<SubscriberRef>, message: &Message) {
        let mut tally = Tally::default();
        if let [only] = matches.as_slice() {
            for subscriber in only.iter() {
                tally.add(subscriber.outbox().push_message(message));
            }
        } else if !matches.is_empty() {
            // One connection with overlapping patterns gets the message once.
            let capacity = matches.iter().map(|list| list.len()).sum();
            let mut seen = ahash::AHashSet::with_capacity(capacity);
            for subscriber in matches.iter().flat_map(|list| list.iter()) {
                if seen.insert(subscriber) {
                    tally.add(subscriber.outbox().push_message(message));
                }
            }
        }
        tally.record(&self.counters);
    }

    /// Retained messages on subjects matching `pattern` after `since`, in
    /// position order, with the positions that may have been lost (a gap).
    /// A position from another epoch means the numbering restarted:
    /// everything retained is returned and everything before may be lost.
    pub fn history(
        &self,
        pattern: &Pattern,
        since: Option<Position>,
    ) -> (Option<(Position, Position)>, Vec<Message>) {
        self.history_through(pattern, since, self.last_sequence.load(Ordering::Acquire))
    }

    /// [`Broker::history`], up to and including sequence `through`.
    pub(crate) fn history_through(
        &self,
        pattern: &Pattern,
        since: Option<Position>,
        through: u64,
    ) -> (Option<(Position, Position)>, Vec<Message>) {
        let now = self.clock.now_millis();
        let Some(since) = since else {
            return (
                None,
                self.history
                    .read(pattern, Sequences { after: 0, through }, now)
                    .messages,
            );
        };
        let same_epoch = since.epoch == self.epoch;
        let after = if same_epoch { since.sequence } else { 0 };
        let Replay {
            lost_through,
            messages,
        } = self.history.read(pattern, Sequences { after, through }, now);
        let gap = if !same_epoch {
            let first_kept = messages.first().map_or(through, |m| m.sequence() - 1);
            Some((
                Position::new(since.epoch, since.sequence.saturating_add(1)),
                Position::new(self.epoch, first_kept.max(lost_through)),
            ))
        } else if lost_through > 0 {
            Some((
                Position::new(self.epoch, after + 1),
                Position::new(self.epoch, lost_through),
            ))
        } else {
            None
        };
        (gap, messages)
    }

    /// Subscribes at a cut in the numbering and returns it: every message up
    /// to the returned sequence has already been offered to subscribers
    /// (not to this one), every later one will be offered to this one too.
    /// A resume reads history through the cut and lets the rest arrive live,
    /// so nothing is missed and nothing repeated.
    pub(crate) fn subscribe_at_cut(&self, pattern: &Pattern, subscriber: SubscriberRef) -> u64 {
        let _order = self
            .publish_order
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.router.subscribe(pattern, subscriber);
        self.last_sequence.load(Ordering::Acquire)
    }

    /// Expires old history and forgets idle subjects; the binary calls this
    /// periodically. Returns how many subjects were forgotten.
    pub fn sweep(&self) -> usize {
        self.history.sweep(self.clock.now_millis())
    }

    pub fn metrics(&self) -> Metrics {
        Metrics {
            published: self.counters.published.load(Ordering::Relaxed),
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            slow_consumers: self.counters.slow_consumers.load(Ordering::Relaxed),
            subscriptions: self.router.subscription_count() as u64,
            history_subjects: self.history.subject_count() as u64,
        }
    }

    pub(crate) fn router(&self) -> &Router<SubscriberRef> {
        &self.router
    }
}

/// Per-publish counts, added to the shared counters once.
#[derive(Default)]
struct Tally {
    delivered: u64,
    dropped: u64,
    evicted: u64,
}

impl Tally {
    fn add(&mut self, offer: Offer) {
        match offer {
            Offer::Queued => self.delivered += 1,
            Offer::QueuedAfterDropping(dropped) => {
                self.delivered += 1;
                self.dropped += dropped as u64;
            }
            Offer::DroppedTooLarge => self.dropped += 1,
            Offer::Evicted => self.evicted += 1,
            Offer::Closed => {}
        }
    }

    fn record(&self, counters: &Counters) {
        if self.delivered > 0 {
            counters.delivered.fetch_add(self.delivered, Ordering::Relaxed);
        }
        if self.dropped > 0 {
            counters.dropped.fetch_add(self.dropped, Ordering::Relaxed);
        }
        if self.evicted > 0 {
            counters.slow_consumers.fetch_add(self.evicted, Ordering::Relaxed);
        }
    }
}
