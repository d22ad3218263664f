//! The [`Broker`]: one per process, shared by every gateway.
//!
//! It numbers messages, records them in history and fans them out through
//! the router into subscribers' outboxes. The publish path, in order:
//! validate the subject (no allocation) → look up the subject's channel
//! (shard read-lock) → under the publish-order lock: take the next sequence,
//! build the message (one allocation), record it, match, offer it to each
//! subscriber's outbox, mark it committed → count.
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
//! Because publishes are serialised, two watermarks describe the stream
//! exactly: `last_sequence` (numbered) and `committed_sequence` (recorded
//! and fanned out). Everything at or below the committed mark is in history
//! and in every queue it will ever reach. A subscriber registers in the
//! router, then reads `last_sequence` as its cut: every later message is
//! matched with it in place. Neither subscribing nor a long poll (see
//! `poll`) takes the lock to get an exact cut.
//!
//! ## Lock order (the one place it is written down)
//!
//! `publish_order` → a channel's ring → the history's retention queue (→ the
//! rings it evicts from) → a router shard or the wildcard trie (read) → an
//! outbox. Each is released before the next is taken except
//! `publish_order`, which spans the rest, and the retention queue, which
//! spans its evictions. Subscribing takes the router
//! (write) alone; a resume may then take `publish_order` alone (to wait for
//! a publish midway), and reads rings and fills the outbox after releasing
//! it. Creating a channel takes a history shard, then the
//! subject tree; the history sweep takes a history shard, then rings, then
//! the subject tree. No path takes them in another order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use serde::Deserialize;
use thiserror::Error;

use crate::auth::User;
use crate::clock::{Clock, Stamp, SystemClock};
use crate::cluster::{Acknowledgement, ClusterError, Forwarded, Upstream};
use crate::connections::{self, ConnectionInfo, Connections};
use crate::history::{Channel, History, HistoryError, HistoryLimits, PatternTooBroad, Retention, Sequences};
use crate::message::{Envelope, Message, Payload, PayloadError};
use crate::outbox::{
    CloseReason, Offer, Outbox, OverflowPolicy, QueueLimits, Subscriber, SubscriptionId, WHOLE_CONNECTION,
};
use crate::position::{InvalidToken, Position};
use crate::presence::{Announcement, Member, Presence, PresenceLimits};
use crate::protocol::Gap;
use crate::queue::QueueGroups;
use crate::router::{Matches, Router};
use crate::rules::{SubjectPolicy, SubjectRules};
use crate::session::{PublishBudget, SessionError};
use crate::stats::{DropReason, Stats, Transport};
use crate::subject::{validate_subject, Pattern, Subject, SubjectError, SubjectLimits, OPERATOR_PREFIX};

/// Subjects under this prefix are reply inboxes (`_INBOX.>`, as NATS
/// clients make them): delivered live, never recorded in history.
pub const INBOX_PREFIX: &str = "_INBOX.";

/// Everything the broker can be configured with. Every field has a default
/// that is safe for a single node. In the server's configuration file it is
/// the `[broker]` section, with these names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    #[serde(rename = "subjects")]
    pub subject_limits: SubjectLimits,
    /// Largest accepted payload (the JSON text of `data`), in bytes.
    #[serde(rename = "max_payload", deserialize_with = "crate::units::size::deserialize")]
    pub max_payload_bytes: usize,
    pub history: HistoryLimits,
    /// Queue bounds of each connection.
    pub queue: QueueLimits,
    /// What happens to a connection whose queue overflows.
    pub overflow_policy: OverflowPolicy,
    /// Patterns one connection may hold at once.
    pub max_subscriptions_per_connection: usize,
    /// Most messages one `history` request returns.
    pub max_history_page: usize,
    pub presence: PresenceLimits,
    /// Publishes per second one user (a token's `sub`, over all their
    /// connections and requests) or one anonymous connection may make;
    /// beyond, `rate_limited`. API keys are not limited. 0: no limit.
    pub max_client_publishes_per_second: u32,
    /// The `[[subjects]]` rules; the server reads them from the top level
    /// of its configuration, next to `[broker]`.
    #[serde(skip)]
    pub rules: SubjectRules,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            subject_limits: SubjectLimits::default(),
            max_payload_bytes: 64 * 1024,
            history: HistoryLimits::default(),
            queue: QueueLimits::default(),
            overflow_policy: OverflowPolicy::default(),
            max_subscriptions_per_connection: 1024,
            max_history_page: 1000,
            presence: PresenceLimits::default(),
            max_client_publishes_per_second: 50,
            rules: SubjectRules::default(),
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
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl PublishError {
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::Subject(error) => error.code(),
            PublishError::Payload(error) => error.code(),
            PublishError::History(HistoryError::TooManySubjects { .. }) => "too_many_subjects",
            PublishError::Cluster(error) => error.code(),
        }
    }
}

/// Why a batch was refused, and which of its messages caused it. A refused
/// batch published nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("message {index} of the batch: {error}")]
pub struct BatchError {
    pub index: usize,
    pub error: PublishError,
}

/// One subject (or subscribed wildcard pattern) as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubjectInfo {
    pub subject: String,
    /// Subscriptions to exactly this subject (or pattern).
    pub subscribers: usize,
    pub history_messages: usize,
    pub history_bytes: usize,
}

