//! Publish → match → enqueue, the broker's hot path, against a featureless
//! baseline: the same fan-out as a bare loop pushing a shared message into
//! N mutex-guarded queues. The ratio is what the broker's bookkeeping costs.
//!
//! Run: `cargo bench -p herald-broker --bench fanout`

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_broker::{
    Acknowledge, AllowAll, Broker, BrokerConfig, Encoding, HistoryLimits, Payload, QueueLimits, Session,
};

/// A 128-byte JSON payload, as in the end-to-end benchmarks.
fn payload() -> Payload {
    let text = format!(r#"{{"ts":1732540000000,"body":"{}"}}"#, "x".repeat(98));
    assert_eq!(text.len(), 128);
    Payload::from_json(Bytes::from(text)).unwrap()
}

fn config() -> BrokerConfig {
    BrokerConfig {
        queue: QueueLimits {
            max_messages: 1 << 16,
            max_bytes: 1 << 30,
            max_replies: 16,
        },
        history: HistoryLimits {
            max_messages_per_subject: 100,
            ..HistoryLimits::default()
        },
        ..BrokerConfig::default()
    }
}

/// Publishes in chunks, timing only the publishes; queues are drained
/// between chunks so they never overflow.
fn publish_timed(broker: &Broker, sessions: &[Session], payload: &Payload, iters: u64) -> Duration {
    const CHUNK: u64 = 256;
    let mut batch = VecDeque::new();
    let mut elapsed = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = CHUNK.min(iters - done);
        let start = Instant::now();
        for _ in 0..n {
            black_box(broker.publish("bench.subject", payload.clone()).unwrap());
        }
        elapsed += start.elapsed();
        for session in sessions {
            let _ = session.outbox().try_take_batch(&mut batch);
            batch.clear();
        }
        done += n;
    }
    elapsed
}

fn fanout(c: &mut Criterion) {
    let payload = payload();
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1usize, 1_000, 10_000] {
        group.throughput(Throughput::Elements(subscribers as u64));
        let broker = Broker::new(config());
        let sessions: Vec<Session> = (0..subscribers)
            .map(|_| {
                let mut session = Session::new(&broker, Arc::new(AllowAll));
                session
                    .subscribe(&["bench.subject"], None, Acknowledge::Never)
                    .unwrap();
                session
            })
            .collect();
        group.bench_with_input(
            BenchmarkId::new("broker_publish", subscribers),
            &subscribers,
            |b, _| b.iter_custom(|iters| publish_timed(&broker, &sessions, &payload, iters)),
        );

        // The baseline: what fan-out costs with no subjects, positions,
        // history, limits or policies at all.
        let queues: Vec<Mutex<VecDeque<Arc<Bytes>>>> =
            (0..subscribers).map(|_| Mutex::new(VecDeque::new())).collect();
        let message = Arc::new(payload.body().clone());
        group.bench_with_input(
            BenchmarkId::new("baseline_push", subscribers),
            &subscribers,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        for queue in &queues {
                            queue.lock().unwrap().push_back(message.clone());
                        }
                        elapsed += start.elapsed();
                        if queues[0].lock().unwrap().len() >= 256 {
                            queues.iter().for_each(|q| q.lock().unwrap().clear());
                        }
                    }
                    elapsed
                })
            },
        );
    }
    group.finish();
}

/// Encoding the `msg` frame: once per message, whatever the fan-out.
fn encode(c: &mut Criterion) {
    let broker = Broker::new(config());
    let mut session = Session::new(&broker, Arc::new(AllowAll));
    session
        .subscribe(&["bench.subject"], None, Acknowledge::Never)
        .unwrap();
    let mut group = c.benchmark_group("encode_msg_frame");
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        group.bench_function(format!("{encoding:?}"), |b| {
            b.iter_batched(
                || {
                    broker.publish("bench.subject", payload()).unwrap();
                    let mut batch = VecDeque::new();
                    session.outbox().try_take_batch(&mut batch);
                    batch.pop_front().unwrap()
                },
                |event| black_box(event.encode(encoding)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, fanout, encode);
criterion_main!(benches);
