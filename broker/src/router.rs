//! The subscription index: which subscribers want a subject.
//!
//! Two structures, because the two kinds of interest behave differently:
//!
//! - **Exact patterns** (`chat.room42`, the Pusher-style common case) live in
//!   a sharded hash map from subject to subscriber list. A publish costs one
//!   hash, one shard read-lock and one reference-count increment.
//! - **Wildcard patterns** (`chat.*`, `chat.>`) live in a token trie with a
//!   slot for `*` and one for `>` at every node, after nats-server's sublist.
//!   Publishes skip it entirely while no wildcard subscription exists.
//!
//! Subscriber lists are immutable `Arc<[S]>` snapshots, replaced on every
//! change (copy-on-write). A match therefore holds an index lock only while
//! it clones the few `Arc`s that match; the fan-out that follows holds no
//! lock of the router's. (It does run under the broker's publish-order lock,
//! which subscribing does not take.) A change copies one list, which is
//! O(subscribers of that one pattern).
//!
//! Lock order: a trie or shard lock is never held while taking another lock.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use smallvec::SmallVec;

use crate::subject::{Pattern, FULL_WILDCARD, SINGLE_WILDCARD, TOKEN_SEPARATOR};

const EXACT_SHARDS: usize = 32;

/// An immutable list of subscribers to one pattern.
pub type SubscriberList<S> = Arc<[S]>;

/// The lists that matched one subject. Usually one; a subscriber appears in
/// more than one when its connection holds overlapping patterns.
pub type Matches<S> = SmallVec<[SubscriberList<S>; 4]>;

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// One shard of the exact-subject map.
type ExactShard<S> = RwLock<FastMap<Box<str>, SubscriberList<S>>>;

/// A concurrent subject → subscribers index, generic over the subscriber
/// handle so that it can be tested with plain numbers.
pub struct Router<S> {
    exact_shards: Box<[ExactShard<S>]>,
    shard_hasher: ahash::RandomState,
    wildcards: RwLock<TrieNode<S>>,
    /// Wildcard subscriptions held; while 0, publishes skip the trie lock.
    wildcard_count: AtomicUsize,
}

struct TrieNode<S> {
    literal_children: FastMap<Box<str>, TrieNode<S>>,
    single_wildcard_child: Option<Box<TrieNode<S>>>,
    /// Patterns that end at this node.
    ending_here: SubscriberList<S>,
    /// Patterns that end with `>` right after this node.
    full_wildcard: SubscriberList<S>,
}

impl<S> TrieNode<S> {
    fn new() -> Self {
        TrieNode {
            literal_children: FastMap::default(),
            single_wildcard_child: None,
            ending_here: Arc::new([]),
            full_wildcard: Arc::new([]),
        }
    }

    fn is_empty(&self) -> bool {
        self.literal_children.is_empty()
            && self.single_wildcard_child.is_none()
            && self.ending_here.is_empty()
            && self.full_wildcard.is_empty()
    }
}

impl<S: Clone + Eq + Hash> Default for Router<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Eq + Hash> Router<S> {
    pub fn new() -> Self {
        Router {
            exact_shards: (0..EXACT_SHARDS)
                .map(|_| RwLock::new(FastMap::default()))
                .collect(),
            shard_hasher: ahash::RandomState::new(),
            wildcards: RwLock::new(TrieNode::new()),
            wildcard_count: AtomicUsize::new(0),
        }
    }

    /// Adds `subscriber` to `pattern`. Returns false if it was already there.
    pub fn subscribe(&self, pattern: &Pattern, subscriber: S) -> bool {
        if !pattern.has_wildcards() {
            let mut shard = self.exact_shard_for_write(pattern.as_str());
            let list = shard
                .entry(Box::from(pattern.as_str()))
                .or_insert_with(|| Arc::new([]));
            return add_to_list(list, subscriber);
        }
        let mut root = write(&self.wildcards);
        let mut node = &mut *root;
        let mut tokens = pattern.tokens().peekable();
        while let Some(token) = tokens.next() {
            if token == FULL_WILDCARD {
                debug_assert!(tokens.peek().is_none(), "validated: '>' is last");
                return self.count_wildcard(add_to_list(&mut node.full_wildcard, subscriber));
            }
            node = if token == SINGLE_WILDCARD {
                node.single_wildcard_child
                    .get_or_insert_with(|| Box::new(TrieNode::new()))
            } else {
                node.literal_children
                    .entry(Box::from(token))
                    .or_insert_with(TrieNode::new)
            };
        }
        self.count_wildcard(add_to_list(&mut node.ending_here, subscriber))
    }

