//! The subscription index on its own, publishing under subscription churn,
//! and joining a room of 100 000 subscribers.
//!
//! Run: `cargo bench -p herald-broker --bench router`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use herald_broker::router::Router;
use herald_broker::{Acknowledge, AllowAll, Broker, BrokerConfig, Pattern, Payload, Session, SubjectLimits};

const SUBSCRIPTIONS: u32 = 100_000;

fn pattern(text: &str) -> Pattern {
    Pattern::parse(text, &SubjectLimits::default()).unwrap()
}

/// 100 000 subscriptions: 90% exact (`tenant{t}.room{r}.events`), 10%
/// wildcards (`tenant{t}.*.events` and `tenant{t}.room{r}.>`).
fn populated_router() -> Router<u32> {
    let router = Router::new();
    for id in 0..SUBSCRIPTIONS {
        let (tenant, room) = (id % 1000, id / 1000);
        let text = match id % 10 {
            0 if room % 2 == 0 => format!("tenant{tenant}.*.events"),
            0 => format!("tenant{tenant}.room{room}.>"),
            _ => format!("tenant{tenant}.room{room}.events"),
        };
        router.subscribe(&pattern(&text), id);
    }
    router
}

fn subjects() -> Vec<String> {
    (0..1024u32)
        .map(|i| format!("tenant{}.room{}.events", (i * 7919) % 1000, (i * 104_729) % 100))
        .collect()
}

fn matching(c: &mut Criterion) {
    let router = populated_router();
    let subjects = subjects();
    let mut group = c.benchmark_group("match_100k_subscriptions");
    group.bench_function("router", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % subjects.len();
            black_box(router.matches(&subjects[i]).len())
        })
    });
    // Peer: one std HashMap lookup of exact subjects only, no wildcards,
    // no concurrency. The floor any index pays.
    let mut exact: HashMap<String, Vec<u32>> = HashMap::new();
    for id in 0..SUBSCRIPTIONS {
        exact
            .entry(format!("tenant{}.room{}.events", id % 1000, id / 1000))
            .or_default()
            .push(id);
    }
    group.bench_function("baseline_hashmap_exact_only", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % subjects.len();
            black_box(exact.get(&subjects[i]).map(Vec::len))
        })
    });
    group.finish();
}

/// Publish cost alone, then with another thread subscribing and
/// unsubscribing as fast as it can: on other subjects, on wildcards, and on
/// the very subject being published to.
fn publish_under_churn(c: &mut Criterion) {
    let payload = Payload::from_json(Bytes::from_static(br#"{"n":1}"#)).unwrap();
    let mut group = c.benchmark_group("publish_under_churn");
    for churn in ["none", "other_subjects", "wildcards", "same_subject"] {
        let broker = Broker::new(BrokerConfig::default());
        let mut readers = Vec::new();
        for _ in 0..100 {
            let mut session = Session::new(&broker, Arc::new(AllowAll));
            session
                .subscribe(&["hot.subject"], None, Acknowledge::Never)
                .unwrap();
            readers.push(session);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let churner = (churn != "none").then(|| {
            let (broker, stop) = (broker.clone(), stop.clone());
            thread::spawn(move || {
                let mut session = Session::new(&broker, Arc::new(AllowAll));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let text = match churn {
                        "other_subjects" => format!("cold.{}", n % 10_000),
                        "wildcards" => format!("hot.{}.>", n % 100),
                        _ => "hot.subject".to_owned(),
                    };
                    session.subscribe(&[&text], None, Acknowledge::Never).unwrap();
                    session.unsubscribe(&text).unwrap();
                    n += 1;
                }
                n
            })
        });
        let mut batch = std::collections::VecDeque::new();
        group.bench_with_input(BenchmarkId::from_parameter(churn), &churn, |b, _| {
            let mut published = 0u32;
            b.iter(|| {
                black_box(broker.publish("hot.subject", payload.clone()).unwrap());
                published += 1;
                if published.is_multiple_of(512) {
                    for reader in &readers {
                        let _ = reader.outbox().try_take_batch(&mut batch);
                    }
                }
            })
        });
        stop.store(true, Ordering::Relaxed);
        if let Some(churner) = churner {
            let rounds = churner.join().unwrap();
            eprintln!("publish_under_churn/{churn}: churn thread made {rounds} subscribe+unsubscribe rounds");
        }
    }
    group.finish();
}

/// One subscriber joining and leaving a room (one exact subject) that
/// already has `members` subscribers: what presence rooms cost as they grow.
/// Subscribers are reference-counted, one allocation each, as the broker's
/// are (a connection's outbox): copying a list costs an atomic increment
/// per subscriber on its own cache line.
fn join_a_large_room(c: &mut Criterion) {
    let mut group = c.benchmark_group("join_and_leave_a_room");
    let room = pattern("stadium");
    for members in [1_000u32, 100_000] {
        let router: Router<Arc<u32>> = Router::new();
        for id in 0..members {
            router.subscribe(&room, Arc::new(id));
        }
        let newcomer = Arc::new(members);
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| {
                router.subscribe(&room, newcomer.clone());
                router.unsubscribe(&room, &newcomer);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matching, publish_under_churn, join_a_large_room);
criterion_main!(benches);
