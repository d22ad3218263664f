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
//! Subscriber lists are immutable snapshots, replaced on every change
//! (copy-on-write). A match therefore holds an index lock only while it
//! clones the few lists that match (one reference count each); the fan-out
//! that follows holds no lock of the router's. (It does run under the
//! broker's publish-order lock, which subscribing does not take.) A list is
//! stored in chunks of [`CHUNK`] subscribers, so a change copies one or two
//! chunks and the table of chunks, not the whole list: joining a room of
//! 100 000 subscribers costs about 600 reference counts, not 100 000 (a
//! room that size took 112 s to fill one subscriber at a time with flat
//! lists, and 1.7 ms per join once full).
//!
//! Lock order: a trie or shard lock is never held while taking another lock.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use smallvec::SmallVec;

use crate::subject::{Pattern, Tokens, FULL_WILDCARD, SINGLE_WILDCARD};

const EXACT_SHARDS: usize = 32;

/// Most subscribers in one chunk of a [`SubscriberList`].
pub const CHUNK: usize = 256;

/// An immutable list of subscribers to one pattern; cloning it is one
/// reference count. Its chunks are all full but the last, which is never
/// empty, so a list of n subscribers has n / [`CHUNK`] chunks, rounded up.
pub struct SubscriberList<S> {
    chunks: Arc<[Arc<[S]>]>,
    len: usize,
}

impl<S> Clone for SubscriberList<S> {
    fn clone(&self) -> Self {
        SubscriberList {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<S> std::fmt::Debug for SubscriberList<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberList")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl<S> Default for SubscriberList<S> {
    fn default() -> Self {
        SubscriberList {
            chunks: Arc::new([]),
            len: 0,
        }
    }
}

impl<S> SubscriberList<S> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &S> {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// The subscribers, a slice per chunk: for loops that must be tight.
    pub fn chunks(&self) -> impl Iterator<Item = &[S]> {
        self.chunks.iter().map(|chunk| &chunk[..])
    }
}

impl<S: Clone + Eq> SubscriberList<S> {
    /// The chunk and the place in it of `subscriber`.
    fn find(&self, subscriber: &S) -> Option<(usize, usize)> {
        self.chunks.iter().enumerate().find_map(|(chunk_index, chunk)| {
            let index = chunk.iter().position(|s| s == subscriber)?;
            Some((chunk_index, index))
        })
    }

    /// This list and `subscriber`, at the end.
    fn with(&self, subscriber: S) -> SubscriberList<S> {
        let mut chunks = self.chunks.to_vec();
        match chunks.last_mut() {
            Some(last) if last.len() < CHUNK => {
                let mut grown = Vec::with_capacity(last.len() + 1);
                grown.extend_from_slice(last);
                grown.push(subscriber);
                *last = grown.into();
            }
            _ => chunks.push(Arc::new([subscriber])),
        }
        SubscriberList {
            chunks: chunks.into(),
            len: self.len + 1,
        }
    }

    /// This list without the subscriber at `place`: the list's last
    /// subscriber takes its place, so every chunk but the last stays full.
    fn without(&self, (chunk_index, index): (usize, usize)) -> SubscriberList<S> {
        let mut chunks = self.chunks.to_vec();
        let mut last = chunks.pop().map(|chunk| chunk.to_vec()).unwrap_or_default();
        let moved = last.pop().expect("the last chunk is never empty");
        if chunk_index < chunks.len() {
            let mut changed = chunks[chunk_index].to_vec();
            changed[index] = moved;
            chunks[chunk_index] = changed.into();
        } else if index < last.len() {
            last[index] = moved;
        }
        if !last.is_empty() {
            chunks.push(last.into());
        }
        SubscriberList {
            chunks: chunks.into(),
            len: self.len - 1,
        }
    }
}

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
            ending_here: SubscriberList::default(),
            full_wildcard: SubscriberList::default(),
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
            let list = shard.entry(Box::from(pattern.as_str())).or_default();
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

    /// Calls `visit` with every subscriber held, once per pattern it holds:
    /// for notices that concern everyone, never on the publish path.
    pub fn for_each(&self, mut visit: impl FnMut(&S)) {
        fn walk<S>(node: &TrieNode<S>, visit: &mut impl FnMut(&S)) {
            node.ending_here.iter().for_each(&mut *visit);
            node.full_wildcard.iter().for_each(&mut *visit);
            for child in node.literal_children.values() {
                walk(child, visit);
            }
            if let Some(child) = &node.single_wildcard_child {
                walk(child, visit);
            }
        }
        for shard in self.exact_shards.iter() {
            for list in read(shard).values() {
                list.iter().for_each(&mut visit);
            }
        }
        walk(&read(&self.wildcards), &mut visit);
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
            let tokens: SmallVec<[&str; 16]> = Tokens::of(subject).collect();
            collect_matches(&read(&self.wildcards), &tokens, &mut found);
        }
        found
    }

    /// Every pattern held and how many subscribers it has: for the admin
    /// API, never on the publish path.
    pub fn pattern_counts(&self) -> Vec<(String, usize)> {
        fn walk<S>(node: &TrieNode<S>, path: &mut Vec<String>, found: &mut Vec<(String, usize)>) {
            if !node.ending_here.is_empty() {
                found.push((path.join("."), node.ending_here.len()));
            }
            if !node.full_wildcard.is_empty() {
                path.push(FULL_WILDCARD.to_owned());
                found.push((path.join("."), node.full_wildcard.len()));
                path.pop();
            }
            for (token, child) in &node.literal_children {
                path.push(token.to_string());
                walk(child, path, found);
                path.pop();
            }
            if let Some(child) = &node.single_wildcard_child {
                path.push(SINGLE_WILDCARD.to_owned());
                walk(child, path, found);
                path.pop();
            }
        }
        let mut found = Vec::new();
        for shard in self.exact_shards.iter() {
            found.extend(
                read(shard)
                    .iter()
                    .filter(|(_, list)| !list.is_empty())
                    .map(|(subject, list)| (subject.to_string(), list.len())),
            );
        }
        walk(&read(&self.wildcards), &mut Vec::new(), &mut found);
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
    if list.find(&subscriber).is_some() {
        return false;
    }
    *list = list.with(subscriber);
    true
}

fn remove_from_list<S: Clone + Eq>(list: &mut SubscriberList<S>, subscriber: &S) -> bool {
    let Some(place) = list.find(subscriber) else {
        return false;
    };
    *list = list.without(place);
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
    fn lists_keep_every_subscriber_once_through_any_changes() {
        // Past several chunks, removing from the first, a middle and the
        // last chunk, and down to nothing.
        let mut list = SubscriberList::default();
        let mut model = BTreeSet::new();
        let count = (CHUNK * 3 + 17) as u32;
        for id in 0..count {
            assert!(add_to_list(&mut list, id));
            model.insert(id);
        }
        assert!(!add_to_list(&mut list, 5), "once only");
        let mut removals: Vec<u32> = (0..count).step_by(7).collect();
        removals.extend([count - 1, 0, CHUNK as u32]);
        for id in removals {
            assert_eq!(remove_from_list(&mut list, &id), model.remove(&id), "{id}");
            let held: BTreeSet<u32> = list.iter().copied().collect();
            assert_eq!(held, model);
            assert_eq!(list.len(), model.len());
            let chunks = list.chunks.len();
            assert_eq!(
                chunks,
                model.len().div_ceil(CHUNK),
                "all chunks full but the last"
            );
        }
        for id in model.clone() {
            assert!(remove_from_list(&mut list, &id));
        }
        assert!(list.is_empty() && list.chunks.is_empty());
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