    /// Removes `subscriber` from `pattern`. Returns false if it was not there.
    pub fn unsubscribe(&self, pattern: &Pattern, subscriber: &S) -> bool {
        if !pattern.has_wildcards() {
            let mut shard = self.exact_shard_for_write(pattern.as_str());
            let Some(list) = shard.get_mut(pattern.as_str()) else {
                return false;
            };
            let removed = remove_from_list(list, subscriber);
            if list.is_empty() {
                shard.remove(pattern.as_str());
            }
            return removed;
        }
        let mut root = write(&self.wildcards);
        let tokens: SmallVec<[&str; 16]> = pattern.tokens().collect();
        let removed = remove_from_trie(&mut root, &tokens, subscriber);
        if removed {
            self.wildcard_count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// The subscriber lists matching a concrete `subject`.
    pub fn matches(&self, subject: &str) -> Matches<S> {
        let mut found = Matches::new();
        {
            let shard = read(&self.exact_shards[self.shard_index(subject)]);
            if let Some(list) = shard.get(subject) {
                found.push(list.clone());
            }
        }
        // SeqCst, paired with the increment in `count_wildcard`: a
        // subscriber (a session, a poll's watch) registers without the
        // publish-order lock and then reads the broker's last sequence as
        // its cut; a publisher stores its sequence and then reads this
        // count. With all four SeqCst, either this load sees the new
        // wildcard subscription or the subscriber's cut includes this
        // message (which it then takes from history, or not at all). Exact
        // subscriptions need no such care: the shard's lock orders them. A
        // SeqCst load costs what a plain one does on x86.
        if self.wildcard_count.load(Ordering::SeqCst) > 0 {
            let tokens: SmallVec<[&str; 16]> = subject.split(TOKEN_SEPARATOR).collect();
            collect_matches(&read(&self.wildcards), &tokens, &mut found);
        }
        found
    }

    /// Number of (pattern, subscriber) pairs held.
    pub fn subscription_count(&self) -> usize {
        let exact: usize = self
            .exact_shards
            .iter()
            .map(|shard| read(shard).values().map(|list| list.len()).sum::<usize>())
            .sum();
        exact + self.wildcard_count.load(Ordering::Relaxed)
    }

    fn shard_index(&self, subject: &str) -> usize {
        self.shard_hasher.hash_one(subject) as usize % EXACT_SHARDS
    }

    fn exact_shard_for_write(
        &self,
        subject: &str,
    ) -> RwLockWriteGuard<'_, FastMap<Box<str>, SubscriberList<S>>> {
        write(&self.exact_shards[self.shard_index(subject)])
    }

    fn count_wildcard(&self, added: bool) -> bool {
        if added {
            // SeqCst: see `matches`.
            self.wildcard_count.fetch_add(1, Ordering::SeqCst);
        }
        added
    }
}

/// Walks the trie for `tokens`, pushing every matching list.
fn collect_matches<S>(node: &TrieNode<S>, tokens: &[&str], found: &mut Matches<S>) {
    let Some((first, rest)) = tokens.split_first() else {
        if !node.ending_here.is_empty() {
            found.push(node.ending_here.clone());
        }
        return;
    };
    // At least one token remains, which is what `>` needs.
    if !node.full_wildcard.is_empty() {
        found.push(node.full_wildcard.clone());
    }
    if let Some(child) = node.literal_children.get(*first) {
        collect_matches(child, rest, found);
    }
    if let Some(child) = &node.single_wildcard_child {
        collect_matches(child, rest, found);
    }
}

/// Removes `subscriber` under `tokens`, pruning nodes left empty.
fn remove_from_trie<S: Clone + Eq>(node: &mut TrieNode<S>, tokens: &[&str], subscriber: &S) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return remove_from_list(&mut node.ending_here, subscriber);
    };
    match *first {
        FULL_WILDCARD => remove_from_list(&mut node.full_wildcard, subscriber),
        SINGLE_WILDCARD => {
            let Some(child) = node.single_wildcard_child.as_mut() else {
                return false;
            };
            let removed = remove_from_trie(child, rest, subscriber);
            if child.is_empty() {
                node.single_wildcard_child = None;
            }
            removed
        }
        literal => {
            let Some(child) = node.literal_children.get_mut(literal) else {
                return false;
            };
            let removed = remove_from_trie(child, rest, subscriber);
            if child.is_empty() {
                node.literal_children.remove(literal);
            }
            removed
        }
    }
}

