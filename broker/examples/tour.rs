//! A tour of the broker core, in-process: subscribe with a wildcard,
//! publish, lose a connection, resume from the last position, and see a
//! full queue report exactly what it dropped.
//!
//! Run: `cargo run -p herald-broker --example tour`

use std::collections::VecDeque;
use std::sync::Arc;

use herald_broker::{Acknowledge, AllowAll, Broker, BrokerConfig, Encoding, Payload, QueueLimits, Session};

fn payload(json: &str) -> Payload {
    Payload::from_json(json.to_owned().into()).expect("valid JSON")
}

/// Prints what the session's client would receive, as JSON frames.
fn show(label: &str, session: &Session) {
    let mut batch = VecDeque::new();
    if let Some(Ok(())) = session.outbox().try_take_batch(&mut batch) {
        for event in &batch {
            println!(
                "{label} <- {}",
                String::from_utf8_lossy(&event.encode(Encoding::Json))
            );
        }
    }
}

fn main() {
    let config = BrokerConfig {
        queue: QueueLimits {
            max_messages: 2,
            ..QueueLimits::default()
        },
        ..BrokerConfig::default()
    };
    let broker = Broker::new(config);

    let mut alice = Session::new(&broker, Arc::new(AllowAll));
    alice
        .subscribe(&["chat.*"], None, Acknowledge::command(Some(1)))
        .expect("valid pattern");
    broker
        .publish("chat.lobby", payload(r#"{"text":"hello"}"#))
        .unwrap();
    show("alice", &alice);
    let last_seen = broker.last_position();

    println!("-- alice's connection drops; two messages are published meanwhile");
    drop(alice);
    broker
        .publish("chat.lobby", payload(r#"{"text":"you there?"}"#))
        .unwrap();
    broker
        .publish("chat.news", payload(r#"{"text":"breaking"}"#))
        .unwrap();

    println!("-- alice reconnects and resumes from {}", last_seen.token());
    let mut alice = Session::new(&broker, Arc::new(AllowAll));
    alice
        .subscribe(
            &["chat.*"],
            Some(last_seen.token().as_str()),
            Acknowledge::command(Some(2)),
        )
        .expect("valid token");
    show("alice", &alice);

    println!("-- alice stops reading; her queue holds 2 messages");
    for n in 0..4 {
        broker
            .publish("chat.lobby", payload(&format!(r#"{{"n":{n}}}"#)))
            .unwrap();
    }
    show("alice", &alice);
    println!("-- metrics: {:?}", broker.metrics());
}