impl SubjectInfo {
    fn named(subject: String) -> SubjectInfo {
        SubjectInfo {
            subject,
            subscribers: 0,
            history_messages: 0,
            history_bytes: 0,
        }
    }
}

/// A snapshot of the broker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    pub published: u64,
    /// Messages queued to a subscriber.
    pub delivered: u64,
    /// Messages dropped by full queues (each reported to its client as a gap).
    pub dropped: u64,
    /// Connections closed as slow consumers: their queue overflowed under
    /// the `disconnect` policy, or a gateway's write to them stalled.
    pub slow_consumers: u64,
    pub subscriptions: u64,
    pub history_subjects: u64,
    /// Bytes history holds, against `history.max_bytes`.
    pub history_bytes: u64,
}

/// What history holds after a position, on one or more patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Per pattern, the positions history no longer covers.
    pub gaps: Vec<Gap>,
    /// Retained messages, in position order, each once.
    pub messages: Vec<Message>,
}

/// How a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Every message on the patterns after this position reaches the
    /// subscriber live; none at or before it does.
    pub cut: Position,
    /// With a `since`, what history holds between it and the cut.
    pub replay: Replay,
}

/// Where history goes to survive a restart: told of every message history
/// records, in publish order, under the publish lock (so it must only hand
/// the message on, not write it out itself). The broker owns no files; a
/// store implements this.
pub trait Journal: Send + Sync + std::fmt::Debug {
    fn record(&self, message: &Message);
    /// Deletes these messages (an operator cleared their subject).
    fn forget(&self, _sequences: &[u64]) {}
}

/// What a broker starts from when history survived a restart.
#[derive(Debug, Default)]
pub struct Restored {
    /// The numbering's identity, kept across the restart.
    pub epoch: u32,
    /// The last sequence handed out before the restart; numbering goes on
    /// after it.
    pub last_sequence: u64,
    /// Messages at or below this sequence may be lost (expired, or never
    /// written before a crash): a resume from before it gets a gap.
    pub lost_through: u64,
    /// The retained messages, in sequence order.
    pub messages: Vec<StoredMessage>,
}

/// One message as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub subject: String,
    pub sequence: u64,
    pub published_at_millis: u64,
    pub payload: Payload,
    pub envelope: Envelope,
}

/// Where a message is recorded.
#[derive(Debug)]
enum Recorded {
    /// In its subject's history ring.
    Channel(Arc<Channel>),
    /// Nowhere: the subject is ephemeral.
    Ephemeral(Subject),
}

impl Recorded {
    fn subject(&self) -> &Subject {
        match self {
            Recorded::Channel(channel) => &channel.subject,
            Recorded::Ephemeral(subject) => subject,
        }
    }
}

/// A subject checked for one publisher and where its messages are
/// recorded (`Publisher::publish_keeping_route`): a pipelined publisher
/// keeps to a few subjects, and publishing to a route again skips the
/// subject's checks and its channel's lookup. While a route is held its
/// channel stays (the history sweep leaves a channel in use alone).
#[derive(Debug)]
pub(crate) struct Route {
    recorded: Recorded,
    /// The publisher it was checked for ([`crate::Publisher`]'s id).
    pub(crate) checked_for: u64,
}

impl Route {
    pub(crate) fn subject(&self) -> &str {
        self.recorded.subject().as_str()
    }
}

/// How a message gets its sequence.
#[derive(Debug, Clone, Copy)]
enum Numbering {
    /// The next one: a single node numbers its own messages.
    Next,
    /// The one the cluster's log gave it; `live` is false for history a
    /// node catches up on at its first start, which nobody here awaits.
    Ordered {
        sequence: u64,
        at_millis: u64,
        live: bool,
    },
    /// None of its own: a clustered node's ephemeral system message (a
    /// presence event) carries the position of the last message before it.
    Unnumbered,
}