fn add_to_list<S: Clone + Eq>(list: &mut SubscriberList<S>, subscriber: S) -> bool {
    if list.contains(&subscriber) {
        return false;
    }
    let mut copy = Vec::with_capacity(list.len() + 1);
    copy.extend_from_slice(list);
    copy.push(subscriber);
    *list = copy.into();
    true
}

fn remove_from_list<S: Clone + Eq>(list: &mut SubscriberList<S>, subscriber: &S) -> bool {
    let Some(index) = list.iter().position(|s| s == subscriber) else {
        return false;
    };
    let mut copy = Vec::with_capacity(list.len() - 1);
    copy.extend_from_slice(&list[..index]);
    copy.extend_from_slice(&list[index + 1..]);
    *list = copy.into();
    true
}

/// Lock helpers: a poisoned index lock means a panic mid-update of a
/// structure whose every update leaves it valid, so keep serving.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S> std::fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("wildcard_count", &self.wildcard_count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::SubjectLimits;
    use std::collections::BTreeSet;

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text, &SubjectLimits::default()).unwrap()
    }

    fn matched(router: &Router<u32>, subject: &str) -> BTreeSet<u32> {
        router
            .matches(subject)
            .iter()
            .flat_map(|list| list.iter().copied())
            .collect()
    }

    /// One line per case: subscriptions as (pattern, id), then a subject and
    /// the ids it must reach.
    fn check(subscriptions: &[(&str, u32)], subject: &str, expected: &[u32]) {
        let router = Router::new();
        for (text, id) in subscriptions {
            router.subscribe(&pattern(text), *id);
        }
        let expected: BTreeSet<u32> = expected.iter().copied().collect();
        assert_eq!(
            matched(&router, subject),
            expected,
            "{subscriptions:?} <- {subject}"
        );
    }

    #[test]
    fn matching_cases() {
        check(&[("a.b", 1)], "a.b", &[1]);
        check(&[("a.b", 1)], "a.c", &[]);
        check(&[("a.*", 1)], "a.b", &[1]);
        check(&[("a.*", 1)], "a", &[]);
        check(&[("a.*", 1)], "a.b.c", &[]);
        check(&[("a.>", 1)], "a.b.c", &[1]);
        check(&[("a.>", 1)], "a", &[]);
        check(&[(">", 1)], "a", &[1]);
        check(&[("*", 1)], "a.b", &[]);
        check(
            &[("*.b", 1), ("a.*", 2), ("a.b", 3), ("a.>", 4), ("b.*", 5)],
            "a.b",
            &[1, 2, 3, 4],
        );
        check(&[("*.*.c", 1), ("a.*.>", 2), ("*.b.*", 3)], "a.b.c", &[1, 2, 3]);
        check(&[("a.b", 1), ("a.b", 2)], "a.b", &[1, 2]);
    }

    #[test]
    fn subscribe_is_idempotent_and_unsubscribe_prunes() {
        let router = Router::new();
        assert!(router.subscribe(&pattern("a.*.c"), 1));
        assert!(!router.subscribe(&pattern("a.*.c"), 1));
        assert!(router.subscribe(&pattern("a.b"), 1));
        assert_eq!(router.subscription_count(), 2);
        assert!(router.unsubscribe(&pattern("a.*.c"), &1));
        assert!(!router.unsubscribe(&pattern("a.*.c"), &1));
        assert!(!router.unsubscribe(&pattern("x.>"), &1));
        assert!(read(&router.wildcards).is_empty(), "trie pruned");
        assert!(router.unsubscribe(&pattern("a.b"), &1));
        assert_eq!(router.subscription_count(), 0);
        assert!(router.exact_shards.iter().all(|shard| read(shard).is_empty()));
    }
}
