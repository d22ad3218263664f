//! # herald-bench
//!
//! Herald's end-to-end load generator. It starts the real `herald` binary
//! (release build) on a loopback port, connects real WebSocket clients and
//! measures from the outside:
//!
//! - `fanout`: one publisher → N subscribers on one subject at a fixed
//!   publish rate; deliveries per second, loss, publish-to-receive latency
//!   percentiles (hdrhistogram).
//! - `idle`: C idle connections, each subscribed to its own subject; the
//!   server's resident memory per connection.
//!
//! Client and server share the machine, so figures are for this machine
//! and this client; `docs/benchmarks.md` says how they were produced.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(name = "herald-bench")]
struct Cli {
    /// The herald binary to start (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/herald")]
    herald: PathBuf,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One publisher, N subscribers on one subject, fixed publish rate.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Messages per second published.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Payload size in bytes (the JSON `data`, timestamp included).
        #[arg(long, default_value_t = 128)]
        payload: usize,
    },
    /// C idle connections; the server's memory per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = rlimit::increase_nofile_limit(1 << 20);
    let mut server = Server::start(&cli.herald).await?;
    let result = match cli.scenario {
        Scenario::Fanout {
            subscribers,
            rate,
            seconds,
            payload,
        } => fanout(&server, subscribers, rate, seconds, payload).await,
        Scenario::Idle { connections } => idle(&server, connections).await,
    };
    server.stop().await;
    result
}

struct Server {
    child: Child,
    address: String,
}

impl Server {
    async fn start(binary: &PathBuf) -> anyhow::Result<Server> {
        if !binary.exists() {
            bail!(
                "{} not found: run `cargo build --release` first",
                binary.display()
            );
        }
        let mut child = Command::new(binary)
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn,herald=info")
            // The publisher sends far more than the default flood limit.
            .env("HERALD_WEBSOCKET__MAX_COMMANDS_PER_SECOND", "10000000")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start herald")?;
        let mut lines = BufReader::new(child.stderr.take().context("no stderr")?).lines();
        let address = loop {
            let Some(line) = lines.next_line().await? else {
                bail!("herald exited before listening");
            };
            if let Some(rest) = line.split("address=").nth(1) {
                break rest.split_whitespace().next().unwrap_or_default().to_owned();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server { child, address })
    }

    /// Resident memory of the server process, in bytes.
    fn rss_bytes(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("server exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(kib * 1024)
    }

    async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Reads the `"ts":<micros>` the publisher put at the front of `data`
/// without parsing the whole event: the client must stay cheaper than the
/// server it measures.
fn timestamp_of(frame: &str) -> Option<u64> {
    let start = frame.find("\"ts\":")? + 5;
    let digits = &frame[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_and_subscribe(address: &str, subject: &str) -> anyhow::Result<Socket> {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws")).await?;
    socket
        .send(Message::text(format!(
            r#"{{"op":"sub","id":1,"subject":"{subject}"}}"#
        )))
        .await?;
    match socket.next().await {
        Some(Ok(Message::Text(ack))) if ack.contains(r#""op":"ack""#) => Ok(socket),
        other => bail!("subscription not acknowledged: {other:?}"),
    }
}

async fn fanout(
    server: &Server,
    subscribers: usize,
    rate: u64,
    seconds: u64,
    payload: usize,
) -> anyhow::Result<()> {
    let mut sockets = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        sockets.push(connect_and_subscribe(&server.address, "bench.fanout").await?);
    }
    let total_messages = rate * seconds;
    let receivers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                let (mut received, mut gaps) = (0u64, 0u64);
                let deadline = tokio::time::sleep(Duration::from_secs(seconds + 5));
                tokio::pin!(deadline);
                while received < total_messages {
                    let frame = tokio::select! {
                        frame = socket.next() => frame,
                        () = &mut deadline => break,
                    };
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(sent) = timestamp_of(&text) {
                                received += 1;
                                let _ = latency.record(now_micros().saturating_sub(sent).max(1));
                            } else if text.contains(r#""op":"gap""#) {
                                gaps += 1;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
                (received, gaps, latency)
            })
        })
        .collect();

    let (mut publisher, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.address)).await?;
    let padding = "x".repeat(payload.saturating_sub(40));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    for n in 0..total_messages {
        let due = started + interval.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let data = format!(r#"{{"ts":{},"n":{n},"pad":"{padding}"}}"#, now_micros());
        publisher
            .send(Message::text(format!(
                r#"{{"op":"pub","subject":"bench.fanout","data":{data}}}"#
            )))
            .await?;
    }
    let publish_seconds = started.elapsed().as_secs_f64();

    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut delivered, mut gaps) = (0u64, 0u64);
    for receiver in receivers {
        let (received, gap_events, histogram) = receiver.await?;
        delivered += received;
        gaps += gap_events;
        latency.add(histogram)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = total_messages * subscribers as u64;
    let report = serde_json::json!({
        "scenario": "fanout",
        "transport": "websocket-json",
        "subscribers": subscribers,
        "publish_rate": rate,
        "payload_bytes": payload,
        "published": total_messages,
        "publish_seconds": round(publish_seconds),
        "delivered": delivered,
        "expected": expected,
        "gap_events": gaps,
        "deliveries_per_second": round(delivered as f64 / elapsed.max(publish_seconds)),
        "latency_us": {
            "p50": latency.value_at_quantile(0.50),
            "p99": latency.value_at_quantile(0.99),
            "p999": latency.value_at_quantile(0.999),
            "max": latency.max(),
        },
    });
    println!("{report}");
    Ok(())
}

async fn idle(server: &Server, connections: usize) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_bytes()?;
    let mut sockets = Vec::with_capacity(connections);
    for n in 0..connections {
        sockets.push(connect_and_subscribe(&server.address, &format!("idle.{n}")).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_bytes()?;
    let report = serde_json::json!({
        "scenario": "idle",
        "transport": "websocket-json",
        "connections": connections,
        "server_rss_before_bytes": before,
        "server_rss_after_bytes": after,
        "bytes_per_connection": (after.saturating_sub(before)) / connections.max(1) as u64,
    });
    println!("{report}");
    drop(sockets);
    Ok(())
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}
