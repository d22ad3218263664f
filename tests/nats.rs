//! The NATS listener, driven by the official Rust client (async-nats) and,
//! where the client hides what the server says, by a raw TCP connection.

mod support;

use std::time::Duration;

use async_nats::{ConnectOptions, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use herald_broker::{OverflowPolicy, ServerEvent};
use serde_json::json;
use support::{publish, Client, RawNats as Raw, Server, NEWS_ONLY_KEY, PATIENCE, PUBLISHER_KEY};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn nats_url(server: &Server) -> String {
    format!("nats://{}", server.nats_address.expect("the NATS listener is on"))
}

/// A NATS client with the publisher key (every subject).
async fn connect(server: &Server) -> async_nats::Client {
    ConnectOptions::new()
        .token(PUBLISHER_KEY.into())
        .connect(nats_url(server))
        .await
        .expect("async-nats connects")
}

async fn next(subscriber: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(PATIENCE, subscriber.next())
        .await
        .expect("a message within the test's patience")
        .expect("subscription open")
}

#[tokio::test]
async fn publish_and_subscribe_with_wildcards_once_per_sid() {
    let server = Server::start(|_| {}).await;
    let client = connect(&server).await;
    let mut one_token = client.subscribe("orders.*").await.unwrap();
    let mut all = client.subscribe("orders.>").await.unwrap();
    let mut exact = client.subscribe("orders.new").await.unwrap();
    client.flush().await.unwrap();

    client
        .publish("orders.new", Bytes::from_static(b"\x00binary\xff"))
        .await
        .unwrap();
    client.publish("orders.eu.new", "deep".into()).await.unwrap();
    client.flush().await.unwrap();

    // One message, three matching SUBs: three deliveries, as on nats-server.
    for subscriber in [&mut one_token, &mut all, &mut exact] {
        let message = next(subscriber).await;
        assert_eq!(message.subject.as_str(), "orders.new");
        assert_eq!(
            &message.payload[..],
            b"\x00binary\xff",
            "bytes arrive as they were sent"
        );
    }
    let deep = next(&mut all).await;
    assert_eq!(
        (deep.subject.as_str(), &deep.payload[..]),
        ("orders.eu.new", &b"deep"[..])
    );
    // `orders.*` does not match three tokens: the next thing it sees is new.
    client.publish("orders.late", "late".into()).await.unwrap();
    assert_eq!(&next(&mut one_token).await.payload[..], b"late");
}

#[tokio::test]
async fn headers_travel_to_nats_and_to_websocket_subscribers() {
    let server = Server::start(|_| {}).await;
    let client = connect(&server).await;
    let mut subscriber = client.subscribe("trace.>").await.unwrap();
    let mut websocket = Client::connect(&server).await;
    websocket.subscribe("trace.>", None).await;
    client.flush().await.unwrap();

    let mut headers = HeaderMap::new();
    headers.insert("Trace-Id", "abc123");
    headers.append("Tag", "a");
    headers.append("Tag", "b");
    client
        .publish_with_headers("trace.hop", headers, r#"{"step":1}"#.into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let message = next(&mut subscriber).await;
    let got = message.headers.expect("headers");
    assert_eq!(got.get("Trace-Id").map(|v| v.as_str()), Some("abc123"));
    let tags: Vec<&str> = got.get_all("Tag").map(|v| v.as_str()).collect();
    assert_eq!(tags, ["a", "b"]);

    let ServerEvent::Msg { data, headers, .. } = websocket.next_event().await else {
        panic!("a msg");
    };
    assert_eq!(
        data,
        json!({"step": 1}),
        "JSON bytes reach JSON subscribers as JSON"
    );
    let headers = headers.expect("headers on the WebSocket event");
    assert_eq!(headers["Trace-Id"], ["abc123"]);
    assert_eq!(headers["Tag"], ["a", "b"]);
}

#[tokio::test]
async fn a_queue_group_across_nats_and_websocket_gets_each_message_once() {
    let server = Server::start(|_| {}).await;
    let client = connect(&server).await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(client.queue_subscribe("jobs.*", "workers".into()).await.unwrap());
    }
    let mut websocket = Client::connect(&server).await;
    websocket
        .send(json!({"op": "sub", "id": 1, "subject": "jobs.*", "queue": "workers"}))
        .await;
    assert!(matches!(
        websocket.next_event().await,
        ServerEvent::Ack { id: Some(1), .. }
    ));
    let mut observer = client.subscribe("jobs.*").await.unwrap();
    client.flush().await.unwrap();

    const COUNT: usize = 80;
    for n in 0..COUNT {
        client.publish("jobs.resize", n.to_string().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    // The plain subscription sees everything; when it has, so has the group.
    for _ in 0..COUNT {
        next(&mut observer).await;
    }
    let mut seen: Vec<usize> = Vec::new();
    let mut per_member = Vec::new();
    for worker in &mut workers {
        let mut mine = 0;
        while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(200), worker.next()).await {
            seen.push(std::str::from_utf8(&message.payload).unwrap().parse().unwrap());
            mine += 1;
        }
        per_member.push(mine);
    }
    let mut on_websocket = 0;
    while let Ok(event) = tokio::time::timeout(Duration::from_millis(200), websocket.next_event()).await {
        let ServerEvent::Msg { data, .. } = event else {
            panic!("a msg")
        };
        seen.push(data.as_u64().unwrap() as usize);
        on_websocket += 1;
    }
    per_member.push(on_websocket);
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..COUNT).collect::<Vec<_>>(),
        "each message to exactly one member"
    );
    assert!(
        per_member.iter().all(|&n| n > 0),
        "every member works: {per_member:?}"
    );
}

