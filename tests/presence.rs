//! Presence and subject rules against the real server: users with several
//! connections over WebSocket and SSE join and leave exactly once, abrupt
//! and silent disconnects included; ephemeral subjects never replay;
//! backend-only subjects refuse clients.

mod support;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald::Config;
use herald_broker::protocol::ServerEvent;
use herald_broker::{Encoding, Secret};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use support::{Client, Server, SseClient};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

/// An HS256 JWT, built by hand (independently of Herald's verifier).
fn token(user: &str, publish: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({
        "sub": user,
        "exp": exp,
        "herald": {
            "pub": {"allow": publish},
            "sub": {"allow": ["chat.>"]},
            "info": {"name": user.to_uppercase()}
        }
    });
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let signing_input = format!("{}.{}", part(&json!({"alg": "HS256"})), part(&claims));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn with_rules(config: &mut Config) {
    config.auth.jwt_hs256_secret = Some(Secret(SECRET.into()));
    config.subjects = serde_json::from_value(json!([
        {"pattern": "chat.*.typing", "history_size": 0},
        {"pattern": "chat.*", "presence": true},
        {"pattern": "chat.news.>", "client_publish": false},
    ]))
    .unwrap();
}

/// The next presence event a watcher receives: (action, user, count).
async fn presence_event(watcher: &mut Client) -> (String, String, u64) {
    match watcher.next_event().await {
        ServerEvent::Msg { subject, data, .. } => {
            assert_eq!(subject, "$presence.chat.room1");
            (
                data["action"].as_str().unwrap().to_owned(),
                data["user"].as_str().unwrap().to_owned(),
                data["count"].as_u64().unwrap(),
            )
        }
        other => panic!("a presence event, got {other:?}"),
    }
}

fn event(action: &str, user: &str, count: u64) -> (String, String, u64) {
    (action.into(), user.into(), count)
}

async fn watcher(server: &Server) -> Client {
    let mut watcher = Client::connect_with(server, Encoding::Json, Some(support::PUBLISHER_KEY)).await;
    watcher
        .send(json!({"op": "sub", "id": 1, "subject": "chat.room1", "presence": true}))
        .await;
    assert!(matches!(
        watcher.next_event().await,
        ServerEvent::Ack { id: Some(1), .. }
    ));
    watcher
}

async fn http_presence(server: &Server, credential: &str) -> Value {
    support::get_json(server, "/v1/presence?subject=chat.room1", Some(credential)).await
}

#[tokio::test]
async fn two_users_on_three_connections_join_and_leave_exactly() {
    let server = Server::start_default(with_rules).await;
    let mut watcher = watcher(&server).await;
    let (alice, bob) = (token("alice", &[]), token("bob", &[]));

    let mut alice_ws = Client::connect_with(&server, Encoding::Json, Some(&alice)).await;
    alice_ws.subscribe("chat.room1", None).await;
    assert_eq!(presence_event(&mut watcher).await, event("join", "alice", 1));
    // Her second connection, over SSE, is the same user: no event.
    let mut alice_sse = SseClient::connect(&server, &format!("subject=chat.room1&token={alice}"), None).await;
    assert_eq!(alice_sse.next_event().await.unwrap().event, "ack");
    let mut bob_ws = Client::connect_with(&server, Encoding::Json, Some(&bob)).await;
    bob_ws.subscribe("chat.room1", None).await;
    assert_eq!(presence_event(&mut watcher).await, event("join", "bob", 2));

    // The list and the count, over the protocol and over HTTP.
    alice_ws
        .send(json!({"op": "presence", "id": 5, "subject": "chat.room1"}))
        .await;
    let ServerEvent::Presence {
        id,
        count,
        members,
        truncated,
        ..
    } = alice_ws.next_event().await
    else {
        panic!("a presence answer");
    };
    assert_eq!((id, count, truncated), (Some(5), 2, false));
    let listed: Vec<(&str, &Value)> = members.iter().map(|m| (m.user.as_str(), &m.info)).collect();
    assert_eq!(
        listed,
        [
            ("alice", &json!({"name": "ALICE"})),
            ("bob", &json!({"name": "BOB"}))
        ]
    );
    let body = http_presence(&server, &bob).await;
    assert_eq!(
        (body["count"].as_u64(), body["members"][1]["user"].as_str()),
        (Some(2), Some("bob"))
    );

    // Bob's connection is reset without a close handshake.
    let tcp = match bob_ws.socket.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!("plain TCP"),
    };
    tcp.set_zero_linger().unwrap();
    drop(bob_ws);
    assert_eq!(presence_event(&mut watcher).await, event("leave", "bob", 1));

    // Alice's SSE stream goes; she is still here on her WebSocket.
    drop(alice_sse);
    let gone = async {
        while server.disconnects.count("client_closed") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(support::PATIENCE, gone)
        .await
        .expect("the SSE stream's end is seen");
    assert_eq!(http_presence(&server, support::PUBLISHER_KEY).await["count"], 1);
    alice_ws
        .send(json!({"op": "unsub", "id": 6, "subject": "chat.room1"}))
        .await;
    assert_eq!(presence_event(&mut watcher).await, event("leave", "alice", 0));
    assert_eq!(http_presence(&server, support::PUBLISHER_KEY).await["count"], 0);
}

#[tokio::test]
async fn a_silent_connection_leaves_at_its_idle_timeout() {
    let server = Server::start_default(|config| {
        with_rules(config);
        config.websocket.heartbeat_interval = Duration::from_millis(200);
        config.websocket.idle_timeout = Duration::from_millis(1000);
    })
    .await;
    let mut watcher = watcher(&server).await;
    let mut carol = Client::connect_with(&server, Encoding::Json, Some(&token("carol", &[]))).await;
    carol.subscribe("chat.room1", None).await;
    assert_eq!(presence_event(&mut watcher).await, event("join", "carol", 1));
    // Carol's network goes quiet: she neither reads nor answers pings.
    let started = std::time::Instant::now();
    assert_eq!(presence_event(&mut watcher).await, event("leave", "carol", 0));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "within the idle timeout: {waited:?}"
    );
    drop(carol);
}

