//! Recent history: a bounded ring of messages per subject.
//!
//! Each subject that has been published to owns a [`Channel`]: its validated
//! [`Subject`] (shared by every message published there) and a ring bounded
//! by count and age, behind a short mutex of its own so that resumes and
//! history reads of different subjects never contend.
//!
//! Nothing is lost silently. A ring remembers the highest position it has
//! dropped, and the store remembers the highest position of any subject it
//! has forgotten entirely, so a read that starts before either is answered
//! with an explicit gap.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use thiserror::Error;

use crate::message::Message;
use crate::subject::{Pattern, Subject};

const SHARDS: usize = 32;

/// Bounds of the history store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages kept per subject; 0 keeps none (live delivery only).
    pub max_messages_per_subject: usize,
    /// Messages older than this are dropped.
    pub max_age: Duration,
    /// Distinct subjects tracked at once. Publishing to a new subject past
    /// this is refused until [`crate::Broker::sweep`] forgets idle ones.
    pub max_subjects: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_messages_per_subject: 100,
            max_age: Duration::from_secs(300),
            max_subjects: 1_000_000,
        }
    }
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
    ring: Mutex<Ring>,
}

#[derive(Debug)]
pub(crate) struct Ring {
    messages: VecDeque<Message>,
    /// Highest sequence dropped from this ring by count or age; 0 if none.
    dropped_through: u64,
    /// Highest sequence ever recorded here.
    last_sequence: u64,
    /// Set when `sweep` removed the channel; a publisher that fetched the
    /// channel just before must look it up again rather than write into a
    /// ring nobody can read.
    retired: bool,
}

impl Channel {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Ring {
    pub(crate) fn is_retired(&self) -> bool {
        self.retired
    }

    pub(crate) fn record(&mut self, message: Message, limits: &HistoryLimits, now_millis: u64) {
        self.last_sequence = message.sequence();
        self.messages.push_back(message);
        while self.messages.len() > limits.max_messages_per_subject {
            self.drop_front();
        }
        self.expire(limits, now_millis);
    }

    fn expire(&mut self, limits: &HistoryLimits, now_millis: u64) {
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
        }
    }

    /// Appends retained messages in `sequences` to `out`; returns the
    /// highest dropped sequence above its start, if any was dropped.
    fn read(
        &mut self,
        sequences: Sequences,
        limits: &HistoryLimits,
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

/// What history holds after a position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Highest sequence that may have been lost after the requested position;
    /// 0 when history covers everything since it.
    pub lost_through: u64,
    /// Retained messages after the position, in position order.
    pub messages: Vec<Message>,
}

type ChannelMap = HashMap<Subject, Arc<Channel>, ahash::RandomState>;

/// Every subject's ring.
#[derive(Debug)]
pub(crate) struct History {
    limits: HistoryLimits,
    shards: Box<[RwLock<ChannelMap>]>,
    shard_hasher: ahash::RandomState,
    subject_count: AtomicUsize,
    /// Highest sequence recorded on any channel that `sweep` removed: reads
    /// starting before it may have lost messages of subjects now forgotten.
    forgotten_through: AtomicU64,
}

impl History {
    pub(crate) fn new(limits: HistoryLimits) -> History {
        History {
            limits,
            shards: (0..SHARDS).map(|_| RwLock::new(ChannelMap::default())).collect(),
            shard_hasher: ahash::RandomState::new(),
            subject_count: AtomicUsize::new(0),
            forgotten_through: AtomicU64::new(0),
        }
    }

    pub(crate) fn limits(&self) -> &HistoryLimits {
        &self.limits
    }

    pub(crate) fn subject_count(&self) -> usize {
        self.subject_count.load(Ordering::Relaxed)
    }

    fn shard(&self, subject: &str) -> &RwLock<ChannelMap> {
        &self.shards[self.shard_hasher.hash_one(subject) as usize % SHARDS]
    }

    /// The channel of a validated subject, created on first use.
    pub(crate) fn channel(&self, subject: &str) -> Result<Arc<Channel>, HistoryError> {
        let shard = self.shard(subject);
        if let Some(channel) = read(shard).get(subject) {
            return Ok(channel.clone());
        }
        let mut map = write(shard);
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
        let channel = Arc::new(Channel {
            subject: subject.clone(),
            ring: Mutex::new(Ring {
                messages: VecDeque::new(),
                dropped_through: 0,
                last_sequence: 0,
                retired: false,
            }),
        });
        map.insert(subject, channel.clone());
        self.subject_count.fetch_add(1, Ordering::Relaxed);
        Ok(channel)
    }

    /// Everything retained in `sequences` on subjects matching `pattern`,
    /// in position order.
    pub(crate) fn read(&self, pattern: &Pattern, sequences: Sequences, now_millis: u64) -> Replay {
        let after_sequence = sequences.after;
        let mut replay = Replay::default();
        let mut read_channel = |channel: &Channel| {
            let lost = channel
                .lock()
                .read(sequences, &self.limits, now_millis, &mut replay.messages);
            replay.lost_through = replay.lost_through.max(lost);
        };
        if pattern.has_wildcards() {
            // A scan: resumes are rare next to publishes, and an index of
            // subjects by pattern would cost every publish to a new subject.
            for shard in self.shards.iter() {
                let matching: Vec<Arc<Channel>> = read(shard)
                    .iter()
                    .filter(|(subject, _)| pattern.matches(subject.as_str()))
                    .map(|(_, channel)| channel.clone())
                    .collect();
                matching.iter().for_each(|channel| read_channel(channel));
            }
        } else if let Some(channel) = read(self.shard(pattern.as_str())).get(pattern.as_str()).cloned() {
            read_channel(&channel);
        }
        let forgotten = self.forgotten_through.load(Ordering::Acquire);
        if forgotten > after_sequence {
            replay.lost_through = replay.lost_through.max(forgotten);
        }
        replay.messages.sort_unstable_by_key(Message::sequence);
        replay
    }

    /// Expires old messages and forgets subjects whose ring is empty.
    /// Returns how many subjects were forgotten.
    pub(crate) fn sweep(&self, now_millis: u64) -> usize {
        let mut forgotten = 0;
        for shard in self.shards.iter() {
            let mut map = write(shard);
            map.retain(|_, channel| {
                let mut ring = channel.lock();
                ring.expire(&self.limits, now_millis);
                if !ring.messages.is_empty() {
                    return true;
                }
                ring.retired = true;
                self.forgotten_through
                    .fetch_max(ring.last_sequence, Ordering::Release);
                forgotten += 1;
                false
            });
        }
        self.subject_count.fetch_sub(forgotten, Ordering::Relaxed);
        forgotten
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
