//! The scenarios, each bounded in time and count, each producing one
//! [`Record`]. They check correctness as they measure: every delivery is
//! checked for duplicates and order (one publisher, so sequence numbers
//! must arrive increasing), and Herald's gap notices are counted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clients::{payload, Connection, Received, Target};
use crate::servers::Server;

/// Connections per source address: stays well inside one address's
/// ephemeral port range.
const CONNECTIONS_PER_SOURCE: usize = 20_000;
/// How long receivers may keep draining after publishing stops.
const DRAIN: Duration = Duration::from_secs(2);
const SUBJECT: &str = "bench.fanout";

/// One run's result; one JSON line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub scenario: String,
    pub target: String,
    #[serde(default)]
    pub subscribers: usize,
    /// Fixed publish rate (messages/s), or absent for "as fast as possible".
    #[serde(default)]
    pub publish_rate: Option<u64>,
    #[serde(default)]
    pub payload_bytes: usize,
    /// From the first publish to the last delivery.
    #[serde(default)]
    pub seconds: f64,
    /// How long publishing itself took.
    #[serde(default)]
    pub publish_seconds: f64,
    #[serde(default)]
    pub published: u64,
    #[serde(default)]
    pub delivered: u64,
    #[serde(default)]
    pub expected: u64,
    #[serde(default)]
    pub gap_events: u64,
    #[serde(default)]
    pub duplicates: u64,
    #[serde(default)]
    pub out_of_order: u64,
    #[serde(default)]
    pub deliveries_per_second: f64,
    #[serde(default)]
    pub latency_us: Option<Latency>,
    /// Latency CDF: (percentile, microseconds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_cdf: Vec<(f64, u64)>,
    #[serde(default)]
    pub connections: usize,
    #[serde(default)]
    pub bytes_per_connection: u64,
    #[serde(default)]
    pub churn_rounds: u64,
    /// For churn: deliveries/s before the storm.
    #[serde(default)]
    pub baseline_deliveries_per_second: f64,
    /// For fan-out: CPU time (user + system) the server process used from
    /// the first publish to the last delivery, in seconds; for idle: while
    /// the connections were held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_seconds: Option<f64>,
    /// The same for the load generator itself (every client and the
    /// publisher), which shares the machine with the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cpu_seconds: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// 127.0.0.1 for the first connections, then 127.0.0.2, and so on.
fn source_for(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        1 + (index / CONNECTIONS_PER_SOURCE) as u8,
    ))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// Connections opened at once while setting up: enough to keep both sides
/// busy, few enough not to look like a connection storm.
const SETUP_CONCURRENCY: usize = 32;

