//! Structured fuzzing of every parser in the core that sees network bytes:
//! command frames (JSON and MessagePack), payloads, resume tokens and
//! subjects. Inputs are arbitrary bytes and near-valid commands built from
//! the protocol's own fields; the properties are "never panics" and "what
//! is accepted is what every encoding can carry".
//!
//! `make test` runs each property over proptest's default 256 cases;
//! `make fuzz` runs them far longer (PROPTEST_CASES).

use bytes::Bytes;
use herald_broker::{decode_command, Command, Encoding, Pattern, Payload, Position, SubjectLimits};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Any JSON value a client might send, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,6}", inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// Subjects and patterns as clients write them, valid or not.
fn subject_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,5}(\\.[a-z0-9*>]{1,5}){0,4}",
        "[a-z.*>$ \\u{200B}]{0,20}",
        ".{0,40}",
    ]
}

/// A command object with the protocol's fields, each present or not, each
/// of a plausible or an arbitrary value.
fn command_value() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        Just("sub".to_owned()),
        Just("unsub".to_owned()),
        Just("pub".to_owned()),
        Just("ping".to_owned()),
        Just("history".to_owned()),
        ".{0,8}",
    ];
    let field = |strategy: BoxedStrategy<Value>| prop::option::of(strategy);
    (
        field(op.prop_map(Value::String).boxed()),
        field(prop_oneof![any::<u64>().prop_map(Value::from), json_value()].boxed()),
        field(prop_oneof![subject_text().prop_map(Value::String), json_value()].boxed()),
        field(json_value().boxed()),
        field(prop_oneof!["[A-Za-z0-9_-]{16}".prop_map(Value::String), json_value()].boxed()),
        field(prop_oneof![any::<u32>().prop_map(Value::from), json_value()].boxed()),
    )
        .prop_map(|(op, id, subject, data, since, limit)| {
            let mut object = Map::new();
            for (key, value) in [
                ("op", op),
                ("id", id),
                ("subject", subject),
                ("data", data),
                ("since", since),
                ("limit", limit),
            ] {
                if let Some(value) = value {
                    object.insert(key.to_owned(), value);
                }
            }
            Value::Object(object)
        })
}

/// Whatever a decoded command carries must reach every encoding intact.
fn check_accepted(command: &Command) {
    if let Command::Publish { payload, .. } = command {
        check_payload(payload);
    }
}

fn check_payload(payload: &Payload) {
    let json: Value = serde_json::from_slice(payload.body()).expect("an accepted payload is JSON");
    let mut msgpack = Vec::new();
    payload.write_msgpack(&mut msgpack);
    let back: Value = rmp_serde::from_slice(&msgpack).expect("its MessagePack form reads back");
    assert_eq!(back, json, "MessagePack subscribers get the same value");
}

proptest! {
    #[test]
    fn json_frames_of_any_bytes(frame in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(command) = decode_command(Encoding::Json, &Bytes::from(frame)) {
            check_accepted(&command);
        }
    }

    #[test]
    fn msgpack_frames_of_any_bytes(frame in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(command) = decode_command(Encoding::MsgPack, &Bytes::from(frame)) {
            check_accepted(&command);
        }
    }

    #[test]
    fn near_valid_commands_in_both_encodings(command in command_value()) {
        let json = Bytes::from(command.to_string());
        let msgpack = Bytes::from(rmp_serde::to_vec_named(&command).unwrap());
        let from_json = decode_command(Encoding::Json, &json);
        let from_msgpack = decode_command(Encoding::MsgPack, &msgpack);
        if let Ok(command) = &from_json {
            check_accepted(command);
        }
        if let Ok(command) = &from_msgpack {
            check_accepted(command);
        }
        // The two encodings of one command agree on accepting it.
        prop_assert_eq!(from_json.is_ok(), from_msgpack.is_ok(), "{}", command);
    }

    #[test]
    fn payloads_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(payload) = Payload::from_json(Bytes::from(bytes.clone())) {
            check_payload(&payload);
        }
        if let Ok(payload) = Payload::from_msgpack(&bytes) {
            check_payload(&payload);
        }
    }

    #[test]
    fn deep_payloads(depth in 0usize..300, object in any::<bool>()) {
        let (open, close) = if object { (r#"{"k":"#, "}") } else { ("[", "]") };
        let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let frame = format!(r#"{{"op":"pub","subject":"a","data":{text}}}"#);
        match Payload::from_json(Bytes::from(text)) {
            Ok(payload) => check_payload(&payload),
            Err(error) => prop_assert_eq!(error.code(), "invalid_payload"),
        }
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let frame = match encoding {
                Encoding::MsgPack => match serde_json::from_str::<Value>(&frame) {
                    Ok(value) => Bytes::from(rmp_serde::to_vec_named(&value).unwrap()),
                    Err(_) => continue, // deeper than serde_json reads a value
                },
                _ => Bytes::from(frame.clone()),
            };
            if let Ok(command) = decode_command(encoding, &frame) {
                check_accepted(&command);
            }
        }
    }

    #[test]
    fn msgpack_floats_are_kept_or_refused(value in any::<f64>(), single in any::<bool>()) {
        let mut frame = Vec::new();
        if single {
            rmp::encode::write_f32(&mut frame, value as f32).unwrap();
        } else {
            rmp::encode::write_f64(&mut frame, value).unwrap();
        }
        let sent = if single { f64::from(value as f32) } else { value };
        if let Ok(payload) = Payload::from_msgpack(&frame) {
            let kept: f64 = serde_json::from_slice(payload.body()).expect("a number, not null");
            prop_assert!(sent.is_finite());
            // A 32-bit float is written as the shortest text that reads back
            // as that 32-bit float.
            let same = if single { kept as f32 == value as f32 } else { kept == sent };
            prop_assert!(same, "{} became {}", sent, kept);
        } else {
            prop_assert!(!sent.is_finite(), "{} refused", sent);
        }
    }

    #[test]
    fn resume_tokens(token in prop_oneof!["[A-Za-z0-9_-]{16}", ".{0,40}"]) {
        if let Ok(position) = Position::from_token(&token) {
            let again = position.token();
            prop_assert_eq!(again.as_str(), token.as_str(), "a token reads back as itself");
        }
    }

    #[test]
    fn subjects_and_patterns(text in subject_text()) {
        let limits = SubjectLimits::default();
        if let Ok(pattern) = Pattern::parse(&text, &limits) {
            prop_assert!(pattern.tokens().all(|token| !token.is_empty()));
            if !pattern.has_wildcards() {
                prop_assert!(pattern.matches(&text), "an exact pattern matches itself");
            }
        }
        if herald_broker::validate_subject(&text, &limits).is_ok() {
            prop_assert!(Pattern::parse(&text, &limits).is_ok(), "a subject is a pattern");
        }
    }
}
