//! Presence: who is subscribed to a subject whose rule turns presence on.
//!
//! A member is a user (a token's `sub`), however many connections it has:
//! the first connection subscribing joins, the last one leaving (an
//! `unsub`, a disconnect, a heartbeat timeout) leaves. The count is always
//! exact; the list a read returns is capped (`broker.presence.max_list`).
//!
//! Joins and leaves are announced, where the rule says so, as ordinary
//! messages on the ephemeral subject `$presence.<subject>`, which a client
//! receives by subscribing with `"presence": true`. Announcing every change
//! to every member costs members × changes, so a room larger than
//! `broker.presence.max_event_members` announces at most one `count`
//! event per second instead of each join and leave.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::auth::User;
use crate::subject::Subject;

const SHARDS: usize = 16;

/// The `[broker.presence]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceLimits {
    /// Rooms of up to this many members announce each join and leave;
    /// larger rooms announce their count at most once a second.
    pub max_event_members: usize,
    /// Members one presence read lists; the count is exact regardless.
    pub max_list: usize,
}

impl Default for PresenceLimits {
    fn default() -> Self {
        Self {
            max_event_members: 1000,
            max_list: 1000,
        }
    }
}

/// One present user, as presence reads and events show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    #[serde(default)]
    pub info: serde_json::Value,
}

/// A join or leave that changed a room, and what to announce for it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Announcement {
    /// `{"action":"join"|"leave","user":..,"info":..,"count":..}`
    Member {
        action: &'static str,
        member: Member,
        count: usize,
    },
    /// `{"action":"count","count":..}`: a large room's summary.
    Count(usize),
}

impl Announcement {
    pub(crate) fn to_json(&self) -> String {
        match self {
            Announcement::Member {
                action,
                member,
                count,
            } => serde_json::json!({
                "action": action,
                "user": member.user,
                "info": member.info,
                "count": count,
            }),
            Announcement::Count(count) => serde_json::json!({ "action": "count", "count": count }),
        }
        .to_string()
    }
}

#[derive(Debug, Default)]
struct Room {
    members: HashMap<String, Attendee>,
    /// When the last `count` summary was announced.
    last_summary_millis: u64,
}

/// One user in one room.
#[derive(Debug)]
struct Attendee {
    connections: u32,
    info: serde_json::Value,
}

type Rooms = HashMap<Subject, Room, ahash::RandomState>;

/// Every room with at least one member.
#[derive(Debug)]
pub(crate) struct Presence {
    limits: PresenceLimits,
    shards: Box<[Mutex<Rooms>]>,
    hasher: ahash::RandomState,
}

/// A room's shard, locked: joins and leaves of one room are announced in
/// the order they happen by announcing under it.
pub(crate) struct RoomsGuard<'a>(MutexGuard<'a, Rooms>);

