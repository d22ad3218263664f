//! What NATS clients need from the core, seen from any transport: payloads
//! that are not JSON, headers and reply subjects, one delivery per
//! subscription id, and queue groups.

mod common;

use std::collections::VecDeque;

use bytes::Bytes;
use common::{broker, json, received, session};
use herald_broker::{
    BrokerConfig, Encoding, Envelope, Headers, Outbound, Payload, ServerEvent, Session, Subject,
};
use serde_json::Value;

/// The (subscription id, payload bytes) of every message queued for `session`.
fn deliveries(session: &Session) -> Vec<(u32, Bytes)> {
    let mut batch = VecDeque::new();
    let _ = session.outbox().try_take_batch(&mut batch);
    batch
        .into_iter()
        .filter_map(|event| match event {
            Outbound::Message(message) => {
                Some((herald_broker::WHOLE_CONNECTION, message.payload().body().clone()))
            }
            Outbound::Delivery(delivery) => Some((delivery.0, delivery.1.payload().body().clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn bytes_that_are_not_json_reach_json_subscribers_as_base64_and_msgpack_ones_as_binary() {
    let (broker, _) = broker(BrokerConfig::default());
    let mut reader = session(&broker);
    reader
        .subscribe(&["raw.*"], None, herald_broker::Acknowledge::Never)
        .unwrap();
    let binary = Bytes::from_static(b"\x00\xffnot json\r\n");
    broker
        .publish("raw.a", Payload::from_bytes(binary.clone()))
        .unwrap();
    broker
        .publish(
            "raw.b",
            Payload::from_bytes(Bytes::from_static(br#" {"ok": true} "#)),
        )
        .unwrap();
    broker
        .publish("raw.c", Payload::from_bytes(Bytes::new()))
        .unwrap();

    let mut batch = VecDeque::new();
    reader.outbox().try_take_batch(&mut batch).unwrap().unwrap();
    let json_frames: Vec<Value> = batch
        .iter()
        .map(|event| serde_json::from_slice(&event.encode(Encoding::Json)).expect("always valid JSON"))
        .collect();
    assert_eq!(json_frames[0]["data_base64"], "AP9ub3QganNvbg0K");
    assert!(json_frames[0].get("data").is_none());
    assert_eq!(
        json_frames[1]["data"],
        serde_json::json!({"ok": true}),
        "JSON bytes go as they are"
    );
    assert_eq!(json_frames[2]["data_base64"], "", "an empty payload is not JSON");

    // MessagePack: the same bytes as a `bin` value.
    let msgpack = batch[0].encode(Encoding::MsgPack);
    let marker = msgpack
        .windows(5)
        .position(|window| window == b"\xa4data")
        .expect("a data field");
    assert_eq!(msgpack[marker + 5], 0xc4, "bin 8");
    assert_eq!(usize::from(msgpack[marker + 6]), binary.len());
    assert_eq!(&msgpack[marker + 7..], &binary[..]);
    // And the event stream carries the JSON form, line breaks and all.
    let sse = String::from_utf8(batch[0].encode(Encoding::EventStream).to_vec()).unwrap();
    assert!(sse.contains(r#""data_base64":"AP9ub3QganNvbg0K""#), "{sse}");
}

#[test]
fn headers_and_reply_subjects_reach_every_encoding() {
    let (broker, _) = broker(BrokerConfig::default());
    let mut reader = session(&broker);
    reader
        .subscribe(&["svc.>"], None, herald_broker::Acknowledge::Never)
        .unwrap();
    let headers = Headers::parse(Bytes::from_static(
        b"NATS/1.0\r\nTrace: t1\r\nTag: a\r\nTag: b\r\n\r\n",
    ))
    .unwrap();
    let reply = Subject::parse("_INBOX.me.1", &Default::default()).unwrap();
    broker
        .publish_with(
            "svc.time",
            json("{}"),
            Envelope {
                headers: Some(headers),
                reply: Some(reply),
            },
        )
        .unwrap();
    let mut batch = VecDeque::new();
    reader.outbox().try_take_batch(&mut batch).unwrap().unwrap();
    for encoding in [Encoding::Json, Encoding::MsgPack, Encoding::EventStream] {
        let event = herald_broker::protocol::decode_event(encoding, &batch[0].encode(encoding)).unwrap();
        let ServerEvent::Msg { reply, headers, .. } = event else {
            panic!("a message: {event:?}");
        };
        assert_eq!(reply.as_deref(), Some("_INBOX.me.1"), "{encoding:?}");
        let headers = headers.expect("headers");
        assert_eq!(headers["Trace"], ["t1"]);
        assert_eq!(
            headers["Tag"],
            ["a", "b"],
            "a repeated header keeps every value, in order"
        );
    }
}

#[test]
fn malformed_header_blocks_are_refused() {
    for block in [
        &b"HTTP/1.0\r\n\r\n"[..],
        b"NATS/1.0\r\nA: b\r\n",
        b"NATS/1.0\r\nno colon\r\n\r\n",
        b"NATS/1.0\r\n: empty name\r\n\r\n",
        b"NATS/1.0\r\nA: \xff\r\n\r\n",
    ] {
        assert!(
            Headers::parse(Bytes::copy_from_slice(block)).is_err(),
            "{block:?}"
        );
    }
    let status = Headers::parse(Bytes::from_static(b"NATS/1.0 503\r\n\r\n")).unwrap();
    assert_eq!(status.status(), Some("503"));
}

#[test]
fn each_subscription_id_gets_its_own_delivery_and_a_whole_connection_one() {
    let (broker, _) = broker(BrokerConfig::default());
    let mut nats = session(&broker);
    nats.subscribe_member(1, "orders.*", None).unwrap();
    nats.subscribe_member(2, "orders.>", None).unwrap();
    nats.subscribe_member(3, "other", None).unwrap();
    let mut websocket = session(&broker);
    websocket
        .subscribe(&["orders.*", "orders.>"], None, herald_broker::Acknowledge::Never)
        .unwrap();

    broker.publish("orders.new", json("1")).unwrap();
    let mut ids: Vec<u32> = deliveries(&nats).into_iter().map(|(id, _)| id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2], "once per matching sid");
    assert_eq!(deliveries(&websocket).len(), 1, "once per WebSocket connection");

    assert!(nats.unsubscribe_member(2));
    assert!(!nats.unsubscribe_member(2), "already gone");
    broker.publish("orders.new", json("2")).unwrap();
    assert_eq!(deliveries(&nats).len(), 1);
    assert_eq!(
        nats.subscribe_member(1, "again", None).unwrap_err().code(),
        "duplicate_subscription"
    );
}

#[test]
fn a_queue_group_gives_each_message_to_exactly_one_member() {
    let (broker, _) = broker(BrokerConfig::default());
    let mut members: Vec<Session> = (0..3).map(|_| session(&broker)).collect();
    for (index, member) in members.iter_mut().enumerate() {
        // NATS members under their sid, and one connection-wide member.
        let id = if index == 2 {
            herald_broker::WHOLE_CONNECTION
        } else {
            7
        };
        member.subscribe_member(id, "jobs.*", Some("workers")).unwrap();
    }
    let mut other_group = session(&broker);
    other_group
        .subscribe_member(1, "jobs.>", Some("auditors"))
        .unwrap();

    for n in 0..30 {
        broker.publish("jobs.resize", json(&n.to_string())).unwrap();
    }
    let got: Vec<Vec<(u32, Bytes)>> = members.iter().map(deliveries).collect();
    let mut all: Vec<i64> = got
        .iter()
        .flatten()
        .map(|(_, body)| serde_json::from_slice(body).unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..30).collect::<Vec<_>>(),
        "every message once across the group"
    );
    assert!(
        got.iter().all(|one| one.len() == 10),
        "round-robin: {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(
        deliveries(&other_group).len(),
        30,
        "another group gets its own copy"
    );

    // A member that leaves gets nothing more; the group carries on.
    drop(members.remove(0));
    for n in 0..10 {
        broker.publish("jobs.resize", json(&n.to_string())).unwrap();
    }
    assert_eq!(members.iter().map(|m| deliveries(m).len()).sum::<usize>(), 10);
}

#[test]
fn queue_subscriptions_cannot_resume_and_names_are_checked() {
    let (broker, _) = broker(BrokerConfig::default());
    let mut member = session(&broker);
    assert_eq!(
        member
            .subscribe_member(1, "jobs.*", Some("two words"))
            .unwrap_err()
            .code(),
        "invalid_queue"
    );
    member.handle(herald_broker::Command::Subscribe {
        id: Some(1),
        subject: "jobs.*".into(),
        since: Some(broker.last_position().token().to_string()),
        presence: false,
        queue: Some("workers".into()),
        latest: false,
    });
    let events = received(&member, Encoding::Json);
    assert!(
        matches!(&events[..], [ServerEvent::Err { code, .. }] if code == "invalid_queue"),
        "{events:?}"
    );
}

#[test]
fn reply_inboxes_are_delivered_but_never_recorded() {
    let (broker, _) = broker(BrokerConfig::default());
    let mut requester = session(&broker);
    requester.subscribe_member(1, "_INBOX.abc.*", None).unwrap();
    broker.publish("_INBOX.abc.1", json("\"answer\"")).unwrap();
    assert_eq!(deliveries(&requester).len(), 1);
    assert_eq!(broker.metrics().history_subjects, 0);
}
