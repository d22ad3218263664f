//! The WebTransport gateway with wtransport's client: the real server on
//! an ephemeral UDP port, sessions trusting the generated certificate by
//! the hash `GET /v1/quic` publishes.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use herald_broker::protocol::ServerEvent;
use herald_quic::client::{QuicClient, Via};
use herald_quic::wtransport::error::ConnectionError;
use herald_quic::QuicEndpoint;
use serde_json::{json, Value};
use support::{get_json, publish, Server, NEWS_ONLY_KEY, PATIENCE, PUBLISHER_KEY};

/// What the server publishes at `GET /v1/quic`, checked against what the
/// test harness bound.
async fn endpoint(server: &Server) -> QuicEndpoint {
    let body = get_json(server, "/v1/quic", None).await;
    let endpoint: QuicEndpoint = serde_json::from_value(body).expect("the /v1/quic body");
    assert_eq!(&endpoint, &**server.quic.as_ref().unwrap());
    endpoint
}

async fn connect(server: &Server, query: &str) -> QuicClient {
    let endpoint = endpoint(server).await;
    let url = format!("{}{query}", endpoint.url);
    tokio::time::timeout(PATIENCE, QuicClient::connect(&url, &endpoint.certificate_hashes))
        .await
        .expect("connects within the test's patience")
        .expect("connects")
}

/// The next event but the message streams' marks (their own test checks
/// them: `every_message_stream_marks_how_far_it_has_carried_the_session`).
async fn next(client: &mut QuicClient) -> (Via, ServerEvent) {
    loop {
        match next_or_mark(client).await {
            (_, ServerEvent::Mark { .. }) => continue,
            event => return event,
        }
    }
}

async fn next_or_mark(client: &mut QuicClient) -> (Via, ServerEvent) {
    tokio::time::timeout(PATIENCE, client.next_event())
        .await
        .expect("an event within the test's patience")
        .expect("the session is open")
}

async fn subscribe(client: &mut QuicClient, command: Value) {
    let id = command["id"].as_u64().expect("the test gives the sub an id");
    client.send_json(&command).await.unwrap();
    match next(client).await {
        (Via::Control, ServerEvent::Ack { id: Some(acked), .. }) if acked == id => {}
        other => panic!("expected the ack of {command} on the control stream, got {other:?}"),
    }
}

