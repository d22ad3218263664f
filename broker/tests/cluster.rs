//! A clustered broker: publishes go to an upstream, and only what the
//! cluster's log hands back through `apply` is numbered and delivered.

mod common;

use std::sync::{Arc, Mutex};

use common::{broker, json, received_json, session};
use herald_broker::Clock;
use herald_broker::{
    Acknowledge, Acknowledgement, BrokerConfig, ClusterError, Envelope, Forwarded, Position, ServerEvent,
    Upstream,
};

/// An upstream that keeps what it is given, for the test to order.
#[derive(Default)]
struct Log {
    forwarded: Mutex<Vec<(Forwarded, Acknowledgement)>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Log")
    }
}

impl Upstream for Log {
    fn forward(&self, message: Forwarded, done: Acknowledgement) {
        self.forwarded.lock().unwrap().push((message, done));
    }
}

#[test]
fn a_clustered_broker_numbers_nothing_itself_and_delivers_what_the_log_orders() {
    let (broker, _) = broker(BrokerConfig::default());
    let log = Arc::new(Log::default());
    assert!(broker.set_upstream(log.clone()));
    let mut reader = session(&broker);
    reader.subscribe(&["a.*"], None, Acknowledge::Never).unwrap();
    let writer = session(&broker);
    let answers = Arc::new(Mutex::new(Vec::new()));
    let answer = |answers: &Arc<Mutex<Vec<_>>>| -> Acknowledgement {
        let answers = answers.clone();
        Box::new(move |result| answers.lock().unwrap().push(result))
    };
    writer
        .submit("a.x", json("1"), Envelope::default(), true, answer(&answers))
        .unwrap();
    // The synchronous path would need a position it cannot have.
    assert!(broker.publish("a.x", json("2")).is_err());
    // Refused before anything is made for it: no history channel either.
    let subjects = broker.metrics().history_subjects;
    assert!(writer
        .publish_with("b.y", json("3"), Envelope::default(), true)
        .is_err());
    assert_eq!(broker.metrics().history_subjects, subjects);
    assert!(
        received_json(&reader).is_empty(),
        "nothing is delivered before the log orders it"
    );

    let (forwarded, done) = log.forwarded.lock().unwrap().pop().unwrap();
    assert_eq!(forwarded.subject.as_str(), "a.x");
    // The log orders it at 41 (other nodes published before).
    assert!(broker
        .apply(
            "a.x",
            41,
            1_000,
            forwarded.payload,
            forwarded.envelope,
            None,
            true
        )
        .unwrap());
    done(Ok(Some(Position::new(broker.epoch(), 41))));
    assert_eq!(
        answers.lock().unwrap()[0],
        Ok(Some(Position::new(broker.epoch(), 41)))
    );
    // What the log holds is checked like any publish: too large, or on an
    // invalid subject, it is refused (and skipped by every node alike).
    let huge = json(&format!(
        "\"{}\"",
        "x".repeat(BrokerConfig::default().max_payload_bytes)
    ));
    assert!(broker
        .apply("a.x", 42, 1_000, huge, Envelope::default(), None, true)
        .is_err());
    assert!(broker
        .apply("a..x", 43, 1_000, json("1"), Envelope::default(), None, true)
        .is_err());
    // A repeat of a sequence already applied is ignored.
    assert!(!broker
        .apply("a.x", 41, 1_000, json("1"), Envelope::default(), None, true)
        .unwrap());
    let events = received_json(&reader);
    assert_eq!(events.len(), 1);
    let ServerEvent::Msg { pos, ts, .. } = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        Position::from_token(pos).unwrap(),
        Position::new(broker.epoch(), 41)
    );
    assert_eq!(*ts, 1_000, "the log's timestamp, the same on every node");

    // A refusal reaches the publisher as its error.
    writer
        .submit("a.y", json("3"), Envelope::default(), true, answer(&answers))
        .unwrap();
    let (_, done) = log.forwarded.lock().unwrap().pop().unwrap();
    done(Err(ClusterError::Unavailable {
        state: "disconnected",
    }));
    assert!(matches!(
        answers.lock().unwrap()[1],
        Err(ClusterError::Unavailable { .. })
    ));
}

