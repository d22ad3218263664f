//! What cluster mode costs (`herald-bench cluster`, `make bench-cluster`):
//! the same WebSocket workload on one Herald node and on two nodes bridged
//! through nats-server with JetStream, in one run.
//!
//! | layout | publisher | subscribers |
//! |---|---|---|
//! | `single` | node | all on the node |
//! | `cluster-split` | node A | half on A, half on B |
//! | `cluster-remote` | node A | all on B: every delivery crosses nodes |
//!
//! Each layout is measured at full speed (fan-out: deliveries/s) and at a
//! fixed rate (latency: publish-to-receive p50/p99). Servers are fresh
//! for every layout and round, rounds alternate the order, and the report
//! takes medians and the ratio to `single` measured in the same round.

use serde::Serialize;

use crate::clients::Target;
use crate::scenarios::{self, Record};
use crate::servers::{Binaries, Server};

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRecord {
    pub layout: &'static str,
    pub round: usize,
    #[serde(flatten)]
    pub record: Record,
}

/// How big a run is.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSize {
    pub subscribers: usize,
    pub fanout_seconds: f64,
    /// Messages/s of the latency runs.
    pub latency_rate: u64,
    pub latency_seconds: f64,
    pub rounds: usize,
}

impl ClusterSize {
    pub const STANDARD: ClusterSize = ClusterSize {
        subscribers: 1_000,
        fanout_seconds: 3.0,
        latency_rate: 200,
        latency_seconds: 4.0,
        rounds: 3,
    };
    pub const SMOKE: ClusterSize = ClusterSize {
        subscribers: 10,
        fanout_seconds: 0.5,
        latency_rate: 20,
        latency_seconds: 1.0,
        rounds: 1,
    };
}

const LAYOUTS: [&str; 3] = ["single", "cluster-split", "cluster-remote"];
const PAYLOAD: usize = 128;

/// Runs every round; `each` sees every record as it is made.
pub async fn run(
    binaries: &Binaries,
    size: ClusterSize,
    mut each: impl FnMut(&ClusterRecord),
) -> anyhow::Result<Vec<ClusterRecord>> {
    anyhow::ensure!(binaries.has_nats(), "nats-server is not installed");
    let mut records = Vec::new();
    for round in 0..size.rounds {
        let mut order = LAYOUTS;
        if round % 2 == 1 {
            order.reverse();
        }
        for layout in order {
            for rate in [None, Some(size.latency_rate)] {
                let seconds = match rate {
                    None => size.fanout_seconds,
                    Some(_) => size.latency_seconds,
                };
                let mut record = measure(binaries, layout, size.subscribers, rate, seconds).await?;
                record.scenario = if rate.is_none() { "fanout" } else { "latency" }.into();
                let record = ClusterRecord {
                    layout,
                    round,
                    record,
                };
                each(&record);
                records.push(record);
            }
        }
    }
    Ok(records)
}

/// One layout, fresh servers.
async fn measure(
    binaries: &Binaries,
    layout: &str,
    subscribers: usize,
    rate: Option<u64>,
    seconds: f64,
) -> anyhow::Result<Record> {
    let target = Target::HeraldJson;
    if layout == "single" {
        let node = Server::start(target, binaries).await?;
        let record = scenarios::fanout(target, &node, subscribers, rate, seconds, PAYLOAD).await;
        node.stop().await;
        return record;
    }
    let nats = Server::nats_with_jetstream(binaries).await?;
    let a = Server::herald_clustered(binaries, nats.address, "a").await?;
    let b = Server::herald_clustered(binaries, nats.address, "b").await?;
    let nodes = match layout {
        "cluster-split" => vec![a.address, b.address],
        _ => vec![b.address],
    };
    let record = scenarios::fanout_across(target, &a, &nodes, subscribers, rate, seconds, PAYLOAD).await;
    a.stop().await;
    b.stop().await;
    nats.stop().await;
    record
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The table of medians, with each layout's ratio to `single` in the same
/// round.
pub fn markdown(records: &[ClusterRecord]) -> String {
    let mut out = String::from(
        "| layout | fan-out deliveries/s | vs single | delivered | latency p50 | p99 | p99 vs single |\n|---|---|---|---|---|---|---|\n",
    );
    let find = |layout: &str, scenario: &str, round: usize| {
        records
            .iter()
            .find(|r| r.layout == layout && r.record.scenario == scenario && r.round == round)
            .map(|r| &r.record)
    };
    let rounds = records.iter().map(|r| r.round + 1).max().unwrap_or(0);
    for layout in LAYOUTS {
        let of = |scenario: &str, value: &dyn Fn(&Record) -> f64| -> Vec<f64> {
            (0..rounds)
                .filter_map(|round| find(layout, scenario, round).map(value))
                .collect()
        };
        let ratio = |scenario: &str, value: &dyn Fn(&Record) -> f64| -> Vec<f64> {
            (0..rounds)
                .filter_map(|round| {
                    Some(value(find(layout, scenario, round)?) / value(find("single", scenario, round)?))
                })
                .collect()
        };
        let rate = |r: &Record| r.deliveries_per_second;
        let share = |r: &Record| r.delivered as f64 / r.expected.max(1) as f64;
        let p50 = |r: &Record| r.latency_us.map_or(f64::NAN, |l| l.p50 as f64);
        let p99 = |r: &Record| r.latency_us.map_or(f64::NAN, |l| l.p99 as f64);
        out.push_str(&format!(
            "| {layout} | {:.0} | {:.2}× | {:.3} | {:.2} ms | {:.2} ms | {:.2}× |\n",
            median(of("fanout", &rate)),
            median(ratio("fanout", &rate)),
            median(of("fanout", &share)),
            median(of("latency", &p50)) / 1000.0,
            median(of("latency", &p99)) / 1000.0,
            median(ratio("latency", &p99)),
        ));
    }
    out
}