/// The fan-out core.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    clock: Arc<dyn Clock>,
    /// Identity of this broker's numbering: fresh at every start with
    /// history in memory, kept across restarts with history on disk.
    epoch: u32,
    /// The last sequence handed out; node-wide, so positions of different
    /// subjects compare.
    last_sequence: AtomicU64,
    /// The last sequence recorded and fanned out: everything at or below it
    /// is in history and queued wherever it will ever be queued.
    committed_sequence: AtomicU64,
    /// Serialises numbering with enqueueing; see the module docs.
    publish_order: Mutex<Retention>,
    router: Router<Subscriber>,
    /// Queue groups: each message to one member of each matching group.
    queues: QueueGroups,
    history: History,
    presence: Presence,
    /// Each user's publishes per second, shared by all their connections
    /// and HTTP requests; an entry lives while its budget is not full.
    user_budgets: Mutex<ahash::AHashMap<String, PublishBudget>>,
    /// Messages numbered and fanned out here, whoever published them.
    routed: AtomicU64,
    /// What operators see: per transport, per reason, latencies.
    stats: Arc<Stats>,
    /// Open streaming connections, for the admin API and draining.
    connections: Connections,
    next_session_id: AtomicU64,
    journal: Option<Arc<dyn Journal>>,
    /// Set on a clustered node: where its publishes are ordered.
    upstream: OnceLock<Arc<dyn Upstream>>,
    /// Connections whose forwarded publishes must not come back to them,
    /// by the key the message carries through the cluster.
    echo_skips: Mutex<ahash::AHashMap<u64, Weak<Outbox>>>,
    next_echo_key: AtomicU64,
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
            presence: Presence::new(config.presence),
            user_budgets: Mutex::default(),
            config,
            clock,
            epoch,
            last_sequence: AtomicU64::new(0),
            committed_sequence: AtomicU64::new(0),
            publish_order: Mutex::new(Retention::default()),
            router: Router::new(),
            queues: QueueGroups::default(),
            history,
            routed: AtomicU64::new(0),
            stats: Arc::default(),
            connections: Connections::default(),
            next_session_id: AtomicU64::new(1),
            journal: None,
            upstream: OnceLock::new(),
            echo_skips: Mutex::default(),
            next_echo_key: AtomicU64::new(1),
        })
    }

    /// A broker that resumes the numbering and the history of `restored`,
    /// then hands every message it records to `journal`. Restored messages
    /// go through the same limits as new ones (count, age, bytes, subjects).
    pub fn restored(
        config: BrokerConfig,
        clock: Arc<dyn Clock>,
        restored: Restored,
        journal: Arc<dyn Journal>,
    ) -> Arc<Broker> {
        let history = History::new(config.history);
        let now = clock.now_millis();
        let mut retention = Retention::default();
        for stored in restored.messages {
            let limits = config.rules.policy(&stored.subject, &config.history).history;
            if !limits.keeps_history() {
                continue;
            }
            let Ok(channel) = history.channel(&stored.subject, limits) else {
                continue;
            };
            let position = Position::new(restored.epoch, stored.sequence);
            let message = Message::with_envelope(
                channel.subject.clone(),
                position,
                stored.published_at_millis,
                stored.payload,
                stored.envelope,
            );
            history.record(&mut retention, &channel, message, now);
        }
        history.forget_through(restored.lost_through);
        Arc::new(Broker {
            presence: Presence::new(config.presence),
            user_budgets: Mutex::default(),
            config,
            clock,
            epoch: restored.epoch,
            last_sequence: AtomicU64::new(restored.last_sequence),
            committed_sequence: AtomicU64::new(restored.last_sequence),
            publish_order: Mutex::new(retention),
            router: Router::new(),
            queues: QueueGroups::default(),
            history,
            routed: AtomicU64::new(0),
            stats: Arc::default(),
            connections: Connections::default(),
            next_session_id: AtomicU64::new(1),
            journal: Some(journal),
            upstream: OnceLock::new(),
            echo_skips: Mutex::default(),
            next_echo_key: AtomicU64::new(1),
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
        Position::new(self.epoch, self.committed_sequence())
    }

    /// Publishes `payload` on `subject`, unchecked by any permission: the
    /// trusted path for servers. Clients publish through a
    /// [`Session`](crate::Session).
    pub fn publish(&self, subject: &str, payload: Payload) -> Result<Position, PublishError> {
        self.publish_with(subject, payload, Envelope::default())
    }

    /// Publishes with headers or a reply subject, unchecked by any
    /// permission.
    pub fn publish_with(
        &self,
        subject: &str,
        payload: Payload,
        envelope: Envelope,
    ) -> Result<Position, PublishError> {
        self.check(subject, payload.len() + envelope.headers_len())?;
        self.publish_checked(subject, payload, envelope, None)
    }

    /// Publishes what the caller has checked (the subject, and the size
    /// with headers: [`Publisher::check`](crate::Publisher::check)
    /// does), delivering to every matching subscriber but `skip` (the
    /// publisher's own connection, when it asked not to be echoed).
    pub(crate) fn publish_checked(
        &self,
        subject: &str,
        payload: Payload,
        envelope: Envelope,
        skip: Option<&Arc<Outbox>>,
    ) -> Result<Position, PublishError> {
        let route = self.route(subject)?;
        Ok(self.publish_routed(&route, payload, envelope, skip))
    }

    /// Where messages on a checked `subject` go (its history channel,
    /// created on first use), for [`Broker::publish_routed`]. Only a single
    /// node publishes this way: a clustered one refuses before anything is
    /// made for the subject.
    pub(crate) fn route(&self, subject: &str) -> Result<Route, PublishError> {
        self.refuse_if_clustered()?;
        Ok(Route {
            recorded: self.channel_for(subject)?,
            checked_for: 0,
        })
    }

    /// [`Broker::publish_checked`] to a subject already routed: no lookup.
    /// A route exists only on a single node ([`Broker::set_upstream`] is
    /// set before any client connects).
    pub(crate) fn publish_routed(
        &self,
        route: &Route,
        payload: Payload,
        envelope: Envelope,
        skip: Option<&Arc<Outbox>>,
    ) -> Position {
        let mut order = self.lock_publish_order();
        self.publish_locked(
            &mut order,
            &route.recorded,
            payload,
            envelope,
            skip,
            Numbering::Next,
        )
    }

    /// A clustered node learns a message's position only when the cluster
    /// has ordered it, so it cannot answer a publish on the spot: gateways
    /// publish through [`Session::submit`](crate::Session::submit) there.
    fn refuse_if_clustered(&self) -> Result<(), PublishError> {
        match self.upstream.get() {
            None => Ok(()),
            Some(_) => Err(ClusterError::Refused {
                reason: "a clustered node publishes asynchronously (Session::submit)".into(),
            }
            .into()),
        }
    }

    /// Makes this broker one node of a cluster: from now on what its
    /// clients publish goes to `upstream`, and only messages handed to
    /// [`Broker::apply`] are numbered and delivered. Set once, before any
    /// client connects; false if it was already set.
    pub fn set_upstream(&self, upstream: Arc<dyn Upstream>) -> bool {
        self.upstream.set(upstream).is_ok()
    }

    pub fn is_clustered(&self) -> bool {
        self.upstream.get().is_some()
    }

    /// Whether this node's cluster would refuse a publish now as
    /// `cluster_busy` ([`Upstream::is_busy`]); never on a single node.
    pub fn cluster_is_busy(&self) -> bool {
        self.upstream.get().is_some_and(|upstream| upstream.is_busy())
    }

    /// Publishes what the caller has checked, and tells `done` its
    /// position: at once on a single node; on a clustered node once the
    /// cluster has ordered it (or why it did not). A refusal before
    /// anything was sent is returned and `done` is dropped uncalled.
    pub(crate) fn submit_checked(
        self: &Arc<Self>,
        subject: &str,
        payload: Payload,
        envelope: Envelope,
        skip: Option<&Arc<Outbox>>,
        done: Acknowledgement,
    ) -> Result<(), PublishError> {
        let Some(upstream) = self.upstream.get() else {
            let position = self.publish_checked(subject, payload, envelope, skip)?;
            done(Ok(Some(position)));
            return Ok(());
        };
        let echo_key = skip.map(|outbox| {
            let key = self.next_echo_key.fetch_add(1, Ordering::Relaxed);
            self.lock_echo_skips().insert(key, Arc::downgrade(outbox));
            key
        });
        let done: Acknowledgement = match echo_key {
            None => done,
            Some(key) => {
                let broker = Arc::downgrade(self);
                Box::new(move |result| {
                    // A message that never reaches the log never comes back
                    // to consume its key.
                    if result.is_err() {
                        if let Some(broker) = broker.upgrade() {
                            broker.lock_echo_skips().remove(&key);
                        }
                    }
                    done(result)
                })
            }
        };
        let message = Forwarded {
            subject: Subject::from_validated(subject),
            payload,
            envelope,
            echo_key,
        };
        upstream.forward(message, done);
        Ok(())
    }

    fn lock_echo_skips(&self) -> MutexGuard<'_, ahash::AHashMap<u64, Weak<Outbox>>> {
        self.echo_skips
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records and delivers a message the cluster's log ordered at
    /// `sequence`: the one way messages enter a clustered node. Sequences
    /// must grow; one at or below the last applied is a repeat and is
    /// ignored (false). With `live` false it is only recorded (history a
    /// node catches up on when it first starts). `echo_key` is the one
    /// [`Forwarded`] carried, when this node published it.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        subject: &str,
        sequence: u64,
        published_at_millis: u64,
        payload: Payload,
        envelope: Envelope,
        echo_key: Option<u64>,
        live: bool,
    ) -> Result<bool, PublishError> {
        // Anyone with access to the log may have written it: checked as
        // any publish is.
        self.check(subject, payload.len() + envelope.headers_len())?;
        let channel = self.channel_for(subject)?;
        let skip = echo_key
            .and_then(|key| self.lock_echo_skips().remove(&key))
            .and_then(|outbox| outbox.upgrade());
        let mut order = self.lock_publish_order();
        if sequence <= self.last_sequence.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let numbering = Numbering::Ordered {
            sequence,
            at_millis: published_at_millis,
            live,
        };
        self.publish_locked(&mut order, &channel, payload, envelope, skip.as_ref(), numbering);
        Ok(true)
    }

    /// The cluster's log no longer holds the messages up to `through` that
    /// this node never applied: every connected subscriber is told of the
    /// gap now, resumes from before it are told later, and numbering goes
    /// on after it.
    pub fn skip_lost(&self, through: u64) {
        let _order = self.lock_publish_order();
        let last = self.last_sequence.load(Ordering::Relaxed);
        if through <= last {
            return;
        }
        self.history.forget_through(through);
        self.last_sequence.store(through, Ordering::SeqCst);
        self.committed_sequence.store(through, Ordering::Release);
        let mut outboxes = Vec::new();
        let mut seen = ahash::AHashSet::new();
        self.router.for_each(|subscriber| {
            if seen.insert(Arc::as_ptr(&subscriber.outbox)) {
                outboxes.push(subscriber.outbox.clone());
            }
        });
        let (from, to) = (
            Position::new(self.epoch, last + 1),
            Position::new(self.epoch, through),
        );
        for outbox in outboxes {
            outbox.owe_lost(from, to);
        }
    }

    /// What the subject rules give `subject` (validated).
    pub fn policy(&self, subject: &str) -> SubjectPolicy {
        self.config.rules.policy(subject, &self.config.history)
    }

    /// Where a message on `subject` is recorded: its channel, created on
    /// first use, or for an ephemeral subject nothing but the subject.
    fn channel_for(&self, subject: &str) -> Result<Recorded, PublishError> {
        // A subject with a channel was decided when the channel was made.
        if let Some(channel) = self.history.existing(subject) {
            return Ok(Recorded::Channel(channel));
        }
        let limits = self.policy(subject).history;
        // Reply inboxes are one-shot: recording each would fill history
        // with subjects nobody reads twice.
        if !limits.keeps_history() || subject.starts_with(INBOX_PREFIX) {
            return Ok(Recorded::Ephemeral(Subject::from_validated(subject)));
        }
        Ok(Recorded::Channel(self.history.channel(subject, limits)?))
    }

    /// Publishes every message of `batch` in order, or none of them: every
    /// message is checked and every subject's channel found or created
    /// before the first is numbered. The batch's positions are consecutive.
    pub fn publish_batch<S: AsRef<str>>(
        &self,
        batch: impl IntoIterator<Item = (S, Payload)>,
    ) -> Result<Vec<Position>, BatchError> {
        self.publish_batch_with(batch, true)
    }

    /// [`Broker::publish_batch`] for a batch whose subjects and sizes the
    /// caller has checked ([`Publisher::check`](crate::Publisher::check)):
    /// each subject is validated once per message, not again here.
    pub(crate) fn publish_batch_checked<S: AsRef<str>>(
        &self,
        batch: impl IntoIterator<Item = (S, Payload)>,
    ) -> Result<Vec<Position>, BatchError> {
        self.publish_batch_with(batch, false)
    }

    fn publish_batch_with<S: AsRef<str>>(
        &self,
        batch: impl IntoIterator<Item = (S, Payload)>,
        check: bool,
    ) -> Result<Vec<Position>, BatchError> {
        self.refuse_if_clustered()
            .map_err(|error| BatchError { index: 0, error })?;
        let batch = batch.into_iter();
        let mut checked = Vec::with_capacity(batch.size_hint().0);
        for (index, (subject, payload)) in batch.enumerate() {
            let subject = subject.as_ref();
            let channel = if check {
                self.check(subject, payload.len())
            } else {
                Ok(())
            }
            .and_then(|()| self.channel_for(subject))
            .map_err(|error| BatchError { index, error })?;
            checked.push((channel, payload));
        }
        let mut order = self.lock_publish_order();
        Ok(checked
            .into_iter()
            .map(|(channel, payload)| {
                self.publish_locked(
                    &mut order,
                    &channel,
                    payload,
                    Envelope::default(),
                    None,
                    Numbering::Next,
                )
            })
            .collect())
    }

    /// Checks the subject, and the payload's size (with its headers).
    fn check(&self, subject: &str, payload_len: usize) -> Result<(), PublishError> {
        validate_subject(subject, &self.config.subject_limits)?;
        if payload_len > self.config.max_payload_bytes {
            return Err(PayloadError::TooLarge {
                size: payload_len,
                max: self.config.max_payload_bytes,
            }
            .into());
        }
        Ok(())
    }

    /// Poisoning can only come from a panic in code that leaves no state
    /// half-changed behind this lock (the retention queue it guards is
    /// only ever pushed to and popped from whole entries).
    fn lock_publish_order(&self) -> MutexGuard<'_, Retention> {
        self.publish_order
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number, record, match, enqueue, commit; under `publish_order`.
    fn publish_locked(
        &self,
        retention: &mut Retention,
        recorded: &Recorded,
        payload: Payload,
        envelope: Envelope,
        skip: Option<&Arc<Outbox>>,
        numbering: Numbering,
    ) -> Position {
        let started = self.stats.timer();
        // Only ever written under `publish_order`; atomic so that readers
        // (positions, polls) need not take the lock. SeqCst pairs with the
        // router's wildcard count (see `Router::matches`): a poll's watch,
        // registered without this lock, must see this store or be seen by
        // the match below.
        let last = self.last_sequence.load(Ordering::Relaxed);
        let now = self.clock.millis_at(started);
        let (sequence, published_at, live) = match numbering {
            Numbering::Next => (last + 1, now, true),
            Numbering::Ordered {
                sequence,
                at_millis,
                live,
            } => (sequence, at_millis, live),
            Numbering::Unnumbered => (last, now, true),
        };
        self.last_sequence.store(sequence, Ordering::SeqCst);
        let position = Position::new(self.epoch, sequence);
        let message = Message::with_envelope(
            recorded.subject().clone(),
            position,
            published_at,
            payload,
            envelope,
        );
        // Routed before it is recorded, so that a message nobody subscribed
        // to moves into its ring instead of being shared with it. (Where it
        // is recorded does not change who is matched: a subscription made
        // meanwhile reads this message from history once it is committed.)
        let (matches, groups) = match live {
            true => (
                self.router.matches(message.subject().as_str()),
                self.queues.matches(message.subject().as_str()),
            ),
            false => (Matches::new(), None),
        };
        // A message nobody subscribed to has no fan-out to time (and its
        // publisher is spared a second clock read).
        let matched = !matches.is_empty() || groups.is_some();
        if let Recorded::Channel(channel) = recorded {
            if matched || self.journal.is_some() {
                self.history.record(retention, channel, message.clone(), now);
                if let Some(journal) = &self.journal {
                    journal.record(&message);
                }
            } else {
                self.history.record(retention, channel, message, now);
                return self.commit(position, live, None);
            }
        }
        self.fan_out(&matches, &message, skip);
        if let Some(groups) = groups {
            self.offer_to_groups(&groups, &message, skip);
        }
        self.commit(position, live, matched.then_some(started))
    }

    /// Ends a publish: its sequence is committed, and it is counted (and
    /// its fan-out timed from `started`) when it was live.
    fn commit(&self, position: Position, live: bool, started: Option<Stamp>) -> Position {
        // Release: whoever reads this mark sees the message in history and
        // in every queue it was offered to.
        self.committed_sequence
            .store(position.sequence, Ordering::Release);
        if live {
            self.routed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(started) = started {
            self.stats.publish_latency_since(started);
        }
        position
    }

    /// Adds one connection of `user` to the room `subject`, announcing a
    /// join where the subject's rule asks for it.
    pub(crate) fn join_presence(&self, subject: &Subject, user: &User, announce: bool) {
        let mut rooms = self.presence.lock(subject);
        let announcement = self
            .presence
            .join(&mut rooms, subject, user, self.clock.now_millis());
        self.announce(subject, announcement.filter(|_| announce));
    }

    /// Removes one connection of `user` from the room `subject`.
    pub(crate) fn leave_presence(&self, subject: &Subject, user: &str, announce: bool) {
        let mut rooms = self.presence.lock(subject);
        let announcement = self
            .presence
            .leave(&mut rooms, subject, user, self.clock.now_millis());
        self.announce(subject, announcement.filter(|_| announce));
    }

    /// Publishes a room's change on `$presence.<subject>`. Called under
    /// the room's lock: a room's events are numbered in the order its joins
    /// and leaves happened.
    fn announce(&self, subject: &Subject, announcement: Option<Announcement>) {
        if let Some(announcement) = announcement {
            self.publish_system(subject.presence_events(), announcement.to_json());
        }
    }

    /// Who is in the room `subject`: the exact count of distinct users and
    /// the first `presence.max_list` of them.
    pub fn presence(&self, subject: &Subject) -> (usize, Vec<Member>) {
        self.presence.read(subject)
    }

    /// Publishes a message of the broker's own on a system subject.
    fn publish_system(&self, subject: Subject, json: String) {
        let payload = Payload::from_json(json.into()).expect("the broker's own JSON is valid");
        let numbering = match self.is_clustered() {
            false => Numbering::Next,
            true => Numbering::Unnumbered,
        };
        let mut order = self.lock_publish_order();
        self.publish_locked(
            &mut order,
            &Recorded::Ephemeral(subject),
            payload,
            Envelope::default(),
            None,
            numbering,
        );
    }

    fn fan_out(&self, matches: &Matches<Subscriber>, message: &Message, skip: Option<&Arc<Outbox>>) {
        let mut tally = Tally::default();
        let wanted = |subscriber: &Subscriber| skip.is_none_or(|skip| !Arc::ptr_eq(&subscriber.outbox, skip));
        if let [only] = matches.as_slice() {
            // Chunk by chunk: a plain loop over each slice, the hot one.
            for chunk in only.chunks() {
                for subscriber in chunk.iter().filter(|subscriber| wanted(subscriber)) {
                    tally.add(subscriber.offer(message), subscriber.outbox.transport());
                }
            }
        } else if !matches.is_empty() {
            // One subscription reached through overlapping patterns gets the
            // message once: a WebSocket connection (all its patterns are one
            // subscription), or one NATS sid.
            let capacity = matches.iter().map(|list| list.len()).sum();
            let mut seen = ahash::AHashSet::with_capacity(capacity);
            for subscriber in matches.iter().flat_map(|list| list.iter()) {
                if wanted(subscriber) && seen.insert(subscriber) {
                    tally.add(subscriber.offer(message), subscriber.outbox.transport());
                }
            }
        }
        tally.record(&self.stats);
    }

    /// Offers `message` to one member of each matching queue group.
    fn offer_to_groups(
        &self,
        groups: &Matches<crate::queue::GroupHandle>,
        message: &Message,
        skip: Option<&Arc<Outbox>>,
    ) {
        let mut tally = Tally::default();
        for group in groups.iter().flat_map(|list| list.iter()) {
            if let Some((offer, transport)) = group.offer(message, skip) {
                tally.add(offer, transport);
            }
        }
        tally.record(&self.stats);
    }

    /// Subscribes `outbox` to `patterns` at one cut in the numbering: every
    /// later message reaches it live, and with `since`, history between
    /// `since` and the cut is returned to be replayed ahead of them. A
    /// session brackets it with `Outbox::begin_subscription` and
    /// `Outbox::finish_subscription`, which hold the outbox's live messages
    /// back so the client sees the ack and the replay first; a poll's watch
    /// needs no bracket, it only takes what comes after the cut. This is the
    /// one way in for subscribing. It takes the publish-order lock only when a
    /// resume meets a publish midway, and then only to wait for it.
    pub(crate) fn subscribe(
        &self,
        patterns: &[Pattern],
        outbox: &Arc<Outbox>,
        since: Option<Position>,
    ) -> Resume {
        for pattern in patterns {
            outbox.add_pattern(pattern);
            self.router
                .subscribe(pattern, Subscriber::new(outbox, WHOLE_CONNECTION));
        }
        // Read after registering: every message numbered later is matched
        // with the subscription in place (why that holds without the
        // publish-order lock is in `Router::matches`). Some messages up to
        // the cut may reach the outbox too; the merge places them after the
        // ack, and a resume's replay deduplicates them.
        let cut = self.numbered_sequence();
        if since.is_some() && self.committed_sequence() < cut {
            // A publish is midway: let it finish, so that history holds
            // everything up to the cut before it is read.
            drop(self.lock_publish_order());
        }
        let replay = match since {
            Some(since) => self.replay(patterns, Some(since), cut),
            None => Replay::default(),
        };
        Resume {
            cut: Position::new(self.epoch, cut),
            replay,
        }
    }

    pub(crate) fn unsubscribe(&self, pattern: &Pattern, outbox: &Arc<Outbox>) {
        self.router
            .unsubscribe(pattern, &Subscriber::new(outbox, WHOLE_CONNECTION));
    }

    /// Subscribes the connection's subscription `id` to `pattern`, live
    /// only (no resume): NATS's `SUB`; with `queue`, as a member of that
    /// queue group.
    pub(crate) fn subscribe_member(
        &self,
        pattern: &Pattern,
        outbox: &Arc<Outbox>,
        id: SubscriptionId,
        queue: Option<&str>,
    ) {
        let subscriber = Subscriber::new(outbox, id);
        match queue {
            Some(name) => self.queues.join(pattern, name, subscriber),
            None => {
                self.router.subscribe(pattern, subscriber);
            }
        }
    }

    /// Undoes [`Broker::subscribe_member`].
    pub(crate) fn unsubscribe_member(
        &self,
        pattern: &Pattern,
        outbox: &Arc<Outbox>,
        id: SubscriptionId,
        queue: Option<&str>,
    ) {
        let subscriber = Subscriber::new(outbox, id);
        match queue {
            Some(name) => self.queues.leave(pattern, name, &subscriber),
            None => {
                self.router.unsubscribe(pattern, &subscriber);
            }
        }
    }

    /// Retained messages on subjects matching `patterns`, after `since`
    /// (everything retained without it), up to and including sequence
    /// `through`, with a gap for each pattern whose history falls short. A
    /// position from another epoch means the numbering restarted:
    /// everything retained is returned and everything before may be lost.
    pub(crate) fn replay(&self, patterns: &[Pattern], since: Option<Position>, through: u64) -> Replay {
        let now = self.clock.now_millis();
        let same_epoch = since.is_none_or(|since| since.epoch == self.epoch);
        let after = match since {
            Some(since) if same_epoch => since.sequence,
            _ => 0,
        };
        let mut replay = Replay::default();
        for pattern in patterns {
            let read = self.history.read(pattern, Sequences { after, through }, now);
            let gap = since.and_then(|since| {
                if !same_epoch {
                    let first_kept = read.messages.first().map_or(through, |m| m.sequence() - 1);
                    Some((
                        Position::new(since.epoch, since.sequence.saturating_add(1)),
                        Position::new(self.epoch, first_kept.max(read.lost_through)),
                    ))
                } else if read.lost_through > 0 {
                    Some((
                        Position::new(self.epoch, after + 1),
                        Position::new(self.epoch, read.lost_through),
                    ))
                } else {
                    None
                }
            });
            replay.gaps.extend(gap.map(|(from, to)| Gap {
                subject: pattern.clone(),
                from,
                to,
                missed: None,
            }));
            replay.messages.extend(read.messages);
        }
        if patterns.len() > 1 {
            // Overlapping patterns read the same message more than once.
            replay.messages.sort_unstable_by_key(Message::sequence);
            replay.messages.dedup_by_key(|message| message.sequence());
        }
        replay
    }

    /// The position a client's `since` token names, if resuming from it is
    /// possible: readable, and not past the last position this server
    /// handed out (a token from another epoch is fine: its numbering
    /// restarted, and the resume reports the gap).
    pub fn resume_point(&self, token: &str) -> Result<Position, InvalidToken> {
        let since = Position::from_token(token)?;
        let last = self.numbered_sequence();
        if since.epoch == self.epoch && since.sequence > last {
            let (token, last) = (
                token.to_owned(),
                Position::new(self.epoch, last).token().as_str().to_owned(),
            );
            return Err(match self.is_clustered() {
                true => InvalidToken::NotCaughtUp { token, last },
                false => InvalidToken::Ahead { token, last },
            });
        }
        Ok(since)
    }

    /// Whether reading history for `patterns` stays within
    /// `history.max_subjects_per_read`: checked before a resume, a history
    /// request or a poll, so that the read is refused with a reason rather
    /// than paid for.
    pub fn check_breadth(&self, patterns: &[Pattern]) -> Result<(), PatternTooBroad> {
        patterns
            .iter()
            .try_for_each(|pattern| self.history.check_breadth(pattern))
    }

    /// The last sequence handed out (numbered, maybe not yet fanned out).
    pub(crate) fn numbered_sequence(&self) -> u64 {
        // SeqCst: see `publish_locked`.
        self.last_sequence.load(Ordering::SeqCst)
    }

    /// The last sequence recorded and fanned out.
    pub(crate) fn committed_sequence(&self) -> u64 {
        self.committed_sequence.load(Ordering::Acquire)
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Expires old history and forgets idle subjects; the binary calls this
    /// periodically. Returns how many subjects were forgotten.
    pub fn sweep(&self) -> usize {
        self.lock_user_budgets().retain(|_, budget| !budget.is_full());
        // A forwarded message the log discarded before this node applied it
        // never comes back for its echo key; its connection's end frees it.
        self.lock_echo_skips()
            .retain(|_, outbox| outbox.strong_count() > 0);
        self.history.sweep(self.clock.now_millis())
    }

    /// Spends one publish of `user`'s per-second budget
    /// (`max_client_publishes_per_second`), or says it is spent.
    pub(crate) fn spend_publish_budget(&self, user: &str) -> Result<(), SessionError> {
        let per_second = self.config.max_client_publishes_per_second;
        if per_second == 0 {
            return Ok(());
        }
        let mut budgets = self.lock_user_budgets();
        if let Some(budget) = budgets.get_mut(user) {
            return budget.take();
        }
        let mut budget = PublishBudget::new(per_second);
        budget.take()?;
        budgets.insert(user.to_owned(), budget);
        Ok(())
    }

    fn lock_user_budgets(&self) -> MutexGuard<'_, ahash::AHashMap<String, PublishBudget>> {
        self.user_budgets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a connection a gateway closed because its writes stalled:
    /// a slow consumer the queues themselves did not catch.
    pub fn count_slow_consumer(&self) {
        self.stats.slow_consumer(1);
    }

    pub(crate) fn now_millis(&self) -> u64 {
        self.clock.now_millis()
    }

    pub(crate) fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Open streaming connections (all, or one user's), oldest first.
    pub fn list_connections(&self, user: Option<&str>) -> Vec<ConnectionInfo> {
        self.connections
            .list(|owner| user.is_none_or(|user| owner == Some(user)))
    }

    /// Closes every open connection of `user` with `reason`; how many.
    pub fn disconnect_user(&self, user: &str, reason: &CloseReason) -> usize {
        let outboxes = self.connections.outboxes(|owner| owner == Some(user));
        connections::close_all(&outboxes, reason)
    }

    /// The queues of every open streaming connection, with their session
    /// ids: a draining server closes them one by one.
    pub fn connection_queues(&self) -> Vec<(u64, Arc<Outbox>)> {
        self.connections.outboxes(|_| true)
    }

    /// Every subject with subscribers or history, and every wildcard
    /// pattern subscribed to: how many subscribe, what history holds.
    /// Walks the whole index: for the admin API, not for a hot path.
    pub fn subjects(&self) -> Vec<SubjectInfo> {
        let mut subjects: std::collections::BTreeMap<String, SubjectInfo> = Default::default();
        for (pattern, subscribers) in self.router.pattern_counts() {
            let entry = subjects
                .entry(pattern.clone())
                .or_insert_with(|| SubjectInfo::named(pattern));
            entry.subscribers += subscribers;
        }
        for (subject, messages, bytes) in self.history.channels() {
            let entry = subjects
                .entry(subject.clone())
                .or_insert_with(|| SubjectInfo::named(subject));
            entry.history_messages = messages;
            entry.history_bytes = bytes;
        }
        subjects.into_values().collect()
    }

    /// Empties the history of `subject` (its ring, and the disk journal's
    /// copy): a resume from before now gets a gap. How many messages went.
    pub fn clear_history(&self, subject: &str) -> usize {
        // Under the publish lock, so no message is recorded half-way.
        let _order = self.lock_publish_order();
        let Some(channel) = self.history.existing(subject) else {
            return 0;
        };
        let sequences = channel.clear();
        if let Some(journal) = &self.journal {
            journal.forget(&sequences);
        }
        sequences.len()
    }

    /// Publishes the JSON `make` builds on `$sys.<name>` for operators
    /// watching, if any are: never recorded, and not even built when
    /// nobody subscribes.
    pub fn publish_operator(&self, name: &str, make: impl FnOnce() -> String) -> bool {
        let subject = format!("{OPERATOR_PREFIX}{name}");
        if self.router.matches(&subject).is_empty() {
            return false;
        }
        match Subject::parse_system(&subject, &self.config.subject_limits) {
            Ok(subject) => {
                self.publish_system(subject, make());
                true
            }
            Err(_) => false,
        }
    }

    /// The counters operators read (`/metrics`).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn metrics(&self) -> Metrics {
        let stats = self.stats.snapshot();
        Metrics {
            published: self.routed.load(Ordering::Relaxed),
            delivered: stats.delivered.iter().map(|(_, count)| count).sum(),
            dropped: stats.dropped.iter().map(|(_, count)| count).sum(),
            slow_consumers: stats.slow_consumers,
            subscriptions: self.router.subscription_count() as u64,
            history_subjects: self.history.subject_count() as u64,
            history_bytes: self.history.retained_bytes() as u64,
        }
    }
}

/// Per-publish counts, added to the shared counters once.
#[derive(Default)]
struct Tally {
    /// Queued, per transport (indexed as [`Transport::ALL`]).
    delivered: [u64; Transport::ALL.len()],
    queue_full: u64,
    too_large: u64,
    evicted: u64,
}

impl Tally {
    /// Counts one offer to a queue counted under `transport` (`None`: a
    /// queue whose deliveries are counted elsewhere, or not at all).
    fn add(&mut self, offer: Offer, transport: Option<Transport>) {
        let Some(transport) = transport else {
            return;
        };
        match offer {
            Offer::Queued => self.delivered[transport as usize] += 1,
            Offer::QueuedAfterDropping(dropped) => {
                self.delivered[transport as usize] += 1;
                self.queue_full += dropped as u64;
            }
            Offer::DroppedTooLarge => self.too_large += 1,
            Offer::Evicted => self.evicted += 1,
            Offer::Closed => {}
        }
    }

    fn record(&self, stats: &Stats) {
        for (transport, count) in Transport::ALL.iter().zip(self.delivered) {
            stats.delivered(*transport, count);
        }
        if self.queue_full > 0 {
            stats.dropped(DropReason::QueueFull, self.queue_full);
        }
        if self.too_large > 0 {
            stats.dropped(DropReason::TooLarge, self.too_large);
        }
        if self.evicted > 0 {
            stats.slow_consumer(self.evicted);
        }
    }
}
