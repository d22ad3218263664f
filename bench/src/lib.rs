//! # herald-bench
//!
//! Herald's end-to-end load generator. Every server under test runs as its
//! own process on loopback; real clients connect from this one:
//!
//! | scenario | measures |
//! |---|---|
//! | `fanout` | 1 publisher → N subscribers on one subject, as fast as it goes: deliveries/s, loss, order |
//! | `latency` | the same at a fixed rate (50% of the measured maximum): p50/p99/p999/max, CDF |
//! | `idle` | C idle subscribed connections: server RSS per connection |
//! | `churn` | fan-out deliveries/s alone vs during a subscribe/unsubscribe storm |
//! | `cluster` (its own command) | one node vs two nodes bridged through nats-server + JetStream: fan-out and cross-node latency |
//! | `quic` (its own command) | the same fan-out to WebSocket (plain and over TLS) and to WebTransport subscribers: deliveries/s, latency, server CPU per delivery |
//! | `latency` (its own command) | p50/p99 of nats-server and Herald at half of nats-server's full speed, measured in the same round |
//! | `nats` (its own command) | the same async-nats workload against nats-server and Herald's NATS listener: fan-out to 1/100/1 000, pipelined publishing |
//!
//! Targets: Herald's WebSocket gateway (JSON, MessagePack), its SSE and
//! long-poll gateways and, as peers measured in the same run, nats-server
//! over TCP and over its WebSocket listener, Socket.IO 4 on Node.js, and
//! Pushpin. The clients of every target are equally thin (`clients`), and
//! every publisher is paced the same way (`scenarios`). Not every scenario
//! applies to every target ([`Target::runs`]).
//!
//! [`suite`] runs the standard set and [`report`] turns the records into
//! the tables and plots of `docs/benchmarks.md`. [`smoke`] is the seconds
//! long version the test suite runs, asserting correctness, never timings.

pub mod abuse;
pub mod clients;
pub mod cluster;
pub mod http_subscriber;
pub mod latency;
pub mod nats;
pub mod publish;
pub mod quic;
pub mod report;
pub mod rounds;
pub mod scenarios;
pub mod servers;
pub mod tls;

use anyhow::ensure;

pub use clients::Target;
pub use scenarios::Record;
pub use servers::{Binaries, Server};

/// How big a suite run is.
#[derive(Debug, Clone, Copy)]
pub struct SuiteSize {
    pub fanout_subscribers: &'static [usize],
    pub fanout_seconds: f64,
    pub latency_subscribers: usize,
    /// Fixed latency publish rate; `None`: half the measured maximum.
    pub latency_rate: Option<u64>,
    pub latency_seconds: f64,
    pub idle_connections: usize,
    /// Seconds the idle connections are held while the server's CPU time
    /// is read. The standard run's covers every Herald transport's
    /// keep-alive at its default (long polling's 25 s is the longest):
    /// over a shorter hold the connections, all opened moments before,
    /// have not sent one yet and seem to cost nothing.
    pub idle_seconds: f64,
    pub churn_subscribers: usize,
    pub churn_seconds: f64,
}

impl SuiteSize {
    /// The set `make bench` runs: a few minutes on two cores.
    pub const STANDARD: SuiteSize = SuiteSize {
        fanout_subscribers: &[100, 1_000, 10_000],
        fanout_seconds: 2.0,
        latency_subscribers: 1_000,
        latency_rate: None,
        latency_seconds: 3.0,
        idle_connections: 10_000,
        idle_seconds: 30.0,
        churn_subscribers: 100,
        churn_seconds: 2.0,
    };

    /// Seconds, for the test suite.
    pub const SMOKE: SuiteSize = SuiteSize {
        fanout_subscribers: &[20],
        fanout_seconds: 0.5,
        latency_subscribers: 20,
        // Far below every target's ceiling (Pushpin's is the lowest, at
        // some tens of messages/s per connection), so nothing may be lost.
        latency_rate: Some(20),
        latency_seconds: 1.0,
        idle_connections: 50,
        idle_seconds: 1.0,
        churn_subscribers: 10,
        churn_seconds: 0.5,
    };
}