async fn subscribers(
    target: Target,
    server: SocketAddr,
    count: usize,
    subject: &str,
) -> anyhow::Result<Vec<Connection>> {
    futures_util::stream::iter(0..count)
        .map(|index| async move {
            let mut connection = Connection::open(target, server, Some(source_for(index)))
                .await
                .with_context(|| format!("subscriber {index}"))?;
            connection.subscribe(subject, 1).await?;
            anyhow::Ok(connection)
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}

/// What one subscriber saw.
struct Tally {
    delivered: u64,
    gaps: u64,
    duplicates: u64,
    out_of_order: u64,
    latency: Histogram<u64>,
    last_delivery: Option<Instant>,
}

async fn receive_until_done(
    mut connection: Connection,
    mut published: watch::Receiver<Option<u64>>,
) -> Tally {
    let mut tally = Tally {
        delivered: 0,
        gaps: 0,
        duplicates: 0,
        out_of_order: 0,
        latency: histogram(),
        last_delivery: None,
    };
    let mut last_sequence: Option<u64> = None;
    // Until publishing ends there is no deadline; after, DRAIN to catch up.
    let mut deadline: Option<tokio::time::Instant> = None;
    // One timer for the whole drain, not one per event received.
    let mut drain_timer = Box::pin(sleep_until_some(None));
    loop {
        let total = *published.borrow();
        if total.is_some_and(|total| tally.delivered >= total) {
            break;
        }
        if total.is_some() && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + DRAIN);
            drain_timer.set(sleep_until_some(deadline));
        }
        // Checked here as well as in the select below: with thousands of
        // busy receivers the runtime's timer may fire late, and a receiver
        // that always has data would never see it.
        if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
            break;
        }
        let received = tokio::select! {
            received = connection.receive() => received,
            () = &mut drain_timer => break,
            changed = published.changed(), if total.is_none() => {
                if changed.is_err() { break; }
                continue;
            }
        };
        match received {
            Ok(Received::Message {
                sent_micros: sent,
                sequence,
            }) => {
                match last_sequence {
                    Some(last) if sequence == last => tally.duplicates += 1,
                    Some(last) if sequence < last => tally.out_of_order += 1,
                    _ => {}
                }
                last_sequence = Some(last_sequence.map_or(sequence, |last| last.max(sequence)));
                tally.delivered += 1;
                tally.last_delivery = Some(Instant::now());
                let _ = tally.latency.record(now_micros().saturating_sub(sent).max(1));
            }
            Ok(Received::Gap) => tally.gaps += 1,
            Ok(Received::Pong | Received::Other) => {}
            Ok(Received::Closed) | Err(_) => break,
        }
    }
    tally
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Messages between two sync requests.
const SYNC_EVERY: u64 = 32;
/// Deliveries the publisher may have sent but the server not yet taken.
const IN_FLIGHT_DELIVERIES: u64 = 1024 * 1024;
/// How long the oldest unconfirmed sync may wait before the publisher stops
/// adding work: bounds the backlog of a slow server in time, where
/// [`IN_FLIGHT_DELIVERIES`] bounds a fast one's in size.
const MAX_BACKLOG: Duration = Duration::from_millis(250);
/// How long the publisher waits for the server to confirm what is in flight
/// once publishing time is up. A server without backpressure (Socket.IO
/// confirms as soon as it has queued in memory) may take longer; the run
/// then ends anyway, and what did not arrive shows in the delivered share.
const SETTLE: Duration = Duration::from_secs(2);

/// How many messages may be in flight towards a server fanning out to
/// `subscribers`: a bounded amount of work (about a second's
/// worth at the rates measured here), so a publisher can never bury a server
/// under a backlog that outlives the run.
fn in_flight_messages(subscribers: usize) -> u64 {
    (IN_FLIGHT_DELIVERIES / subscribers.max(1) as u64).clamp(SYNC_EVERY, 128 * SYNC_EVERY)
}

/// Publishes for `seconds`, at `rate` messages/s or as fast as the server
/// takes them, waits up to [`SETTLE`] for the server to confirm them, and
/// returns how many were published.
///
/// Flow control is the same for every target: every [`SYNC_EVERY`] messages
/// the publisher asks the server to confirm it has processed its input
/// (`request_sync`), and it never has more than [`in_flight_messages`]
/// unconfirmed, nor sends more while a confirmation is [`MAX_BACKLOG`] late. Without this, "as fast as possible" means "as fast as the
/// kernel buffers fill": megabytes of publishes queue in the sockets and
/// the server works through them for a minute after the run was meant to end.
async fn publish_for(
    publisher: &mut Connection,
    rate: Option<u64>,
    seconds: f64,
    payload_bytes: usize,
    subscribers: usize,
    started: Instant,
) -> anyhow::Result<u64> {
    let duration = Duration::from_secs_f64(seconds);
    let window = in_flight_messages(subscribers) / SYNC_EVERY;
    let interval = rate.map(|rate| Duration::from_secs_f64(1.0 / rate as f64));
    let total = rate.map(|rate| (rate as f64 * seconds) as u64);
    let mut sequence = 0u64;
    // When each unconfirmed sync was requested, oldest first.
    let mut unconfirmed = std::collections::VecDeque::new();
    // A slow server answers late; waiting for it must not outlast the run.
    let deadline = tokio::time::Instant::from_std(started + duration);
    'publishing: loop {
        let more = match total {
            Some(total) => sequence < total,
            None => started.elapsed() < duration,
        };
        if !more {
            break;
        }
        for _ in 0..SYNC_EVERY {
            if let Some(interval) = interval {
                if total.is_some_and(|total| sequence >= total) {
                    break;
                }
                let due = started + interval.mul_f64(sequence as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    publisher.flush().await?;
                    tokio::time::sleep(wait).await;
                }
            }
            publisher
                .publish(SUBJECT, &payload(now_micros(), sequence, payload_bytes))
                .await?;
            sequence += 1;
            if interval.is_some() && publisher.holds_publishes() {
                // At a fixed rate each message leaves when it is due.
                publisher.request_sync().await?;
                unconfirmed.push_back(Instant::now());
            }
        }
        publisher.request_sync().await?;
        publisher.flush().await?;
        unconfirmed.push_back(Instant::now());
        while unconfirmed.len() as u64 > window
            || unconfirmed
                .front()
                .is_some_and(|sent: &Instant| sent.elapsed() > MAX_BACKLOG)
        {
            match tokio::time::timeout_at(deadline, publisher.await_sync()).await {
                Ok(answered) => answered?,
                Err(_) => break 'publishing,
            }
            unconfirmed.pop_front();
        }
    }
    let settled = tokio::time::timeout(SETTLE, async {
        while unconfirmed.pop_front().is_some() {
            publisher.await_sync().await?;
        }
        anyhow::Ok(())
    })
    .await;
    if let Ok(result) = settled {
        result?;
    }
    Ok(sequence)
}

