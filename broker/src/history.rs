//! Recent history: a bounded ring of messages per subject.
//!
//! Each subject that has been published to owns a [`Channel`]: its validated
//! [`Subject`] (shared by every message published there) and a ring bounded
//! by count and age, behind a short mutex of its own so that resumes and
//! history reads of different subjects never contend.
//!
//! Two indexes lead to the channels: a sharded hash map for publishing (one
//! hash and a shard read-lock per publish) and a token tree of subjects for
//! reading with a pattern, so that a wildcard read visits only the subjects
//! it matches, never every subject the broker knows. Only creating and
//! forgetting a subject touches the tree.
//!
//! Nothing is lost silently. A ring remembers the highest position it has
//! dropped, and the store remembers the highest position of any subject it
//! has forgotten entirely, so a read that starts before either is answered
//! with an explicit gap.
//!
//! All rings together hold at most `max_bytes` (each message counted by
//! what it keeps alive). Past it, the oldest messages go first, whatever
//! their subject: a retention queue lists every recorded message by
//! position, and eviction pops it from the front. Those drops are gaps like
//! any other. Entries whose message already left (by count or age) are
//! skipped when they reach the front, and the queue is compacted when it
//! holds more than twice as many entries as there are retained messages.
//!
//! Lock order: a history shard (write) → the subject tree (write), when a
//! subject is created or forgotten; the retention queue → a ring, when
//! evicting; otherwise a ring is locked alone, after any index lock is
//! released (the sweep is the exception: shard → ring → tree).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::message::Message;
use crate::subject::{Pattern, Subject, FULL_WILDCARD, SINGLE_WILDCARD, TOKEN_SEPARATOR};

const SHARDS: usize = 32;

/// Bounds of the history store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryLimits {
    /// Messages kept per subject; 0 keeps none (live delivery only).
    pub max_messages_per_subject: usize,
    /// Messages older than this are dropped.
    #[serde(with = "crate::units::duration")]
    pub max_age: Duration,
    /// Distinct subjects tracked at once. Publishing to a new subject past
    /// this is refused until [`crate::Broker::sweep`] forgets idle ones.
    pub max_subjects: usize,
    /// Bytes all subjects' history may hold together; past it the oldest
    /// messages are dropped first, whatever their subject.
    #[serde(rename = "max_bytes", deserialize_with = "crate::units::size::deserialize")]
    pub max_bytes: usize,
    /// Subjects one wildcard read of history (a history request, a resume,
    /// a poll) may visit; a broader pattern is refused with
    /// `pattern_too_broad`, so no client can make a read cost the whole
    /// store.
    pub max_subjects_per_read: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_messages_per_subject: 100,
            max_age: Duration::from_secs(300),
            max_subjects: 1_000_000,
            max_bytes: 256 << 20,
            max_subjects_per_read: 10_000,
        }
    }
}

/// What one subject's ring keeps: from its subject rule, or the history
/// defaults. Fixed when the subject's channel is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLimits {
    /// Messages kept; 0: the subject is ephemeral, nothing is kept and
    /// nothing is ever reported missing (typing indicators, presence).
    pub max_messages: usize,
    pub max_age: Duration,
}

impl RingLimits {
    pub fn keeps_history(&self) -> bool {
        self.max_messages > 0
    }
}

impl From<&HistoryLimits> for RingLimits {
    fn from(limits: &HistoryLimits) -> RingLimits {
        RingLimits {
            max_messages: limits.max_messages_per_subject,
            max_age: limits.max_age,
        }
    }
}

/// A wildcard pattern whose history read would visit more subjects than
/// `history.max_subjects_per_read`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{pattern:?} reaches more than {max} subjects with history: read a narrower pattern (history.max_subjects_per_read)"
)]
pub struct PatternTooBroad {
    pub pattern: String,
    pub max: usize,
}

/// What every ring holds together.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    bytes: AtomicUsize,
}

