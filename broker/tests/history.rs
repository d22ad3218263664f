//! History windows (count and age), resume across wildcards in position
//! order, and explicit gaps whenever the window does not cover a resume.

mod common;

use std::time::Duration;

use herald_broker::{Acknowledge, BrokerConfig, HistoryLimits, Position, ServerEvent};
use serde_json::json;

fn config(max_messages_per_subject: usize, max_age: Duration) -> BrokerConfig {
    BrokerConfig {
        history: HistoryLimits {
            max_messages_per_subject,
            max_age,
            max_subjects: 1000,
            ..HistoryLimits::default()
        },
        ..BrokerConfig::default()
    }
}

fn history_data(
    session: &herald_broker::Session,
    subject: &str,
    since: Option<&str>,
) -> Vec<serde_json::Value> {
    let page = session.history(subject, since, None).unwrap();
    page.messages
        .iter()
        .map(|m| serde_json::from_slice(m.payload().body()).unwrap())
        .collect()
}

#[test]
fn count_window_keeps_the_newest() {
    let (broker, _clock) = common::broker(config(3, Duration::from_secs(60)));
    let session = common::session(&broker);
    for n in 0..5 {
        broker.publish("c", common::json(&n.to_string())).unwrap();
    }
    assert_eq!(
        history_data(&session, "c", None),
        vec![json!(2), json!(3), json!(4)]
    );
}

#[test]
fn age_window_drops_old_messages() {
    let (broker, clock) = common::broker(config(100, Duration::from_secs(10)));
    let session = common::session(&broker);
    broker.publish("a", common::json("1")).unwrap();
    clock.advance(Duration::from_secs(6));
    broker.publish("a", common::json("2")).unwrap();
    clock.advance(Duration::from_secs(5));
    assert_eq!(history_data(&session, "a", None), vec![json!(2)]);
    clock.advance(Duration::from_secs(6));
    assert!(history_data(&session, "a", None).is_empty());
}

#[test]
fn resume_merges_wildcard_subjects_in_position_order() {
    let (broker, _clock) = common::broker(config(100, Duration::from_secs(60)));
    let first = broker.publish("room.a", common::json("0")).unwrap();
    for (n, subject) in ["room.b", "room.a", "other.x", "room.c", "room.b"]
        .iter()
        .enumerate()
    {
        broker
            .publish(subject, common::json(&(n + 1).to_string()))
            .unwrap();
    }
    let mut session = common::session(&broker);
    session
        .subscribe(
            &["room.*"],
            Some(&first.token().to_string()),
            Acknowledge::command(Some(1)),
        )
        .unwrap();
    broker.publish("room.a", common::json("6")).unwrap();

    let events = common::received_json(&session);
    assert_eq!(
        events[0],
        ServerEvent::Ack {
            id: Some(1),
            pos: Some(first.token().to_string()),
        },
        "a resume is acknowledged with the position it resumes from"
    );
    assert_eq!(
        common::data_of(&events),
        vec![json!(1), json!(2), json!(4), json!(5), json!(6)],
        "missed messages in position order, then live"
    );
    let positions = common::msg_positions(&events);
    let mut sorted = positions.clone();
    sorted.sort_by_key(|token| Position::from_token(token).unwrap());
    assert_eq!(positions, sorted);
}

#[test]
fn resume_beyond_the_count_window_is_an_explicit_gap() {
    let (broker, _clock) = common::broker(config(2, Duration::from_secs(60)));
    let start = broker.publish("g", common::json("0")).unwrap();
    let positions: Vec<Position> = (1..=4)
        .map(|n| broker.publish("g", common::json(&n.to_string())).unwrap())
        .collect();
    let mut session = common::session(&broker);
    session
        .subscribe(&["g"], Some(&start.token().to_string()), Acknowledge::Never)
        .unwrap();
    let events = common::received_json(&session);
    assert_eq!(
        events[0],
        ServerEvent::Gap {
            subject: "g".into(),
            from: positions[0].token().to_string(),
            to: positions[1].token().to_string(),
            missed: None,
        }
    );
    assert_eq!(common::data_of(&events), vec![json!(3), json!(4)]);
}

#[test]
fn resume_after_subjects_were_forgotten_is_an_explicit_gap() {
    let (broker, clock) = common::broker(config(10, Duration::from_secs(10)));
    let start = broker.publish("keep", common::json("0")).unwrap();
    broker.publish("gone.a", common::json("1")).unwrap();
    clock.advance(Duration::from_secs(11));
    assert_eq!(broker.sweep(), 2, "both subjects expired and were forgotten");
    broker.publish("gone.b", common::json("2")).unwrap();

    let mut session = common::session(&broker);
    session
        .subscribe(&["gone.*"], Some(&start.token().to_string()), Acknowledge::Never)
        .unwrap();
    let events = common::received_json(&session);
    assert!(
        matches!(&events[0], ServerEvent::Gap { subject, .. } if subject == "gone.*"),
        "{events:?}"
    );
    assert_eq!(common::data_of(&events), vec![json!(2)]);

    // A token newer than anything forgotten resumes without a gap.
    let recent = broker.last_position();
    broker.publish("gone.b", common::json("3")).unwrap();
    let mut session = common::session(&broker);
    session
        .subscribe(&["gone.*"], Some(&recent.token().to_string()), Acknowledge::Never)
        .unwrap();
    let events = common::received_json(&session);
    assert_eq!(common::data_of(&events), vec![json!(3)]);
    assert!(!events.iter().any(|e| matches!(e, ServerEvent::Gap { .. })));
}