/// Messages until `count` have arrived: (via, subject, pos, data).
async fn messages(client: &mut QuicClient, count: usize) -> Vec<(Via, String, String, Value)> {
    let mut out = Vec::new();
    while out.len() < count {
        match next(client).await {
            (
                via,
                ServerEvent::Msg {
                    subject, pos, data, ..
                },
            ) => out.push((via, subject, pos, data)),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    out
}

/// Publishes `messages` (`{"subject", "data"}` each) in one all-or-nothing
/// batch over HTTP.
async fn publish_batch(address: &str, messages: Vec<Value>) {
    let response = reqwest::Client::new()
        .post(format!("http://{address}/v1/publish"))
        .bearer_auth(PUBLISHER_KEY)
        .json(&json!({"messages": messages}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{:?}", response.text().await);
}

/// How the session ended: its application close code and reason.
async fn closed(client: &QuicClient) -> (u64, String) {
    match tokio::time::timeout(PATIENCE, client.connection().closed()).await {
        Ok(ConnectionError::ApplicationClosed(close)) => (
            close.code().into_inner(),
            String::from_utf8_lossy(close.reason()).into_owned(),
        ),
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test]
async fn the_endpoint_is_published_with_the_hash_of_its_generated_certificate() {
    let server = Server::start(|_| {}).await;
    let endpoint = endpoint(&server).await;
    assert!(endpoint.url.starts_with("https://127.0.0.1:"), "{}", endpoint.url);
    assert!(endpoint.url.ends_with("/wt"));
    assert_eq!(endpoint.certificate_hashes.len(), 1);
    assert_eq!(endpoint.certificate_hashes[0].algorithm, "sha-256");
    // The hash is what the client checks: a wrong one is refused.
    let wrong = vec![herald_quic::CertificateHash {
        algorithm: "sha-256".into(),
        value: base64_of(&[7u8; 32]),
    }];
    assert!(QuicClient::connect(&endpoint.url, &wrong).await.is_err());
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn subscribe_publish_unsubscribe_with_wildcards() {
    let server = Server::start(|_| {}).await;
    let mut wide = connect(&server, &format!("?token={PUBLISHER_KEY}")).await;
    let mut narrow = connect(&server, "?encoding=msgpack").await;
    subscribe(&mut wide, json!({"op": "sub", "id": 1, "subject": "chat.*"})).await;
    subscribe(&mut narrow, json!({"op": "sub", "id": 1, "subject": "chat.a"})).await;

    publish(&server, "chat.a", json!({"n": 1})).await;
    publish(&server, "chat.b", json!({"n": 2})).await;
    let seen = messages(&mut wide, 2).await;
    let subjects: Vec<&str> = seen.iter().map(|(_, subject, _, _)| subject.as_str()).collect();
    assert_eq!(subjects, ["chat.a", "chat.b"]);
    assert!(
        seen.iter().all(|(via, ..)| matches!(via, Via::Stream(_))),
        "messages travel on message streams"
    );
    let seen = messages(&mut narrow, 1).await;
    assert_eq!(
        (seen[0].1.as_str(), &seen[0].3),
        ("chat.a", &json!({"n": 1})),
        "MessagePack session"
    );

    // A publish from the session itself, acknowledged with its position.
    wide.send_json(&json!({"op": "pub", "id": 7, "subject": "chat.a", "data": "hi"}))
        .await
        .unwrap();
    let mut acked = None;
    let mut delivered = None;
    while acked.is_none() || delivered.is_none() {
        match next(&mut wide).await {
            (Via::Control, ServerEvent::Ack { id: Some(7), pos }) => acked = pos,
            (_, ServerEvent::Msg { pos, data, .. }) => delivered = Some((pos, data)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered.unwrap(), (acked.unwrap(), json!("hi")));

    wide.send_json(&json!({"op": "unsub", "id": 2, "subject": "chat.*"}))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut wide).await,
        (Via::Control, ServerEvent::Ack { id: Some(2), .. })
    ));
    subscribe(&mut wide, json!({"op": "sub", "id": 3, "subject": "marker"})).await;
    publish(&server, "chat.a", json!("after unsub")).await;
    publish(&server, "marker", json!("end")).await;
    let seen = messages(&mut wide, 1).await;
    assert_eq!(seen[0].1, "marker", "nothing from chat.* after the unsub");
    assert_eq!(messages(&mut narrow, 2).await[1].3, json!("after unsub"));
}

#[tokio::test]
async fn each_subject_arrives_in_order_across_message_streams() {
    let server = Server::start(|_| {}).await;
    let mut client = connect(&server, "").await;
    subscribe(&mut client, json!({"op": "sub", "id": 1, "subject": "room.>"})).await;
    let subjects: Vec<String> = (0..8).map(|n| format!("room.{n}")).collect();
    const EACH: u64 = 40;
    let publisher = tokio::spawn({
        let address = server.address.to_string();
        let subjects = subjects.clone();
        async move {
            for n in 0..EACH {
                let messages = subjects
                    .iter()
                    .map(|s| json!({"subject": s, "data": n}))
                    .collect();
                publish_batch(&address, messages).await;
            }
        }
    });
    let seen = messages(&mut client, subjects.len() * EACH as usize).await;
    publisher.await.unwrap();
    let mut per_subject: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut streams = HashSet::new();
    for (via, subject, _, data) in &seen {
        per_subject
            .entry(subject.clone())
            .or_default()
            .push(data.as_u64().unwrap());
        streams.insert(*via);
    }
    let expected: Vec<u64> = (0..EACH).collect();
    for subject in &subjects {
        assert_eq!(
            per_subject[subject], expected,
            "{subject}: every message once, in order"
        );
    }
    assert!(
        streams.len() > 1,
        "eight subjects spread over several streams: {streams:?}"
    );
}

/// Across message streams there is no order, so each says now and then
/// (`mark`) the last message of the session written before it: every
/// stream, the unused ones too, carries a mark with the last position, and
/// nothing that stream carries after the mark is at or before it. A client
/// resumes from the least mark of its streams and misses nothing.
#[tokio::test]
async fn every_message_stream_marks_how_far_it_has_carried_the_session() {
    let server = Server::start(|_| {}).await;
    let mut client = connect(&server, "").await;
    subscribe(&mut client, json!({"op": "sub", "id": 1, "subject": "room.>"})).await;
    let mut last = String::new();
    for n in 0..3 {
        last = publish(&server, &format!("room.{n}"), json!(n)).await;
    }
    let mut marked: BTreeMap<usize, (String, usize)> = BTreeMap::new();
    let mut latest: BTreeMap<usize, String> = BTreeMap::new();
    while marked.len() < 4 || marked.values().any(|(pos, _)| *pos != last) {
        match next_or_mark(&mut client).await {
            (Via::Stream(stream), ServerEvent::Mark { pos, lanes }) => {
                if let Some(carried) = latest.get(&stream) {
                    assert!(decode(&pos) >= decode(carried), "a mark after what it covers");
                }
                marked.insert(stream, (pos, lanes));
            }
            (Via::Stream(stream), ServerEvent::Msg { pos, .. }) => {
                if let Some((mark, _)) = marked.get(&stream) {
                    assert!(
                        decode(&pos) > decode(mark),
                        "nothing a mark covers comes after it"
                    );
                }
                latest.insert(stream, pos);
            }
            other => panic!("only messages and marks on message streams, got {other:?}"),
        }
    }
    assert!(marked.values().all(|(_, lanes)| *lanes == 4), "{marked:?}");
}

fn decode(token: &str) -> herald_broker::Position {
    herald_broker::Position::from_token(token).expect("a position token")
}

#[tokio::test]
async fn a_dropped_session_resumes_where_it_left_off() {
    let server = Server::start(|_| {}).await;
    let mut client = connect(&server, "").await;
    subscribe(&mut client, json!({"op": "sub", "id": 1, "subject": "feed"})).await;
    for n in 0..5 {
        publish(&server, "feed", json!(n)).await;
    }
    let seen = messages(&mut client, 5).await;
    let last = seen.last().unwrap().2.clone();
    // The client vanishes without a word (as a phone switching networks).
    client.close(0, "gone");
    for n in 5..12 {
        publish(&server, "feed", json!(n)).await;
    }
    let mut client = connect(&server, "").await;
    subscribe(
        &mut client,
        json!({"op": "sub", "id": 1, "subject": "feed", "since": last}),
    )
    .await;
    publish(&server, "feed", json!(12)).await;
    let data: Vec<Value> = messages(&mut client, 8).await.into_iter().map(|m| m.3).collect();
    assert_eq!(
        data,
        (5..13).map(Value::from).collect::<Vec<_>>(),
        "the missed ones, then live, once each"
    );
}

#[tokio::test]
async fn a_resume_beyond_the_history_window_is_told_with_a_gap() {
    let server = Server::start(|config| config.broker.history.max_messages_per_subject = 3).await;
    let mut positions = Vec::new();
    for n in 0..10 {
        positions.push(publish(&server, "feed", json!(n)).await);
    }
    let first = positions[0].clone();
    let mut client = connect(&server, "").await;
    subscribe(
        &mut client,
        json!({"op": "sub", "id": 1, "subject": "feed", "since": first}),
    )
    .await;
    match next(&mut client).await {
        (
            Via::Stream(_),
            ServerEvent::Gap {
                subject, from, to, ..
            },
        ) => {
            assert_eq!(subject, "feed");
            // 1..=6 are gone; 7, 8, 9 remain.
            assert_eq!((from, to), (positions[1].clone(), positions[6].clone()));
        }
        other => panic!("expected a gap first, got {other:?}"),
    }
    let data: Vec<Value> = messages(&mut client, 3).await.into_iter().map(|m| m.3).collect();
    assert_eq!(data, [json!(7), json!(8), json!(9)]);
}

#[tokio::test]
async fn latest_value_subscriptions_ride_on_datagrams() {
    let server = Server::start(|_| {}).await;
    let mut client = connect(&server, "").await;
    subscribe(
        &mut client,
        json!({"op": "sub", "id": 1, "subject": "cursor.*", "latest": true}),
    )
    .await;
    subscribe(&mut client, json!({"op": "sub", "id": 2, "subject": "chat.a"})).await;
    // A burst: coalesced, dropped under pressure, but the last value of
    // each subject is what a reader is left with.
    let positions: Vec<(f64, f64)> = (0..200).map(|n| (f64::from(n), f64::from(n) * 2.0)).collect();
    let messages: Vec<Value> = positions
        .iter()
        .map(|(x, y)| json!({"subject": "cursor.alice", "data": {"x": x, "y": y}}))
        .collect();
    publish_batch(&server.address.to_string(), messages).await;
    publish(&server, "chat.a", json!("reliable")).await;
    let mut cursor = Vec::new();
    let mut reliable = None;
    while reliable.is_none() || cursor.last() != Some(&json!({"x": 199.0, "y": 398.0})) {
        match next(&mut client).await {
            (Via::Datagram, ServerEvent::Msg { subject, data, .. }) if subject == "cursor.alice" => {
                cursor.push(data)
            }
            (Via::Stream(_), ServerEvent::Msg { subject, data, .. }) if subject == "chat.a" => {
                reliable = Some(data)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        reliable,
        Some(json!("reliable")),
        "other subscriptions stay reliable, on streams"
    );
    assert!(!cursor.is_empty() && cursor.len() <= 200);
    let xs: Vec<f64> = cursor.iter().map(|c| c["x"].as_f64().unwrap()).collect();
    assert!(
        xs.windows(2).all(|w| w[0] < w[1]),
        "never an older value after a newer one: {xs:?}"
    );

    // A payload too large for a datagram still arrives, on a stream.
    let big = "x".repeat(4000);
    publish(&server, "cursor.bob", json!(big)).await;
    match next(&mut client).await {
        (Via::Stream(_), ServerEvent::Msg { subject, data, .. }) => {
            assert_eq!((subject.as_str(), data), ("cursor.bob", json!(big)))
        }
        other => panic!("expected the large value on a stream, got {other:?}"),
    }
}

#[tokio::test]
async fn a_slow_reader_does_not_hold_back_the_others() {
    // Judged by its queue alone (drop-oldest): the write timeout is long.
    let server = Server::start(|config| {
        config.broker.queue.max_messages = 256;
        config.quic.stream_buffer_bytes = 16 * 1024;
        config.quic.write_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stalled = connect(&server, "").await;
    let mut reader = connect(&server, "").await;
    subscribe(&mut stalled, json!({"op": "sub", "id": 1, "subject": "firehose"})).await;
    subscribe(&mut reader, json!({"op": "sub", "id": 1, "subject": "firehose"})).await;
    // `stalled` takes nothing from here on: its streams fill, its queue
    // overflows. 8 MB in all, far beyond what QUIC buffers for it. The
    // reader gets each batch before the next is published: it keeps up,
    // so whatever it lost, or waited for, would be the stalled one's doing.
    let payload = "p".repeat(4000);
    const COUNT: usize = 2000;
    const BATCH: usize = 50;
    let mut received = Vec::new();
    for batch in 0..COUNT / BATCH {
        let messages: Vec<Value> = (0..BATCH)
            .map(|n| json!({"subject": "firehose", "data": {"n": batch * BATCH + n, "p": payload}}))
            .collect();
        publish_batch(&server.address.to_string(), messages).await;
        while received.len() < (batch + 1) * BATCH {
            match next(&mut reader).await {
                (_, ServerEvent::Msg { data, .. }) => received.push(data["n"].as_u64().unwrap()),
                (_, ServerEvent::Gap { .. }) => panic!("the reading client lost nothing"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(received, (0..COUNT as u64).collect::<Vec<_>>());
    // The stalled one lost messages to its bounded queue (the default
    // drop-oldest policy) and was told: what it receives and what its gaps
    // name add up to everything, in order.
    let (mut delivered, mut missed) = (Vec::new(), 0);
    while delivered.len() as u64 + missed < COUNT as u64 {
        match next(&mut stalled).await {
            (_, ServerEvent::Msg { data, .. }) => delivered.push(data["n"].as_u64().unwrap()),
            (Via::Stream(_), ServerEvent::Gap { missed: Some(n), .. }) => missed += n,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(missed > 0, "the stalled client lost messages");
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "in order");
}

#[tokio::test]
async fn a_reader_that_stops_is_closed_as_a_slow_consumer_under_the_disconnect_policy() {
    let server = Server::start(|config| {
        config.broker.overflow_policy = herald_broker::OverflowPolicy::Disconnect;
        config.broker.queue.max_messages = 64;
        config.quic.write_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stalled = connect(&server, "").await;
    subscribe(&mut stalled, json!({"op": "sub", "id": 1, "subject": "firehose"})).await;
    let payload = "p".repeat(4000);
    for batch in 0..20 {
        let messages = (0..50)
            .map(|n| json!({"subject": "firehose", "data": {"n": batch * 50 + n, "p": payload}}))
            .collect();
        publish_batch(&server.address.to_string(), messages).await;
    }
    // Whichever comes first, a full queue or a write that cannot progress,
    // the session ends as a slow consumer, and its close says so.
    assert_eq!(closed(&stalled).await, (1008, "slow_consumer".into()));
    assert_eq!(server.broker.metrics().slow_consumers, 1);
}

#[tokio::test]
async fn permissions_apply_and_refusals_are_readable() {
    let server = Server::start_default(|_| {}).await;
    // A key for news.> only, in ?token=.
    let mut client = connect(&server, &format!("?token={NEWS_ONLY_KEY}")).await;
    client
        .send_json(&json!({"op": "sub", "id": 1, "subject": "chat.a"}))
        .await
        .unwrap();
    match next(&mut client).await {
        (
            Via::Control,
            ServerEvent::Err {
                id: Some(1), code, ..
            },
        ) => assert_eq!(code, "forbidden"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    subscribe(
        &mut client,
        json!({"op": "sub", "id": 2, "subject": "news.today"}),
    )
    .await;
    client
        .send_json(&json!({"op": "pub", "id": 3, "subject": "chat.a", "data": 1}))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut client).await, (Via::Control, ServerEvent::Err { id: Some(3), code, .. }) if code == "forbidden")
    );

    // No credential and anonymous access off: the first command must be auth.
    let mut late = connect(&server, "").await;
    late.send_json(&json!({"op": "auth", "id": 9, "token": NEWS_ONLY_KEY}))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut late).await,
        (Via::Control, ServerEvent::Ack { id: Some(9), .. })
    ));
    subscribe(&mut late, json!({"op": "sub", "id": 1, "subject": "news.today"})).await;

    // A bad token: an err on the control stream, then the close, 4401.
    let mut refused = connect(&server, "?token=not-a-key").await;
    match next(&mut refused).await {
        (Via::Control, ServerEvent::Err { id: None, code, .. }) => assert_eq!(code, "invalid_credential"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(closed(&refused).await, (4401, "invalid_credential".into()));
}

#[tokio::test]
async fn invalid_frames_are_answered_and_oversized_ones_close_the_session() {
    let server = Server::start(|config| {
        config.quic.max_frame_bytes = 1024;
        config.quic.hard_frame_limit_bytes = 4096;
    })
    .await;
    let mut client = connect(&server, "").await;
    client.send(b"{not json").await.unwrap();
    assert!(
        matches!(next(&mut client).await, (Via::Control, ServerEvent::Err { code, .. }) if code == "malformed_frame")
    );
    client.send(br#"{"op":"fly","id":4}"#).await.unwrap();
    assert!(
        matches!(next(&mut client).await, (Via::Control, ServerEvent::Err { id: Some(4), code, .. }) if code == "unknown_op")
    );
    client.send(&vec![b' '; 2000]).await.unwrap();
    assert!(
        matches!(next(&mut client).await, (Via::Control, ServerEvent::Err { code, .. }) if code == "frame_too_large")
    );
    subscribe(
        &mut client,
        json!({"op": "sub", "id": 1, "subject": "still.open"}),
    )
    .await;
    // A length beyond the hard limit is not read at all.
    client.send_raw(&100_000u32.to_be_bytes()).await.unwrap();
    assert!(
        matches!(next(&mut client).await, (Via::Control, ServerEvent::Err { code, .. }) if code == "frame_too_large")
    );
    assert_eq!(closed(&client).await, (1009, "frame_too_large".into()));
    assert!(server.disconnects.snapshot().contains(&("frame_too_large", 1)));
}

#[tokio::test]
async fn extra_streams_are_refused_and_shutdown_closes_with_a_reason() {
    let server = Server::start(|_| {}).await;
    let mut client = connect(&server, "").await;
    subscribe(&mut client, json!({"op": "sub", "id": 1, "subject": "a"})).await;
    // A second bidirectional stream is not a second control stream.
    let (mut send, mut receive) = client.connection().open_bi().await.unwrap().await.unwrap();
    let _ = send.write_all(br#"{"op":"ping"}"#).await;
    let mut buffer = [0u8; 16];
    assert!(receive.read(&mut buffer).await.is_err(), "the server resets it");
    subscribe(&mut client, json!({"op": "sub", "id": 2, "subject": "b"})).await;

    let shutdown = tokio::spawn(server.shutdown());
    match next(&mut client).await {
        (Via::Control, ServerEvent::Err { code, .. }) => assert_eq!(code, "shutdown"),
        other => panic!("expected the shutdown err, got {other:?}"),
    }
    assert_eq!(closed(&client).await, (1001, "shutdown".into()));
    shutdown.await.unwrap();
}

#[tokio::test]
async fn every_session_bound_has_a_key_and_ends_with_a_reason() {
    let server = Server::start_default(|config| {
        config.quic.max_connections = 2;
        config.quic.auth_timeout = Duration::from_millis(300);
        config.quic.max_commands_per_second = 20;
        config.quic.idle_timeout = Duration::from_secs(1);
        config.quic.keep_alive_interval = Duration::from_millis(300);
        config.auth.anonymous_subscribe = vec![">".into()];
    })
    .await;
    // quic.max_commands_per_second: a flood closes the session.
    let mut flooding = connect(&server, "").await;
    for _ in 0..200 {
        flooding.send_json(&json!({"op": "ping"})).await.unwrap();
    }
    let mut code = None;
    while let Some((_, event)) = tokio::time::timeout(PATIENCE, flooding.next_event())
        .await
        .unwrap()
    {
        if let ServerEvent::Err {
            id: None, code: c, ..
        } = event
        {
            code = Some(c);
        }
    }
    assert_eq!(code.as_deref(), Some("protocol_violation"), "told why, last");
    assert_eq!(closed(&flooding).await.0, 1008);

    // quic.idle_timeout: a client that vanishes without a word (its QUIC
    // stack gone, not even a close) is noticed and its session ended.
    let endpoint = endpoint(&server).await;
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut client = QuicClient::connect(&endpoint.url, &endpoint.certificate_hashes)
                .await
                .unwrap();
            subscribe(&mut client, json!({"op": "sub", "id": 1, "subject": "a"})).await;
            std::mem::forget(client);
        });
        // Dropping the runtime stops the client's QUIC stack mid-session.
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.disconnects.count("idle_timeout") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the vanished session is ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // quic.auth_timeout: with anonymous publishing off, a session that must
    // authenticate and says nothing is closed, 4408.
    let server = Server::start_default(|config| {
        config.quic.max_connections = 2;
        config.quic.auth_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = connect(&server, "").await;
    match next(&mut silent).await {
        (Via::Control, ServerEvent::Err { id: None, code, .. }) => assert_eq!(code, "auth_timeout"),
        other => panic!("expected the auth timeout, got {other:?}"),
    }
    assert_eq!(closed(&silent).await, (4408, "auth_timeout".into()));

    // quic.max_connections: the third session is refused in the handshake.
    let endpoint = self::endpoint(&server).await;
    let _first = connect(&server, &format!("?token={PUBLISHER_KEY}")).await;
    let _second = connect(&server, &format!("?token={PUBLISHER_KEY}")).await;
    let third = QuicClient::connect(&endpoint.url, &endpoint.certificate_hashes).await;
    assert!(third.is_err(), "refused past quic.max_connections");
    assert!(server.disconnects.count("refused") >= 1);
}

#[tokio::test]
async fn an_expiring_token_is_told_then_refreshed_or_the_session_closed() {
    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
    let server = Server::start_default(|config| {
        config.auth.jwt_hs256_secret = Some(herald_broker::Secret(SECRET.into()));
        config.auth.refresh_grace = Duration::from_secs(1);
    })
    .await;
    let claims =
        |exp: u64| json!({"sub": "alice", "exp": exp, "herald": {"sub": {"allow": ["user.{sub}.>"]}}});
    // Valid for two to three more seconds.
    let expiring = support::hs256(&claims(support::now() + 3), SECRET.as_bytes());
    let mut refreshing = connect(&server, &format!("?token={expiring}")).await;
    let mut lapsing = connect(&server, &format!("?token={expiring}")).await;
    for client in [&mut refreshing, &mut lapsing] {
        subscribe(
            client,
            json!({"op": "sub", "id": 1, "subject": "user.alice.inbox"}),
        )
        .await;
    }
    for client in [&mut refreshing, &mut lapsing] {
        match tokio::time::timeout(Duration::from_secs(15), client.next_event()).await {
            Ok(Some((Via::Control, ServerEvent::Err { id: None, code, .. }))) => {
                assert_eq!(code, "token_expired")
            }
            other => panic!("told the token expired, got {other:?}"),
        }
    }
    let fresh = support::hs256(&claims(support::now() + 600), SECRET.as_bytes());
    refreshing
        .send_json(&json!({"op": "refresh", "id": 2, "token": fresh}))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut refreshing).await,
        (Via::Control, ServerEvent::Ack { id: Some(2), .. })
    ));
    assert_eq!(closed(&lapsing).await, (4401, "token_expired".into()));
    // Past the old token's grace, the refreshed session still delivers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    support::publish_to(
        &server.address.to_string(),
        Some(PUBLISHER_KEY),
        "user.alice.inbox",
        json!(1),
    )
    .await;
    assert!(
        matches!(next(&mut refreshing).await, (_, ServerEvent::Msg { subject, .. }) if subject == "user.alice.inbox")
    );
}

#[tokio::test]
async fn the_generated_certificate_is_replaced_before_it_expires() {
    // Valid for 4 s in all: renewed at 2 s.
    let server = Server::start(|config| config.quic.self_signed_validity = Duration::from_secs(4)).await;
    let first = endpoint(&server).await;
    let mut early = connect(&server, "").await;
    subscribe(&mut early, json!({"op": "sub", "id": 1, "subject": "a"})).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let renewed = loop {
        let body = get_json(&server, "/v1/quic", None).await;
        let now: QuicEndpoint = serde_json::from_value(body).unwrap();
        if now.certificate_hashes != first.certificate_hashes {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "renewed at half its validity"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // New sessions trust the new hash; the old one no longer opens one.
    let mut late = QuicClient::connect(&renewed.url, &renewed.certificate_hashes)
        .await
        .unwrap();
    subscribe(&mut late, json!({"op": "sub", "id": 1, "subject": "a"})).await;
    assert!(QuicClient::connect(&first.url, &first.certificate_hashes)
        .await
        .is_err());
    // A session opened before the renewal goes on.
    publish(&server, "a", json!("both")).await;
    assert_eq!(messages(&mut early, 1).await[0].3, json!("both"));
    assert_eq!(messages(&mut late, 1).await[0].3, json!("both"));
}

#[tokio::test]
async fn a_configured_certificate_is_the_one_presented() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "10",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let der = std::process::Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    let server = Server::start(|config| {
        config.quic.cert_file = cert.to_string_lossy().into_owned();
        config.quic.key_file = key.to_string_lossy().into_owned();
    })
    .await;
    let endpoint = endpoint(&server).await;
    assert!(
        endpoint.certificate_hashes.is_empty(),
        "a configured certificate is checked by its chain, not pinned"
    );
    // Trusting exactly that file's certificate (its SHA-256) connects.
    use sha2::Digest;
    let pinned = vec![herald_quic::CertificateHash {
        algorithm: "sha-256".into(),
        value: base64_of(&sha2::Sha256::digest(&der)),
    }];
    let mut client = QuicClient::connect(&endpoint.url, &pinned).await.unwrap();
    subscribe(&mut client, json!({"op": "sub", "id": 1, "subject": "a"})).await;
}
