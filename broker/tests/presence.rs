//! Presence and subject rules in the core: who is in a room, what is
//! announced, what ephemeral subjects keep, and a large room.

mod common;

use std::sync::Arc;

use herald_broker::{
    Access, Acknowledge, AllowAll, BrokerConfig, Encoding, Pattern, PresenceLimits, ServerEvent, Session,
    SubjectLimits, SubjectRuleConfig, SubjectRules, User,
};
use serde_json::json;

/// A user's connection that may subscribe to anything.
#[derive(Debug)]
struct UserAccess(User);

impl Access for UserAccess {
    fn may_publish(&self, _subject: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _pattern: &Pattern) -> bool {
        true
    }

    fn user(&self) -> Option<&User> {
        Some(&self.0)
    }
}

fn user(id: &str) -> Arc<dyn Access> {
    Arc::new(UserAccess(User {
        id: id.into(),
        info: json!({ "name": id }),
    }))
}

fn config(rules: serde_json::Value, presence: PresenceLimits) -> BrokerConfig {
    let rules: Vec<SubjectRuleConfig> = serde_json::from_value(rules).unwrap();
    BrokerConfig {
        rules: SubjectRules::from_config(&rules, &SubjectLimits::default()).unwrap(),
        presence,
        ..BrokerConfig::default()
    }
}

/// The presence events a watcher received, as (action, user, count).
fn announced(watcher: &Session) -> Vec<(String, Option<String>, u64)> {
    common::received(watcher, Encoding::Json)
        .into_iter()
        .filter_map(|event| match event {
            ServerEvent::Msg { subject, data, .. } if subject.starts_with("$presence.") => Some((
                data["action"].as_str().unwrap().to_owned(),
                data["user"].as_str().map(str::to_owned),
                data["count"].as_u64().unwrap(),
            )),
            _ => None,
        })
        .collect()
}

fn event(action: &str, user: &str, count: u64) -> (String, Option<String>, u64) {
    (action.into(), Some(user.into()), count)
}

#[test]
fn users_join_once_and_leave_with_their_last_connection() {
    let (broker, _clock) = common::broker(config(
        json!([{"pattern": "chat.*", "presence": true}]),
        PresenceLimits::default(),
    ));
    let mut watcher = Session::new(&broker, Arc::new(AllowAll));
    watcher
        .subscribe_with_presence(&["chat.room1"], None, Acknowledge::Never, true)
        .unwrap();
    let mut alice_one = Session::new(&broker, user("alice"));
    let mut alice_two = Session::new(&broker, user("alice"));
    let mut bob = Session::new(&broker, user("bob"));
    for session in [&mut alice_one, &mut alice_two, &mut bob] {
        session
            .subscribe(&["chat.room1"], None, Acknowledge::Never)
            .unwrap();
    }
    // A wildcard subscription is not presence in any one room.
    let mut carol = Session::new(&broker, user("carol"));
    carol.subscribe(&["chat.*"], None, Acknowledge::Never).unwrap();

    let (count, members) = alice_one.presence("chat.room1").unwrap();
    assert_eq!(count, 2);
    let names: Vec<&str> = members.iter().map(|member| member.user.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(members[0].info, json!({"name": "alice"}));

    alice_one.unsubscribe("chat.room1").unwrap();
    drop(bob);
    drop(alice_two);
    assert_eq!(
        announced(&watcher),
        [
            event("join", "alice", 1),
            event("join", "bob", 2),
            event("leave", "bob", 1),
            event("leave", "alice", 0),
        ]
    );
    assert_eq!(watcher.presence("chat.room1").unwrap().0, 0);
    assert_eq!(
        watcher.presence("news.a").unwrap_err().code(),
        "no_presence",
        "no rule, no presence"
    );
}

#[test]
fn a_large_room_counts_exactly_and_summarizes_its_events() {
    let (broker, clock) = common::broker(config(
        json!([{"pattern": "stadium", "presence": true}]),
        PresenceLimits {
            max_event_members: 100,
            max_list: 50,
        },
    ));
    let mut watcher = Session::new(&broker, Arc::new(AllowAll));
    watcher
        .subscribe_with_presence(&["stadium"], None, Acknowledge::Never, true)
        .unwrap();
    let mut crowd = Vec::new();
    let mut events = Vec::new();
    for index in 0..2000 {
        if index % 500 == 0 {
            clock.advance(std::time::Duration::from_secs(1));
            // Drained as a client would, so the watcher's queue never fills.
            events.extend(announced(&watcher));
        }
        let mut session = Session::new(&broker, user(&format!("fan{index}")));
        session.subscribe(&["stadium"], None, Acknowledge::Never).unwrap();
        crowd.push(session);
    }
    events.extend(announced(&watcher));
    let joins = events.iter().filter(|(action, ..)| action == "join").count();
    let counts: Vec<u64> = events
        .iter()
        .filter(|(action, ..)| action == "count")
        .map(|(_, _, count)| *count)
        .collect();
    assert_eq!(joins, 100, "each join announced up to the limit");
    assert_eq!(counts, [101, 501, 1001, 1501], "then one count per second");
    let (count, members) = watcher.presence("stadium").unwrap();
    assert_eq!((count, members.len()), (2000, 50), "exact count, capped list");
    clock.advance(std::time::Duration::from_secs(1));
    crowd.truncate(1999);
    assert_eq!(announced(&watcher), [("count".to_owned(), None, 1999)]);
}

#[test]
fn ephemeral_subjects_are_never_kept_replayed_or_reported_missing() {
    let (broker, _clock) = common::broker(config(
        json!([{"pattern": "chat.*.typing", "history_size": 0}]),
        PresenceLimits::default(),
    ));
    let before = broker.last_position().token().to_string();
    broker.publish("chat.room1.typing", common::json("1")).unwrap();
    broker.publish("chat.room1", common::json("2")).unwrap();
    let mut resumer = common::session(&broker);
    resumer
        .subscribe(&["chat.room1.>", "chat.room1"], Some(&before), Acknowledge::Never)
        .unwrap();
    let events = common::received(&resumer, Encoding::Json);
    assert!(
        matches!(&events[..], [ServerEvent::Msg { subject, .. }] if subject == "chat.room1"),
        "only the kept message, and no gap: {events:?}"
    );
    let page = resumer.history("chat.room1.typing", None, None).unwrap();
    assert!(page.messages.is_empty() && page.gap.is_none());
    // Live delivery is unaffected.
    broker.publish("chat.room1.typing", common::json("3")).unwrap();
    assert_eq!(common::received(&resumer, Encoding::Json).len(), 1);
}