/// Every recorded message's channel, oldest first: the order in which the
/// byte budget evicts. Consecutive records on one channel share an entry
/// (a run of sequences), so a publisher that keeps to one subject extends
/// the last entry and adds nothing. It lives under the broker's publish
/// lock, which already orders the records, so keeping it costs no lock of
/// its own.
#[derive(Debug, Default)]
pub(crate) struct Retention {
    queue: VecDeque<Run>,
    /// Live entries found by the last compaction: the next one waits until
    /// the queue is twice that (and some), so compacting costs O(1) per
    /// record amortised.
    live_at_compaction: usize,
}

/// Consecutive records of one channel: those after the previous run's,
/// up to `last`.
#[derive(Debug)]
struct Run {
    last: u64,
    channel: Weak<Channel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HistoryError {
    #[error(
        "the broker already tracks {max} subjects; publish to an existing one or raise history.max_subjects"
    )]
    TooManySubjects { max: usize },
}

/// One subject's ring.
#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) subject: Subject,
    /// The highest sequence recorded here, readable without the ring's
    /// lock: a read after it skips the channel without locking it.
    last_sequence: AtomicU64,
    /// The oldest sequence the ring holds (`u64::MAX` when empty), so the
    /// retention queue can tell a live entry from a stale one unlocked.
    first_sequence: AtomicU64,
    pub(crate) limits: RingLimits,
    ring: Mutex<Ring>,
}

#[derive(Debug)]
pub(crate) struct Ring {
    messages: VecDeque<Message>,
    /// Highest sequence dropped from this ring by count, age or the byte
    /// budget; 0 if none.
    dropped_through: u64,
    totals: Arc<Totals>,
}

impl Channel {
    fn new(subject: Subject, limits: RingLimits, totals: Arc<Totals>) -> Channel {
        Channel {
            subject,
            limits,
            last_sequence: AtomicU64::new(0),
            first_sequence: AtomicU64::new(u64::MAX),
            ring: Mutex::new(Ring {
                messages: VecDeque::new(),
                dropped_through: 0,
                totals,
            }),
        }
    }

    /// The ring, locked; [`RingGuard`] keeps `first_sequence` in step with
    /// whatever is done to it.
    fn lock(&self) -> RingGuard<'_> {
        RingGuard {
            ring: self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            first_sequence: &self.first_sequence,
        }
    }

    /// Drops every message; returns their sequences. Later reads from
    /// before now are told of the gap.
    pub(crate) fn clear(&self) -> Vec<u64> {
        let mut ring = self.lock();
        let sequences = ring.messages.iter().map(Message::sequence).collect();
        while !ring.messages.is_empty() {
            ring.drop_front();
        }
        sequences
    }

    /// Messages held and their bytes.
    fn size(&self) -> (usize, usize) {
        let ring = self.lock();
        (ring.messages.len(), ring.messages.iter().map(Message::size).sum())
    }

    /// Records a newly published message.
    fn record(&self, message: Message, now_millis: u64) {
        let sequence = message.sequence();
        let mut ring = self.lock();
        ring.push(message);
        while ring.messages.len() > self.limits.max_messages {
            ring.drop_front();
        }
        ring.expire(&self.limits, now_millis);
        // Release: a reader that sees the new sequence finds the message.
        self.last_sequence.store(sequence, Ordering::Release);
    }
}

/// A locked ring that publishes its oldest sequence when unlocked.
struct RingGuard<'a> {
    ring: MutexGuard<'a, Ring>,
    first_sequence: &'a AtomicU64,
}

impl std::ops::Deref for RingGuard<'_> {
    type Target = Ring;

    fn deref(&self) -> &Ring {
        &self.ring
    }
}

impl std::ops::DerefMut for RingGuard<'_> {
    fn deref_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }
}

impl Drop for RingGuard<'_> {
    fn drop(&mut self) {
        let first = self.ring.messages.front().map_or(u64::MAX, Message::sequence);
        self.first_sequence.store(first, Ordering::Release);
    }
}

impl Ring {
    fn push(&mut self, message: Message) {
        self.totals.bytes.fetch_add(message.size(), Ordering::Relaxed);
        self.messages.push_back(message);
    }

