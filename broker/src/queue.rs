//! Queue groups: subscribers that share the work of a pattern, each message
//! going to exactly one of them.
//!
//! A group is named by its pattern and its name together (NATS's `SUB
//! orders.* workers`); members may be on any transport. The groups live in
//! a router of their own, beside the plain subscriptions, so a publish finds
//! the groups that match a subject the way it finds subscribers, and skips
//! them entirely while no group exists. Within a group the member is chosen
//! round-robin, passing over closed connections and the publisher itself
//! when it asked not to get its own messages.
//!
//! Membership changes take the groups' mutex (subscribing is rare next to
//! publishing); a publish reads a group's members under a read lock held for
//! one reference count.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

use crate::message::Message;
use crate::outbox::{Offer, Outbox, Subscriber};
use crate::router::{Matches, Router};
use crate::stats::Transport;
use crate::subject::Pattern;

/// Longest queue group name, in bytes.
pub const MAX_QUEUE_NAME: usize = 256;

/// Why a queue group name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueueNameError {
    #[error(
        "a queue group name is 1 to {MAX_QUEUE_NAME} bytes without spaces or control characters: {name:?}"
    )]
    Invalid { name: String },
}

/// Checks a queue group name: what NATS accepts as one protocol token.
pub fn validate_queue_name(name: &str) -> Result<(), QueueNameError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_QUEUE_NAME
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(QueueNameError::Invalid {
            name: name.chars().take(64).collect(),
        })
    }
}

/// One group: its members and whose turn it is.
struct QueueGroup {
    members: RwLock<Arc<[Subscriber]>>,
    next: AtomicUsize,
}

/// A group's handle in the groups' router, compared by identity.
#[derive(Clone)]
pub(crate) struct GroupHandle(Arc<QueueGroup>);

impl PartialEq for GroupHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for GroupHandle {}

impl Hash for GroupHandle {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state)
    }
}

/// Every queue group of a broker.
#[derive(Default)]
pub(crate) struct QueueGroups {
    router: Router<GroupHandle>,
    groups: Mutex<HashMap<(Pattern, Box<str>), GroupHandle>>,
    /// Groups that exist; while 0, publishes skip the groups' router.
    count: AtomicUsize,
}

impl QueueGroups {
    /// Adds `member` to the group `name` on `pattern`, creating the group.
    pub(crate) fn join(&self, pattern: &Pattern, name: &str, member: Subscriber) {
        let mut groups = self.lock();
        let group = groups
            .entry((pattern.clone(), Box::from(name)))
            .or_insert_with(|| {
                let group = GroupHandle(Arc::new(QueueGroup {
                    members: RwLock::new(Arc::new([])),
                    next: AtomicUsize::new(0),
                }));
                self.router.subscribe(pattern, group.clone());
                self.count.fetch_add(1, Ordering::Relaxed);
                group
            });
        let mut members = group
            .0
            .members
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !members.contains(&member) {
            *members = members.iter().cloned().chain([member]).collect();
        }
    }

    /// Removes `member` from the group, and the group once it is empty.
    pub(crate) fn leave(&self, pattern: &Pattern, name: &str, member: &Subscriber) {
        let mut groups = self.lock();
        let key = (pattern.clone(), Box::from(name));
        let Some(group) = groups.get(&key) else {
            return;
        };
        let now_empty = {
            let mut members = group
                .0
                .members
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *members = members.iter().filter(|m| *m != member).cloned().collect();
            members.is_empty()
        };
        if now_empty {
            let group = groups.remove(&key).expect("found above");
            self.router.unsubscribe(pattern, &group);
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The groups whose pattern matches `subject`; none without a lookup
    /// while no group exists.
    pub(crate) fn matches(&self, subject: &str) -> Option<Matches<GroupHandle>> {
        (self.count.load(Ordering::Relaxed) > 0).then(|| self.router.matches(subject))
    }

    /// How many groups exist.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Pattern, Box<str>), GroupHandle>> {
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl GroupHandle {
    /// Offers `message` to the group's next member that is open and is not
    /// `skip`; `None` when there is none.
    /// The member offered the message, and what became of it.
    pub(crate) fn offer(
        &self,
        message: &Message,
        skip: Option<&Arc<Outbox>>,
    ) -> Option<(Offer, Option<Transport>)> {
        let members = self
            .0
            .members
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let start = self.0.next.fetch_add(1, Ordering::Relaxed);
        (0..members.len())
            .map(|turn| &members[(start + turn) % members.len()])
            .find(|member| {
                !member.outbox.is_closed() && skip.is_none_or(|skip| !Arc::ptr_eq(&member.outbox, skip))
            })
            .map(|member| (member.offer(message), member.outbox.transport()))
    }
}

impl std::fmt::Debug for QueueGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueGroups").field("count", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_one_protocol_token() {
        for good in ["workers", "a", "q.1-_x", &"n".repeat(MAX_QUEUE_NAME)] {
            assert!(validate_queue_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "two words",
            "tab\there",
            "line\nbreak",
            &"n".repeat(MAX_QUEUE_NAME + 1),
        ] {
            assert!(validate_queue_name(bad).is_err(), "{bad:?}");
        }
    }
}
