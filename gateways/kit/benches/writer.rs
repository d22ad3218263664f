//! The writer path: the kit's writer driver taking one connection's queue
//! onto a real loopback TCP socket, with 1 to 256 frames per flush. Time per
//! delivery falls as a flush carries more frames: the system call and the
//! task wake-up are paid per flush, not per frame, which is what
//! `server.write_delay` buys under load. Each size prints its frames per
//! flush, bytes per write system call and writes per delivery.
//!
//! Also the per-recipient steps the WebSocket writer had (checking the
//! shared JSON frame's UTF-8 for a text message, then framing it into the
//! write buffer) against the complete frame made once per message and
//! copied (`Message::transport_frame`, what the gateway does now).
//!
//! Run: `cargo bench -p herald-gateway --bench writer`

use std::collections::VecDeque;
use std::hint::black_box;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_broker::{
    Acknowledge, AllowAll, Authenticator, Broker, BrokerConfig, Encoding, Payload, Permissions, Session,
};
use herald_gateway::{drive, EventWriter, GatewayContext, WriterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A 128-byte JSON payload, as in the end-to-end benchmarks.
fn payload() -> Payload {
    let text = format!(r#"{{"ts":1732540000000,"body":"{}"}}"#, "x".repeat(98));
    Payload::from_json(Bytes::from(text)).unwrap()
}

/// Gathers fed frames and writes them to the socket on flush, as the SSE
/// gateway does; counts what it writes.
struct SocketWriter {
    socket: TcpStream,
    pending: Vec<u8>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    flushes: AtomicU64,
    writes: AtomicU64,
    bytes: AtomicU64,
    flushed: Notify,
}

impl EventWriter for SocketWriter {
    async fn feed(&mut self, frame: Bytes) -> io::Result<()> {
        self.pending.extend_from_slice(&frame);
        self.counts.frames.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        while written < self.pending.len() {
            written += self.socket.write(&self.pending[written..]).await?;
            self.counts.writes.fetch_add(1, Ordering::Relaxed);
        }
        self.counts.bytes.fetch_add(written as u64, Ordering::Relaxed);
        self.counts.flushes.fetch_add(1, Ordering::Relaxed);
        self.pending.clear();
        self.counts.flushed.notify_one();
        Ok(())
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn close(&mut self, _reason: &herald_broker::CloseReason) -> io::Result<()> {
        Ok(())
    }
}

fn frames_per_flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("writer");
    for per_flush in [1u64, 4, 16, 64, 256] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let broker = Broker::new(BrokerConfig::default());
        let auth = Arc::new(Authenticator::new(Vec::new(), Permissions::default()));
        let context = GatewayContext::new(broker.clone(), auth);
        let mut session = Session::new(&broker, Arc::new(AllowAll));
        session.subscribe(&["bench.s"], None, Acknowledge::Never).unwrap();
        let counts = Arc::new(Counts::default());
        let outbox = session.outbox().clone();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let reader = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            socket.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut reader = reader;
                let mut buffer = vec![0; 1 << 16];
                while reader.read(&mut buffer).await.is_ok_and(|read| read > 0) {}
            });
            let mut writer = SocketWriter {
                socket,
                pending: Vec::with_capacity(1 << 16),
                counts: counts.clone(),
            };
            let context = context.clone();
            tokio::spawn(async move {
                let config = WriterConfig {
                    heartbeat_interval: Duration::from_secs(3600),
                    write_timeout: Duration::from_secs(10),
                    max_duration: None,
                    access_expires_at_millis: None,
                    write_delay: Duration::ZERO,
                };
                drive(&mut writer, &outbox, Encoding::Json, &config, &context).await
            });
        });
        let payload = payload();
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("frames_per_flush", per_flush), |b| {
            b.iter_custom(|deliveries| {
                runtime.block_on(async {
                    let start = Instant::now();
                    let mut sent = 0;
                    let first = counts.frames.load(Ordering::Relaxed);
                    while sent < deliveries {
                        let burst = per_flush.min(deliveries - sent);
                        for _ in 0..burst {
                            broker.publish("bench.s", payload.clone()).unwrap();
                        }
                        sent += burst;
                        while counts.frames.load(Ordering::Relaxed) - first < sent {
                            counts.flushed.notified().await;
                        }
                    }
                    start.elapsed()
                })
            })
        });
        let frames = counts.frames.load(Ordering::Relaxed) as f64;
        let flushes = counts.flushes.load(Ordering::Relaxed) as f64;
        let writes = counts.writes.load(Ordering::Relaxed) as f64;
        let bytes = counts.bytes.load(Ordering::Relaxed) as f64;
        println!(
            "writer/frames_per_flush/{per_flush}: {:.1} frames per flush, {:.0} bytes per write, {:.3} writes per delivery",
            frames / flushes,
            bytes / writes,
            writes / frames
        );
        drop(session);
    }
    group.finish();
}

/// A final text frame's header, unmasked, for a payload under 64 KiB.
fn put_header(out: &mut Vec<u8>, length: usize) {
    out.push(0x81);
    if length < 126 {
        out.push(length as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(length as u16).to_be_bytes());
    }
}

fn websocket_text(c: &mut Criterion) {
    const RECIPIENTS: usize = 1000;
    let broker = Broker::new(BrokerConfig::default());
    let mut session = Session::new(&broker, Arc::new(AllowAll));
    session.subscribe(&["bench.s"], None, Acknowledge::Never).unwrap();
    let payload = payload();
    let mut group = c.benchmark_group("websocket_frame");
    group.throughput(Throughput::Elements(RECIPIENTS as u64));
    let mut batch = VecDeque::new();
    let mut next_message = || {
        broker.publish("bench.s", payload.clone()).unwrap();
        session.outbox().try_take_batch(&mut batch).unwrap().unwrap();
        batch
            .pop_front()
            .and_then(|event| event.message().cloned())
            .unwrap()
    };
    // Before: per recipient, the shared JSON frame's UTF-8 checked for a
    // text message, then framed into the connection's write buffer.
    group.bench_function(BenchmarkId::new("framed_per_recipient", RECIPIENTS), |b| {
        let mut out = Vec::with_capacity(1 << 16);
        b.iter_batched(
            &mut next_message,
            |message| {
                out.clear();
                for _ in 0..RECIPIENTS {
                    let text = Utf8Bytes::try_from(message.frame(Encoding::Json)).unwrap();
                    put_header(&mut out, text.len());
                    out.extend_from_slice(text.as_bytes());
                }
                black_box(&out);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // Now: the complete frame made once per message, each recipient copies it.
    group.bench_function(BenchmarkId::new("made_once_copied", RECIPIENTS), |b| {
        let mut out = Vec::with_capacity(1 << 16);
        b.iter_batched(
            &mut next_message,
            |message| {
                out.clear();
                for _ in 0..RECIPIENTS {
                    let frame = message.transport_frame(Encoding::Json, |message| {
                        let json = message.frame(Encoding::Json);
                        let mut frame = Vec::with_capacity(json.len() + 4);
                        put_header(&mut frame, json.len());
                        frame.extend_from_slice(&json);
                        Bytes::from(frame)
                    });
                    out.extend_from_slice(frame);
                }
                black_box(&out);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, frames_per_flush, websocket_text);
criterion_main!(benches);
