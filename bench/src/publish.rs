//! The ways a backend publishes, measured against one another and against
//! nats-server in one run (`herald-bench publish`, `make bench-publish`):
//! messages accepted per second with no subscriber, and the server's CPU
//! time per message (from `/proc`, not wall time).
//!
//! - `http`: one message per `POST /v1/publish`, on 8 keep-alive
//!   connections, each waiting for its answer before the next request;
//! - `http-batch`: the same with 100 messages per request;
//! - `websocket`: one connection with the bench's API key, `pub` without
//!   an id (no ack) pipelined, a `ping` every 256 to stay at most 64 pings
//!   ahead;
//! - `nats`: async-nats against Herald's NATS listener, one pipelined
//!   publisher, up to the PONG of its final flush;
//! - `nats-server`: the same against nats-server, the peer.
//!
//! Every server runs fresh for each measurement; rounds alternate the
//! order; the report takes medians.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{Target, BENCH_API_KEY};
use crate::servers::{Binaries, Server};

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PublishRecord {
    pub way: &'static str,
    pub round: usize,
    pub messages: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// The server's CPU time (user + system) per message, in µs.
    pub server_cpu_us_per_message: Option<f64>,
}

pub const WAYS: [&str; 5] = ["http", "http-batch", "websocket", "nats", "nats-server"];
const HTTP_CONNECTIONS: usize = 8;
const BATCH: usize = 100;
const PAYLOAD: usize = 128;
const SUBJECT: &str = "bench.ingest";

/// Runs `rounds` rounds of every way for about `seconds` each; `each` sees
/// every record as it is made.
pub async fn run(
    binaries: &Binaries,
    rounds: usize,
    seconds: f64,
    mut each: impl FnMut(&PublishRecord),
) -> anyhow::Result<Vec<PublishRecord>> {
    let mut records = Vec::new();
    for round in 0..rounds {
        let mut order = WAYS.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for way in order {
            if way == "nats-server" && !binaries.can_run(Target::NatsTcp) {
                continue;
            }
            let (server, address) = match way {
                "nats-server" => {
                    let server = Server::start(Target::NatsTcp, binaries).await?;
                    let address = server.address;
                    (server, address)
                }
                "nats" => Server::herald_with_nats(binaries).await?,
                _ => {
                    let server = Server::start(Target::HeraldJson, binaries).await?;
                    let address = server.address;
                    (server, address)
                }
            };
            let cpu_before = crate::servers::CpuMark::now(&server);
            let started = Instant::now();
            let duration = Duration::from_secs_f64(seconds);
            let messages = match way {
                "http" => http(address, 1, duration).await,
                "http-batch" => http(address, BATCH, duration).await,
                "websocket" => websocket(address, duration).await,
                _ => nats(address, duration).await,
            }
            .with_context(|| format!("{way}, round {round}"))?;
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = cpu_before.spent(&server).server;
            server.stop().await;
            let record = PublishRecord {
                way,
                round,
                messages,
                seconds: elapsed,
                per_second: messages as f64 / elapsed,
                server_cpu_us_per_message: cpu.map(|cpu| cpu * 1e6 / messages.max(1) as f64),
            };
            each(&record);
            records.push(record);
        }
    }
    Ok(records)
}

fn payload() -> String {
    format!("\"{}\"", "x".repeat(PAYLOAD - 2))
}

/// `HTTP_CONNECTIONS` keep-alive connections, each sending a request and
/// reading its answer in turn; returns the messages accepted.
async fn http(address: SocketAddr, per_request: usize, duration: Duration) -> anyhow::Result<u64> {
    let message = format!(r#"{{"subject":"{SUBJECT}","data":{}}}"#, payload());
    let body = if per_request == 1 {
        message
    } else {
        format!(r#"{{"messages":[{}]}}"#, vec![message; per_request].join(","))
    };
    let request = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {BENCH_API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let deadline = Instant::now() + duration;
    let workers = (0..HTTP_CONNECTIONS).map(|_| {
        let request = request.clone();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            let mut buffer = Vec::with_capacity(1 << 16);
            let mut accepted = 0u64;
            while Instant::now() < deadline {
                stream.write_all(request.as_bytes()).await?;
                read_response(&mut stream, &mut buffer).await?;
                accepted += per_request as u64;
            }
            anyhow::Ok(accepted)
        })
    });
    let mut total = 0;
    for worker in workers.collect::<Vec<_>>() {
        total += worker.await??;
    }
    Ok(total)
}

/// Reads one HTTP response (headers and a `Content-Length` body); fails
/// unless it is a 200.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> anyhow::Result<()> {
    buffer.clear();
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buffer[..end])?;
            if !head.starts_with("HTTP/1.1 200") {
                bail!("the server answered {}", head.lines().next().unwrap_or_default());
            }
            let length = crate::clients::content_length(head).context("a response without Content-Length")?;
            while buffer.len() < end + 4 + length {
                read_more(stream, buffer).await?;
            }
            return Ok(());
        }
        read_more(stream, buffer).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 8192];
    let read = stream.read(&mut chunk).await?;
    if read == 0 {
        bail!("the server closed the connection");
    }
    buffer.extend_from_slice(&chunk[..read]);
    Ok(())
}