    fn expire(&mut self, limits: &RingLimits, now_millis: u64) {
        let max_age = limits.max_age.as_millis() as u64;
        while let Some(oldest) = self.messages.front() {
            if now_millis.saturating_sub(oldest.published_at_millis()) <= max_age {
                break;
            }
            self.drop_front();
        }
    }

    fn drop_front(&mut self) {
        if let Some(message) = self.messages.pop_front() {
            self.dropped_through = self.dropped_through.max(message.sequence());
            self.totals.bytes.fetch_sub(message.size(), Ordering::Relaxed);
        }
    }

    /// Appends retained messages in `sequences` to `out`; returns the
    /// highest dropped sequence above its start, if any was dropped.
    fn read(
        &mut self,
        sequences: Sequences,
        limits: &RingLimits,
        now_millis: u64,
        out: &mut Vec<Message>,
    ) -> u64 {
        self.expire(limits, now_millis);
        let after_sequence = sequences.after;
        let start = self.messages.partition_point(|m| m.sequence() <= after_sequence);
        let end = self
            .messages
            .partition_point(|m| m.sequence() <= sequences.through);
        out.extend(self.messages.range(start..end.max(start)).cloned());
        if self.dropped_through > after_sequence {
            self.dropped_through
        } else {
            0
        }
    }
}

/// A range of sequences: after `after`, up to and including `through`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sequences {
    pub(crate) after: u64,
    pub(crate) through: u64,
}

/// What history holds in a range of sequences on one pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PatternReplay {
    /// Highest sequence in the range that may have been lost; 0 when
    /// history covers the whole range.
    pub(crate) lost_through: u64,
    /// Retained messages in the range, in position order.
    pub(crate) messages: Vec<Message>,
}

type ChannelMap = HashMap<Subject, Arc<Channel>, ahash::RandomState>;

/// Every subject's ring.
#[derive(Debug)]
pub(crate) struct History {
    limits: HistoryLimits,
    shards: Box<[RwLock<ChannelMap>]>,
    shard_hasher: ahash::RandomState,
    /// The subjects of every channel, for reads with a pattern.
    tree: RwLock<SubjectTree>,
    subject_count: AtomicUsize,
    /// Highest sequence recorded on any channel that `sweep` removed: reads
    /// starting before it may have lost messages of subjects now forgotten.
    forgotten_through: AtomicU64,
    totals: Arc<Totals>,
}

impl History {
    pub(crate) fn new(limits: HistoryLimits) -> History {
        History {
            limits,
            shards: (0..SHARDS).map(|_| RwLock::new(ChannelMap::default())).collect(),
            shard_hasher: ahash::RandomState::new(),
            tree: RwLock::new(SubjectTree::default()),
            subject_count: AtomicUsize::new(0),
            forgotten_through: AtomicU64::new(0),
            totals: Arc::default(),
        }
    }

    /// Marks every sequence up to `sequence` as possibly lost, as if its
    /// subjects had been forgotten: for history restored after a restart.
    pub(crate) fn forget_through(&self, sequence: u64) {
        self.forgotten_through.fetch_max(sequence, Ordering::Release);
    }

    /// Bytes all rings hold.
    pub(crate) fn retained_bytes(&self) -> usize {
        self.totals.bytes.load(Ordering::Relaxed)
    }