#[tokio::test]
async fn request_and_reply_through_inboxes_over_nats_and_websocket() {
    let server = Server::start(|config| {
        config.auth.anonymous_publish = vec!["_INBOX.>".into()];
    })
    .await;
    let client = connect(&server).await;
    let mut service = client.subscribe("svc.time").await.unwrap();
    client.flush().await.unwrap();
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(request) = service.next().await {
            let reply = request.reply.expect("a request names its inbox");
            responder.publish(reply, "noon".into()).await.unwrap();
        }
    });
    let answer = tokio::time::timeout(PATIENCE, client.request("svc.time", "now?".into()))
        .await
        .expect("answered in time")
        .expect("a reply");
    assert_eq!(&answer.payload[..], b"noon");

    // A browser answers a NATS request: it sees `reply` and publishes there.
    let mut websocket = Client::connect(&server).await;
    websocket.subscribe("svc.weather", None).await;
    let requester = client.clone();
    let request = tokio::spawn(async move { requester.request("svc.weather", "{}".into()).await });
    let ServerEvent::Msg { reply, .. } = websocket.next_event().await else {
        panic!("the request");
    };
    let reply = reply.expect("the NATS requester's inbox");
    assert!(reply.starts_with("_INBOX."), "{reply}");
    websocket
        .send(json!({"op": "pub", "subject": reply, "data": {"sky": "clear"}}))
        .await;
    let answer = tokio::time::timeout(PATIENCE, request)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&answer.payload[..], br#"{"sky":"clear"}"#);
    assert_eq!(
        server.broker.metrics().history_subjects,
        2,
        "svc.time and svc.weather are recorded, the inboxes never"
    );
}

