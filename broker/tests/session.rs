//! The session as gateways use it: commands in, acks and errors out,
//! permissions on every operation, per-connection limits.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use herald_broker::{
    decode_command, Acknowledge, BrokerConfig, Encoding, Pattern, Permissions, ServerEvent, Session,
    SessionError, SubjectLimits,
};
use serde_json::json;

/// May publish and subscribe under `public.` only.
#[derive(Debug)]
struct OnlyPublic;

impl herald_broker::Access for OnlyPublic {
    fn may_publish(&self, subject: &str) -> bool {
        subject.starts_with("public.")
    }
    fn may_subscribe(&self, pattern: &Pattern) -> bool {
        pattern.as_str().starts_with("public.")
    }
}

fn command(text: &str) -> herald_broker::Command {
    decode_command(Encoding::Json, &Bytes::from(text.to_owned())).unwrap()
}

/// The `(id, code)` of an expected `err`, or `None` for an expected `ack`.
type ExpectedError = Option<(Option<u64>, &'static str)>;

fn error_code(event: &ServerEvent) -> Option<(Option<u64>, &str)> {
    match event {
        ServerEvent::Err { id, code, .. } => Some((*id, code.as_str())),
        _ => None,
    }
}

#[test]
fn each_command_is_answered() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    let mut session = common::session(&broker);
    let script: &[(&str, ExpectedError)] = &[
        (r#"{"op":"sub","id":1,"subject":"chat.*"}"#, None),
        (
            r#"{"op":"sub","id":2,"subject":"chat..x"}"#,
            Some((Some(2), "invalid_subject")),
        ),
        (
            r#"{"op":"sub","id":3,"subject":"$SYS.>"}"#,
            Some((Some(3), "reserved_subject")),
        ),
        (
            r#"{"op":"sub","id":4,"subject":"chat.*","since":"nope"}"#,
            Some((Some(4), "invalid_token")),
        ),
        (
            r#"{"op":"pub","id":5,"subject":"chat.*","data":1}"#,
            Some((Some(5), "invalid_subject")),
        ),
        (
            r#"{"op":"unsub","id":6,"subject":"never.subscribed"}"#,
            Some((Some(6), "not_subscribed")),
        ),
        (
            r#"{"op":"history","id":7,"subject":"a.>.b"}"#,
            Some((Some(7), "invalid_subject")),
        ),
    ];
    for (frame, expected_error) in script {
        session.handle(command(frame));
        let events = common::received_json(&session);
        assert_eq!(events.len(), 1, "{frame}: {events:?}");
        match expected_error {
            Some(expected) => assert_eq!(error_code(&events[0]), Some(*expected), "{frame}"),
            None => assert!(
                matches!(events[0], ServerEvent::Ack { .. }),
                "{frame}: {events:?}"
            ),
        }
    }

    session.handle(command(
        r#"{"op":"pub","id":8,"subject":"chat.a","data":{"k":1}}"#,
    ));
    let events = common::received_json(&session);
    // The publisher is also a subscriber: fan-out happens inside the
    // publish, so its own message is queued just before the ack.
    let ServerEvent::Msg { pos, data, .. } = &events[0] else {
        panic!("own message: {events:?}")
    };
    let ServerEvent::Ack {
        id: Some(8),
        pos: Some(ack_pos),
    } = &events[1]
    else {
        panic!("publish ack with a position: {events:?}")
    };
    assert_eq!((pos, data), (ack_pos, &json!({"k":1})));

    session.handle(command(r#"{"op":"unsub","id":9,"subject":"chat.*"}"#));
    session.handle(command(r#"{"op":"pub","subject":"chat.a","data":2}"#));
    assert_eq!(
        common::received_json(&session),
        vec![ServerEvent::Ack {
            id: Some(9),
            pos: None
        }],
        "no ack without an id, no message after unsub"
    );
}

#[test]
fn oversized_payloads_are_refused() {
    let config = BrokerConfig {
        max_payload_bytes: 16,
        ..BrokerConfig::default()
    };
    let (broker, _clock) = common::broker(config);
    let mut session = common::session(&broker);
    session.handle(command(
        r#"{"op":"pub","id":1,"subject":"a","data":"0123456789abcdef"}"#,
    ));
    let events = common::received_json(&session);
    assert_eq!(error_code(&events[0]), Some((Some(1), "payload_too_large")));
    assert_eq!(broker.metrics().published, 0);
}

#[test]
fn permissions_are_checked_on_every_operation() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    let mut reader = Session::new(
        &broker,
        Arc::new(Permissions {
            subscribe: vec![Pattern::parse(">", &SubjectLimits::default()).unwrap()],
            ..Permissions::default()
        }),
    );
    reader.handle(command(r#"{"op":"sub","id":1,"subject":"news.>"}"#));
    reader.handle(command(r#"{"op":"pub","id":2,"subject":"news.a","data":"x"}"#));
    let events = common::received_json(&reader);
    assert!(matches!(events[0], ServerEvent::Ack { id: Some(1), .. }));
    assert_eq!(error_code(&events[1]), Some((Some(2), "forbidden")));
    assert_eq!(broker.metrics().published, 0);

    let mut limited = Session::new(&broker, Arc::new(OnlyPublic));
    assert!(matches!(
        limited.subscribe(&[">"], None, Acknowledge::Never),
        Err(SessionError::Forbidden { .. })
    ));
    assert!(matches!(
        limited.history("private.x", None, None),
        Err(SessionError::Forbidden { .. })
    ));
    assert!(limited.subscribe(&["public.*"], None, Acknowledge::Never).is_ok());
    assert!(limited.publish("public.a", common::json("1")).is_ok());
    assert!(matches!(
        limited.publish("private.a", common::json("1")),
        Err(SessionError::Forbidden { .. })
    ));
}

#[test]
fn a_pipelined_publisher_s_subject_is_checked_once_and_each_message_still_is() {
    let config = BrokerConfig {
        max_payload_bytes: 16,
        max_client_publishes_per_second: 3,
        ..BrokerConfig::default()
    };
    let (broker, _clock) = common::broker(config);
    let mut publisher = Session::new(&broker, Arc::new(OnlyPublic));
    let mut reader = Session::new(&broker, Arc::new(OnlyPublic));
    reader.subscribe(&["public.>"], None, Acknowledge::Never).unwrap();
    let mut publish = |subject: &str, data: &str| {
        publisher
            .publish_on_route(subject, common::json(data), Default::default(), true)
            .map_err(|error| error.code())
    };
    assert_eq!(publish("private.a", "0").unwrap_err(), "forbidden");
    assert_eq!(publish("public..a", "0").unwrap_err(), "invalid_subject");
    publish("public.a", "0").unwrap();
    // The subject it kept to is no pass for another one.
    assert_eq!(publish("private.a", "1").unwrap_err(), "forbidden");
    // The payload limit and the publish budget hold for every message.
    assert_eq!(
        publish("public.a", "\"0123456789abcdef\"").unwrap_err(),
        "payload_too_large"
    );
    publish("public.a", "1").unwrap();
    assert_eq!(publish("public.a", "2").unwrap_err(), "rate_limited");
    // Out of budget, a new subject is refused before its channel is made.
    let subjects = broker.metrics().history_subjects;
    assert_eq!(publish("public.b", "3").unwrap_err(), "rate_limited");
    assert_eq!(broker.metrics().history_subjects, subjects);
    assert_eq!(
        common::data_of(&common::received_json(&reader)),
        [json!(0), json!(1)]
    );
}

#[test]
fn a_pub_after_new_access_is_checked_against_it() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    #[derive(Debug)]
    struct Only(&'static str);
    impl herald_broker::Access for Only {
        fn may_publish(&self, subject: &str) -> bool {
            subject.starts_with(self.0)
        }
        fn may_subscribe(&self, _pattern: &Pattern) -> bool {
            false
        }
    }
    let mut session = Session::new(&broker, Arc::new(Only("news.")));
    let publish = |session: &mut Session, id: u64| {
        session.handle(command(&format!(
            r#"{{"op":"pub","id":{id},"subject":"news.a","data":1}}"#
        )));
    };
    publish(&mut session, 1);
    session.replace_access(Arc::new(Only("news."))).unwrap();
    publish(&mut session, 2);
    session.replace_access(Arc::new(Only("chat."))).unwrap();
    publish(&mut session, 3);
    let events = common::received_json(&session);
    let outcomes: Vec<_> = events.iter().map(error_code).collect();
    assert_eq!(outcomes, [None, None, Some((Some(3), "forbidden"))]);
}

#[test]
fn subscriptions_per_connection_are_limited() {
    let config = BrokerConfig {
        max_subscriptions_per_connection: 2,
        ..BrokerConfig::default()
    };
    let (broker, _clock) = common::broker(config);
    let mut session = common::session(&broker);
    session.subscribe(&["a"], None, Acknowledge::Never).unwrap();
    session.subscribe(&["b.*"], None, Acknowledge::Never).unwrap();
    session.subscribe(&["a"], None, Acknowledge::Never).unwrap(); // already held: not a new one
    let error = session.subscribe(&["c"], None, Acknowledge::Never).unwrap_err();
    assert_eq!(error.code(), "too_many_subscriptions");
    session.unsubscribe("a").unwrap();
    session.subscribe(&["c"], None, Acknowledge::Never).unwrap();
}

#[test]
fn overlapping_patterns_deliver_once() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    let mut session = common::session(&broker);
    for pattern in ["chat.a", "chat.*", "chat.>", ">"] {
        session.subscribe(&[pattern], None, Acknowledge::Never).unwrap();
    }
    broker.publish("chat.a", common::json("1")).unwrap();
    assert_eq!(common::data_of(&common::received_json(&session)), vec![json!(1)]);
}

#[test]
fn dropping_a_session_removes_its_subscriptions() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    let mut session = common::session(&broker);
    session.subscribe(&["x.*"], None, Acknowledge::Never).unwrap();
    session.subscribe(&["x.y"], None, Acknowledge::Never).unwrap();
    assert_eq!(broker.metrics().subscriptions, 2);
    drop(session);
    assert_eq!(broker.metrics().subscriptions, 0);
}

#[test]
fn the_sub_ack_carries_a_position_that_resumes_what_was_missed() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    broker.publish("room.a", common::json("0")).unwrap();
    let mut first = common::session(&broker);
    first.handle(command(r#"{"op":"sub","id":1,"subject":"room.*"}"#));
    let events = common::received_json(&first);
    let [ServerEvent::Ack {
        id: Some(1),
        pos: Some(pos),
    }] = events.as_slice()
    else {
        panic!("one ack with a position: {events:?}")
    };
    // The client goes away having received nothing but the ack; messages are
    // published meanwhile; it resumes from the ack's position.
    drop(first);
    broker.publish("room.a", common::json("1")).unwrap();
    broker.publish("room.b", common::json("2")).unwrap();
    let mut second = common::session(&broker);
    let resumed_from = second
        .subscribe(&["room.*"], Some(pos), Acknowledge::command(Some(2)))
        .unwrap();
    assert_eq!(
        resumed_from.token().as_str(),
        pos,
        "a resume acks its own position"
    );
    let events = common::received_json(&second);
    assert_eq!(
        common::data_of(&events),
        vec![json!(1), json!(2)],
        "what was published while away, not what came before the first sub: {events:?}"
    );
}

#[test]
fn a_batch_is_published_whole_or_not_at_all() {
    let config = BrokerConfig {
        history: herald_broker::HistoryLimits {
            max_subjects: 3,
            ..Default::default()
        },
        ..BrokerConfig::default()
    };
    let (broker, _clock) = common::broker(config);
    let mut watcher = common::session(&broker);
    watcher.subscribe(&[">"], None, Acknowledge::Never).unwrap();
    broker.publish("known", common::json("0")).unwrap();
    let _ = common::received_json(&watcher);
    let session = common::session(&broker);
    // The fourth subject is one too many: the limit is met mid-batch, after
    // messages that on their own would have been accepted.
    let batch: Vec<(&str, _)> = ["known", "new.1", "new.2", "new.3"]
        .into_iter()
        .map(|subject| (subject, common::json("1")))
        .collect();
    let error = session.publish_batch(batch).unwrap_err();
    assert_eq!((error.index, error.error.code()), (3, "too_many_subjects"));
    assert!(
        common::received_json(&watcher).is_empty(),
        "nothing of the batch was published"
    );
    assert_eq!(broker.metrics().published, 1);

    let batch: Vec<(&str, _)> = ["known", "new.1", "known"]
        .into_iter()
        .map(|subject| (subject, common::json("2")))
        .collect();
    let positions = session.publish_batch(batch).unwrap();
    assert!(
        positions.windows(2).all(|w| w[0].sequence + 1 == w[1].sequence),
        "consecutive"
    );
    assert_eq!(common::data_of(&common::received_json(&watcher)).len(), 3);
}

#[test]
fn a_position_past_the_end_of_the_stream_is_refused_everywhere() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    let last = broker.publish("room.a", common::json("0")).unwrap();
    let ahead = herald_broker::Position::new(last.epoch, last.sequence + 1);
    let token = ahead.token();
    let mut session = common::session(&broker);
    let refused = session.subscribe(&["room.*"], Some(token.as_str()), Acknowledge::Never);
    assert!(
        matches!(
            &refused,
            Err(SessionError::Token(herald_broker::InvalidToken::Ahead { .. }))
        ),
        "{refused:?}"
    );
    assert_eq!(refused.unwrap_err().code(), "invalid_token");
    assert!(session.history("room.*", Some(token.as_str()), None).is_err());
    let access = herald_broker::AllowAll;
    assert!(herald_broker::Poll::new(&broker, &access, &["room.*"], Some(token.as_str())).is_err());
    // The last position itself, and one of another epoch, are fine.
    let other_epoch = herald_broker::Position::new(last.epoch.wrapping_add(1), 99).token();
    for fine in [last.token(), other_epoch] {
        session
            .subscribe(&["room.*"], Some(fine.as_str()), Acknowledge::Never)
            .unwrap();
    }
}