    /// Records a newly published message in its channel, then evicts the
    /// oldest messages while all of history is over its byte budget.
    /// Called in publish order (under the publish lock that holds
    /// `retention`), so the retention queue stays sorted.
    pub(crate) fn record(
        &self,
        retention: &mut Retention,
        channel: &Arc<Channel>,
        message: Message,
        now_millis: u64,
    ) {
        let sequence = message.sequence();
        channel.record(message, now_millis);
        // The weak reference keeps the channel's allocation, so its
        // address names it for as long as the entry lives.
        match retention.queue.back_mut() {
            Some(run) if std::ptr::eq(run.channel.as_ptr(), Arc::as_ptr(channel)) => run.last = sequence,
            _ => retention.queue.push_back(Run {
                last: sequence,
                channel: Arc::downgrade(channel),
            }),
        }
        while self.totals.bytes.load(Ordering::Relaxed) > self.limits.max_bytes {
            let Some(run) = retention.queue.front() else {
                break;
            };
            let Some(channel) = run.channel.upgrade() else {
                retention.queue.pop_front();
                continue;
            };
            // A ring only ever drops from its front: the run's records
            // still there are the ones from its front up to `last`.
            if channel.first_sequence.load(Ordering::Acquire) <= run.last {
                let mut ring = channel.lock();
                while self.totals.bytes.load(Ordering::Relaxed) > self.limits.max_bytes
                    && ring.messages.front().is_some_and(|m| m.sequence() <= run.last)
                {
                    ring.drop_front();
                }
                if ring.messages.front().is_some_and(|m| m.sequence() <= run.last) {
                    // Under budget again, with part of the run left.
                    break;
                }
            }
            retention.queue.pop_front();
        }
        if retention.queue.len() > 2 * retention.live_at_compaction + 1024 {
            retention.queue.retain(|run| {
                run.channel
                    .upgrade()
                    .is_some_and(|channel| channel.first_sequence.load(Ordering::Acquire) <= run.last)
            });
            retention.live_at_compaction = retention.queue.len();
        }
    }

    /// Every subject with a ring: messages held and their bytes.
    pub(crate) fn channels(&self) -> Vec<(String, usize, usize)> {
        let channels: Vec<Arc<Channel>> = self
            .shards
            .iter()
            .flat_map(|shard| read(shard).values().cloned().collect::<Vec<_>>())
            .collect();
        channels
            .iter()
            .map(|channel| {
                let (messages, bytes) = channel.size();
                (channel.subject.as_str().to_owned(), messages, bytes)
            })
            .collect()
    }

    pub(crate) fn subject_count(&self) -> usize {
        self.subject_count.load(Ordering::Relaxed)
    }

    fn shard(&self, subject: &str) -> &RwLock<ChannelMap> {
        &self.shards[self.shard_hasher.hash_one(subject) as usize % SHARDS]
    }

    /// The channel of `subject`, if it has one.
    pub(crate) fn existing(&self, subject: &str) -> Option<Arc<Channel>> {
        read(self.shard(subject)).get(subject).cloned()
    }

    /// The channel of a validated subject, created on first use with
    /// `limits`. While the caller holds it, `sweep` leaves it alone.
    pub(crate) fn channel(&self, subject: &str, limits: RingLimits) -> Result<Arc<Channel>, HistoryError> {
        if let Some(channel) = self.existing(subject) {
            return Ok(channel);
        }
        let mut map = write(self.shard(subject));
        if let Some(channel) = map.get(subject) {
            return Ok(channel.clone());
        }
        // Relaxed is enough: the limit is a bound on memory, not an
        // invariant, and concurrent creators may overshoot it by a shard count.
        if self.subject_count.load(Ordering::Relaxed) >= self.limits.max_subjects {
            return Err(HistoryError::TooManySubjects {
                max: self.limits.max_subjects,
            });
        }
        let subject = Subject::from_validated(subject);
        let channel = Arc::new(Channel::new(subject.clone(), limits, self.totals.clone()));
        write(&self.tree).insert(&subject);
        map.insert(subject, channel.clone());
        self.subject_count.fetch_add(1, Ordering::Relaxed);
        Ok(channel)
    }

    /// Whether reading `pattern` stays within `max_subjects_per_read`.
    pub(crate) fn check_breadth(&self, pattern: &Pattern) -> Result<(), PatternTooBroad> {
        let max = self.limits.max_subjects_per_read;
        if pattern.has_wildcards() && read(&self.tree).matching(pattern, max).is_none() {
            return Err(PatternTooBroad {
                pattern: pattern.as_str().to_owned(),
                max,
            });
        }
        Ok(())
    }