#[tokio::test]
async fn subject_rules_keep_typing_ephemeral_and_news_for_backends() {
    let server = Server::start_default(with_rules).await;
    let dave = token("dave", &["chat.>"]);
    let mut page = Client::connect_with(&server, Encoding::Json, Some(&dave)).await;
    let before = server.broker.last_position().token().to_string();
    for subject in ["chat.room1.typing", "chat.room1.messages"] {
        page.send(json!({"op": "pub", "id": 1, "subject": subject, "data": "hi"}))
            .await;
        assert!(matches!(
            page.next_event().await,
            ServerEvent::Ack { id: Some(1), .. }
        ));
    }
    // A client resuming from before both sees the message, not the typing
    // indicator, and no gap for it.
    let mut resumer = Client::connect_with(&server, Encoding::Json, Some(&dave)).await;
    resumer.subscribe("chat.room1.>", Some(&before)).await;
    match resumer.next_event().await {
        ServerEvent::Msg { subject, .. } => assert_eq!(subject, "chat.room1.messages"),
        other => panic!("the kept message only, got {other:?}"),
    }
    let history = support::get_json(
        &server,
        "/v1/history?subject=chat.room1.typing",
        Some(support::PUBLISHER_KEY),
    )
    .await;
    assert_eq!(history["messages"], json!([]));
    assert!(history.get("gap").is_none(), "{history}");

    // chat.news.> is for backends: the token allows it, the rule does not.
    page.send(json!({"op": "pub", "id": 2, "subject": "chat.news.today", "data": 1}))
        .await;
    assert!(
        matches!(page.next_event().await, ServerEvent::Err { id: Some(2), code, .. } if code == "forbidden")
    );
    let status = reqwest::Client::new()
        .post(server.url("/v1/publish"))
        .bearer_auth(support::PUBLISHER_KEY)
        .json(&json!({"subject": "chat.news.today", "data": 1}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}