#[test]
fn a_publisher_without_echo_does_not_get_its_own_message_back_from_the_log() {
    let (broker, _) = broker(BrokerConfig::default());
    let log = Arc::new(Log::default());
    broker.set_upstream(log.clone());
    let mut publisher = session(&broker);
    publisher.subscribe(&["e"], None, Acknowledge::Never).unwrap();
    let mut other = session(&broker);
    other.subscribe(&["e"], None, Acknowledge::Never).unwrap();
    publisher
        .submit("e", json("1"), Envelope::default(), false, Box::new(|_| {}))
        .unwrap();
    let (forwarded, _) = log.forwarded.lock().unwrap().pop().unwrap();
    let key = forwarded.echo_key.expect("the connection's key travels with it");
    broker
        .apply("e", 1, 0, forwarded.payload, forwarded.envelope, Some(key), true)
        .unwrap();
    assert!(received_json(&publisher).is_empty());
    assert_eq!(received_json(&other).len(), 1);
}

#[test]
fn sequences_the_log_lost_are_a_gap_live_and_on_resume() {
    let (broker, clock) = broker(BrokerConfig::default());
    broker.set_upstream(Arc::new(Log::default()));
    let mut live = session(&broker);
    live.subscribe(&["l.>"], None, Acknowledge::Never).unwrap();
    let now = clock.now_millis();
    broker
        .apply("l.a", 1, now, json("1"), Envelope::default(), None, true)
        .unwrap();
    broker.skip_lost(4);
    broker
        .apply("l.a", 5, now, json("5"), Envelope::default(), None, true)
        .unwrap();
    let events = received_json(&live);
    let epoch = broker.epoch();
    let token = |sequence| Position::new(epoch, sequence).token().to_string();
    match &events[..] {
        [ServerEvent::Msg { pos: first, .. }, ServerEvent::Gap {
            subject,
            from,
            to,
            missed: None,
        }, ServerEvent::Msg { pos: last, .. }] => {
            assert_eq!(
                (first, subject.as_str(), from, to, last),
                (&token(1), "l.>", &token(2), &token(4), &token(5))
            );
        }
        other => panic!("expected msg, gap, msg; got {other:?}"),
    }
    // A client resuming from before the loss is told too.
    let mut resumed = session(&broker);
    resumed
        .subscribe(&["l.>"], Some(&token(1)), Acknowledge::Never)
        .unwrap();
    let events = received_json(&resumed);
    assert!(
        matches!(&events[0], ServerEvent::Gap { .. }) && events.len() == 2,
        "{events:?}"
    );
    assert!(
        matches!(&events[1], ServerEvent::Msg { pos, .. } if *pos == token(5)),
        "{events:?}"
    );
}

#[tokio::test]
async fn publishes_waiting_for_the_cluster_hold_room_in_the_reply_queue() {
    let config = BrokerConfig {
        queue: herald_broker::QueueLimits {
            max_replies: 4,
            ..BrokerConfig::default().queue
        },
        ..BrokerConfig::default()
    };
    let (broker, _) = broker(config);
    let log = Arc::new(Log::default());
    broker.set_upstream(log.clone());
    let mut session = session(&broker);
    let publish = |n: u64| {
        let frame = bytes::Bytes::from(format!(r#"{{"op":"pub","id":{n},"subject":"r","data":{n}}}"#));
        herald_broker::decode_command(herald_broker::Encoding::Json, &frame).unwrap()
    };
    for n in 0..4 {
        session.handle(publish(n));
    }
    // Four answers are owed: a reader must not take a fifth command.
    let wait = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        session.outbox().reply_room(),
    );
    assert!(wait.await.is_err(), "no room while four answers are owed");
    let (_, done) = log.forwarded.lock().unwrap().remove(0);
    done(Ok(Some(Position::new(broker.epoch(), 1))));
    let events = received_json(&session);
    assert!(
        matches!(events[..], [ServerEvent::Ack { id: Some(0), .. }]),
        "{events:?}"
    );
    tokio::time::timeout(std::time::Duration::from_secs(1), session.outbox().reply_room())
        .await
        .expect("room again once an answer is taken");
    // Answered late, still answered: never closed for a backlog it was promised.
    for (_, done) in log.forwarded.lock().unwrap().drain(..) {
        done(Err(ClusterError::Busy { pending: 1 }));
    }
    assert_eq!(received_json(&session).len(), 3);
    assert!(!session.outbox().is_closed());
}
