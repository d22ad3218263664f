//! The WebSocket gateway against the real server: fan-out, order, resume,
//! slow subscribers, encodings, bad input, limits and shutdown.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use herald_broker::protocol::{Encoding, ServerEvent};
use herald_broker::Position;
use serde_json::{json, Value};
use support::{Client, Server};
use tokio_tungstenite::tungstenite::Message;

fn sequence_of(pos: &str) -> u64 {
    Position::from_token(pos).expect("server tokens decode").sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_fan_out_to_a_thousand_subscribers_in_order_without_duplicates() {
    support::raise_open_file_limit();
    let server = Server::start(|config| {
        herald::open_for_development(config);
        // Every subscriber comes from 127.0.0.1.
        config.server.max_connections_per_ip = 2000;
    })
    .await;
    const SUBSCRIBERS: usize = 1000;
    const PER_SUBJECT: u64 = 10;
    const SUBJECTS: u64 = 3;
    let mut clients = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let mut client = Client::connect(&server).await;
        client.subscribe("room.*", None).await;
        clients.push(client);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut per_subject: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
                for _ in 0..PER_SUBJECT * SUBJECTS {
                    let ServerEvent::Msg {
                        subject, pos, data, ..
                    } = client.next_event().await
                    else {
                        panic!("only messages expected")
                    };
                    per_subject
                        .entry(subject)
                        .or_default()
                        .push((sequence_of(&pos), data["n"].as_u64().unwrap()));
                }
                per_subject
            })
        })
        .collect();
    let mut publisher = Client::connect(&server).await;
    for n in 0..PER_SUBJECT {
        for subject in 0..SUBJECTS {
            publisher
                .send(json!({"op":"pub","subject": format!("room.{subject}"), "data": {"n": n}}))
                .await;
        }
    }
    for reader in readers {
        let per_subject = reader.await.unwrap();
        assert_eq!(per_subject.len(), SUBJECTS as usize);
        for (subject, received) in per_subject {
            let numbers: Vec<u64> = received.iter().map(|r| r.1).collect();
            assert_eq!(
                numbers,
                (0..PER_SUBJECT).collect::<Vec<_>>(),
                "{subject}: all, once, in order"
            );
            assert!(
                received.windows(2).all(|w| w[0].0 < w[1].0),
                "{subject}: positions increase"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn resume_after_a_dropped_connection_loses_nothing() {
    let server = Server::dev().await;
    let mut client = Client::connect(&server).await;
    client.subscribe("feed.>", None).await;
    for n in 0..3 {
        support::publish(&server, "feed.a", json!(n)).await;
    }
    let mut last = String::new();
    for n in 0..3 {
        match client.next_event().await {
            ServerEvent::Msg { pos, data, .. } => {
                assert_eq!(data, json!(n));
                last = pos;
            }
            other => panic!("{other:?}"),
        }
    }
    drop(client);
    for n in 3..6 {
        support::publish(&server, if n % 2 == 0 { "feed.a" } else { "feed.b.c" }, json!(n)).await;
    }
    let mut client = Client::connect(&server).await;
    client.subscribe("feed.>", Some(&last)).await;
    support::publish(&server, "feed.a", json!(6)).await;
    for n in 3..7 {
        match client.next_event().await {
            ServerEvent::Msg { data, .. } => assert_eq!(data, json!(n)),
            other => panic!("expected message {n}, got {other:?}"),
        }
    }
    server.shutdown().await;
}

/// Publishes `batches` batches of `per_batch` 1 KB messages `{"n":..}` on
/// `subject` over the HTTP API.
async fn publish_flood(
    server: &Server,
    subject: &str,
    batches: usize,
    per_batch: usize,
    mut after_batch: impl FnMut(usize),
) {
    let body = "x".repeat(1000);
    let http = reqwest::Client::new();
    for batch in 0..batches {
        let messages: Vec<_> = (0..per_batch)
            .map(|i| json!({"subject": subject, "data": {"n": batch * per_batch + i, "body": body}}))
            .collect();
        let response = http
            .post(server.url("/v1/publish"))
            .bearer_auth(support::PUBLISHER_KEY)
            .json(&json!({ "messages": messages }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        after_batch(batch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_never_delays_the_others_and_is_told_why_it_was_closed() {
    let server = Server::start(|config| {
        config.broker.overflow_policy = herald_broker::OverflowPolicy::Disconnect;
        // Long enough that the stalled client is caught by its queue, not by
        // the write timeout, and can still be told why once it reads again.
        config.websocket.write_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stalled = Client::connect(&server).await;
    stalled.subscribe("flood", None).await;
    const READERS: usize = 3;
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 500;
    let (progress, mut progress_reports) = tokio::sync::mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for reader in 0..READERS {
        let mut client = Client::connect(&server).await;
        client.subscribe("flood", None).await;
        let progress = progress.clone();
        readers.push(tokio::spawn(async move {
            for batch in 0..BATCHES {
                for i in 0..PER_BATCH {
                    match client.next_event().await {
                        ServerEvent::Msg { data, .. } => assert_eq!(data["n"], batch * PER_BATCH + i),
                        other => panic!("a reading client must get everything: {other:?}"),
                    }
                }
                progress.send((reader, batch)).unwrap();
            }
        }));
    }
    // 20 MB, far more than the stalled client's socket buffers and queue can
    // hold, published as fast as the reading clients read it.
    let mut reports = Vec::new();
    publish_flood(&server, "flood", BATCHES, PER_BATCH, |batch| reports.push(batch)).await;
    // Each reader at its own pace (one may be a batch ahead of another),
    // each through every batch in order.
    let mut next_batch = [0; READERS];
    for _ in 0..READERS * BATCHES {
        // A reader that fails stops reporting: time out, do not hang.
        let report = tokio::time::timeout(support::PATIENCE, progress_reports.recv()).await;
        let Ok(Some((reader, batch))) = report else {
            panic!("every reader gets every batch; so far {next_batch:?}: {report:?}");
        };
        assert_eq!(batch, next_batch[reader], "reader {reader}'s batches in order");
        next_batch[reader] += 1;
    }
    assert_eq!(next_batch, [BATCHES; READERS]);
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(
        server.broker.metrics().slow_consumers,
        1,
        "the stalled client, and only it"
    );
    // Reading again, the stalled client gets what was on its way, then the
    // reason, then the close frame.
    let mut messages = 0usize;
    let reason = loop {
        match stalled.next_event().await {
            ServerEvent::Msg { .. } => messages += 1,
            ServerEvent::Err { id: None, code, .. } => break code,
            other => panic!("expected messages then the reason, got {other:?}"),
        }
    };
    assert_eq!(reason, "slow_consumer");
    assert!(messages < BATCHES * PER_BATCH, "{messages}");
    assert_eq!(stalled.close_frame().await, (1008, "slow_consumer".to_owned()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_under_drop_oldest_is_told_exactly_what_it_missed() {
    let server = Server::start(|config| {
        config.broker.queue.max_messages = 64;
        config.websocket.write_timeout = Duration::from_secs(60);
    })
    .await;
    let mut slow = Client::connect(&server).await;
    slow.subscribe("drops", None).await;
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 500;
    publish_flood(&server, "drops", BATCHES, PER_BATCH, |_| {}).await;
    let published = (BATCHES * PER_BATCH) as u64;
    // Every message is accounted for: received, or counted in a gap.
    let (mut received, mut missed, mut last_n) = (0u64, 0u64, None::<u64>);
    while received + missed < published {
        match slow.next_event().await {
            ServerEvent::Msg { data, .. } => {
                let n = data["n"].as_u64().unwrap();
                assert!(last_n.is_none_or(|last| n > last), "in order, none twice");
                last_n = Some(n);
                received += 1;
            }
            ServerEvent::Gap { missed: count, .. } => {
                missed += count.expect("queue drops are counted exactly")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(received + missed, published);
    assert!(missed > 0, "the queue overflowed");
    assert_eq!(server.broker.metrics().dropped, missed);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_after_the_write_timeout() {
    let server = Server::start(|config| {
        config.websocket.write_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stalled = Client::connect(&server).await;
    stalled.subscribe("stall", None).await;
    // Publish until the stalled client's socket is full and a write to it
    // stalls: then the server cuts it off and counts a slow consumer.
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    while server.disconnects.count("write_timeout") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled writer was never cut off"
        );
        publish_flood(&server, "stall", 1, 500, |_| {}).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.broker.metrics().slow_consumers, 1);
    // The client finds its connection ended after what had been written.
    let ended = tokio::time::timeout(support::PATIENCE, async {
        loop {
            match stalled.socket.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was closed by the server");
    server.shutdown().await;
}

#[tokio::test]
async fn msgpack_and_json_clients_receive_the_same_messages() {
    let server = Server::dev().await;
    let mut json_client = Client::connect_with(&server, Encoding::Json, None).await;
    let mut msgpack_client = Client::connect_with(&server, Encoding::MsgPack, None).await;
    json_client.subscribe("mixed.*", None).await;
    msgpack_client.subscribe("mixed.*", None).await;
    let payloads = [
        json!({"text": "héllo", "list": [1, -2, 3.5, null, true]}),
        json!("plain"),
        json!(null),
    ];
    for payload in &payloads {
        support::publish(&server, "mixed.a", payload.clone()).await;
    }
    msgpack_client
        .send(json!({"op": "pub", "id": 9, "subject": "mixed.b", "data": {"from": "msgpack"}}))
        .await;
    for _ in 0..payloads.len() + 1 {
        let from_json = json_client.next_event().await;
        let mut from_msgpack = msgpack_client.next_event().await;
        if matches!(from_msgpack, ServerEvent::Ack { id: Some(9), .. }) {
            from_msgpack = msgpack_client.next_event().await;
        }
        assert_eq!(from_json, from_msgpack);
    }
    server.shutdown().await;
}

/// The events of every frame until `count` events arrived: a JSON text
/// frame split into lines, a MessagePack binary frame into its values.
async fn events_by_frame(client: &mut Client, count: usize) -> Vec<Vec<ServerEvent>> {
    let mut frames = Vec::new();
    let mut received = 0;
    while received < count {
        let frame = tokio::time::timeout(support::PATIENCE, client.socket.next())
            .await
            .expect("events within the test's patience")
            .expect("socket open")
            .expect("socket healthy");
        let events: Vec<ServerEvent> = match frame {
            Message::Text(text) => text
                .as_str()
                .split('\n')
                .map(|line| {
                    herald_broker::protocol::decode_event(Encoding::Json, line.as_bytes())
                        .expect("one event per line")
                })
                .collect(),
            Message::Binary(binary) => {
                let mut rest = &binary[..];
                let mut values = Vec::new();
                while !rest.is_empty() {
                    let mut decoder = rmp_serde::Deserializer::new(rest);
                    let value: ServerEvent =
                        serde::Deserialize::deserialize(&mut decoder).expect("one value");
                    rest = decoder.get_ref();
                    values.push(value);
                }
                values
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected events, got {other:?}"),
        };
        received += events.len();
        frames.push(events);
    }
    assert_eq!(received, count, "no more events than published");
    frames
}

/// The `.batch` subprotocols pack what one write holds into as few frames
/// as fit: JSON events one per line (payloads published with line breaks
/// included), MessagePack values back to back. Without one, every frame
/// is one event. The server prefers a batching subprotocol when offered
/// with the plain one, as the JavaScript client offers them.
#[tokio::test]
async fn a_batching_client_gets_several_events_per_frame() {
    const MESSAGES: usize = 40;
    let server = Server::start(|config| {
        herald::open_for_development(config);
        // Long enough that the whole batch lands within one gathering.
        config.server.write_delay = Duration::from_millis(100);
    })
    .await;
    let mut json_lines =
        Client::connect_offering(&server, "herald.json.batch, herald.json", "herald.json.batch").await;
    let mut msgpack_values =
        Client::connect_offering(&server, "herald.msgpack.batch", "herald.msgpack.batch").await;
    let mut one_per_frame = Client::connect_offering(&server, "herald.json", "herald.json").await;
    for client in [&mut json_lines, &mut msgpack_values, &mut one_per_frame] {
        client.subscribe("packed.*", None).await;
    }
    // Pretty-printed: every payload arrives with raw line breaks in it.
    let messages: Vec<Value> = (0..MESSAGES)
        .map(|n| json!({"subject": "packed.a", "data": {"n": n, "text": "two\nlines"}}))
        .collect();
    let body = serde_json::to_string_pretty(&json!({ "messages": messages })).unwrap();
    assert!(body.contains("\"data\": {\n"), "{body}");
    let response = support::post_publish_body(&reqwest::Client::new(), &server, body).await;
    assert_eq!(response.status(), 200);
    let expected: Vec<Value> = (0..MESSAGES)
        .map(|n| json!({"n": n, "text": "two\nlines"}))
        .collect();
    let data = |frames: &[Vec<ServerEvent>]| -> Vec<Value> {
        frames
            .iter()
            .flatten()
            .map(|event| match event {
                ServerEvent::Msg { data, .. } => data.clone(),
                other => panic!("a message, got {other:?}"),
            })
            .collect()
    };
    for client in [&mut json_lines, &mut msgpack_values] {
        let frames = events_by_frame(client, MESSAGES).await;
        assert_eq!(data(&frames), expected, "in order, none lost, payloads intact");
        assert!(frames.len() <= 3, "{} frames for {MESSAGES} events", frames.len());
    }
    let frames = events_by_frame(&mut one_per_frame, MESSAGES).await;
    assert_eq!(data(&frames), expected);
    assert!(
        frames.iter().all(|events| events.len() == 1),
        "one event per frame"
    );
    // Replies are packed too, and still answer in order.
    for id in 1..=3 {
        json_lines.send(json!({"op": "ping", "id": id})).await;
    }
    let pongs: Vec<ServerEvent> = events_by_frame(&mut json_lines, 3)
        .await
        .into_iter()
        .flatten()
        .collect();
    let ids: Vec<Option<u64>> = pongs
        .iter()
        .map(|event| match event {
            ServerEvent::Pong { id } => *id,
            other => panic!("a pong, got {other:?}"),
        })
        .collect();
    assert_eq!(ids, [Some(1), Some(2), Some(3)]);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_documented_errors_and_the_connection_keeps_working() {
    let server = Server::dev().await;
    let mut client = Client::connect(&server).await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "malformed_frame"),
        (Message::text(r#"{"op":"dance","id":1}"#), "unknown_op"),
        (
            Message::text(r#"{"op":"sub","id":2,"subject":"a..b"}"#),
            "invalid_subject",
        ),
        (
            Message::text(r#"{"op":"sub","id":3,"subject":"$SYS.>"}"#),
            "reserved_subject",
        ),
        (
            Message::text(r#"{"op":"pub","id":4,"subject":"a.*","data":1}"#),
            "invalid_subject",
        ),
        (Message::text(r#"{"op":"sub","id":5}"#), "missing_field"),
        (
            Message::text(r#"{"op":"sub","id":6,"subject":"a","since":"bogus"}"#),
            "invalid_token",
        ),
        (
            Message::text(format!(
                r#"{{"op":"pub","subject":"a","data":"{}"}}"#,
                "x".repeat(70_000)
            )),
            "frame_too_large",
        ),
        (Message::binary(vec![0xc1]), "malformed_frame"),
    ];
    for (frame, code) in cases {
        client.send_raw(frame).await;
        match client.next_event().await {
            ServerEvent::Err {
                code: got, message, ..
            } => {
                assert_eq!(got, code);
                assert!(!message.is_empty());
            }
            other => panic!("expected err {code}, got {other:?}"),
        }
    }
    client.send(json!({"op": "ping", "id": 7})).await;
    assert_eq!(client.next_event().await, ServerEvent::Pong { id: Some(7) });
    server.shutdown().await;
}

#[tokio::test]
async fn frames_past_the_hard_limit_close_with_1009() {
    let server = Server::dev().await;
    let mut client = Client::connect(&server).await;
    // Only the header of a 2 MiB text frame: the server refuses it from the
    // header alone, and no unread upload races its close frame.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(2u64 * 1024 * 1024).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = client.socket.get_mut() else {
        panic!("plain TCP")
    };
    tokio::io::AsyncWriteExt::write_all(tcp, &header).await.unwrap();
    match client.next_event().await {
        ServerEvent::Err { id: None, code, .. } => assert_eq!(code, "frame_too_large"),
        other => panic!("expected the reason first, got {other:?}"),
    }
    assert_eq!(client.close_frame().await, (1009, "frame_too_large".to_owned()));
    // The server is fine.
    let mut other = Client::connect(&server).await;
    other.send(json!({"op": "ping", "id": 1})).await;
    assert_eq!(other.next_event().await, ServerEvent::Pong { id: Some(1) });
    let disconnects = server.disconnects.clone();
    server.shutdown().await;
    assert_eq!(disconnects.count("frame_too_large"), 1);
}

#[tokio::test]
async fn a_flood_is_closed_with_a_reason() {
    let server = Server::start(|config| {
        herald::open_for_development(config);
        config.websocket.max_commands_per_second = 50;
    })
    .await;
    let mut client = Client::connect(&server).await;
    for _ in 0..200 {
        client.send_raw(Message::text(r#"{"op":"ping"}"#)).await;
    }
    let mut saw_err = false;
    let code = loop {
        match tokio::time::timeout(support::PATIENCE, client.socket.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(text))) => saw_err |= text.contains("protocol_violation"),
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert!(saw_err, "the reason arrives as an err event first");
    assert_eq!(code, 1008);
    server.shutdown().await;
}

/// Reads until `count` pongs arrived, or the connection closed: the close
/// code then.
async fn pongs_or_close(client: &mut Client, count: usize) -> Result<(), u16> {
    let mut pongs = 0;
    while pongs < count {
        match tokio::time::timeout(support::PATIENCE, client.socket.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(text))) => pongs += usize::from(text.contains(r#""op":"pong""#)),
            Some(Ok(Message::Close(Some(frame)))) => return Err(u16::from(frame.code)),
            Some(Ok(_)) => {}
            other => panic!("expected a pong or a close frame, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_api_key_may_carry_a_command_rate_of_its_own() {
    const BACKEND_KEY: &str = "test-backend-key-with-a-rate-0123";
    let server = Server::start(|config| {
        config.websocket.max_commands_per_second = 50;
        config.auth.api_keys.push(herald_broker::ApiKeyConfig {
            key: BACKEND_KEY.into(),
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            max_commands_per_second: Some(100_000),
        });
    })
    .await;
    let ping = || Message::text(r#"{"op":"ping"}"#);
    // Four times the transport's limit, at once.
    let mut backend = Client::connect_with(&server, Encoding::Json, Some(BACKEND_KEY)).await;
    let mut later = Client::connect(&server).await;
    later
        .send(json!({"op": "auth", "id": 1, "token": BACKEND_KEY}))
        .await;
    assert!(matches!(
        later.next_event().await,
        ServerEvent::Ack { id: Some(1), .. }
    ));
    let mut other_key = Client::connect_with(&server, Encoding::Json, Some(support::PUBLISHER_KEY)).await;
    for client in [&mut backend, &mut later, &mut other_key] {
        for _ in 0..200 {
            client.send_raw(ping()).await;
        }
    }
    assert_eq!(
        pongs_or_close(&mut backend, 200).await,
        Ok(()),
        "the key's own rate"
    );
    assert_eq!(
        pongs_or_close(&mut later, 200).await,
        Ok(()),
        "the rate of the key given by auth"
    );
    assert_eq!(
        pongs_or_close(&mut other_key, 200).await,
        Err(1008),
        "a key without a rate of its own gets the transport's"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn publishing_needs_permission() {
    let server = Server::start(|_| {}).await;
    let mut anonymous = Client::connect(&server).await;
    anonymous.subscribe("news.*", None).await;
    anonymous
        .send(json!({"op": "pub", "id": 2, "subject": "news.a", "data": 1}))
        .await;
    assert!(
        matches!(anonymous.next_event().await, ServerEvent::Err { id: Some(2), code, .. } if code == "forbidden")
    );

    let mut limited = Client::connect_with(&server, Encoding::Json, Some(support::NEWS_ONLY_KEY)).await;
    limited
        .send(json!({"op": "pub", "id": 3, "subject": "chat.a", "data": 1}))
        .await;
    assert!(
        matches!(limited.next_event().await, ServerEvent::Err { id: Some(3), code, .. } if code == "forbidden")
    );
    limited
        .send(json!({"op": "pub", "id": 4, "subject": "news.a", "data": 1}))
        .await;
    assert!(matches!(
        limited.next_event().await,
        ServerEvent::Ack {
            id: Some(4),
            pos: Some(_)
        }
    ));
    assert!(matches!(anonymous.next_event().await, ServerEvent::Msg { subject, .. } if subject == "news.a"));

    // A wrong key is refused once connected, so a browser can read why.
    let mut refused = Client::connect_to(&server, "/ws?token=wrong", &[]).await;
    assert_eq!(refused.refusal().await, ("invalid_credential".to_owned(), 4401));
    server.shutdown().await;
}

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

#[tokio::test]
async fn silent_connections_are_closed_with_idle_timeout() {
    let server = Server::start(|config| {
        config.websocket.heartbeat_interval = Duration::from_millis(100);
        config.websocket.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = Client::connect(&server).await;
    // Not polling the socket means never answering the server's pings.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Pings were sent to it; after them, the reason and the close frame.
    let frames = silent.raw_frames_to_the_end().await;
    let [.., (TEXT, reason), (CLOSE, close)] = frames.as_slice() else {
        panic!("expected the reason and a close frame last: {frames:?}")
    };
    let reason: Value = serde_json::from_slice(reason).unwrap();
    assert_eq!(
        (reason["op"].as_str(), reason["code"].as_str()),
        (Some("err"), Some("idle_timeout"))
    );
    assert_eq!(close[..2], 1001u16.to_be_bytes());
    assert_eq!(&close[2..], b"idle_timeout");
    assert!(frames[..frames.len() - 2]
        .iter()
        .all(|(opcode, _)| *opcode == PING));
    let disconnects = server.disconnects.clone();
    server.shutdown().await;
    assert_eq!(disconnects.count("idle_timeout"), 1);
}

#[tokio::test]
async fn graceful_shutdown_closes_clients_with_1001() {
    let server = Server::dev().await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = Client::connect(&server).await;
        client.subscribe("any.>", None).await;
        clients.push(client);
    }
    server.shutdown().await;
    for mut client in clients {
        let (code, reason) = client.close_frame().await;
        assert_eq!((code, reason.as_str()), (1001, "shutdown"));
    }
}

#[tokio::test]
async fn a_publisher_can_ask_not_to_receive_its_own_message() {
    let server = Server::dev().await;
    let mut typist = Client::connect(&server).await;
    let mut reader = Client::connect(&server).await;
    typist.subscribe("chat.*", None).await;
    reader.subscribe("chat.*", None).await;
    typist
        .send(json!({"op": "pub", "id": 2, "subject": "chat.typing", "data": "me", "echo": false}))
        .await;
    typist
        .send(json!({"op": "pub", "id": 3, "subject": "chat.lobby", "data": "hello"}))
        .await;
    let mut typist_saw = Vec::new();
    while typist_saw.len() < 3 {
        typist_saw.push(typist.next_event().await);
    }
    // Both acks, and of the two messages only the one published with echo.
    let messages: Vec<&Value> = typist_saw
        .iter()
        .filter_map(|event| match event {
            ServerEvent::Msg { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(messages, [&json!("hello")], "{typist_saw:?}");
    let acks = typist_saw
        .iter()
        .filter(|event| matches!(event, ServerEvent::Ack { id: Some(2 | 3), .. }))
        .count();
    assert_eq!(acks, 2, "{typist_saw:?}");
    for expected in [json!("me"), json!("hello")] {
        match reader.next_event().await {
            ServerEvent::Msg { data, .. } => assert_eq!(data, expected),
            other => panic!("{expected}, got {other:?}"),
        }
    }
}

/// The opening handshake is the gateway's own: a request that is not a
/// WebSocket upgrade gets a clear error, a good one the RFC's accept key
/// and the chosen subprotocol; pings are answered with their payload, and a
/// client's close gets the server's close in reply.
#[tokio::test]
async fn the_handshake_pings_and_a_client_close_follow_the_rfc() {
    use tokio::io::AsyncWriteExt;
    let server = Server::dev().await;
    let request = |headers: &str| format!("GET /ws HTTP/1.1\r\nHost: herald\r\n{headers}\r\n");
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (headers, status) in [
        (String::new(), 400),
        (format!("Connection: upgrade\r\nUpgrade: websocket\r\n{key}"), 426),
        (
            format!("Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n{key}"),
            426,
        ),
        (
            "Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n".to_owned(),
            400,
        ),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(server.address).await.unwrap();
        tcp.write_all(request(&headers).as_bytes()).await.unwrap();
        let (answered, body) = support::read_raw_response(&mut tcp).await;
        assert_eq!(answered, status, "{headers}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "invalid_upgrade", "{headers}");
    }
    // RFC 6455 §1.3's example key and accept value; the subprotocol chosen.
    let mut tcp = tokio::net::TcpStream::connect(server.address).await.unwrap();
    let headers = format!(
        "Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n{key}Sec-WebSocket-Protocol: chat, herald.json\r\n"
    );
    tcp.write_all(request(&headers).as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut byte)
            .await
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("sec-websocket-protocol: herald.json"), "{head}");

    let mut client = Client::connect(&server).await;
    client
        .send_raw(Message::Ping(b"are you there".to_vec().into()))
        .await;
    let pong = tokio::time::timeout(support::PATIENCE, client.socket.next())
        .await
        .unwrap();
    assert!(
        matches!(&pong, Some(Ok(Message::Pong(payload))) if &payload[..] == b"are you there"),
        "{pong:?}"
    );
    client.socket.close(None).await.unwrap();
    let reply = tokio::time::timeout(support::PATIENCE, client.socket.next())
        .await
        .unwrap();
    assert!(matches!(reply, Some(Ok(Message::Close(_))) | None), "{reply:?}");
    assert!(
        matches!(reply, Some(Ok(Message::Close(_)))),
        "the server answers a close with a close: {reply:?}"
    );
}
