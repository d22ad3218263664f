//! History on disk across restarts of the real binary: after SIGTERM a
//! client resumes with nothing lost and no gap; after SIGKILL what was
//! committed (all but the last flush interval) is still there, and the
//! numbering never reuses a position.

mod support;

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_broker::Position;
use serde_json::{json, Value};
use support::{serve, Running};
use tokio_tungstenite::tungstenite::Message;

/// Herald in development mode with history on disk at `path`.
fn start(path: &Path) -> (Running, String) {
    let path = path.to_str().unwrap();
    let environment = [
        ("HERALD_STORAGE__HISTORY", "disk"),
        ("HERALD_STORAGE__PATH", path),
        ("HERALD_STORAGE__FLUSH_INTERVAL", "50ms"),
    ];
    let (server, address, _log) = serve(&["--dev"], &environment);
    (server, address)
}

fn signal(server: &Running, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([format!("-{name}"), server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Publishes anonymously (the server runs with `--dev`).
async fn publish(address: &str, subject: &str, data: Value) -> String {
    support::publish_to(address, None, subject, data).await
}

/// Subscribes to `room.*` from `since` and reads `expected` messages (and
/// any gap): returns the messages' (pos, data) and the gaps.
async fn resume(address: &str, since: &str, expected: usize) -> (Vec<(String, Value)>, Vec<Value>) {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws"))
        .await
        .unwrap();
    let sub = json!({"op": "sub", "id": 1, "subject": "room.*", "since": since});
    socket.send(Message::text(sub.to_string())).await.unwrap();
    let (mut messages, mut gaps) = (Vec::new(), Vec::new());
    while messages.len() < expected {
        let frame = tokio::time::timeout(support::PATIENCE, socket.next())
            .await
            .expect("the replay within the test's patience")
            .unwrap()
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let event: Value = serde_json::from_str(text.as_str()).unwrap();
        match event["op"].as_str().unwrap() {
            "msg" => messages.push((event["pos"].as_str().unwrap().to_owned(), event["data"].clone())),
            "gap" => gaps.push(event),
            "ack" => assert_eq!(event["pos"], since, "a resume acks its own position"),
            other => panic!("unexpected {other}: {event}"),
        }
    }
    (messages, gaps)
}

fn sequence(pos: &str) -> (u32, u64) {
    let position = Position::from_token(pos).unwrap();
    (position.epoch, position.sequence)
}

#[tokio::test]
async fn a_client_resumes_across_a_clean_restart_with_nothing_lost() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("history.redb");
    let (server, address) = start(&path);
    let start_pos = publish(&address, "lobby", json!("before")).await;
    let mut published = Vec::new();
    for n in 0..30 {
        let subject = if n % 2 == 0 { "room.a" } else { "room.b" };
        published.push((publish(&address, subject, json!(n)).await, json!(n)));
    }
    signal(&server, "TERM");
    let mut server = server;
    assert!(server.0.wait().unwrap().success(), "clean exit on SIGTERM");

    let (_server, address) = start(&path);
    let (messages, gaps) = resume(&address, &start_pos, published.len()).await;
    assert_eq!(messages, published, "every message, at its position, in order");
    assert!(gaps.is_empty(), "no gap after a clean restart: {gaps:?}");
    // Numbering goes on: same epoch, the next sequence.
    let next = publish(&address, "room.a", json!("after")).await;
    let (epoch, last) = sequence(&published.last().unwrap().0);
    assert_eq!(sequence(&next), (epoch, last + 1));
}

#[tokio::test]
async fn after_a_crash_what_was_committed_is_kept_and_no_position_is_reused() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("history.redb");
    let (mut server, address) = start(&path);
    let start_pos = publish(&address, "lobby", json!("before")).await;
    let mut published = Vec::new();
    for n in 0..20 {
        published.push((publish(&address, "room.a", json!(n)).await, json!(n)));
    }
    // Longer than the flush interval: all of it is committed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&server, "KILL");
    let _ = server.0.wait();

    let (_server, address) = start(&path);
    let (messages, gaps) = resume(&address, &start_pos, published.len()).await;
    assert_eq!(messages, published, "what was committed before the crash");
    assert_eq!(gaps.len(), 1, "the resume is told what may be lost: {gaps:?}");
    // Messages delivered but not yet written before a crash had numbers
    // after the last written one: the numbering skips past them.
    let next = publish(&address, "room.a", json!("after")).await;
    let (epoch, last) = sequence(&published.last().unwrap().0);
    let (next_epoch, next_sequence) = sequence(&next);
    assert_eq!(next_epoch, epoch);
    assert!(
        next_sequence > last + herald_store::UNCLEAN_SKIP - 1,
        "{next_sequence}"
    );
}