/// One publisher → `subscriber_count` subscribers on one subject.
pub async fn fanout(
    target: Target,
    server: &Server,
    subscriber_count: usize,
    rate: Option<u64>,
    seconds: f64,
    payload_bytes: usize,
) -> anyhow::Result<Record> {
    let spread = [server.address];
    fanout_across(
        target,
        server,
        &spread,
        subscriber_count,
        rate,
        seconds,
        payload_bytes,
    )
    .await
}

/// One publisher on `server` → `subscriber_count` subscribers spread
/// evenly over `nodes` (several nodes of one cluster, or just `server`).
pub async fn fanout_across(
    target: Target,
    server: &Server,
    nodes: &[SocketAddr],
    subscriber_count: usize,
    rate: Option<u64>,
    seconds: f64,
    payload_bytes: usize,
) -> anyhow::Result<Record> {
    let mut connections = Vec::with_capacity(subscriber_count);
    for (index, node) in nodes.iter().enumerate() {
        let share = subscriber_count / nodes.len() + usize::from(index < subscriber_count % nodes.len());
        connections.extend(subscribers(target, *node, share, SUBJECT).await?);
    }
    tokio::time::sleep(target.subscription_settle_time()).await;
    let (published_sender, published) = watch::channel(None);
    let receivers: Vec<_> = connections
        .into_iter()
        .map(|connection| tokio::spawn(receive_until_done(connection, published.clone())))
        .collect();
    let mut publisher = Connection::open_publisher(target, server).await?;
    let cpu_before = crate::servers::CpuMark::now(server);
    let started = Instant::now();
    let total = publish_for(
        &mut publisher,
        rate,
        seconds,
        payload_bytes,
        subscriber_count,
        started,
    )
    .await?;
    let publish_seconds = started.elapsed().as_secs_f64();
    let _ = published_sender.send(Some(total));

    let mut record = Record {
        scenario: "fanout".into(),
        target: target.name().into(),
        subscribers: subscriber_count,
        publish_rate: rate,
        payload_bytes,
        published: total,
        expected: total * subscriber_count as u64,
        ..Record::default()
    };
    let mut latency = histogram();
    let mut last_delivery = started;
    for receiver in receivers {
        let tally = receiver.await?;
        record.delivered += tally.delivered;
        record.gap_events += tally.gaps;
        record.duplicates += tally.duplicates;
        record.out_of_order += tally.out_of_order;
        latency.add(&tally.latency)?;
        last_delivery = last_delivery.max(tally.last_delivery.unwrap_or(started));
    }
    let cpu = cpu_before.spent(server);
    record.server_cpu_seconds = cpu.server.map(round);
    record.client_cpu_seconds = cpu.client.map(round);
    let elapsed = (last_delivery - started).as_secs_f64().max(publish_seconds);
    record.seconds = round(elapsed);
    record.publish_seconds = round(publish_seconds);
    record.deliveries_per_second = round(record.delivered as f64 / elapsed);
    record.latency_us = Some(summarize(&latency));
    record.latency_cdf = [
        1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
    ]
    .into_iter()
    .map(|percentile| (percentile, latency.value_at_percentile(percentile)))
    .collect();
    Ok(record)
}

