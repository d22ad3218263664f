//! Structured fuzzing of the HTTP API's publish body parser: arbitrary
//! bytes and near-valid bodies. It never panics, and every payload it
//! accepts is JSON that MessagePack subscribers receive unchanged.
//! `make fuzz` runs it far longer (PROPTEST_CASES).

use bytes::Bytes;
use herald_http::{parse_publish, Publish};
use proptest::prelude::*;
use serde_json::{json, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((".{0,5}", inner), 0..5)
                .prop_map(|e| Value::Object(e.into_iter().collect())),
        ]
    })
}

/// `{"subject","data"}`, `{"messages":[..]}`, or a mix of their fields.
fn body_value() -> impl Strategy<Value = Value> {
    let message = (prop::option::of(".{0,12}"), prop::option::of(json_value()))
        .prop_map(|(subject, data)| {
            let mut object = serde_json::Map::new();
            if let Some(subject) = subject {
                object.insert("subject".into(), subject.into());
            }
            if let Some(data) = data {
                object.insert("data".into(), data);
            }
            Value::Object(object)
        })
        .boxed();
    prop_oneof![
        message.clone(),
        prop::collection::vec(message.clone(), 0..8).prop_map(|messages| json!({ "messages": messages })),
        (message, json_value()).prop_map(|(mut one, messages)| {
            one["messages"] = messages;
            one
        }),
        json_value(),
    ]
}

fn check(body: Bytes) {
    let Ok(publish) = parse_publish(&body, 4) else {
        return;
    };
    let payloads = match publish {
        Publish::One(_, payload) => vec![payload],
        Publish::Batch(batch) => {
            assert!(batch.len() <= 4, "the batch limit holds");
            batch.into_iter().map(|(_, payload)| payload).collect()
        }
    };
    for payload in payloads {
        let json: Value = serde_json::from_slice(payload.body()).expect("an accepted payload is JSON");
        let mut msgpack = Vec::new();
        payload.write_msgpack(&mut msgpack);
        assert_eq!(rmp_serde::from_slice::<Value>(&msgpack).unwrap(), json);
    }
}

proptest! {
    #[test]
    fn bodies_of_any_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check(Bytes::from(body));
    }

    #[test]
    fn near_valid_bodies(body in body_value(), padding in 0usize..600) {
        // Whitespace around the value: the payload must not keep it alive.
        let text = format!("{}{body}{}", " ".repeat(padding / 2), " ".repeat(padding / 2));
        check(Bytes::from(text));
    }
}
