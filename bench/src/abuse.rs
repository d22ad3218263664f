//! `herald-bench abuse`: the attacks a client without a key can mount,
//! each for a few seconds against a running Herald with its default limits,
//! while a normal subscriber keeps receiving a steady feed. For each attack
//! it reports the server's peak resident memory, the normal subscriber's
//! latency (p50, p99) and whether it lost anything, and the slowest
//! `/healthz` answer. The attacker connects from 127.0.0.1; the normal
//! clients and the health probe from 127.0.0.2, as they would from other
//! machines (the per-address cap refuses the attacker, not them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::servers::Server;

/// One attack's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct AbuseRecord {
    pub attack: &'static str,
    pub connections: usize,
    pub seconds: f64,
    pub baseline_rss_mb: f64,
    pub peak_rss_mb: f64,
    pub normal_p50_ms: f64,
    pub normal_p99_ms: f64,
    pub normal_published: u64,
    pub normal_received: u64,
    pub slowest_healthz_ms: f64,
}

/// Every attack, one after the other, against `server`.
pub async fn run(server: &Server, connections: usize, seconds: f64) -> anyhow::Result<Vec<AbuseRecord>> {
    let duration = Duration::from_secs_f64(seconds);
    let mut records = Vec::new();
    for attack in ATTACKS {
        let record = under_attack(server, attack, connections, duration).await?;
        eprintln!(
            "{:<22} peak {:>7.1} MB (from {:.1}), normal p99 {:>7.2} ms, {}/{} received, /healthz at worst {:.1} ms",
            record.attack,
            record.peak_rss_mb,
            record.baseline_rss_mb,
            record.normal_p99_ms,
            record.normal_received,
            record.normal_published,
            record.slowest_healthz_ms
        );
        records.push(record);
    }
    Ok(records)
}

const ATTACKS: [&str; 7] = [
    "ping-flood",
    "pipelined-commands",
    "body-before-auth",
    "slow-headers",
    "silent-connections",
    "wildcard-history",
    "padded-payloads",
];