    /// Everything retained in `sequences` on subjects matching `pattern`,
    /// in position order. A pattern that has grown too broad since it was
    /// checked reads nothing and reports the whole range as a gap.
    pub(crate) fn read(&self, pattern: &Pattern, sequences: Sequences, now_millis: u64) -> PatternReplay {
        let after_sequence = sequences.after;
        let mut replay = PatternReplay::default();
        let channels: Vec<Arc<Channel>> = if pattern.has_wildcards() {
            let matching = read(&self.tree).matching(pattern, self.limits.max_subjects_per_read);
            let Some(subjects) = matching else {
                replay.lost_through = sequences.through;
                return replay;
            };
            subjects
                .iter()
                .filter_map(|subject| self.existing(subject.as_str()))
                .collect()
        } else {
            self.existing(pattern.as_str()).into_iter().collect()
        };
        for channel in &channels {
            // Acquire pairs with `record`: nothing after `after` was ever
            // recorded here, so nothing can be read or have been dropped.
            if channel.last_sequence.load(Ordering::Acquire) <= after_sequence {
                continue;
            }
            let lost = channel
                .lock()
                .read(sequences, &channel.limits, now_millis, &mut replay.messages);
            replay.lost_through = replay.lost_through.max(lost);
        }
        let forgotten = self.forgotten_through.load(Ordering::Acquire);
        if forgotten > after_sequence {
            replay.lost_through = replay.lost_through.max(forgotten);
        }
        if channels.len() > 1 {
            replay.messages.sort_unstable_by_key(Message::sequence);
        }
        replay
    }

    /// Expires old messages and forgets subjects whose ring is empty and
    /// that nobody is publishing to. Returns how many were forgotten.
    pub(crate) fn sweep(&self, now_millis: u64) -> usize {
        let mut forgotten = 0;
        for shard in self.shards.iter() {
            let mut map = write(shard);
            map.retain(|subject, channel| {
                // A publisher holding the channel (it cloned it under this
                // shard's lock, which we now hold exclusively) is about to
                // record into it: keep it, or the message would land in a
                // ring nobody can read.
                if Arc::strong_count(channel) > 1 {
                    return true;
                }
                let mut ring = channel.lock();
                ring.expire(&channel.limits, now_millis);
                if !ring.messages.is_empty() {
                    return true;
                }
                self.forgotten_through
                    .fetch_max(channel.last_sequence.load(Ordering::Relaxed), Ordering::Release);
                write(&self.tree).remove(subject);
                forgotten += 1;
                false
            });
        }
        self.subject_count.fetch_sub(forgotten, Ordering::Relaxed);
        forgotten
    }
}

/// The subjects that have a channel, as a trie of their tokens.
#[derive(Debug, Default)]
struct SubjectTree {
    root: TreeNode,
}

#[derive(Debug, Default)]
struct TreeNode {
    children: HashMap<Box<str>, TreeNode, ahash::RandomState>,
    /// Set when a subject ends at this node.
    subject: Option<Subject>,
}

impl SubjectTree {
    fn insert(&mut self, subject: &Subject) {
        let mut node = &mut self.root;
        for token in subject.tokens() {
            node = node.children.entry(Box::from(token)).or_default();
        }
        node.subject = Some(subject.clone());
    }

    fn remove(&mut self, subject: &Subject) {
        fn remove_from(node: &mut TreeNode, tokens: &[&str]) {
            let Some((first, rest)) = tokens.split_first() else {
                node.subject = None;
                return;
            };
            if let Some(child) = node.children.get_mut(*first) {
                remove_from(child, rest);
                if child.subject.is_none() && child.children.is_empty() {
                    node.children.remove(*first);
                }
            }
        }
        let tokens: Vec<&str> = subject.as_str().split(TOKEN_SEPARATOR).collect();
        remove_from(&mut self.root, &tokens);
    }

