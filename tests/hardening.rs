//! The server under abuse and at protocol edges, against the real listener:
//! each probe gets a clear error or close code, the server keeps answering,
//! and nothing a correct client sends is lost.

mod support;

use futures_util::{SinkExt, StreamExt};
use herald_broker::protocol::ServerEvent;
use serde_json::json;
use support::{Client, Server};
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
