//! The server under abuse and at protocol edges, against the real listener:
//! each probe gets a clear error or close code, the server keeps answering,
//! and nothing a correct client sends is lost.

mod support;

use std::time::Duration;

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
        client.socket.feed(Message::text(command.to_string())).await.unwrap();
    }
    client.socket.flush().await.unwrap();
    for expected in 0..COMMANDS {
        match client.next_event().await {
            ServerEvent::Ack { id, .. } => assert_eq!(id, Some(expected)),
            other => panic!("expected ack {expected}, got {other:?}"),
        }
    }
    assert!(server.disconnects.snapshot().is_empty(), "nobody was disconnected");
}
