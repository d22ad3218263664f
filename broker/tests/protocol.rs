//! The wire protocol: commands decode to the documented structures in both
//! encodings, bad frames get precise codes, and JSON and MessagePack clients
//! read the same events.

mod common;

use bytes::Bytes;
use herald_broker::protocol::{decode_event, DecodeErrorKind};
use herald_broker::{
    decode_command, msgpack_value_len, Acknowledge, Command, Encoding, Headers, Payload, Position,
    ServerEvent,
};
use serde_json::json;

fn decode_json(text: &str) -> Result<Command, herald_broker::DecodeError> {
    decode_command(Encoding::Json, &Bytes::from(text.to_owned()))
}

/// The same command as MessagePack, built from its JSON form.
fn decode_msgpack(value: serde_json::Value) -> Result<Command, herald_broker::DecodeError> {
    decode_command(
        Encoding::MsgPack,
        &Bytes::from(rmp_serde::to_vec_named(&value).unwrap()),
    )
}

#[test]
fn documented_commands_decode_in_both_encodings() {
    let cases = [
        (
            json!({"op":"sub","id":1,"subject":"chat.*","since":"AAAABwAAAAAAAAAB"}),
            Command::Subscribe {
                id: Some(1),
                subject: "chat.*".into(),
                since: Some("AAAABwAAAAAAAAAB".into()),
                presence: false,
                queue: None,
                latest: false,
            },
        ),
        (
            json!({"op":"sub","subject":"chat.a","presence":true}),
            Command::Subscribe {
                id: None,
                subject: "chat.a".into(),
                since: None,
                presence: true,
                queue: None,
                latest: false,
            },
        ),
        (
            json!({"op":"sub","subject":"cursor.*","latest":true}),
            Command::Subscribe {
                id: None,
                subject: "cursor.*".into(),
                since: None,
                presence: false,
                queue: None,
                latest: true,
            },
        ),
        (
            json!({"op":"sub","subject":"jobs.*","queue":"workers"}),
            Command::Subscribe {
                id: None,
                subject: "jobs.*".into(),
                since: None,
                presence: false,
                queue: Some("workers".into()),
                latest: false,
            },
        ),
        (
            json!({"op":"unsub","id":2,"subject":"chat.*"}),
            Command::Unsubscribe {
                id: Some(2),
                subject: "chat.*".into(),
                queue: None,
            },
        ),
        (
            json!({"op":"pub","id":3,"subject":"chat.a","data":{"text":"hi","n":[1,2.5,null,true]}}),
            Command::Publish {
                id: Some(3),
                subject: "chat.a".into(),
                payload: common::json(r#"{"n":[1,2.5,null,true],"text":"hi"}"#),
                echo: true,
                reply: None,
                headers: None,
            },
        ),
        (
            json!({"op":"pub","subject":"svc.time","data":1,"reply":"_INBOX.me.1","headers":{"Trace":"t1","Tag":["a","b"]}}),
            Command::Publish {
                id: None,
                subject: "svc.time".into(),
                payload: common::json("1"),
                echo: true,
                reply: Some("_INBOX.me.1".into()),
                headers: Some(Headers::from_pairs([("Tag", "a"), ("Tag", "b"), ("Trace", "t1")]).unwrap()),
            },
        ),
        (
            json!({"op":"pub","subject":"chat.a","data":null,"echo":false}),
            Command::Publish {
                id: None,
                subject: "chat.a".into(),
                payload: common::json("null"),
                echo: false,
                reply: None,
                headers: None,
            },
        ),
        (json!({"op":"ping"}), Command::Ping { id: None }),
        (
            json!({"op":"history","id":9,"subject":"chat.>","limit":10,"future_field":true}),
            Command::History {
                id: Some(9),
                subject: "chat.>".into(),
                since: None,
                limit: Some(10),
            },
        ),
        (
            json!({"op":"presence","id":3,"subject":"chat.room1"}),
            Command::Presence {
                id: Some(3),
                subject: "chat.room1".into(),
            },
        ),
        (
            json!({"op":"auth","token":"a.b.c"}),
            Command::Auth {
                id: None,
                token: "a.b.c".into(),
            },
        ),
        (
            json!({"op":"refresh","id":4,"token":"d.e.f"}),
            Command::Refresh {
                id: Some(4),
                token: "d.e.f".into(),
            },
        ),
    ];
    for (frame, expected) in cases {
        assert_eq!(decode_json(&frame.to_string()).unwrap(), expected, "json {frame}");
        assert_eq!(
            decode_msgpack(frame.clone()).unwrap(),
            expected,
            "msgpack {frame}"
        );
    }
}

#[test]
fn json_payload_shares_the_frame() {
    let frame = Bytes::from_static(br#"{"op":"pub","subject":"a","data":{"k":"v"}}"#);
    let Command::Publish { payload, .. } = decode_command(Encoding::Json, &frame).unwrap() else {
        panic!("a publish")
    };
    let frame_range = frame.as_ptr_range();
    assert!(
        frame_range.contains(&payload.body().as_ptr()),
        "payload is a slice of the frame, not a copy"
    );
    assert_eq!(&payload.body()[..], br#"{"k":"v"}"#);
    assert_eq!(
        payload.retained_size(),
        frame.len(),
        "and counts the frame it keeps alive"
    );
}

#[test]
fn a_small_payload_does_not_keep_a_large_frame_alive() {
    let mut text = br#"{"op":"pub","subject":"a","data":1"#.to_vec();
    text.extend(std::iter::repeat_n(b' ', 1 << 20));
    text.push(b'}');
    let frame = Bytes::from(text);
    let Command::Publish { payload, .. } = decode_command(Encoding::Json, &frame).unwrap() else {
        panic!("a publish")
    };
    assert!(
        !frame.as_ptr_range().contains(&payload.body().as_ptr()),
        "copied out"
    );
    assert_eq!(payload.retained_size(), 1);
}

#[test]
fn payloads_every_encoding_cannot_carry_are_refused_not_changed() {
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let deep = |depth: usize| format!(r#"{{"op":"pub","subject":"a","data":{}}}"#, nested(depth));
    let decode = |text: String| decode_command(Encoding::Json, &Bytes::from(text));
    let max = herald_broker::MAX_PAYLOAD_DEPTH;
    assert!(decode(deep(max)).is_ok());
    assert_eq!(decode(deep(max + 1)).unwrap_err().code(), "invalid_payload");
    // Brackets inside strings are text, not nesting.
    let in_string = format!(r#"{{"op":"pub","subject":"a","data":"{}"}}"#, "[".repeat(500));
    assert!(decode(in_string).is_ok());
    assert!(Payload::from_json(Bytes::from(nested(max + 1))).is_err());
    // The deepest accepted payload reaches MessagePack subscribers intact.
    let Command::Publish { payload, .. } = decode(deep(max)).unwrap() else {
        panic!("a publish")
    };
    let mut msgpack = Vec::new();
    payload.write_msgpack(&mut msgpack);
    let back: serde_json::Value = rmp_serde::from_slice(&msgpack).unwrap();
    assert_eq!(back.to_string(), nested(max));

    // MessagePack floats JSON cannot carry are refused, not turned into null.
    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut frame = Vec::new();
        rmp::encode::write_map_len(&mut frame, 3).unwrap();
        for (key, text) in [("op", "pub"), ("subject", "a")] {
            rmp::encode::write_str(&mut frame, key).unwrap();
            rmp::encode::write_str(&mut frame, text).unwrap();
        }
        rmp::encode::write_str(&mut frame, "data").unwrap();
        rmp::encode::write_f64(&mut frame, value).unwrap();
        let error = decode_command(Encoding::MsgPack, &Bytes::from(frame)).unwrap_err();
        assert_eq!(error.code(), "malformed_frame", "{value}");
    }
    let mut finite = Vec::new();
    rmp::encode::write_f32(&mut finite, 1.5).unwrap();
    assert_eq!(&Payload::from_msgpack(&finite).unwrap().body()[..], b"1.5");
    let mut deep_msgpack = vec![0x91; max + 2];
    deep_msgpack.push(0xc0);
    assert!(Payload::from_msgpack(&deep_msgpack).is_err());
}

/// What a client splitting a `herald.msgpack.batch` frame relies on: the
/// length of the value at the front, whatever follows it, nested shallow
/// or deep; a cut value or one nested too deep is an error, not a guess.
#[test]
fn msgpack_value_len_finds_where_each_value_ends() {
    let event = rmp_serde::to_vec_named(&json!({
        "op": "msg",
        "subject": "chat.room42",
        "pos": "7-12345",
        "data": {"text": "héllo", "n": [1, -2, 3.5, null, true, {"deep": [[["x"]]]}]},
    }))
    .unwrap();
    let pong = rmp_serde::to_vec_named(&json!({"op": "pong"})).unwrap();
    let mut frame = event.clone();
    frame.extend_from_slice(&pong);
    assert_eq!(msgpack_value_len(&frame).unwrap(), event.len());
    assert_eq!(msgpack_value_len(&frame[event.len()..]).unwrap(), pong.len());
    // A payload is one value: the same bytes as a payload are refused.
    assert!(Payload::from_msgpack(&event).is_ok());
    assert!(Payload::from_msgpack(&frame).is_err(), "trailing bytes");

    // Deeper than the walker keeps inline, and as deep as a frame may be.
    let max = herald_broker::MAX_PAYLOAD_DEPTH;
    let mut deep = vec![0x91; max + 1];
    deep.push(0x2a);
    assert_eq!(msgpack_value_len(&deep).unwrap(), deep.len());
    let mut too_deep = vec![0x91; max + 2];
    too_deep.push(0x2a);
    assert!(msgpack_value_len(&too_deep).is_err());

    for cut in [1, event.len() / 2, event.len() - 1] {
        assert!(msgpack_value_len(&event[..cut]).is_err(), "cut at {cut}");
    }
    assert!(msgpack_value_len(&[]).is_err());
}

#[test]
fn bad_frames_get_precise_codes() {
    let cases: &[(&str, Option<u64>, &str)] = &[
        ("not json", None, "malformed_frame"),
        ("[1,2]", None, "malformed_frame"),
        (
            r#"{"op":"sub","id":"one","subject":"a"}"#,
            None,
            "malformed_frame",
        ),
        (r#"{"op":"sub","id":1,"subject":"a""#, None, "malformed_frame"),
        (r#"{"id":4}"#, Some(4), "missing_field"),
        (r#"{"op":"dance","id":5}"#, Some(5), "unknown_op"),
        (r#"{"op":"sub","id":6}"#, Some(6), "missing_field"),
        (r#"{"op":"pub","id":7,"subject":"a"}"#, Some(7), "missing_field"),
        (
            r#"{"op":"pub","id":8,"subject":"a","data":{"broken":}}"#,
            None,
            "malformed_frame",
        ),
    ];
    for (frame, id, code) in cases {
        let error = decode_json(frame).unwrap_err();
        assert_eq!((error.id, error.code()), (*id, *code), "{frame}: {error}");
        assert!(!error.to_string().is_empty());
    }
    let error = decode_command(Encoding::MsgPack, &Bytes::from_static(&[0xc1])).unwrap_err();
    assert_eq!(error.code(), "malformed_frame");
    let error = decode_json(r#"{"op":"dance"}"#).unwrap_err();
    assert_eq!(error.kind, DecodeErrorKind::UnknownOp { op: "dance".into() });
}

#[test]
fn payload_validation() {
    assert!(Payload::from_json(Bytes::from_static(b"{\"a\":1}")).is_ok());
    for bad in ["", "{", "1 2", "{\"a\":1}x", "NaN"] {
        let error = Payload::from_json(Bytes::from(bad.to_owned())).unwrap_err();
        assert_eq!(error.code(), "invalid_payload", "{bad:?}");
    }
    // A MessagePack map keyed by nil has no JSON form.
    let mut map = Vec::new();
    rmp::encode::write_map_len(&mut map, 1).unwrap();
    rmp::encode::write_nil(&mut map).unwrap();
    rmp::encode::write_uint(&mut map, 2).unwrap();
    assert_eq!(Payload::from_msgpack(&map).unwrap_err().code(), "invalid_payload");
}

#[test]
fn json_and_msgpack_clients_read_the_same_events() {
    let (broker, _clock) = common::broker(Default::default());
    let mut json_client = common::session(&broker);
    let mut msgpack_client = common::session(&broker);
    for session in [&mut json_client, &mut msgpack_client] {
        session.handle(decode_json(r#"{"op":"sub","id":1,"subject":"chat.>"}"#).unwrap());
        session.handle(decode_json(r#"{"op":"sub","id":2,"subject":"bad..subject"}"#).unwrap());
        session.handle(decode_json(r#"{"op":"ping","id":3}"#).unwrap());
    }
    let payload = r#"{"text":"héllo \"quoted\"","list":[1,-2,3.5,true,null],"nested":{"deep":{}}}"#;
    broker.publish("chat.room.1", common::json(payload)).unwrap();
    json_client.handle(decode_json(r#"{"op":"history","id":4,"subject":"chat.*.1"}"#).unwrap());
    msgpack_client.handle(decode_json(r#"{"op":"history","id":4,"subject":"chat.*.1"}"#).unwrap());

    let from_json = common::received(&json_client, Encoding::Json);
    let from_msgpack = common::received(&msgpack_client, Encoding::MsgPack);
    assert_eq!(from_json, from_msgpack);
    assert_eq!(from_json.len(), 5, "{from_json:?}");
    assert_eq!(
        from_json[0],
        ServerEvent::Ack {
            id: Some(1),
            pos: Some(Position::new(common::EPOCH, 0).token().to_string()),
        },
        "a sub is acknowledged with the position to resume from: here, before anything"
    );
    assert!(matches!(&from_json[1], ServerEvent::Err { id: Some(2), code, .. } if code == "invalid_subject"));
    assert_eq!(from_json[2], ServerEvent::Pong { id: Some(3) });
    let ServerEvent::Msg { subject, data, .. } = &from_json[3] else {
        panic!("a message: {:?}", from_json[3])
    };
    assert_eq!(subject, "chat.room.1");
    assert_eq!(data, &serde_json::from_str::<serde_json::Value>(payload).unwrap());
    let ServerEvent::History {
        id, messages, gap, ..
    } = &from_json[4]
    else {
        panic!("a history page: {:?}", from_json[4])
    };
    assert_eq!((*id, gap), (Some(4), &None));
    assert_eq!(messages, &vec![from_json[3].clone()]);
}

#[test]
fn msgpack_frames_are_maps_with_the_json_field_names() {
    let (broker, _clock) = common::broker(Default::default());
    let mut session = common::session(&broker);
    session.subscribe(&["a"], None, Acknowledge::Never).unwrap();
    let position = broker.publish("a", common::json(r#"{"x":[1,"two"]}"#)).unwrap();
    let batch = common::take_raw(&session);
    let frame = batch[0].encode(Encoding::MsgPack);
    let value: serde_json::Value = rmp_serde::from_slice(&frame).unwrap();
    assert_eq!(
        value,
        json!({"op":"msg","subject":"a","pos":position.token().to_string(),"ts":common::START_MILLIS,"data":{"x":[1,"two"]}})
    );
    // Encoded once: a second request returns the same shared bytes.
    assert_eq!(batch[0].encode(Encoding::MsgPack).as_ptr(), frame.as_ptr());
    assert!(decode_event(Encoding::MsgPack, &frame).is_ok());
}

#[test]
fn event_stream_frames_carry_ids_and_survive_line_breaks_in_payloads() {
    let (broker, clock) = common::broker(Default::default());
    let mut session = common::session(&broker);
    let subscribed = session
        .subscribe(&["s.*"], None, Acknowledge::Always { id: None })
        .unwrap();
    clock.advance(std::time::Duration::from_millis(1500));
    // Pretty-printed JSON, with both kinds of line break, inside a string too.
    let payload = "{\r\n  \"text\": \"two\\nlines\",\n  \"n\": [1,\r 2]\n}";
    let position = broker.publish("s.a", common::json(payload)).unwrap();
    let batch = common::take_raw(&session);
    let ack = batch[0].encode(Encoding::EventStream);
    assert_eq!(
        std::str::from_utf8(&ack).unwrap(),
        format!(
            "id: {0}\nevent: ack\ndata: {{\"op\":\"ack\",\"pos\":\"{0}\"}}\n\n",
            subscribed.token()
        )
    );
    let frame = batch[1].encode(Encoding::EventStream);
    let text = std::str::from_utf8(&frame).unwrap();
    assert!(
        text.starts_with(&format!("id: {}\nevent: msg\ndata: {{", position.token())),
        "{text}"
    );
    assert!(
        text.ends_with("\n\n") && !text[..text.len() - 2].contains("\n\n"),
        "{text:?}"
    );
    assert!(
        text.trim_end()
            .lines()
            .skip(2)
            .all(|line| line.starts_with("data: ")),
        "every payload line is a data line: {text:?}"
    );
    assert!(!text.contains('\r'));
    let event = decode_event(Encoding::EventStream, &frame).unwrap();
    assert_eq!(
        event,
        decode_event(Encoding::Json, &batch[1].encode(Encoding::Json)).unwrap()
    );
    let ServerEvent::Msg { ts, data, .. } = event else {
        panic!("a message: {event:?}")
    };
    assert_eq!(ts, common::START_MILLIS + 1500);
    assert_eq!(data, json!({"text": "two\nlines", "n": [1, 2]}));
    // Shared by every recipient, like the other encodings.
    assert_eq!(batch[1].encode(Encoding::EventStream).as_ptr(), frame.as_ptr());
}

/// Every JSON event is one line, whatever line breaks its payload was
/// published with, so that events can be packed into one WebSocket frame
/// as JSON lines; the value is unchanged.
#[test]
fn json_events_are_one_line_each() {
    let (broker, _clock) = common::broker(Default::default());
    let mut session = common::session(&broker);
    session.subscribe(&["s.*"], None, Acknowledge::Never).unwrap();
    let payload = "{\r\n  \"text\": \"two\\nlines\",\n  \"n\": [1,\r 2]\n}";
    broker.publish("s.a", common::json(payload)).unwrap();
    let batch = common::take_raw(&session);
    let frame = batch[0].encode(Encoding::Json);
    assert!(
        !frame.iter().any(|byte| matches!(byte, b'\n' | b'\r')),
        "{:?}",
        String::from_utf8_lossy(&frame)
    );
    let ServerEvent::Msg { data, .. } = decode_event(Encoding::Json, &frame).unwrap() else {
        panic!("a message")
    };
    assert_eq!(data, json!({"text": "two\nlines", "n": [1, 2]}));
    // A history answer carries the same one-line frames.
    session.handle(decode_json(r#"{"op":"history","id":4,"subject":"s.>"}"#).unwrap());
    let batch = common::take_raw(&session);
    let frame = batch[0].encode(Encoding::Json);
    assert!(frame.starts_with(br#"{"op":"history""#));
    assert!(!frame.contains(&b'\n'), "{:?}", String::from_utf8_lossy(&frame));
}

/// A transport's own frame (the WebSocket gateway's complete frame) is
/// made by the first recipient and borrowed by every other, per encoding.
#[test]
fn a_transport_frame_is_made_once_per_message_and_encoding() {
    let (broker, _clock) = common::broker(Default::default());
    let mut sessions: Vec<_> = (0..3).map(|_| common::session(&broker)).collect();
    for session in &mut sessions {
        session.handle(decode_json(r#"{"op":"sub","subject":"t.s"}"#).unwrap());
    }
    broker.publish("t.s", common::json("[1]")).unwrap();
    let made = std::cell::Cell::new(0);
    let mut frames = Vec::new();
    for session in &sessions {
        let mut batch = std::collections::VecDeque::new();
        session.outbox().try_take_batch(&mut batch).unwrap().unwrap();
        let message = batch
            .iter()
            .find_map(|event| event.message())
            .expect("the message");
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let frame = message.transport_frame(encoding, |message| {
                made.set(made.get() + 1);
                format!("{encoding:?} frame of {}", message.position().token().as_str()).into()
            });
            frames.push(frame.clone());
        }
    }
    assert_eq!(made.get(), 2, "one frame per encoding, for three recipients");
    assert!(
        frames.iter().step_by(2).all(|frame| *frame == frames[0]),
        "{frames:?}"
    );
    assert!(
        frames.iter().skip(1).step_by(2).all(|frame| *frame == frames[1]),
        "{frames:?}"
    );
    assert_ne!(frames[0], frames[1]);
}