async fn under_attack(
    server: &Server,
    attack: &'static str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<AbuseRecord> {
    let address = server.address;
    if attack == "wildcard-history" {
        seed_subjects(address, 20_000).await?;
    }
    let baseline = server.rss_bytes()?;
    let stop = Arc::new(AtomicBool::new(false));
    let normal = tokio::spawn(normal_feed(address.to_string(), stop.clone()));
    let prober = tokio::spawn(probe_health(address.to_string(), stop.clone()));
    // Let the feed start before the attack.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attacking = tokio::spawn(attack_with(attack, address, connections, duration));
    let mut peak = baseline;
    let started = Instant::now();
    while started.elapsed() < duration {
        peak = peak.max(server.rss_bytes()?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    attacking.abort();
    let _ = attacking.await;
    let (latencies, published, received) = normal.await??;
    let slowest_healthz = prober.await??;
    let megabytes = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    Ok(AbuseRecord {
        attack,
        connections,
        seconds: duration.as_secs_f64(),
        baseline_rss_mb: megabytes(baseline),
        peak_rss_mb: megabytes(peak),
        normal_p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        normal_p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        normal_published: published,
        normal_received: received,
        slowest_healthz_ms: slowest_healthz.as_secs_f64() * 1000.0,
    })
}

/// Starts one attack's connections; they are dropped when the task is.
async fn attack_with(attack: &str, address: std::net::SocketAddr, connections: usize, duration: Duration) {
    // Every connection's task; dropping the set (the attack is aborted)
    // aborts them and closes their connections.
    let mut held = tokio::task::JoinSet::new();
    let end = Instant::now() + duration;
    match attack {
        "ping-flood" | "pipelined-commands" => {
            let burst = if attack == "ping-flood" {
                masked_frames(0x89, b"p".repeat(125).as_slice(), 512)
            } else {
                masked_frames(0x81, br#"{"op":"ping","id":1}"#, 512)
            };
            let burst = Arc::new(burst);
            for _ in 0..connections {
                let Ok(mut tcp) = raw_websocket(address).await else {
                    continue;
                };
                let burst = burst.clone();
                held.spawn(async move {
                    while Instant::now() < end {
                        if tcp.write_all(&burst).await.is_err() {
                            break;
                        }
                    }
                    hold(tcp).await;
                });
            }
        }
        "body-before-auth" => {
            for _ in 0..connections {
                let Ok(mut tcp) = TcpStream::connect(address).await else {
                    continue;
                };
                let head = format!(
                    "POST /v1/publish HTTP/1.1\r\nhost: herald\r\ncontent-type: application/json\r\n\
                     authorization: Bearer not-a-key-of-this-server\r\ncontent-length: {}\r\n\r\n",
                    (1 << 20) - 1
                );
                let body = vec![b' '; 64 << 10];
                held.spawn(async move {
                    let _ = tcp.write_all(head.as_bytes()).await;
                    let _ = tcp.write_all(&body).await;
                    hold(tcp).await;
                });
            }
        }
        "slow-headers" => {
            for _ in 0..connections {
                let Ok(mut tcp) = TcpStream::connect(address).await else {
                    continue;
                };
                held.spawn(async move {
                    let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await;
                    for n in 0.. {
                        if Instant::now() > end
                            || tcp.write_all(format!("x-{n}: y\r\n").as_bytes()).await.is_err()
                        {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    hold(tcp).await;
                });
            }
        }
        "silent-connections" => {
            for _ in 0..connections {
                if let Ok(tcp) = TcpStream::connect(address).await {
                    held.spawn(hold(tcp));
                }
            }
        }
        "wildcard-history" => {
            for _ in 0..16 {
                held.spawn(async move {
                    let Ok(mut tcp) = TcpStream::connect(address).await else {
                        return;
                    };
                    let request = b"GET /v1/history?subject=%3E HTTP/1.1\r\nhost: herald\r\n\r\n";
                    while Instant::now() < end {
                        if tcp.write_all(request).await.is_err() || read_response(&mut tcp).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
        "padded-payloads" => {
            let padding = " ".repeat((1 << 20) - 64);
            let mut tcp = TcpStream::connect(address).await.ok();
            let mut index = 0u64;
            while let Some(connection) = tcp.as_mut() {
                if Instant::now() > end {
                    break;
                }
                let body = format!(r#"{{"subject":"padded.{index}","data":1{padding}}}"#);
                if post(connection, "/v1/publish", &body).await.is_err() {
                    tcp = None;
                }
                index += 1;
            }
        }
        _ => unreachable!("every attack is listed"),
    }
    hold(held).await;
}

/// Keeps `value` (a connection, the attack's tasks) until the task holding
/// it is aborted.
async fn hold<T>(value: T) {
    std::future::pending::<()>().await;
    drop(value);
}

/// Publishes one message every 10 ms with its send time, and receives them
/// on a WebSocket subscriber; returns the latencies (µs), and how many were
/// published and received.
async fn normal_feed(address: String, stop: Arc<AtomicBool>) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let stream = bystander(&address).await?;
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{address}/ws"),
        stream,
        Some(crate::clients::websocket_config()),
    )
    .await?;
    socket
        .send(Message::text(r#"{"op":"sub","id":1,"subject":"normal.feed"}"#))
        .await?;
    let mut publisher = bystander(&address).await?;
    publisher.set_nodelay(true)?;
    let mut latencies = Histogram::<u64>::new(3)?;
    let (mut published, mut received) = (0u64, 0u64);
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = format!(r#"{{"subject":"normal.feed","data":{}}}"#, now_micros());
                let status = post(&mut publisher, "/v1/publish", &body).await?;
                ensure!(status == 200, "the normal publisher got {status}");
                published += 1;
            }
            frame = socket.next() => {
                let frame = frame.context("the normal subscriber was disconnected")??;
                if let Some(sent) = sent_micros(&frame) {
                    latencies.record(now_micros().saturating_sub(sent))?;
                    received += 1;
                }
            }
        }
    }
    // What is still on its way.
    let drain = Instant::now() + Duration::from_secs(2);
    while received < published && Instant::now() < drain {
        match tokio::time::timeout(Duration::from_millis(200), socket.next()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(sent) = sent_micros(&frame) {
                    latencies.record(now_micros().saturating_sub(sent))?;
                    received += 1;
                }
            }
            Ok(_) => bail!("the normal subscriber was disconnected"),
            Err(_) => {}
        }
    }
    Ok((latencies, published, received))
}

fn sent_micros(frame: &Message) -> Option<u64> {
    let Message::Text(text) = frame else { return None };
    let event: serde_json::Value = serde_json::from_str(text.as_str()).ok()?;
    (event["op"] == "msg").then(|| event["data"].as_u64()).flatten()
}

async fn probe_health(address: String, stop: Arc<AtomicBool>) -> anyhow::Result<Duration> {
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut tcp = bystander(&address).await?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: herald\r\nconnection: close\r\n\r\n")
            .await?;
        let status = read_response(&mut tcp).await?;
        ensure!(status == 200, "/healthz answered {status}");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(slowest)
}

/// A connection from 127.0.0.2: a client that is not the attacker.
async fn bystander(address: &str) -> anyhow::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse()?)?;
    Ok(socket.connect(address.parse()?).await?)
}

/// Publishes batches until `count` subjects have history.
async fn seed_subjects(address: std::net::SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut tcp = bystander(&address.to_string()).await?;
    for start in (0..count).step_by(1000) {
        let messages: Vec<String> = (start..start + 1000)
            .map(|index| format!(r#"{{"subject":"seed.{index}","data":1}}"#))
            .collect();
        let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
        let status = post(&mut tcp, "/v1/publish", &body).await?;
        ensure!(status == 200, "seeding history: {status}");
    }
    Ok(())
}

/// A JSON POST on a keep-alive connection; returns the status.
async fn post(tcp: &mut TcpStream, path: &str, body: &str) -> anyhow::Result<u16> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: herald\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    read_response(tcp).await
}

/// Reads one response (head and `content-length` body); returns its status.
async fn read_response(tcp: &mut TcpStream) -> anyhow::Result<u16> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tcp.read_u8().await?;
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.get(9..12).context("a status line")?.parse()?;
    let length = crate::clients::content_length(&head).unwrap_or(0);
    let mut body = vec![0; length];
    tcp.read_exact(&mut body).await?;
    Ok(status)
}

/// A WebSocket upgrade by hand, to send frames no client library would.
pub async fn raw_websocket(address: std::net::SocketAddr) -> anyhow::Result<TcpStream> {
    let mut tcp = TcpStream::connect(address).await?;
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nhost: herald\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await?);
    }
    ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {}",
        String::from_utf8_lossy(&head)
    );
    Ok(tcp)
}

/// `count` masked client frames of one opcode and payload (< 126 bytes).
pub fn masked_frames(first_byte: u8, payload: &[u8], count: usize) -> Vec<u8> {
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8, 1, 2, 3, 4];
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ [1, 2, 3, 4][i % 4]),
    );
    frame.repeat(count)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}