/// Runs every scenario against every target, each on a fresh server.
/// `progress` sees each record as it is made.
pub async fn suite(
    binaries: &Binaries,
    targets: &[Target],
    size: SuiteSize,
    mut progress: impl FnMut(&Record),
) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut keep = |record: Record, records: &mut Vec<Record>| {
        progress(&record);
        records.push(record);
    };
    for &target in targets {
        let mut max_rate_at_latency_size = None;
        for &subscribers in size.fanout_subscribers {
            if target
                .max_fanout_subscribers()
                .is_some_and(|max| subscribers > max)
            {
                continue;
            }
            let record = on_fresh_server(target, binaries, async |server| {
                scenarios::fanout(target, server, subscribers, None, size.fanout_seconds, 128).await
            })
            .await?;
            if subscribers == size.latency_subscribers {
                max_rate_at_latency_size = Some(record.deliveries_per_second / subscribers as f64);
            }
            keep(record, &mut records);
        }
        if target.runs("latency") {
            // Latency at half the maximum this target sustained at this size.
            let rate = size
                .latency_rate
                .unwrap_or_else(|| max_rate_at_latency_size.map_or(100, |max| ((max * 0.5) as u64).max(1)));
            let record = on_fresh_server(target, binaries, async |server| {
                let record = scenarios::fanout(
                    target,
                    server,
                    size.latency_subscribers,
                    Some(rate),
                    size.latency_seconds,
                    128,
                )
                .await?;
                Ok(Record {
                    scenario: "latency".into(),
                    ..record
                })
            })
            .await?;
            keep(record, &mut records);
        }
        let record = on_fresh_server(target, binaries, async |server| {
            scenarios::idle(
                target,
                server,
                size.idle_connections,
                std::time::Duration::from_secs_f64(size.idle_seconds),
            )
            .await
        })
        .await?;
        keep(record, &mut records);
        if target.runs("churn") {
            let record = on_fresh_server(target, binaries, async |server| {
                scenarios::churn(target, server, size.churn_subscribers, size.churn_seconds).await
            })
            .await?;
            keep(record, &mut records);
        }
    }
    Ok(records)
}

/// Runs one scenario on a fresh server. A peer that fails, or delivers
/// nothing, is given up to two more fresh servers (Pushpin's services now
/// and then close the first connections of a run, and under CI's load it
/// was seen to do so twice in a row); Herald never is: its failures are
/// findings.
async fn on_fresh_server(
    target: Target,
    binaries: &Binaries,
    scenario: impl AsyncFn(&Server) -> anyhow::Result<Record>,
) -> anyhow::Result<Record> {
    let attempts = if target.is_herald() { 1 } else { 3 };
    let mut attempt = 1;
    loop {
        // A peer's start can fail too: its port is picked free, then
        // released, and may be taken by another socket before it binds.
        let result = match Server::start(target, binaries).await {
            Ok(server) => {
                let result = scenario(&server).await.and_then(|record| {
                    // A run that delivered nothing at all measured nothing:
                    // Pushpin now and then drops every subscription of a run
                    // made right after a heavy one.
                    ensure!(
                        record.expected == 0 || record.delivered > 0,
                        "{} {}: nothing delivered of {} expected",
                        record.target,
                        record.scenario,
                        record.expected
                    );
                    Ok(record)
                });
                server.stop().await;
                result
            }
            Err(error) => Err(error),
        };
        match result {
            Err(error) if attempt < attempts => {
                eprintln!("{}: {error:#}; once more on a fresh server", target.name());
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The smoke run: every scenario, seconds long, against `targets`; fails on
/// any duplicate or reordering, and on any loss at a fixed rate far below
/// what a server sustains (where nothing may be lost). Flat-out runs may
/// lose messages by design (queues overflow), so there only delivery itself
/// is checked.
pub async fn smoke(binaries: &Binaries, targets: &[Target]) -> anyhow::Result<Vec<Record>> {
    let records = suite(binaries, targets, SuiteSize::SMOKE, |_| {}).await?;
    for record in &records {
        ensure!(record.duplicates == 0, "duplicates in {record:?}");
        ensure!(record.out_of_order == 0, "reordering in {record:?}");
        if record.scenario == "latency" {
            ensure!(
                record.delivered == record.expected && record.expected > 0,
                "loss at a fixed low rate in {record:?}"
            );
        }
        if record.scenario == "idle" {
            ensure!(
                record.connections == SuiteSize::SMOKE.idle_connections,
                "idle run incomplete"
            );
        }
        if record.scenario == "fanout" || record.scenario == "churn" {
            ensure!(record.delivered > 0, "nothing delivered in {record:?}");
        }
    }
    Ok(records)
}
