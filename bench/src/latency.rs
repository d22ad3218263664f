//! Latency at half of nats-server's maximum rate (`herald-bench latency`,
//! `make bench-latency`): each round measures nats-server's fan-out to the
//! subscribers at full speed, then every target publishing at half that
//! rate (messages/s), with Herald's default configuration (its default
//! `server.write_delay` included). Fresh servers for every run, the order
//! alternating between rounds; the table gives medians and each target's
//! ratios to nats-server's in the same round.

use crate::rounds::{self, LatencyRate, RoundRecord, RoundSize};
use crate::servers::Binaries;

/// nats-server's TCP listener first: its full speed sets the rate.
const TARGETS: [&str; 3] = ["nats-tcp", "herald-ws-json", "nats-ws"];
const PAYLOAD: usize = 128;

/// Runs every round; `each` sees every record as it is made.
pub async fn run(
    binaries: &Binaries,
    mut size: RoundSize,
    each: impl FnMut(&RoundRecord),
) -> anyhow::Result<Vec<RoundRecord>> {
    size.latency_rate = LatencyRate::HalfOfFirst;
    let measure = async |target, rate, seconds| {
        rounds::fanout_on_fresh_server(binaries, target, size.subscribers, rate, seconds, PAYLOAD).await
    };
    rounds::run(&TARGETS, size, measure, each).await
}

/// The rate each round published at, then the table of medians.
pub fn markdown(records: &[RoundRecord]) -> String {
    let rates: Vec<String> = records
        .iter()
        .filter(|r| r.record.scenario == "latency" && r.variant == TARGETS[0])
        .filter_map(|r| r.record.publish_rate)
        .map(|rate| rate.to_string())
        .collect();
    format!(
        "Latency runs at half of nats-tcp's full speed in each round: {} messages/s.\n\n{}",
        rates.join(", "),
        rounds::markdown(records, &TARGETS, "target", true)
    )
}
