//! Cursor reads (long polling): answers from history, waits that wake on
//! a publish, cursors that move only forward, every error a code.

mod common;

use std::time::Duration;

use herald_broker::{AllowAll, BrokerConfig, HistoryLimits, Poll, Position, QueueLimits, SessionError};
use serde_json::{json, Value};

fn data(page: &herald_broker::PollPage) -> Vec<Value> {
    page.messages
        .iter()
        .map(|m| serde_json::from_slice(m.payload().body()).unwrap())
        .collect()
}

fn token(position: Position) -> String {
    position.token().to_string()
}

#[test]
fn a_poll_answers_what_came_after_its_cursor_and_moves_it() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    let start = broker.publish("feed.a", common::json("0")).unwrap();
    broker.publish("feed.b", common::json("1")).unwrap();
    broker.publish("other", common::json("\"x\"")).unwrap();
    broker.publish("feed.a", common::json("2")).unwrap();
    let poll = Poll::new(&broker, &AllowAll, &["feed.*"], Some(&token(start))).unwrap();
    let page = poll.read();
    assert_eq!(data(&page), vec![json!(1), json!(2)]);
    assert!(page.gaps.is_empty());
    assert_eq!(page.cursor, broker.last_position(), "past everything it has seen");
    let poll = Poll::new(&broker, &AllowAll, &["feed.*"], Some(&token(page.cursor))).unwrap();
    assert!(poll.read().is_empty(), "nothing twice");
}

#[test]
fn a_poll_without_a_cursor_starts_at_the_end() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    broker.publish("feed.a", common::json("\"old\"")).unwrap();
    let poll = Poll::new(&broker, &AllowAll, &["feed.a"], None).unwrap();
    let page = poll.read();
    assert!(page.is_empty());
    assert_eq!(page.cursor, broker.last_position());
}

#[test]
fn pages_are_bounded_and_continue_where_they_stopped() {
    let config = BrokerConfig {
        queue: QueueLimits {
            max_messages: 3,
            ..QueueLimits::default()
        },
        ..BrokerConfig::default()
    };
    let (broker, _clock) = common::broker(config);
    let start = broker.last_position();
    for n in 0..7 {
        broker.publish("p", common::json(&n.to_string())).unwrap();
    }
    let mut cursor = token(start);
    let mut seen = Vec::new();
    for expected_len in [3, 3, 1, 0] {
        let page = Poll::new(&broker, &AllowAll, &["p"], Some(&cursor))
            .unwrap()
            .read();
        assert_eq!(page.messages.len(), expected_len);
        seen.extend(data(&page));
        cursor = token(page.cursor);
    }
    assert_eq!(seen, (0..7).map(|n| json!(n)).collect::<Vec<_>>());
}

#[test]
fn a_cursor_outside_history_gets_an_explicit_gap() {
    let config = BrokerConfig {
        history: HistoryLimits {
            max_messages_per_subject: 2,
            ..HistoryLimits::default()
        },
        ..BrokerConfig::default()
    };
    let (broker, _clock) = common::broker(config);
    let start = broker.publish("g", common::json("0")).unwrap();
    for n in 1..=4 {
        broker.publish("g", common::json(&n.to_string())).unwrap();
    }
    let page = Poll::new(&broker, &AllowAll, &["g"], Some(&token(start)))
        .unwrap()
        .read();
    assert_eq!(data(&page), vec![json!(3), json!(4)]);
    let gap = &page.gaps[0];
    assert_eq!((gap.from.sequence, gap.to.sequence), (2, 3));
    // A cursor from before a restart (another epoch): everything retained,
    // and a gap for whatever came before.
    let foreign = Position::new(common::EPOCH + 1, 99);
    let page = Poll::new(&broker, &AllowAll, &["g"], Some(&token(foreign)))
        .unwrap()
        .read();
    assert_eq!(data(&page), vec![json!(3), json!(4)]);
    assert_eq!(page.gaps.len(), 1);
    assert_eq!(page.cursor, broker.last_position());
}

#[tokio::test]
async fn a_watch_wakes_on_a_publish_and_settles_forward_on_a_timeout() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    broker.publish("w.a", common::json("\"before\"")).unwrap();
    let poll = Poll::new(&broker, &AllowAll, &["w.*"], None).unwrap();
    let page = poll.read();
    assert!(page.is_empty());
    let mut watch = poll.watch(page.cursor);
    assert_eq!(broker.metrics().subscriptions, 1, "registered while waiting");
    let waiting = tokio::time::timeout(Duration::from_millis(50), watch.next_page()).await;
    assert!(waiting.is_err(), "nothing to answer yet");
    broker.publish("elsewhere", common::json("\"no\"")).unwrap();
    broker.publish("w.b", common::json("\"yes\"")).unwrap();
    let page = tokio::time::timeout(Duration::from_secs(5), watch.next_page())
        .await
        .expect("woken by the publish");
    assert_eq!(data(&page), vec![json!("yes")]);
    assert_eq!(page.cursor, broker.last_position());
    drop(watch);
    assert_eq!(broker.metrics().subscriptions, 0, "unregistered when dropped");

    // Nothing matching arrives: the empty answer still moves the cursor past
    // what was published meanwhile, so the next poll does not read it again.
    let poll = Poll::new(&broker, &AllowAll, &["w.*"], Some(&token(page.cursor))).unwrap();
    let page = poll.read();
    let mut watch = poll.watch(page.cursor);
    let _ = tokio::time::timeout(Duration::from_millis(20), watch.next_page()).await;
    broker.publish("elsewhere", common::json("\"no\"")).unwrap();
    let settled = watch.settle();
    assert!(settled.is_empty());
    assert_eq!(settled.cursor, broker.last_position());
}

#[test]
fn bad_requests_are_refused_with_codes() {
    let (broker, _clock) = common::broker(BrokerConfig::default());
    let code = |result: Result<Poll, SessionError>| result.unwrap_err().code();
    assert_eq!(
        code(Poll::new(&broker, &AllowAll, &["a"], Some("garbage"))),
        "invalid_token"
    );
    assert_eq!(
        code(Poll::new(&broker, &AllowAll, &["a..b"], None)),
        "invalid_subject"
    );
    assert_eq!(
        code(Poll::new(&broker, &AllowAll, &["$SYS.x"], None)),
        "reserved_subject"
    );
    assert_eq!(
        code(Poll::new::<&str>(&broker, &AllowAll, &[], None)),
        "missing_field"
    );
    let closed = herald_broker::Permissions {
        publish: vec![],
        subscribe: vec![herald_broker::Pattern::parse("public.>", &Default::default()).unwrap()],
        ..Default::default()
    };
    assert_eq!(
        code(Poll::new(&broker, &closed, &["public.a", "private.a"], None)),
        "forbidden"
    );
    assert!(Poll::new(&broker, &closed, &["public.a"], None).is_ok());
}