#[test]
fn resume_from_another_epoch_is_a_gap_then_everything_retained() {
    let (broker, _clock) = common::broker(config(10, Duration::from_secs(60)));
    broker.publish("e", common::json("1")).unwrap();
    let foreign = Position::new(common::EPOCH + 1, 500);
    let mut session = common::session(&broker);
    session
        .subscribe(&["e"], Some(&foreign.token().to_string()), Acknowledge::Never)
        .unwrap();
    let events = common::received_json(&session);
    assert!(
        matches!(&events[0], ServerEvent::Gap { from, .. } if from == &Position::new(common::EPOCH + 1, 501).token().to_string())
    );
    assert_eq!(common::data_of(&events), vec![json!(1)]);
}

#[test]
fn resume_within_the_window_has_no_gap_and_no_duplicates() {
    let (broker, _clock) = common::broker(config(100, Duration::from_secs(60)));
    let mut live = common::session(&broker);
    live.subscribe(&["r"], None, Acknowledge::Never).unwrap();
    let mut seen = Vec::new();
    for n in 0..4 {
        broker.publish("r", common::json(&n.to_string())).unwrap();
    }
    let events = common::received_json(&live);
    seen.extend(common::msg_positions(&events));
    drop(live); // the connection drops
    for n in 4..7 {
        broker.publish("r", common::json(&n.to_string())).unwrap();
    }
    let mut resumed = common::session(&broker);
    resumed
        .subscribe(&["r"], Some(seen.last().unwrap()), Acknowledge::Never)
        .unwrap();
    let events = common::received_json(&resumed);
    assert!(!events.iter().any(|e| matches!(e, ServerEvent::Gap { .. })));
    assert_eq!(common::data_of(&events), vec![json!(4), json!(5), json!(6)]);
}

#[test]
fn replay_larger_than_the_queue_keeps_the_newest_and_reports_the_rest() {
    let mut config = config(100, Duration::from_secs(60));
    config.queue.max_messages = 3;
    let (broker, _clock) = common::broker(config);
    let start = broker.publish("big", common::json("0")).unwrap();
    let positions: Vec<Position> = (1..=6)
        .map(|n| broker.publish("big", common::json(&n.to_string())).unwrap())
        .collect();
    let mut session = common::session(&broker);
    session
        .subscribe(&["big"], Some(&start.token().to_string()), Acknowledge::Never)
        .unwrap();
    let events = common::received_json(&session);
    assert_eq!(
        events[0],
        ServerEvent::Gap {
            subject: "big".into(),
            from: positions[0].token().to_string(),
            to: positions[2].token().to_string(),
            missed: Some(3),
        }
    );
    assert_eq!(common::data_of(&events), vec![json!(4), json!(5), json!(6)]);
}

#[test]
fn history_pages_forward_from_a_token() {
    let (broker, _clock) = common::broker(config(100, Duration::from_secs(60)));
    let session = common::session(&broker);
    let start = broker.publish("p", common::json("0")).unwrap();
    for n in 1..=5 {
        broker.publish("p", common::json(&n.to_string())).unwrap();
    }
    let page = session
        .history("p", Some(&start.token().to_string()), Some(2))
        .unwrap();
    assert_eq!(page.messages.len(), 2);
    let next = page.messages[1].position().token().to_string();
    let page = session.history("p", Some(&next), Some(10)).unwrap();
    let data: Vec<_> = page.messages.iter().map(|m| m.payload().body().clone()).collect();
    assert_eq!(data, vec!["3", "4", "5"]);
    assert_eq!(
        session.history("p", Some("garbage"), None).unwrap_err().code(),
        "invalid_token"
    );
}

/// A broker whose history holds at most `max_bytes` in all.
fn history_budget(max_bytes: usize) -> BrokerConfig {
    BrokerConfig {
        history: HistoryLimits {
            max_bytes,
            ..HistoryLimits::default()
        },
        ..BrokerConfig::default()
    }
}