/// One WebSocket with the bench's API key: `pub` without an id pipelined,
/// a `ping` after every 256, at most 64 pings unanswered.
async fn websocket(address: SocketAddr, duration: Duration) -> anyhow::Result<u64> {
    const PING_EVERY: u64 = 256;
    const PINGS_AHEAD: u64 = 64;
    let url = format!("ws://{address}/ws?token={BENCH_API_KEY}");
    let (socket, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(crate::clients::websocket_config()), false)
            .await?;
    let (mut sink, mut stream) = socket.split();
    let command = format!(r#"{{"op":"pub","subject":"{SUBJECT}","data":{}}}"#, payload());
    let deadline = Instant::now() + duration;
    let (mut sent, mut pings, mut pongs) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..PING_EVERY {
            sink.feed(Message::text(command.clone())).await?;
        }
        sent += PING_EVERY;
        pings += 1;
        sink.send(Message::text(format!(r#"{{"op":"ping","id":{pings}}}"#)))
            .await?;
        while pings - pongs > PINGS_AHEAD {
            pong(&mut stream).await?;
            pongs += 1;
        }
    }
    while pongs < pings {
        pong(&mut stream).await?;
        pongs += 1;
    }
    Ok(sent)
}

/// Reads until the next `pong`; an `err` or the end fails.
async fn pong(
    stream: &mut (impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
              + Unpin),
) -> anyhow::Result<()> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) if text.contains(r#""op":"pong""#) => return Ok(()),
            Some(Ok(Message::Text(text))) if text.contains(r#""op":"err""#) => {
                bail!("the server refused: {text}")
            }
            Some(Ok(_)) => {}
            _ => bail!("the connection ended"),
        }
    }
}

/// async-nats, one pipelined publisher, flushing every 4 096 messages.
async fn nats(address: SocketAddr, duration: Duration) -> anyhow::Result<u64> {
    let client = async_nats::connect(format!("nats://{address}"))
        .await
        .context("the publisher connects")?;
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let deadline = Instant::now() + duration;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        for _ in 0..4096 {
            client.publish(SUBJECT, payload.clone()).await?;
        }
        sent += 4096;
    }
    // The PONG comes after the server has taken every PUB before it.
    client.flush().await?;
    Ok(sent)
}

/// The table of medians, with the ratio to nats-server's messages/s.
pub fn markdown(records: &[PublishRecord]) -> String {
    let median = |way: &str, value: &dyn Fn(&PublishRecord) -> Option<f64>| -> Option<f64> {
        let mut values: Vec<f64> = records
            .iter()
            .filter(|r| r.way == way)
            .filter_map(value)
            .collect();
        values.sort_by(f64::total_cmp);
        (!values.is_empty()).then(|| values[values.len() / 2])
    };
    let peer = median("nats-server", &|r| Some(r.per_second));
    let mut out = String::from(
        "| way | messages/s (median) | server CPU per message | vs nats-server |\n|---|---:|---:|---:|\n",
    );
    for way in WAYS {
        let Some(rate) = median(way, &|r| Some(r.per_second)) else {
            continue;
        };
        let cpu = median(way, &|r| r.server_cpu_us_per_message)
            .map_or("—".to_owned(), |us| format!("{us:.2} µs"));
        let ratio = peer.map_or("—".to_owned(), |peer| format!("{:.2}×", rate / peer));
        out.push_str(&format!("| `{way}` | {:.0} k | {cpu} | {ratio} |\n", rate / 1e3));
    }
    out
}
