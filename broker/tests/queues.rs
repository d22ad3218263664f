//! Bounded queues: both overflow policies, exact gap notices, batching, and
//! that one full queue never affects another subscriber.

mod common;

use herald_broker::{Acknowledge, BrokerConfig, CloseReason, OverflowPolicy, QueueLimits, ServerEvent};
use serde_json::json;
use std::time::Duration;

fn config(policy: OverflowPolicy, max_messages: usize, max_bytes: usize) -> BrokerConfig {
    BrokerConfig {
        queue: QueueLimits {
            max_messages,
            max_bytes,
            max_replies: 8,
        },
        overflow_policy: policy,
        ..BrokerConfig::default()
    }
}

#[test]
fn drop_oldest_names_exactly_the_missed_positions() {
    let (broker, _clock) = common::broker(config(OverflowPolicy::DropOldest, 3, 1 << 20));
    let mut slow = common::session(&broker);
    let mut fast = common::session(&broker);
    slow.subscribe(&["feed.*"], None, Acknowledge::Never).unwrap();
    fast.subscribe(&["feed.*"], None, Acknowledge::Never).unwrap();

    let mut positions = Vec::new();
    for n in 0..5 {
        positions.push(broker.publish("feed.a", common::json(&n.to_string())).unwrap());
        // The fast subscriber reads everything as it comes.
        assert_eq!(common::data_of(&common::received_json(&fast)), vec![json!(n)]);
    }

    let events = common::received_json(&slow);
    assert_eq!(
        events[0],
        ServerEvent::Gap {
            subject: "feed.*".into(),
            from: positions[0].token().to_string(),
            to: positions[1].token().to_string(),
            missed: Some(2),
        }
    );
    assert_eq!(common::data_of(&events[1..]), vec![json!(2), json!(3), json!(4)]);
    let metrics = broker.metrics();
    assert_eq!(
        (metrics.published, metrics.delivered, metrics.dropped),
        (5, 10, 2)
    );

    // The gap is owed once; the next batch starts clean.
    broker.publish("feed.a", common::json("5")).unwrap();
    assert_eq!(
        common::received_json(&slow),
        vec![common::received_json(&fast)[0].clone()]
    );
}

#[test]
fn drop_oldest_respects_the_byte_limit() {
    // Each message weighs its payload plus its subject: 1 + 10 + 1 = 12 bytes.
    let (broker, _clock) = common::broker(config(OverflowPolicy::DropOldest, 100, 30));
    let mut slow = common::session(&broker);
    slow.subscribe(&["s"], None, Acknowledge::Never).unwrap();
    for _ in 0..3 {
        broker.publish("s", common::json("\"12345678\"")).unwrap();
    }
    let events = common::received_json(&slow);
    assert!(
        matches!(&events[0], ServerEvent::Gap { missed: Some(1), .. }),
        "{events:?}"
    );
    assert_eq!(common::data_of(&events).len(), 2);

    // A message larger than the whole limit is dropped itself, and owed.
    broker
        .publish("s", common::json(&format!("\"{}\"", "x".repeat(40))))
        .unwrap();
    let events = common::received_json(&slow);
    assert!(
        matches!(&events[..], [ServerEvent::Gap { missed: Some(1), .. }]),
        "{events:?}"
    );
}

#[test]
fn disconnect_policy_evicts_with_a_reason_and_spares_the_others() {
    let (broker, _clock) = common::broker(config(OverflowPolicy::Disconnect, 2, 1 << 20));
    let mut slow = common::session(&broker);
    let mut fast = common::session(&broker);
    slow.subscribe(&["t"], None, Acknowledge::Never).unwrap();
    fast.subscribe(&["t"], None, Acknowledge::Never).unwrap();
    for n in 0..3 {
        broker.publish("t", common::json(&n.to_string())).unwrap();
        assert_eq!(common::data_of(&common::received_json(&fast)), vec![json!(n)]);
    }
    assert!(slow.outbox().is_closed());
    assert_eq!(slow.outbox().close_reason(), Some(CloseReason::SlowConsumer));
    let events = common::received_json(&slow);
    assert!(
        matches!(&events[..], [ServerEvent::Err { id: None, code, .. }] if code == "slow_consumer"),
        "one final err and nothing else: {events:?}"
    );
    assert_eq!(broker.metrics().slow_consumers, 1);
    // Later publishes skip the closed connection.
    broker.publish("t", common::json("9")).unwrap();
    assert!(common::received_json(&slow).is_empty());
    assert_eq!(common::data_of(&common::received_json(&fast)), vec![json!(9)]);
}

#[test]
fn replies_pile_up_only_so_far() {
    let (broker, _clock) = common::broker(config(OverflowPolicy::DropOldest, 10, 1 << 20));
    let mut session = common::session(&broker);
    for _ in 0..9 {
        session.handle(herald_broker::Command::Ping { id: Some(1) });
    }
    assert_eq!(session.outbox().close_reason(), Some(CloseReason::ReplyBacklog));
    let events = common::received_json(&session);
    assert!(matches!(&events[..], [ServerEvent::Err { code, .. }] if code == "reply_backlog"));
}

#[tokio::test]
async fn a_reader_waits_for_reply_room_until_the_writer_takes_the_replies() {
    let (broker, _clock) = common::broker(config(OverflowPolicy::DropOldest, 10, 1 << 20));
    let mut session = common::session(&broker);
    for _ in 0..7 {
        session.handle(herald_broker::Command::Ping { id: Some(1) });
    }
    // Seven of eight: room for one more.
    tokio::time::timeout(Duration::from_millis(100), session.outbox().reply_room())
        .await
        .expect("room while under the limit");
    session.handle(herald_broker::Command::Ping { id: Some(1) });
    let outbox = session.outbox().clone();
    let waiting = tokio::spawn(async move { outbox.reply_room().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "no room while eight replies are unread");
    assert_eq!(common::received_json(&session).len(), 8);
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the take makes room")
        .unwrap();
    assert_eq!(session.outbox().close_reason(), None);
}

#[tokio::test]
async fn writer_waits_then_takes_a_whole_batch() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    let mut session = common::session(&broker);
    session.subscribe(&["w"], None, Acknowledge::Never).unwrap();
    let outbox = session.outbox().clone();
    let writer = tokio::spawn(async move {
        let mut batch = std::collections::VecDeque::new();
        outbox.next_batch(&mut batch).await.map(|()| batch.len())
    });
    tokio::task::yield_now().await;
    for n in 0..10 {
        broker.publish("w", common::json(&n.to_string())).unwrap();
    }
    assert_eq!(writer.await.unwrap(), Ok(10));

    let outbox = session.outbox().clone();
    let writer = tokio::spawn(async move {
        let mut batch = std::collections::VecDeque::new();
        let first = outbox.next_batch(&mut batch).await;
        let second = outbox.next_batch(&mut batch).await;
        (first, second)
    });
    session.outbox().close(CloseReason::Shutdown);
    let (first, second) = writer.await.unwrap();
    assert_eq!(first, Ok(()), "the final err is delivered");
    assert_eq!(second, Err(CloseReason::Shutdown));
}