#[test]
fn the_byte_budget_evicts_the_oldest_messages_first_and_tells_resumers() {
    // Each message counts its payload (10 bytes) and subject (1 byte).
    let (broker, _clock) = common::broker(history_budget(55));
    let payload = || common::json("\"12345678\"");
    let first = broker.publish("a", payload()).unwrap();
    for subject in ["b", "c", "a", "b"] {
        broker.publish(subject, payload()).unwrap();
    }
    assert_eq!(broker.metrics().history_bytes, 55, "five messages fit exactly");
    // The sixth pushes the oldest out: the first message on "a".
    broker.publish("c", payload()).unwrap();
    assert_eq!(broker.metrics().history_bytes, 55);
    let session = common::session(&broker);
    assert_eq!(
        history_data(&session, "a", None).len(),
        1,
        "a's newer message stays"
    );
    assert_eq!(history_data(&session, ">", None).len(), 5);
    // A resume from before the evicted message is told it is gone.
    let before = Position::new(first.epoch, 0).token();
    let page = session.history("a", Some(before.as_str()), None).unwrap();
    let gap = page.gap.expect("a gap for the evicted message");
    assert_eq!(gap.to, first);
    // A flood of large messages on one subject cannot hold more than the
    // budget either.
    for _ in 0..100 {
        broker
            .publish("flood", common::json(&format!("\"{}\"", "x".repeat(40))))
            .unwrap();
    }
    assert!(broker.metrics().history_bytes <= 55);
}

#[test]
fn the_byte_budget_evicts_part_of_a_run_on_one_subject_oldest_first() {
    // Five messages of 11 bytes fit (10 of payload, 1 of subject).
    let (broker, _clock) = common::broker(history_budget(55));
    let publish = |subject: &str, name: &str| {
        broker
            .publish(subject, common::json(&format!("\"{name:<8}\"")))
            .unwrap();
    };
    let names = |subject: &str| -> Vec<String> {
        let session = common::session(&broker);
        history_data(&session, subject, None)
            .iter()
            .map(|data| data.as_str().unwrap().trim_end().to_owned())
            .collect()
    };
    for (subject, name) in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("b", "b2")] {
        publish(subject, name);
    }
    assert_eq!(broker.metrics().history_bytes, 55);
    // Each new message evicts the oldest one left, one at a time out of
    // a's run of three, then from the next subject.
    publish("b", "b3");
    assert_eq!(names("a"), ["a2", "a3"]);
    publish("c", "c1");
    assert_eq!(names("a"), ["a3"]);
    publish("a", "a4");
    assert_eq!(names("a"), ["a4"]);
    publish("b", "b4");
    assert_eq!(names("b"), ["b2", "b3", "b4"]);
    assert_eq!(names("c"), ["c1"]);
    assert_eq!(broker.metrics().history_bytes, 55);
}

#[test]
fn a_wildcard_read_broader_than_its_budget_is_refused_with_a_reason() {
    let narrow = BrokerConfig {
        history: HistoryLimits {
            max_subjects_per_read: 4,
            ..HistoryLimits::default()
        },
        ..BrokerConfig::default()
    };
    let (broker, _clock) = common::broker(narrow);
    let start = broker.last_position().token();
    for subject in ["room.1", "room.2", "room.3", "room.4", "room.5", "lobby"] {
        broker.publish(subject, common::json("1")).unwrap();
    }
    let mut session = common::session(&broker);
    let too_broad = |result: Result<_, herald_broker::SessionError>| {
        assert_eq!(result.map(|_| ()).unwrap_err().code(), "pattern_too_broad");
    };
    too_broad(session.history("room.*", None, None).map(|_| ()));
    too_broad(session.history(">", None, None).map(|_| ()));
    too_broad(
        session
            .subscribe(&["room.>"], Some(start.as_str()), Acknowledge::Never)
            .map(|_| ()),
    );
    let access = herald_broker::AllowAll;
    too_broad(herald_broker::Poll::new(&broker, &access, &["room.*"], None).map(|_| ()));
    // Exact subjects and narrow patterns read as before; a live
    // subscription without `since` reads no history and is not limited.
    assert_eq!(history_data(&session, "room.1", None).len(), 1);
    assert_eq!(history_data(&session, "lobby.*", None).len(), 0);
    assert!(session.history("*", None, None).is_ok());
    session.subscribe(&[">"], None, Acknowledge::Never).unwrap();
}

#[test]
fn a_history_page_holds_at_most_the_queue_byte_limit() {
    let config = BrokerConfig {
        queue: herald_broker::QueueLimits {
            max_bytes: 100,
            ..herald_broker::QueueLimits::default()
        },
        ..BrokerConfig::default()
    };
    let (broker, _clock) = common::broker(config);
    let start = broker.last_position().token();
    // Each weighs 1 (subject) + 40 (payload) bytes: two fit in 100.
    for n in 0..5 {
        broker
            .publish("p", common::json(&format!("\"{n}{}\"", "x".repeat(37))))
            .unwrap();
    }
    let session = common::session(&broker);
    let first = |data: Vec<serde_json::Value>| {
        data.iter()
            .map(|d| d.as_str().unwrap()[..1].to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        first(history_data(&session, "p", None)),
        ["3", "4"],
        "the newest that fit"
    );
    assert_eq!(
        first(history_data(&session, "p", Some(start.as_str()))),
        ["0", "1"],
        "paging forward"
    );
}
