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

use crate::clients::Target;
use crate::rounds::{self, RoundRecord, RoundSize};
use crate::scenarios::{self, Record};
use crate::servers::{Binaries, Server};

const LAYOUTS: [&str; 3] = ["single", "cluster-split", "cluster-remote"];
const PAYLOAD: usize = 128;

/// Runs every round; `each` sees every record as it is made.
pub async fn run(
    binaries: &Binaries,
    size: RoundSize,
    each: impl FnMut(&RoundRecord),
) -> anyhow::Result<Vec<RoundRecord>> {
    anyhow::ensure!(binaries.has_nats(), "nats-server is not installed");
    let measure =
        async |layout, rate, seconds| measure(binaries, layout, size.subscribers, rate, seconds).await;
    rounds::run(&LAYOUTS, size, measure, each).await
}

/// The table of medians, each layout with its ratio to `single`.
pub fn markdown(records: &[RoundRecord]) -> String {
    rounds::markdown(records, &LAYOUTS, "layout", false)
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
