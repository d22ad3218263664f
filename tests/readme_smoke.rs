//! The README's own commands, end to end: the real binary started as the
//! quick start starts it, a publish as its curl line sends it, a WebSocket
//! subscriber receiving it, and SIGTERM for a clean exit.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use support::{serve, Running, HERALD};

#[test]
fn help_and_default_config_read_well() {
    let help = Command::new(HERALD).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.contains("serve") && text.contains("config"), "{text}");

    let defaults = Command::new(HERALD).args(["config", "default"]).output().unwrap();
    assert!(defaults.status.success());
    let text = String::from_utf8(defaults.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:7400\""));

    // Environment overrides reach every key, and are validated like the rest.
    let check = |name: &str, value: &str| {
        Command::new(HERALD)
            .args(["config", "check"])
            .env(name, value)
            .output()
            .unwrap()
    };
    let good = check("HERALD_SERVER__LISTEN", "127.0.0.1:9999");
    assert!(good.status.success());
    assert!(String::from_utf8_lossy(&good.stdout).contains("127.0.0.1:9999"));
    let bad = check("HERALD_BROKER__OVERFLOW_POLICY", "sometimes");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr)
        .to_lowercase()
        .contains("overflow_policy"));

    let bad = Command::new(HERALD)
        .args(["serve", "--config", "/nonexistent/herald.toml"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "a missing config file fails closed");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not exist"));
}

#[test]
fn the_readme_production_config_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```toml\n")
        .find(|block| block.starts_with("# herald.toml"))
        .and_then(|block| block.split("```").next())
        .expect("the README's herald.toml example");
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("herald.toml");
    std::fs::write(&path, block).unwrap();
    let check = Command::new(HERALD)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn anonymous_publishing_is_never_enabled_quietly() {
    for (arguments, environment) in [
        (&["--dev"][..], &[][..]),
        (&[][..], &[("HERALD_AUTH__ANONYMOUS_PUBLISH", "[\"chat.>\"]")][..]),
    ] {
        let (_server, _address, log) = serve(arguments, environment);
        assert!(
            log.iter()
                .any(|line| line.contains("WARN") && line.contains("without a key")),
            "{arguments:?} {environment:?}: {log:#?}"
        );
    }
    let (_server, _address, log) = serve(&[], &[]);
    assert!(!log.iter().any(|line| line.contains("WARN")), "{log:#?}");
}

#[tokio::test]
async fn quick_start_publish_and_subscribe() {
    let (mut child, address, _log) = serve(&["--dev"], &[]);
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws"))
        .await
        .unwrap();
    socket
        .send(Message::text(r#"{"op":"sub","id":1,"subject":"chat.*"}"#))
        .await
        .unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ack: serde_json::Value = serde_json::from_str(ack.to_text().unwrap()).unwrap();
    assert_eq!((ack["op"].as_str(), ack["id"].as_u64()), (Some("ack"), Some(1)));
    assert!(
        ack["pos"].is_string(),
        "the ack carries the position to resume from: {ack}"
    );

    // curl .../v1/publish -H 'content-type: application/json' -d '{"subject":"chat.lobby",...}'
    let response = reqwest::Client::new()
        .post(format!("http://{address}/v1/publish"))
        .header("content-type", "application/json")
        .body(r#"{"subject":"chat.lobby","data":{"text":"hello"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(event["op"], "msg");
    assert_eq!(event["subject"], "chat.lobby");
    assert_eq!(event["data"], serde_json::json!({"text": "hello"}));

    let terminated = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    // The reason arrives as a final err event, then the close frame.
    let last_event = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap();
    assert!(last_event
        .unwrap()
        .unwrap()
        .to_text()
        .unwrap()
        .contains(r#""code":"shutdown""#));
    let close = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap();
    assert!(matches!(close, Some(Ok(Message::Close(Some(frame)))) if u16::from(frame.code) == 1001));
    let status = child.0.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

#[test]
fn a_closed_log_pipe_does_not_bring_the_server_down() {
    let mut child = Running(
        Command::new(HERALD)
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("HERALD_NATS__LISTEN", "127.0.0.1:0")
            .env("HERALD_QUIC__LISTEN", "127.0.0.1:0")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("address=") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the server exited early"
        );
    }
    // The reader goes away (as when a log pipeline is restarted); the
    // shutdown logs into the closed pipe.
    drop(stderr);
    let terminated = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
        "clean exit with nobody reading its log: {status}"
    );
}