impl Presence {
    pub(crate) fn new(limits: PresenceLimits) -> Presence {
        Presence {
            limits,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    pub(crate) fn lock(&self, subject: &Subject) -> RoomsGuard<'_> {
        let shard = &self.shards[self.hasher.hash_one(subject) as usize % SHARDS];
        RoomsGuard(shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Adds one connection of `user`; what to announce if the room changed.
    pub(crate) fn join(
        &self,
        rooms: &mut RoomsGuard<'_>,
        subject: &Subject,
        user: &User,
        now_millis: u64,
    ) -> Option<Announcement> {
        let room = rooms.0.entry(subject.clone()).or_default();
        let entry = room.members.entry(user.id.clone()).or_insert(Attendee {
            connections: 0,
            info: user.info.clone(),
        });
        entry.connections += 1;
        if entry.connections > 1 {
            return None;
        }
        self.announce(room, "join", user.id.clone(), user.info.clone(), now_millis)
    }

    /// Removes one connection of `user`; what to announce if the room changed.
    pub(crate) fn leave(
        &self,
        rooms: &mut RoomsGuard<'_>,
        subject: &Subject,
        user: &str,
        now_millis: u64,
    ) -> Option<Announcement> {
        let room = rooms.0.get_mut(subject)?;
        let entry = room.members.get_mut(user)?;
        entry.connections -= 1;
        if entry.connections > 0 {
            return None;
        }
        let info = room
            .members
            .remove(user)
            .map(|entry| entry.info)
            .unwrap_or_default();
        let announcement = self.announce(room, "leave", user.to_owned(), info, now_millis);
        if room.members.is_empty() {
            rooms.0.remove(subject);
        }
        announcement
    }

    fn announce(
        &self,
        room: &mut Room,
        action: &'static str,
        user: String,
        info: serde_json::Value,
        now_millis: u64,
    ) -> Option<Announcement> {
        let count = room.members.len();
        if count <= self.limits.max_event_members {
            return Some(Announcement::Member {
                action,
                member: Member { user, info },
                count,
            });
        }
        if now_millis.saturating_sub(room.last_summary_millis) >= 1000 {
            room.last_summary_millis = now_millis;
            return Some(Announcement::Count(count));
        }
        None
    }

    /// The exact count and the first `max_list` members of `subject`.
    pub(crate) fn read(&self, subject: &Subject) -> (usize, Vec<Member>) {
        let rooms = self.lock(subject);
        let Some(room) = rooms.0.get(subject) else {
            return (0, Vec::new());
        };
        let mut members: Vec<Member> = room
            .members
            .iter()
            .take(self.limits.max_list)
            .map(|(user, entry)| Member {
                user: user.clone(),
                info: entry.info.clone(),
            })
            .collect();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        (room.members.len(), members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            info: serde_json::json!({ "name": id }),
        }
    }

    #[test]
    fn users_count_once_whatever_their_connections() {
        let presence = Presence::new(PresenceLimits::default());
        let room = Subject::from_validated("chat.room1");
        let mut rooms = presence.lock(&room);
        let joined = presence.join(&mut rooms, &room, &user("alice"), 0);
        assert!(matches!(
            joined,
            Some(Announcement::Member {
                action: "join",
                count: 1,
                ..
            })
        ));
        assert_eq!(presence.join(&mut rooms, &room, &user("alice"), 0), None);
        assert!(presence.join(&mut rooms, &room, &user("bob"), 0).is_some());
        assert_eq!(presence.leave(&mut rooms, &room, "alice", 0), None);
        let left = presence.leave(&mut rooms, &room, "alice", 0);
        assert!(matches!(
            left,
            Some(Announcement::Member {
                action: "leave",
                count: 1,
                ..
            })
        ));
        assert_eq!(
            presence.leave(&mut rooms, &room, "carol", 0),
            None,
            "never joined"
        );
        drop(rooms);
        let (count, members) = presence.read(&room);
        assert_eq!(count, 1);
        assert_eq!(
            members,
            vec![Member {
                user: "bob".into(),
                info: serde_json::json!({"name": "bob"})
            }]
        );
        let mut rooms = presence.lock(&room);
        presence.leave(&mut rooms, &room, "bob", 0);
        assert!(rooms.0.is_empty(), "an empty room is forgotten");
    }

    #[test]
    fn a_room_of_100_000_users_keeps_an_exact_count() {
        let presence = Presence::new(PresenceLimits::default());
        let room = Subject::from_validated("stadium");
        let mut announcements = 0;
        for index in 0..100_000u64 {
            let mut rooms = presence.lock(&room);
            // Ten joins a millisecond: 10 s of arrivals.
            let now = index / 10;
            announcements += usize::from(
                presence
                    .join(&mut rooms, &room, &user(&format!("fan{index}")), now)
                    .is_some(),
            );
        }
        let (count, members) = presence.read(&room);
        assert_eq!((count, members.len()), (100_000, 1000));
        // 1000 joins announced one by one, then one count a second.
        assert!((1000..=1011).contains(&announcements), "{announcements}");
    }

    #[test]
    fn a_large_room_announces_its_count_at_most_once_a_second() {
        let presence = Presence::new(PresenceLimits {
            max_event_members: 2,
            max_list: 2,
        });
        let room = Subject::from_validated("big");
        let mut rooms = presence.lock(&room);
        for id in ["a", "b"] {
            assert!(matches!(
                presence.join(&mut rooms, &room, &user(id), 0),
                Some(Announcement::Member { .. })
            ));
        }
        assert_eq!(
            presence.join(&mut rooms, &room, &user("c"), 5000),
            Some(Announcement::Count(3))
        );
        assert_eq!(presence.join(&mut rooms, &room, &user("d"), 5500), None);
        assert_eq!(
            presence.join(&mut rooms, &room, &user("e"), 6000),
            Some(Announcement::Count(5))
        );
        drop(rooms);
        let (count, members) = presence.read(&room);
        assert_eq!(
            (count, members.len()),
            (5, 2),
            "the count stays exact, the list is capped"
        );
    }
}
