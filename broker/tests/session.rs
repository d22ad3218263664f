//! The session as gateways use it: commands in, acks and errors out,
//! permissions on every operation, per-connection limits.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use herald_broker::{
    decode_command, BrokerConfig, Encoding, Pattern, ServerEvent, SessionError, SubscribeOnly,
};
use serde_json::json;

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
    let mut reader = broker.session(Arc::new(SubscribeOnly));
    reader.handle(command(r#"{"op":"sub","id":1,"subject":"news.>"}"#));
    reader.handle(command(r#"{"op":"pub","id":2,"subject":"news.a","data":"x"}"#));
    let events = common::received_json(&reader);
    assert!(matches!(events[0], ServerEvent::Ack { id: Some(1), .. }));
    assert_eq!(error_code(&events[1]), Some((Some(2), "forbidden")));
    assert_eq!(broker.metrics().published, 0);

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
    let mut limited = broker.session(Arc::new(OnlyPublic));
    assert!(matches!(
        limited.subscribe(None, ">", None),
        Err(SessionError::Forbidden { .. })
    ));
    assert!(matches!(
        limited.history("private.x", None, None),
        Err(SessionError::Forbidden { .. })
    ));
    assert!(limited.subscribe(None, "public.*", None).is_ok());
    assert!(limited.publish("public.a", common::json("1")).is_ok());
    assert!(matches!(
        limited.publish("private.a", common::json("1")),
        Err(SessionError::Forbidden { .. })
    ));
}

#[test]
fn subscriptions_per_connection_are_limited() {
    let config = BrokerConfig {
        max_subscriptions_per_session: 2,
        ..BrokerConfig::default()
    };
    let (broker, _clock) = common::broker(config);
    let mut session = common::session(&broker);
    session.subscribe(None, "a", None).unwrap();
    session.subscribe(None, "b.*", None).unwrap();
    session.subscribe(None, "a", None).unwrap(); // already held: not a new one
    let error = session.subscribe(None, "c", None).unwrap_err();
    assert_eq!(error.code(), "too_many_subscriptions");
    session.unsubscribe("a").unwrap();
    session.subscribe(None, "c", None).unwrap();
}

#[test]
fn overlapping_patterns_deliver_once() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    let mut session = common::session(&broker);
    for pattern in ["chat.a", "chat.*", "chat.>", ">"] {
        session.subscribe(None, pattern, None).unwrap();
    }
    broker.publish("chat.a", common::json("1")).unwrap();
    assert_eq!(common::data_of(&common::received_json(&session)), vec![json!(1)]);
}

#[test]
fn dropping_a_session_removes_its_subscriptions() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    let mut session = common::session(&broker);
    session.subscribe(None, "x.*", None).unwrap();
    session.subscribe(None, "x.y", None).unwrap();
    assert_eq!(broker.metrics().subscriptions, 2);
    drop(session);
    assert_eq!(broker.metrics().subscriptions, 0);
}
