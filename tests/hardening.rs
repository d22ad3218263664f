//! The server under abuse and at protocol edges, against the real listener:
//! each probe gets a clear error or close code, the server keeps answering,
//! and nothing a correct client sends is lost.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_broker::protocol::ServerEvent;
use serde_json::json;
use support::{Client, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn hundreds_of_pipelined_commands_are_answered_not_punished() {
    let server = Server::dev().await;
    let mut client = Client::connect(&server).await;
    // Over `queue.max_replies` (256) each, and under the flood limit together.
    const COMMANDS: u64 = 400;
    for id in 0..COMMANDS {
        let frame = Message::text(json!({"op": "ping", "id": id}).to_string());
        client.socket.feed(frame).await.unwrap();
    }
    client.socket.flush().await.unwrap();
    for expected in 0..COMMANDS {
        match client.next_event().await {
            ServerEvent::Pong { id } => assert_eq!(id, Some(expected)),
            other => panic!("expected pong {expected}, got {other:?}"),
        }
    }
    // Subscribing to many subjects at once, as a client does after a
    // reconnect, is no different.
    for id in 0..COMMANDS {
        let command = json!({"op": "sub", "id": id, "subject": format!("room.{id}")});
        client
            .socket
            .feed(Message::text(command.to_string()))
            .await
            .unwrap();
    }
    client.socket.flush().await.unwrap();
    for expected in 0..COMMANDS {
        match client.next_event().await {
            ServerEvent::Ack { id, .. } => assert_eq!(id, Some(expected)),
            other => panic!("expected ack {expected}, got {other:?}"),
        }
    }
    assert!(
        server.disconnects.snapshot().is_empty(),
        "nobody was disconnected"
    );
}

/// A client frame built by hand: `first_byte` is FIN, RSV and opcode;
/// masked with a fixed key unless `masked` is false.
fn raw_frame(first_byte: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut frame = vec![first_byte, mask_bit | payload.len() as u8];
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// Writes `bytes` under the WebSocket client, then reads what the server
/// sends until it closes: the close frame's code and reason, after a final
/// `err` naming the same reason.
async fn close_after_raw_bytes(server: &Server, bytes: &[u8]) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut client = Client::connect(server).await;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = client.socket.get_mut() else {
        panic!("plain TCP")
    };
    tcp.write_all(bytes).await.unwrap();
    let frames = client.raw_frames_to_the_end().await;
    let [.., (1, err), (8, close)] = frames.as_slice() else {
        panic!("a final err then a close frame, got {frames:?}")
    };
    let code = u16::from_be_bytes([close[0], close[1]]);
    let reason = String::from_utf8(close[2..].to_vec()).unwrap();
    let err: serde_json::Value = serde_json::from_slice(err).unwrap();
    assert_eq!(err["code"], reason.as_str(), "the err and the close agree");
    (code, reason)
}

#[tokio::test]
async fn broken_websocket_framing_is_closed_with_the_rfc_6455_codes() {
    let server = Server::dev().await;
    let cases: [(&str, Vec<u8>, u16, &str); 4] = [
        (
            "invalid UTF-8 in a text frame",
            raw_frame(0x81, &[b'{', 0xff, 0xfe, b'}'], true),
            1007,
            "invalid_utf8",
        ),
        (
            "a reserved bit",
            raw_frame(0xC1, b"{}", true),
            1002,
            "invalid_frame",
        ),
        (
            "a reserved opcode",
            raw_frame(0x83, b"{}", true),
            1002,
            "invalid_frame",
        ),
        (
            "an unmasked client frame",
            raw_frame(0x81, b"{}", false),
            1002,
            "invalid_frame",
        ),
    ];
    for (case, bytes, code, reason) in cases {
        assert_eq!(
            close_after_raw_bytes(&server, &bytes).await,
            (code, reason.to_owned()),
            "{case}"
        );
    }
    assert_eq!(server.disconnects.count("invalid_utf8"), 1);
    assert_eq!(server.disconnects.count("invalid_frame"), 3);
}

#[tokio::test]
async fn a_frame_over_the_hard_limit_is_closed_with_1009() {
    let server = Server::dev().await;
    // A text frame header announcing 2 MiB (over the default 1 MiB hard
    // limit), a mask key, and the first bytes of the payload.
    let mut bytes = vec![0x81, 0x80 | 127];
    bytes.extend_from_slice(&(2u64 << 20).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(&[b' '; 8192]);
    assert_eq!(
        close_after_raw_bytes(&server, &bytes).await,
        (1009, "frame_too_large".to_owned())
    );
}

#[tokio::test]
async fn a_command_is_read_in_the_encoding_its_frame_type_says() {
    let server = Server::dev().await;
    // MessagePack (a binary frame) on a JSON connection: answered in JSON.
    let mut json_client = Client::connect(&server).await;
    let ping = rmp_serde::to_vec_named(&json!({"op": "ping", "id": 7})).unwrap();
    json_client.send_raw(Message::binary(ping)).await;
    match json_client.socket.next().await.unwrap().unwrap() {
        Message::Text(text) => assert_eq!(text.as_str(), r#"{"op":"pong","id":7}"#),
        other => panic!("a JSON pong, got {other:?}"),
    }
    // JSON (a text frame) on a MessagePack connection: answered in MessagePack.
    let mut msgpack_client = Client::connect_with(&server, herald_broker::Encoding::MsgPack, None).await;
    msgpack_client
        .send_raw(Message::text(r#"{"op":"ping","id":8}"#))
        .await;
    match msgpack_client.socket.next().await.unwrap().unwrap() {
        Message::Binary(binary) => {
            let pong: serde_json::Value = rmp_serde::from_slice(&binary).unwrap();
            assert_eq!(pong, json!({"op": "pong", "id": 8}));
        }
        other => panic!("a MessagePack pong, got {other:?}"),
    }
}

/// The code of an HTTP error body.
fn code_of(body: &[u8]) -> String {
    let body: serde_json::Value = serde_json::from_slice(body).expect("a JSON error body");
    body["code"].as_str().expect("a code").to_owned()
}

/// Sends a publish request's head by hand, with no body yet.
async fn publish_head(server: &Server, extra_headers: &str, content_length: usize) -> TcpStream {
    let mut tcp = TcpStream::connect(server.address).await.unwrap();
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: herald\r\ncontent-type: application/json\r\n\
         content-length: {content_length}\r\n{extra_headers}\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp
}

#[tokio::test]
async fn a_publish_is_refused_before_its_body_is_read() {
    let server = Server::start(|_| {}).await;
    let wrong_key = "authorization: Bearer not-a-key-of-this-server\r\n";
    for (headers, expected) in [("", "unauthorized"), (wrong_key, "invalid_credential")] {
        // The body is announced and never sent: the answer cannot wait for it.
        let mut tcp = publish_head(&server, headers, (1 << 20) - 1).await;
        let (status, body) = support::read_raw_response(&mut tcp).await;
        assert_eq!(
            (status, code_of(&body)),
            (401, expected.to_owned()),
            "{headers:?}"
        );
    }
    // A declared length over the limit is refused before reading, too.
    let key = format!("authorization: Bearer {}\r\n", support::PUBLISHER_KEY);
    let mut tcp = publish_head(&server, &key, 2 << 20).await;
    let (status, body) = support::read_raw_response(&mut tcp).await;
    assert_eq!((status, code_of(&body)), (413, "body_too_large".to_owned()));
}

#[tokio::test]
async fn a_body_that_never_arrives_is_given_up_on() {
    let server = Server::start(|config| {
        config.http.body_read_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let key = format!("authorization: Bearer {}\r\n", support::PUBLISHER_KEY);
    let mut tcp = publish_head(&server, &key, 100).await;
    tcp.write_all(br#"{"subject":"#).await.unwrap();
    let (status, body) = support::read_raw_response(&mut tcp).await;
    assert_eq!((status, code_of(&body)), (408, "body_timeout".to_owned()));
    assert_eq!(server.broker.metrics().published, 0);
}

#[tokio::test]
async fn a_publish_must_say_it_is_json() {
    // Even in development mode: a page on any origin could otherwise
    // publish with a form-like POST that browsers send without asking.
    let server = Server::dev().await;
    let http = reqwest::Client::new();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = http
            .post(server.url("/v1/publish"))
            .body(r#"{"subject":"a","data":1}"#);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
        let body = response.bytes().await.unwrap();
        assert_eq!(code_of(&body), "unsupported_media_type");
    }
    assert_eq!(server.broker.metrics().published, 0);
    let response = http
        .post(server.url("/v1/publish"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"subject":"a","data":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn credentials_are_read_the_same_way_and_never_downgraded() {
    let server = Server::start(|_| {}).await;
    let http = reqwest::Client::new();
    // The scheme is case-insensitive.
    let response = http
        .post(server.url("/v1/publish"))
        .header("authorization", format!("bearer {}", support::PUBLISHER_KEY))
        .json(&json!({"subject": "a", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A credential the server cannot use is refused, on every transport,
    // rather than taken for none (anonymous access).
    for authorization in ["bearer wrong-key-0123456789", "Basic dXNlcjpwYXNz", "Bearer"] {
        let mut refused = Client::connect_to(&server, "/ws", &[("authorization", authorization)]).await;
        assert_eq!(
            refused.refusal().await,
            ("invalid_credential".to_owned(), 4401),
            "{authorization} on /ws"
        );
        for path in [
            "/sse?subject=a",
            "/poll?subject=a&wait=0",
            "/v1/history?subject=a",
        ] {
            let request = http.get(server.url(path)).header("authorization", authorization);
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{authorization} on {path}");
            let body = response.bytes().await.unwrap();
            assert_eq!(code_of(&body), "invalid_credential", "{authorization} on {path}");
        }
    }
}

#[tokio::test]
async fn connections_that_do_not_finish_a_request_are_closed() {
    let server = Server::start(|config| {
        config.server.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    // Connected, never a byte.
    let mut silent = TcpStream::connect(server.address).await.unwrap();
    // Slowloris: a header line every 200 ms, never the blank line.
    let mut slow = TcpStream::connect(server.address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let trickle = async {
        for n in 0..25 {
            if slow.write_all(format!("x-{n}: y\r\n").as_bytes()).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    let started = tokio::time::Instant::now();
    let (silent_closed, slow_cut) = tokio::join!(
        support::closed_within(&mut silent, Duration::from_secs(3)),
        trickle
    );
    assert!(silent_closed, "a connection that sends nothing is closed");
    assert!(
        slow_cut || support::closed_within(&mut slow, Duration::from_secs(1)).await,
        "a trickled head is cut off"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Keep-alive: one answered request, then idle until the same timeout.
    let mut idle = TcpStream::connect(server.address).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: herald\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = support::read_raw_response(&mut idle).await;
    assert_eq!(status, 200);
    assert!(
        support::closed_within(&mut idle, Duration::from_secs(3)).await,
        "an idle keep-alive connection is closed"
    );
}

#[tokio::test]
async fn connections_over_the_caps_are_answered_503() {
    let server = Server::start(|config| {
        config.server.max_connections = 5;
        config.server.max_connections_per_ip = 3;
    })
    .await;
    let from = |last_octet: u8| {
        let server = server.address;
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(format!("127.0.0.{last_octet}:0").parse().unwrap())
                .unwrap();
            socket.connect(server).await.unwrap()
        }
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(from(1).await);
    }
    let healthz = b"GET /healthz HTTP/1.1\r\nhost: herald\r\n\r\n";
    let mut refused = from(1).await;
    refused.write_all(healthz).await.unwrap();
    let (status, body) = support::read_raw_response(&mut refused).await;
    assert_eq!(
        (status, code_of(&body)),
        (503, "too_many_connections".to_owned()),
        "per address"
    );
    // Another address may still connect, up to the total.
    for _ in 0..2 {
        held.push(from(2).await);
    }
    let mut refused = from(3).await;
    refused.write_all(healthz).await.unwrap();
    let (status, body) = support::read_raw_response(&mut refused).await;
    assert_eq!(
        (status, code_of(&body)),
        (503, "too_many_connections".to_owned()),
        "in all"
    );
    // A place given back is free again.
    drop(held.remove(0));
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    loop {
        let mut again = from(1).await;
        again.write_all(healthz).await.unwrap();
        let (status, _) = support::read_raw_response(&mut again).await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_does_not_wait_for_half_sent_heads() {
    let server = Server::start(|config| {
        config.server.header_read_timeout = Duration::from_secs(30);
        config.server.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    // A head that will never be finished.
    let mut half_head = TcpStream::connect(server.address).await.unwrap();
    half_head
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: her")
        .await
        .unwrap();
    // A publish whose body is on its way when shutdown starts.
    let key = format!("authorization: Bearer {}\r\n", support::PUBLISHER_KEY);
    let body = br#"{"subject":"late","data":"still delivered"}"#;
    let mut publishing = publish_head(&server, &key, body.len()).await;
    publishing.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let broker = server.broker.clone();
    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    publishing.write_all(&body[10..]).await.unwrap();
    let (status, _) = support::read_raw_response(&mut publishing).await;
    assert_eq!(status, 200, "the publish in flight is answered");
    assert_eq!(broker.metrics().published, 1);
    stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for a head that never came",
        started.elapsed()
    );
    assert!(support::closed_within(&mut half_head, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn one_history_answer_is_bounded_in_bytes_not_only_in_messages() {
    let server = Server::start(|config| {
        config.broker.history.max_bytes = 128 << 20;
    })
    .await;
    // 1 000 messages of 60 KiB: a full page by count would be 60 MB.
    let payload = format!("\"{}\"", "b".repeat(60 << 10));
    for index in 0..1000 {
        let payload = herald_broker::Payload::from_json(payload.clone().into()).unwrap();
        server
            .broker
            .publish(&format!("big.{}", index % 10), payload)
            .unwrap();
    }
    let response = reqwest::get(server.url("/v1/history?subject=big.*"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let messages = body["messages"].as_array().unwrap().len();
    // The queue's byte limit (1 MiB) holds 17 of them.
    assert!((1..=17).contains(&messages), "{messages} messages in one answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_resume_reads_history_off_the_worker_and_delivers_it() {
    // On a multi-threaded runtime the read runs with the worker's other
    // tasks moved away; what the client sees is the same.
    let server = Server::dev().await;
    let mut first = Client::connect(&server).await;
    first.subscribe("feed.*", None).await;
    let mut since = None;
    for n in 0..5 {
        let pos = support::publish(&server, &format!("feed.{n}"), json!(n)).await;
        since.get_or_insert(pos);
    }
    let mut resumed = Client::connect(&server).await;
    resumed.subscribe("feed.*", since.as_deref()).await;
    for expected in 1..5 {
        match resumed.next_event().await {
            ServerEvent::Msg { data, .. } => assert_eq!(data, json!(expected)),
            other => panic!("replayed message {expected}, got {other:?}"),
        }
    }
    let history = json!({"op": "history", "id": 9, "subject": "feed.>"});
    resumed.send(history).await;
    match resumed.next_event().await {
        ServerEvent::History { messages, .. } => assert_eq!(messages.len(), 5),
        other => panic!("a history answer, got {other:?}"),
    }
}