#[tokio::test]
async fn unsubscribe_after_max_messages() {
    let server = Server::start(|_| {}).await;
    let client = connect(&server).await;
    let mut subscriber = client.subscribe("count").await.unwrap();
    subscriber.unsubscribe_after(3).await.unwrap();
    client.flush().await.unwrap();
    for n in 0..6 {
        client.publish("count", n.to_string().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let mut got = Vec::new();
    while let Some(message) = tokio::time::timeout(PATIENCE, subscriber.next()).await.unwrap() {
        got.push(String::from_utf8(message.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["0", "1", "2"]);
    // The server forgot the subscription too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.broker.metrics().subscriptions, 0);

    // `max` counts from the SUB, as on nats-server: after two deliveries,
    // `UNSUB 1 3` leaves one more, and `UNSUB 2 1` ends sid 2 at once.
    let mut raw = Raw::connect(&server, KEY_CONNECT).await;
    raw.send("SUB c 1\r\nSUB c 2\r\nPUB c 1\r\na\r\nPUB c 1\r\nb\r\nPING\r\n")
        .await;
    let mut lines = Vec::new();
    while lines.last().map(String::as_str) != Some("PONG\r\n") {
        lines.push(raw.line().await);
    }
    assert_eq!(lines.len(), 9, "{lines:?}");
    raw.send("UNSUB 1 3\r\nUNSUB 2 1\r\nPUB c 1\r\nc\r\nPUB c 1\r\nd\r\nPING\r\n")
        .await;
    let mut lines = Vec::new();
    while lines.last().map(String::as_str) != Some("PONG\r\n") {
        lines.push(raw.line().await);
    }
    assert_eq!(lines, ["MSG c 1 1\r\n", "c\r\n", "PONG\r\n"]);
}

#[tokio::test]
async fn websocket_and_nats_subscribers_see_the_same_messages_in_the_same_order() {
    let server = Server::start(|_| {}).await;
    let client = connect(&server).await;
    let mut nats = client.subscribe("room.>").await.unwrap();
    let mut websocket = Client::connect(&server).await;
    websocket.subscribe("room.>", None).await;
    let mut publisher =
        Client::connect_with(&server, herald_broker::Encoding::Json, Some(PUBLISHER_KEY)).await;
    client.flush().await.unwrap();

    let mut expected = Vec::new();
    for n in 0..30 {
        let subject = format!("room.{}", n % 3);
        match n % 3 {
            0 => {
                client
                    .publish(subject.clone(), format!("{{\"n\":{n}}}").into())
                    .await
                    .unwrap();
                client.flush().await.unwrap();
            }
            1 => {
                publish(&server, &subject, json!({"n": n})).await;
            }
            _ => {
                publisher
                    .send(json!({"op": "pub", "id": n, "subject": subject, "data": {"n": n}}))
                    .await;
                assert!(matches!(publisher.next_event().await, ServerEvent::Ack { .. }));
            }
        }
        expected.push((subject, json!({"n": n})));
    }
    let mut over_nats = Vec::new();
    let mut over_websocket = Vec::new();
    for _ in 0..expected.len() {
        let message = next(&mut nats).await;
        let data: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        over_nats.push((message.subject.to_string(), data));
        let ServerEvent::Msg { subject, data, .. } = websocket.next_event().await else {
            panic!("a msg");
        };
        over_websocket.push((subject, data));
    }
    assert_eq!(over_nats, expected);
    assert_eq!(over_websocket, expected);
}

#[tokio::test]
async fn nats_messages_have_positions_history_and_resume_on_other_transports() {
    let server = Server::start(|_| {}).await;
    let before = publish(&server, "feed.a", json!("first")).await;
    let client = connect(&server).await;
    client
        .publish("feed.a", Bytes::from_static(b"\x01\x02"))
        .await
        .unwrap();
    client.publish("feed.b", "[1,2]".into()).await.unwrap();
    client.flush().await.unwrap();

    // A WebSocket client that saw `before` resumes and gets both, in order.
    let mut websocket = Client::connect(&server).await;
    websocket.subscribe("feed.*", Some(&before)).await;
    let ServerEvent::Msg {
        data, data_base64, ..
    } = websocket.next_event().await
    else {
        panic!("the binary message");
    };
    assert_eq!(
        (data, data_base64.as_deref()),
        (serde_json::Value::Null, Some("AQI="))
    );
    let ServerEvent::Msg { data, .. } = websocket.next_event().await else {
        panic!("the JSON message");
    };
    assert_eq!(data, json!([1, 2]));
    // And the HTTP API's history has them.
    let history = support::get_json(&server, "/v1/history?subject=feed.a", Some(PUBLISHER_KEY)).await;
    assert_eq!(history["messages"][1]["data_base64"], "AQI=", "{history}");
}

#[tokio::test]
async fn permissions_apply_to_nats_clients() {
    let server = Server::start_default(|_| {}).await;
    // No credential, and the defaults allow nothing anonymously.
    let refused = ConnectOptions::new().connect(nats_url(&server)).await;
    assert!(refused.is_err(), "anonymous CONNECT refused");
    let wrong = ConnectOptions::new()
        .token("not-a-key".into())
        .connect(nats_url(&server))
        .await;
    assert!(wrong.is_err(), "a wrong key refused");

    // user/password: the password is the key.
    let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let news = ConnectOptions::new()
        .user_and_password("newsroom".into(), NEWS_ONLY_KEY.into())
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors_tx.send(error.to_string());
                }
            }
        })
        .connect(nats_url(&server))
        .await
        .expect("a key as the password");
    let mut allowed = news.subscribe("news.today").await.unwrap();
    let _denied = news.subscribe("chat.room").await.unwrap();
    news.publish("chat.room", "x".into()).await.unwrap();
    news.publish("news.today", "headline".into()).await.unwrap();
    // A subject checked once is not a pass for the next one.
    news.publish("chat.room", "y".into()).await.unwrap();
    news.publish("news.today", "second".into()).await.unwrap();
    news.flush().await.unwrap();
    assert_eq!(
        &next(&mut allowed).await.payload[..],
        b"headline",
        "the connection stays open"
    );
    assert_eq!(&next(&mut allowed).await.payload[..], b"second");
    let mut said = Vec::new();
    for _ in 0..3 {
        said.push(
            tokio::time::timeout(PATIENCE, errors.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    said.sort();
    assert!(
        said[0].contains("Permissions Violation for Publish to \"chat.room\""),
        "{said:?}"
    );
    assert!(
        said[1].contains("Permissions Violation for Publish to \"chat.room\""),
        "{said:?}"
    );
    assert!(
        said[2].contains("Permissions Violation for Subscription to \"chat.room\""),
        "{said:?}"
    );
}

const KEY_CONNECT: &str = r#"{"verbose":false,"auth_token":"test-publisher-key-0123456789"}"#;

/// A client may pipeline more commands than the server keeps replies for
/// (`broker.queue.max_replies`, 256) in one write, as nats-server allows:
/// the server stops reading until the client has read the answers, and
/// closes nobody who reads them.
#[tokio::test]
async fn pipelined_commands_beyond_the_reply_limit_are_all_answered() {
    let server = Server::start(|_| {}).await;
    let mut raw = Raw::connect(&server, KEY_CONNECT).await;
    raw.send(&"PING\r\n".repeat(2000)).await;
    for n in 0..2000 {
        assert_eq!(raw.line().await, "PONG\r\n", "PONG {n}");
    }

    let mut verbose = Raw::connect(
        &server,
        r#"{"verbose":true,"auth_token":"test-publisher-key-0123456789"}"#,
    )
    .await;
    assert_eq!(verbose.line().await, "+OK\r\n", "CONNECT's");
    verbose.send(&"PUB v 1\r\nx\r\n".repeat(1000)).await;
    for n in 0..1000 {
        assert_eq!(verbose.line().await, "+OK\r\n", "PUB {n}");
    }
}

/// A message larger than one read and one write, sent in pieces with pauses
/// between them (the reader waits holding the part it has), then a small
/// one after the connection went quiet (the reader waits without a buffer,
/// the writer's grown buffer was let go): both arrive whole, in order.
#[tokio::test]
async fn a_message_larger_than_a_read_and_a_write_arrives_whole() {
    let server = Server::start(|config| {
        config.broker.max_payload_bytes = 512 * 1024;
        config.websocket.max_frame_bytes = 1024 * 1024;
    })
    .await;
    let mut subscriber = Raw::connect(&server, KEY_CONNECT).await;
    subscriber.send("SUB big 1\r\nPING\r\n").await;
    assert_eq!(subscriber.line().await, "PONG\r\n");
    let mut publisher = Raw::connect(&server, KEY_CONNECT).await;

    let payload: String = (0..200_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    publisher.send(&format!("PUB big {}\r\n", payload.len())).await;
    for piece in [&payload[..70_000], &payload[70_000..150_000], &payload[150_000..]] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        publisher.send(piece).await;
    }
    publisher.send("\r\n").await;
    assert_eq!(subscriber.line().await, "MSG big 1 200000\r\n");
    let got = subscriber.exactly(payload.len() + 2).await;
    assert!(
        got[..payload.len()] == *payload.as_bytes(),
        "the payload arrives unchanged"
    );
    assert_eq!(&got[payload.len()..], b"\r\n");

    tokio::time::sleep(Duration::from_millis(50)).await;
    publisher.send("PUB big 5\r\nsmall\r\n").await;
    assert_eq!(subscriber.line().await, "MSG big 1 5\r\n");
    assert_eq!(subscriber.line().await, "small\r\n");
}

#[tokio::test]
async fn protocol_errors_get_nats_server_s_words_and_the_fatal_ones_close() {
    let server = Server::start(|config| {
        config.broker.max_payload_bytes = 1024;
    })
    .await;
    let fatal = [
        ("HELLO\r\n", "-ERR 'Unknown Protocol Operation'\r\n"),
        ("PUB big 2048\r\n", "-ERR 'Maximum Payload Violation'\r\n"),
        ("PUB a 2\r\nabc\r\n", "-ERR 'Parser Error'\r\n"),
        ("SUB only-subject\r\n", "-ERR 'Parser Error'\r\n"),
    ];
    for (input, expected) in fatal {
        let mut raw = Raw::connect(&server, KEY_CONNECT).await;
        raw.send(input).await;
        assert_eq!(raw.rest().await, expected, "{input:?}");
    }
    let long = format!("SUB {} 1\r\n", "a".repeat(5000));
    let mut raw = Raw::connect(&server, KEY_CONNECT).await;
    raw.send(&long).await;
    assert_eq!(raw.rest().await, "-ERR 'Maximum Control Line Exceeded'\r\n");

    // Non-fatal: the connection answers the next PING.
    let mut raw = Raw::connect(&server, KEY_CONNECT).await;
    raw.send("SUB bad..subject 1\r\nPUB also..bad 0\r\n\r\nPING\r\n")
        .await;
    assert_eq!(raw.line().await, "-ERR 'Invalid Subject'\r\n");
    assert_eq!(raw.line().await, "-ERR 'Invalid Subject'\r\n");
    assert_eq!(raw.line().await, "PONG\r\n");

    // Verbose mode: +OK after each operation.
    let mut raw = Raw::connect(
        &server,
        r#"{"verbose":true,"auth_token":"test-publisher-key-0123456789"}"#,
    )
    .await;
    raw.send("SUB v 1\r\nPUB v 2\r\nhi\r\n").await;
    let mut lines = Vec::new();
    for _ in 0..5 {
        lines.push(raw.line().await);
    }
    // CONNECT, SUB, then the PUB's own delivery before its +OK, as
    // nats-server orders them.
    assert_eq!(
        lines,
        ["+OK\r\n", "+OK\r\n", "MSG v 1 2\r\n", "hi\r\n", "+OK\r\n"]
    );

    // Credentials: a bad one, or an operation before CONNECT.
    let mut raw = Raw::connect(&server, r#"{"auth_token":"wrong"}"#).await;
    assert_eq!(raw.rest().await, "-ERR 'Authorization Violation'\r\n");
    let mut raw = Raw::connect(&server, "").await;
    raw.send("PUB a 0\r\n\r\n").await;
    assert_eq!(raw.rest().await, "-ERR 'Authorization Violation'\r\n");
}

#[tokio::test]
async fn every_thing_a_client_can_hold_has_a_bound() {
    let server = Server::start(|config| {
        config.nats.auth_timeout = Duration::from_millis(300);
        config.nats.ping_interval = Duration::from_millis(100);
        config.nats.max_connections = 3;
    })
    .await;
    // Silence after the greeting: closed when CONNECT does not come.
    let mut silent = Raw::connect(&server, "").await;
    assert_eq!(silent.rest().await, "-ERR 'Authorization Timeout'\r\n");

    // A client that never answers PING is stale.
    let mut deaf = Raw::connect(&server, KEY_CONNECT).await;
    let rest = deaf.rest().await;
    assert!(rest.starts_with("PING\r\nPING\r\n"), "{rest}");
    assert!(rest.ends_with("-ERR 'Stale Connection'\r\n"), "{rest}");

    // One answering PING stays.
    let mut polite = Raw::connect(&server, KEY_CONNECT).await;
    for _ in 0..6 {
        assert_eq!(polite.line().await, "PING\r\n");
        polite.send("PONG\r\n").await;
    }
    drop(polite);

    // Connections past the cap are refused.
    let _first = Raw::connect(&server, KEY_CONNECT).await;
    let _second = Raw::connect(&server, KEY_CONNECT).await;
    let _third = Raw::connect(&server, KEY_CONNECT).await;
    let mut fourth = TcpStream::connect(server.nats_address.unwrap()).await.unwrap();
    let mut refused = String::new();
    tokio::time::timeout(PATIENCE, fourth.read_to_string(&mut refused))
        .await
        .unwrap()
        .unwrap();
    assert!(
        refused.ends_with("-ERR 'Maximum Connections Exceeded'\r\n"),
        "{refused}"
    );
}

/// A sender over its publish rate (an anonymous connection, as here, or a
/// user: `broker.max_client_publishes_per_second`) is read more slowly,
/// not refused: every message arrives, in order, and no `-ERR` comes
/// (nats.go and nats-py would close for good on it).
#[tokio::test]
async fn a_publisher_over_its_rate_is_slowed_and_loses_nothing() {
    let server = Server::start(|config| {
        config.auth.anonymous_publish = vec!["paced".into()];
        config.broker.max_client_publishes_per_second = 50;
    })
    .await;
    let client = connect(&server).await;
    let mut subscriber = client.subscribe("paced").await.unwrap();
    client.flush().await.unwrap();

    // A full second's budget (50), then 20 more at 50 a second.
    let mut anonymous = Raw::connect(&server, r#"{"verbose":false}"#).await;
    let started = std::time::Instant::now();
    let mut pipelined = String::new();
    for n in 0..70 {
        pipelined.push_str(&format!("PUB paced {}\r\n{n}\r\n", n.to_string().len()));
    }
    pipelined.push_str("PING\r\n");
    anonymous.send(&pipelined).await;
    assert_eq!(anonymous.line().await, "PONG\r\n", "nothing ahead of the PONG");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "the 20 over budget were held back: {waited:?}"
    );
    for n in 0..70 {
        assert_eq!(next(&mut subscriber).await.payload, n.to_string());
    }
}

/// Shutdown closes a NATS connection without an `-ERR`, as nats-server
/// does: a client that hears an `-ERR` it does not know (nats.go,
/// nats-py) closes for good instead of reconnecting to the next server.
#[tokio::test]
async fn shutdown_ends_a_connection_without_an_err() {
    let server = Server::start(|_| {}).await;
    let mut raw = Raw::connect(&server, KEY_CONNECT).await;
    raw.send("SUB news 1\r\nPING\r\n").await;
    assert_eq!(raw.line().await, "PONG\r\n");
    let (rest, ()) = tokio::join!(raw.rest(), server.shutdown());
    assert_eq!(rest, "", "the connection ends with nothing more");
}

/// As nats-server does, a slow consumer hears no `-ERR`: nats.go and
/// nats-py close for good on one they do not know, but reconnect when a
/// connection just ends. Under `disconnect` the connection ends; under
/// `drop-oldest` it stays open, misses the oldest messages (counted) and
/// gets the newer ones.
#[tokio::test]
async fn a_slow_consumer_hears_no_err_under_either_policy() {
    for policy in [OverflowPolicy::Disconnect, OverflowPolicy::DropOldest] {
        let server = Server::start(|config| {
            config.broker.overflow_policy = policy;
            config.broker.queue.max_messages = 64;
        })
        .await;
        let mut raw = Raw::connect(&server, KEY_CONNECT).await;
        raw.send("SUB flood 1\r\nPING\r\n").await;
        assert_eq!(raw.line().await, "PONG\r\n");
        // Far more than the socket buffers hold, while the client reads
        // nothing.
        let payload = herald_broker::Payload::from_bytes(Bytes::from(vec![b'x'; 8 * 1024]));
        for _ in 0..4000 {
            server.broker.publish("flood", payload.clone()).unwrap();
        }
        match policy {
            OverflowPolicy::Disconnect => {
                // The queue overflowed before the writer ran: the
                // connection ends, with nothing after the PONG.
                let text = raw.rest().await;
                assert!(
                    !text.contains("-ERR"),
                    "no -ERR: {:?}",
                    &text[text.len().saturating_sub(200)..]
                );
                assert_eq!(server.broker.metrics().slow_consumers, 1);
            }
            OverflowPolicy::DropOldest => {
                server
                    .broker
                    .publish(
                        "flood",
                        herald_broker::Payload::from_bytes(Bytes::from_static(b"after")),
                    )
                    .unwrap();
                let mut text = String::new();
                loop {
                    let line = raw.line().await;
                    assert!(!line.is_empty(), "the connection stays open");
                    assert!(!line.starts_with("-ERR"), "{line}");
                    text.push_str(&line);
                    if line == "after\r\n" {
                        break;
                    }
                }
                raw.send("PING\r\n").await;
                assert_eq!(raw.line().await, "PONG\r\n");
                let delivered = text.matches("MSG flood 1 8192\r\n").count();
                assert!(delivered < 4000, "some were dropped: {delivered} arrived");
                assert_eq!(
                    server.broker.metrics().dropped,
                    4000 - delivered as u64,
                    "every message that did not arrive was counted"
                );
            }
        }
    }
}
