//! The guarantees under real threads: publishing alongside subscription
//! churn, resumes racing publishes, and the accounting invariant
//! delivered + reported-as-gap == published.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use herald_broker::protocol::Outbound;
use herald_broker::{
    Acknowledge, AllowAll, BrokerConfig, HistoryLimits, OverflowPolicy, Poll, Position, QueueLimits, Session,
};

const PUBLISHERS: usize = 2;
const PER_PUBLISHER: u64 = 5_000;

fn roomy() -> BrokerConfig {
    BrokerConfig {
        queue: QueueLimits {
            max_messages: 1 << 20,
            max_bytes: 1 << 30,
            max_replies: 1024,
        },
        history: HistoryLimits {
            max_messages_per_subject: 100_000,
            ..HistoryLimits::default()
        },
        ..BrokerConfig::default()
    }
}

/// Publishes `{"p":publisher,"n":n}` on `load.<publisher>` from each thread.
fn spawn_publishers(broker: &Arc<herald_broker::Broker>) -> Vec<thread::JoinHandle<()>> {
    (0..PUBLISHERS)
        .map(|publisher| {
            let broker = broker.clone();
            thread::spawn(move || {
                let subject = format!("load.{publisher}");
                for n in 0..PER_PUBLISHER {
                    broker
                        .publish(&subject, common::json(&format!(r#"{{"p":{publisher},"n":{n}}}"#)))
                        .unwrap();
                }
            })
        })
        .collect()
}

/// (publisher, n) of every message event in a batch.
fn messages(batch: &VecDeque<Outbound>) -> impl Iterator<Item = (u64, u64, Position)> + '_ {
    batch.iter().filter_map(|event| match event {
        Outbound::Message(m) => {
            let value: serde_json::Value = serde_json::from_slice(m.payload().body()).unwrap();
            Some((
                value["p"].as_u64().unwrap(),
                value["n"].as_u64().unwrap(),
                m.position(),
            ))
        }
        _ => None,
    })
}

fn assert_complete_and_ordered(received: &[(u64, u64, Position)]) {
    let mut per_publisher: HashMap<u64, Vec<u64>> = HashMap::new();
    for (publisher, n, _) in received {
        per_publisher.entry(*publisher).or_default().push(*n);
    }
    for publisher in 0..PUBLISHERS as u64 {
        let got = per_publisher.remove(&publisher).unwrap_or_default();
        assert_eq!(
            got.len() as u64,
            PER_PUBLISHER,
            "publisher {publisher}: every message once"
        );
        let first_break = got.windows(2).position(|w| w[0] + 1 != w[1]);
        assert_eq!(
            first_break,
            None,
            "publisher {publisher}: in order, around {:?}",
            first_break.map(|i| &got[i.saturating_sub(3)..(i + 4).min(got.len())])
        );
    }
}

#[test]
fn churn_never_costs_stable_subscribers_a_message() {
    let (broker, _clock) = common::broker(roomy());
    let mut wildcard = common::session(&broker);
    wildcard.subscribe(&["load.*"], None, Acknowledge::Never).unwrap();
    let mut exact: Vec<Session> = (0..PUBLISHERS).map(|_| common::session(&broker)).collect();
    for (publisher, session) in exact.iter_mut().enumerate() {
        session
            .subscribe(&[&format!("load.{publisher}")], None, Acknowledge::Never)
            .unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..2)
        .map(|worker| {
            let broker = broker.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let patterns = ["load.*", "load.0", "load.1", "load.>", ">", "other.*"];
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut session = common::session(&broker);
                    let pattern = patterns[(rounds as usize + worker) % patterns.len()];
                    session.subscribe(&[pattern], None, Acknowledge::Never).unwrap();
                    session.unsubscribe(pattern).unwrap();
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    for publisher in spawn_publishers(&broker) {
        publisher.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let churn_rounds: u64 = churners.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(churn_rounds > 0);

    let all: Vec<_> = messages(&common::take_raw(&wildcard)).collect();
    assert_complete_and_ordered(&all);
    for session in &exact {
        let got: Vec<_> = messages(&common::take_raw(session)).collect();
        assert_eq!(got.len() as u64, PER_PUBLISHER);
        assert!(got.windows(2).all(|w| w[0].1 + 1 == w[1].1 && w[0].2 < w[1].2));
    }
}

/// Reconnects again and again while the publishers run, each time resuming
/// `patterns` from the last position seen, reading a little in between;
/// returns everything received.
fn resume_repeatedly_while_publishing(patterns: &[&str]) -> Vec<(u64, u64, Position)> {
    let (broker, _clock) = common::broker(roomy());
    let publishers = spawn_publishers(&broker);
    let mut received = Vec::new();
    // Position 0 of this epoch: "from the very beginning".
    let mut last = Position::new(common::EPOCH, 0);
    let mut batch = VecDeque::new();
    while publishers.iter().any(|p| !p.is_finished()) || last < broker.last_position() {
        let mut session = common::session(&broker);
        session
            .subscribe(patterns, Some(&last.token().to_string()), Acknowledge::Never)
            .unwrap();
        for _ in 0..3 {
            if let Some(Ok(())) = session.outbox().try_take_batch(&mut batch) {
                assert!(
                    !batch.iter().any(|e| matches!(e, Outbound::Gap(_))),
                    "history covers every resume here"
                );
                let got: Vec<_> = messages(&batch).collect();
                assert!(
                    got.windows(2).all(|w| w[0].2 < w[1].2),
                    "one stream, position order"
                );
                received.extend(got);
                last = received.last().map_or(last, |r| r.2);
            }
            thread::yield_now();
        }
    }
    for publisher in publishers {
        publisher.join().unwrap();
    }
    received
}

#[test]
fn resuming_while_publishing_loses_nothing_and_repeats_nothing() {
    assert_complete_and_ordered(&resume_repeatedly_while_publishing(&["load.*"]));
}

#[test]
fn resuming_several_patterns_with_one_token_loses_nothing_and_repeats_nothing() {
    // One stream over several patterns resumed with one token, as an SSE
    // stream is: one cut for all of them keeps the stream in position order.
    let received = resume_repeatedly_while_publishing(&["load.0", "load.1", "load.*"]);
    assert_complete_and_ordered(&received);
}

#[test]
fn delivered_plus_reported_gaps_equals_published() {
    let config = BrokerConfig {
        queue: QueueLimits {
            max_messages: 16,
            max_bytes: 1 << 20,
            max_replies: 16,
        },
        overflow_policy: OverflowPolicy::DropOldest,
        ..BrokerConfig::default()
    };
    let (broker, _clock) = common::broker(config);
    let mut session = common::session(&broker);
    session.subscribe(&["load.>"], None, Acknowledge::Never).unwrap();
    let outbox = session.outbox().clone();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        thread::spawn(move || {
            let (mut delivered, mut gaps) = (0u64, 0u64);
            let mut batch = VecDeque::new();
            loop {
                let finished = done.load(Ordering::Acquire);
                if let Some(Ok(())) = outbox.try_take_batch(&mut batch) {
                    for event in &batch {
                        match event {
                            Outbound::Message(_) | Outbound::Delivery(..) => delivered += 1,
                            Outbound::Gap(gap) => {
                                gaps += gap.missed.expect("queue drops are counted exactly")
                            }
                            Outbound::Reply(_) => {}
                        }
                    }
                } else if finished {
                    return (delivered, gaps);
                }
                thread::yield_now();
            }
        })
    };
    for publisher in spawn_publishers(&broker) {
        publisher.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let (delivered, gaps) = reader.join().unwrap();
    assert_eq!(delivered + gaps, PUBLISHERS as u64 * PER_PUBLISHER);
    assert_eq!(broker.metrics().dropped, gaps);
    drop(session);
}

#[test]
fn polling_while_publishing_loses_nothing_and_repeats_nothing() {
    let (broker, _clock) = common::broker(roomy());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let publishers = spawn_publishers(&broker);
    let received = runtime.block_on(async {
        let mut received: Vec<(u64, u64, Position)> = Vec::new();
        // From the very beginning: without a cursor a poll starts at the end.
        let mut cursor = Position::new(common::EPOCH, 0).token().to_string();
        let mut polls = 0u64;
        loop {
            let publishing = publishers.iter().any(|p| !p.is_finished());
            if !publishing && received.len() as u64 >= PUBLISHERS as u64 * PER_PUBLISHER {
                break;
            }
            polls += 1;
            let poll = Poll::new(&broker, &AllowAll, &["load.*"], Some(&cursor)).unwrap();
            let mut page = poll.read();
            if page.is_empty() {
                // Alternate between waiting a little and giving up at once,
                // so both ways a wait ends are exercised.
                let mut watch = poll.watch(page.cursor);
                let wait = std::time::Duration::from_micros(if polls.is_multiple_of(2) { 200 } else { 0 });
                page = match tokio::time::timeout(wait, watch.next_page()).await {
                    Ok(page) => page,
                    Err(_) => watch.settle(),
                };
            }
            assert!(
                page.gaps.is_empty(),
                "history covers every poll here: {:?}",
                page.gaps
            );
            for message in &page.messages {
                let value: serde_json::Value = serde_json::from_slice(message.payload().body()).unwrap();
                received.push((
                    value["p"].as_u64().unwrap(),
                    value["n"].as_u64().unwrap(),
                    message.position(),
                ));
            }
            cursor = page.cursor.token().to_string();
            assert!(
                publishing || polls < 1_000_000,
                "polling stopped making progress at {} of {} messages",
                received.len(),
                PUBLISHERS as u64 * PER_PUBLISHER
            );
        }
        received
    });
    for publisher in publishers {
        publisher.join().unwrap();
    }
    assert!(received.windows(2).all(|w| w[0].2 < w[1].2), "position order");
    assert_complete_and_ordered(&received);
    assert_eq!(broker.metrics().subscriptions, 0, "every watch unregistered");
}