/// `connections` idle connections, each subscribed to its own subject;
/// the server's resident memory per connection, and its CPU time while
/// they are held.
pub async fn idle(
    target: Target,
    server: &Server,
    connections: usize,
    hold: Duration,
) -> anyhow::Result<Record> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_bytes()?;
    // Each connection is read as a live client reads it: pings answered,
    // heartbeats taken, a long poll sent again once answered. Held without
    // reading, a connection costs the server less than a browser's does.
    let mut held = tokio::task::JoinSet::new();
    for index in 0..connections {
        let mut connection = Connection::open(target, server.address, Some(source_for(index))).await?;
        connection.subscribe(&format!("idle.{index}"), 1).await?;
        held.spawn(async move {
            while let Ok(received) = connection.receive().await {
                if matches!(received, Received::Closed) {
                    break;
                }
            }
        });
    }
    // What idle connections cost the server's CPU (timers, keep-alives),
    // from a moment after the last one subscribed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_before = crate::servers::CpuMark::now(server);
    tokio::time::sleep(hold).await;
    let cpu = cpu_before.spent(server);
    let after = server.rss_bytes()?;
    // A connection the server closed meanwhile would make the figures
    // those of fewer connections.
    let mut closed = 0;
    while held.try_join_next().is_some() {
        closed += 1;
    }
    anyhow::ensure!(
        closed == 0,
        "{closed} of {connections} idle connections ended while held"
    );
    drop(held);
    Ok(Record {
        scenario: "idle".into(),
        target: target.name().into(),
        connections,
        seconds: hold.as_secs_f64(),
        bytes_per_connection: after.saturating_sub(before) / connections.max(1) as u64,
        server_cpu_seconds: cpu.server.map(|seconds| (seconds * 1000.0).round() / 1000.0),
        ..Record::default()
    })
}

/// Fan-out as fast as possible, first alone, then while another connection
/// subscribes and unsubscribes in a loop (to other subjects and to the
/// published one).
pub async fn churn(
    target: Target,
    server: &Server,
    subscriber_count: usize,
    seconds: f64,
) -> anyhow::Result<Record> {
    let baseline = fanout(target, server, subscriber_count, None, seconds, 128).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut churner = Connection::open_as(target, server.address, None, true).await?;
    let storm = tokio::spawn({
        let (stop, rounds) = (stop.clone(), rounds.clone());
        async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let subject = if round.is_multiple_of(2) {
                    SUBJECT.to_owned()
                } else {
                    format!("churn.{}", round % 1000)
                };
                let sid = 10 + round % 1000;
                if churner.subscribe(&subject, sid).await.is_err()
                    || churner.unsubscribe(&subject, sid).await.is_err()
                {
                    return;
                }
                round += 1;
                rounds.store(round, Ordering::Relaxed);
            }
        }
    });
    let during = fanout(target, server, subscriber_count, None, seconds, 128).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(5), storm).await;
    let during = during?;
    Ok(Record {
        scenario: "churn".into(),
        churn_rounds: rounds.load(Ordering::Relaxed),
        baseline_deliveries_per_second: baseline.deliveries_per_second,
        ..during
    })
}

fn summarize(histogram: &Histogram<u64>) -> Latency {
    Latency {
        p50: histogram.value_at_quantile(0.50),
        p90: histogram.value_at_quantile(0.90),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
        max: histogram.max(),
    }
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}