    /// Every subject `pattern` matches, or `None` once the walk would visit
    /// more than `budget` nodes of the tree (subjects and the tokens leading
    /// to them): the cost of a read is bounded before it is paid.
    fn matching(&self, pattern: &Pattern, budget: usize) -> Option<Vec<Subject>> {
        struct Walk {
            out: Vec<Subject>,
            /// Nodes that may still be visited.
            remaining: usize,
        }
        impl Walk {
            /// Counts one visited node; false when none was left.
            fn step(&mut self) -> bool {
                let Some(remaining) = self.remaining.checked_sub(1) else {
                    return false;
                };
                self.remaining = remaining;
                true
            }
        }
        fn visit(node: &TreeNode, tokens: &[&str], walk: &mut Walk) -> bool {
            if !walk.step() {
                return false;
            }
            let Some((first, rest)) = tokens.split_first() else {
                walk.out.extend(node.subject.iter().cloned());
                return true;
            };
            match *first {
                FULL_WILDCARD => node.children.values().all(|child| every_subject(child, walk)),
                SINGLE_WILDCARD => node.children.values().all(|child| visit(child, rest, walk)),
                literal => node
                    .children
                    .get(literal)
                    .is_none_or(|child| visit(child, rest, walk)),
            }
        }
        fn every_subject(node: &TreeNode, walk: &mut Walk) -> bool {
            if !walk.step() {
                return false;
            }
            walk.out.extend(node.subject.iter().cloned());
            node.children.values().all(|child| every_subject(child, walk))
        }
        let tokens: Vec<&str> = pattern.tokens().collect();
        let mut walk = Walk {
            out: Vec::new(),
            // The root is a visit too.
            remaining: budget.saturating_add(1),
        };
        visit(&self.root, &tokens, &mut walk).then_some(walk.out)
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::SubjectLimits;

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text, &SubjectLimits::default()).unwrap()
    }

    /// One line per case: the subjects known, a pattern, what it reaches.
    fn check(subjects: &[&str], pattern_text: &str, expected: &[&str]) {
        let mut tree = SubjectTree::default();
        for subject in subjects {
            tree.insert(&Subject::from_validated(subject));
        }
        let mut found: Vec<String> = tree
            .matching(&pattern(pattern_text), usize::MAX)
            .unwrap()
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        found.sort();
        assert_eq!(found, expected, "{subjects:?} <- {pattern_text}");
    }

    #[test]
    fn the_subject_tree_finds_exactly_what_a_pattern_matches() {
        let known = ["a", "a.b", "a.c", "a.b.c", "b.b", "b.b.d"];
        check(&known, "a", &["a"]);
        check(&known, "a.*", &["a.b", "a.c"]);
        check(&known, "a.>", &["a.b", "a.b.c", "a.c"]);
        check(&known, "*.b", &["a.b", "b.b"]);
        check(&known, "*.b.>", &["a.b.c", "b.b.d"]);
        check(&known, ">", &["a", "a.b", "a.b.c", "a.c", "b.b", "b.b.d"]);
        check(&known, "*", &["a"]);
        check(&known, "c.>", &[]);
        // The tree agrees with the pattern matcher on every pair.
        for text in ["a", "a.*", "a.>", "*.b", "*.*.*", ">", "*.b.>", "b.*.d"] {
            let expected: Vec<&str> = known
                .iter()
                .copied()
                .filter(|subject| pattern(text).matches(subject))
                .collect();
            let mut expected = expected;
            expected.sort();
            check(&known, text, &expected);
        }
    }

    #[test]
    fn a_walk_stops_at_its_budget() {
        let mut tree = SubjectTree::default();
        for subject in ["a.b", "a.c", "x"] {
            tree.insert(&Subject::from_validated(subject));
        }
        // ">" visits a, a.b, a.c and x: four nodes.
        assert_eq!(tree.matching(&pattern(">"), 4).map(|found| found.len()), Some(3));
        assert_eq!(tree.matching(&pattern(">"), 3), None);
        // "a.*" visits a, a.b, a.c.
        assert!(tree.matching(&pattern("a.*"), 3).is_some());
        assert!(tree.matching(&pattern("a.*"), 2).is_none());
    }

    #[test]
    fn removing_subjects_prunes_the_tree() {
        let mut tree = SubjectTree::default();
        let subjects: Vec<Subject> = ["a.b", "a.b.c", "x"]
            .into_iter()
            .map(Subject::from_validated)
            .collect();
        subjects.iter().for_each(|s| tree.insert(s));
        tree.remove(&subjects[1]);
        assert_eq!(
            tree.matching(&pattern("a.>"), 10),
            Some(vec![subjects[0].clone()])
        );
        tree.remove(&subjects[0]);
        tree.remove(&subjects[2]);
        assert!(tree.root.children.is_empty(), "{tree:?}");
    }
}
