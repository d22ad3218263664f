//! Variants of one workload measured in the same run: fresh servers for
//! every variant and round, the order alternating between rounds, each
//! variant at full speed (fan-out: deliveries/s), then each at a fixed rate
//! (latency: publish-to-receive p50/p99). The report takes medians, and
//! ratios to the first variant measured in the same round, so that a noisy
//! machine moves both sides of each ratio together.

use serde::Serialize;

use crate::clients::Target;
use crate::scenarios::{self, Record};
use crate::servers::{Binaries, Server};

/// One measurement of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRecord {
    pub variant: &'static str,
    pub round: usize,
    #[serde(flatten)]
    pub record: Record,
}

/// How big a run is.
#[derive(Debug, Clone, Copy)]
pub struct RoundSize {
    pub subscribers: usize,
    pub fanout_seconds: f64,
    /// The rate of the latency runs.
    pub latency_rate: LatencyRate,
    pub latency_seconds: f64,
    pub rounds: usize,
}

impl RoundSize {
    pub const STANDARD: RoundSize = RoundSize {
        subscribers: 1_000,
        fanout_seconds: 3.0,
        latency_rate: LatencyRate::PerSecond(200),
        latency_seconds: 4.0,
        rounds: 3,
    };
    pub const SMOKE: RoundSize = RoundSize {
        subscribers: 10,
        fanout_seconds: 0.5,
        latency_rate: LatencyRate::PerSecond(20),
        latency_seconds: 1.0,
        rounds: 1,
    };

    /// [`RoundSize::SMOKE`] or [`RoundSize::STANDARD`], with the
    /// subscribers and rounds a command line asked for.
    pub fn chosen(smoke: bool, subscribers: Option<usize>, rounds: Option<usize>) -> RoundSize {
        let size = if smoke {
            RoundSize::SMOKE
        } else {
            RoundSize::STANDARD
        };
        RoundSize {
            subscribers: subscribers.unwrap_or(size.subscribers),
            rounds: rounds.unwrap_or(size.rounds),
            ..size
        }
    }
}

/// How fast the latency runs publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyRate {
    /// Messages per second.
    PerSecond(u64),
    /// Half the messages per second the first variant sustained at full
    /// speed in the same round (its deliveries/s over the subscribers).
    HalfOfFirst,
}

impl LatencyRate {
    fn in_round(self, first_at_full_speed: Option<&Record>, subscribers: usize) -> u64 {
        match (self, first_at_full_speed) {
            (LatencyRate::PerSecond(rate), _) => rate,
            (LatencyRate::HalfOfFirst, Some(record)) => {
                (record.deliveries_per_second / subscribers.max(1) as f64 / 2.0)
                    .round()
                    .max(1.0) as u64
            }
            (LatencyRate::HalfOfFirst, None) => unreachable!("the first variant runs at full speed first"),
        }
    }
}

/// Runs every round: `measure(variant, rate, seconds)` starts fresh
/// servers and measures once; `each` sees every record as it is made.
pub async fn run(
    variants: &[&'static str],
    size: RoundSize,
    mut measure: impl AsyncFnMut(&'static str, Option<u64>, f64) -> anyhow::Result<Record>,
    mut each: impl FnMut(&RoundRecord),
) -> anyhow::Result<Vec<RoundRecord>> {
    let mut records = Vec::new();
    for round in 0..size.rounds {
        let mut order = variants.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut first_at_full_speed = None;
        for rate in [None, Some(size.latency_rate)] {
            for &variant in &order {
                let rate = rate.map(|rate| rate.in_round(first_at_full_speed.as_ref(), size.subscribers));
                let seconds = match rate {
                    None => size.fanout_seconds,
                    Some(_) => size.latency_seconds,
                };
                let mut record = measure(variant, rate, seconds).await?;
                record.scenario = if rate.is_none() { "fanout" } else { "latency" }.into();
                if rate.is_none() && variant == variants[0] {
                    first_at_full_speed = Some(record.clone());
                }
                let record = RoundRecord {
                    variant,
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

/// One fan-out of `payload`-byte messages to `subscribers` on a fresh
/// server of `target`: the measurement most variants are.
pub async fn fanout_on_fresh_server(
    binaries: &Binaries,
    target: &str,
    subscribers: usize,
    rate: Option<u64>,
    seconds: f64,
    payload: usize,
) -> anyhow::Result<Record> {
    let target = Target::parse(target)?;
    let server = Server::start(target, binaries).await?;
    let record = scenarios::fanout(target, &server, subscribers, rate, seconds, payload).await;
    server.stop().await;
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

/// The table of medians, each variant with its ratio to the first one in
/// the same round; `column` names the variants' column. With `cpu`, also
/// the server's CPU time per delivery at full speed (the inverse of
/// deliveries per server core-second: what a delivery costs when the
/// server works in batches) and at the fixed rate (where every variant
/// keeps up, so it compares the work per delivery one message at a time).
pub fn markdown(records: &[RoundRecord], variants: &[&'static str], column: &str, cpu: bool) -> String {
    let baseline = variants[0];
    let mut out = format!(
        "| {column} | fan-out deliveries/s | vs {baseline} | delivered | latency p50 | p99 | p99 vs {baseline} |{}\n|---|---|---|---|---|---|---|{}\n",
        if cpu {
            format!(
                " server CPU per delivery (full speed) | vs {baseline} | server CPU per delivery (fixed rate) | vs {baseline} | load generator CPU per delivery (fixed rate) |"
            )
        } else {
            String::new()
        },
        if cpu { "---|---|---|---|---|" } else { "" },
    );
    let find = |variant: &str, scenario: &str, round: usize| {
        records
            .iter()
            .find(|r| r.variant == variant && r.record.scenario == scenario && r.round == round)
            .map(|r| &r.record)
    };
    let rounds = records.iter().map(|r| r.round + 1).max().unwrap_or(0);
    for variant in variants {
        let of = |scenario: &str, value: &dyn Fn(&Record) -> f64| -> Vec<f64> {
            (0..rounds)
                .filter_map(|round| find(variant, scenario, round).map(value))
                .collect()
        };
        let ratio = |scenario: &str, value: &dyn Fn(&Record) -> f64| -> Vec<f64> {
            (0..rounds)
                .filter_map(|round| {
                    Some(value(find(variant, scenario, round)?) / value(find(baseline, scenario, round)?))
                })
                .collect()
        };
        let rate = |r: &Record| r.deliveries_per_second;
        let share = |r: &Record| r.delivered as f64 / r.expected.max(1) as f64;
        let p50 = |r: &Record| r.latency_us.map_or(f64::NAN, |l| l.p50 as f64);
        let p99 = |r: &Record| r.latency_us.map_or(f64::NAN, |l| l.p99 as f64);
        let cpu_per_delivery = |r: &Record| {
            r.server_cpu_seconds
                .map_or(f64::NAN, |s| s * 1e6 / r.delivered.max(1) as f64)
        };
        let client_cpu_per_delivery = |r: &Record| {
            r.client_cpu_seconds
                .map_or(f64::NAN, |s| s * 1e6 / r.delivered.max(1) as f64)
        };
        out.push_str(&format!(
            "| {variant} | {:.0} | {:.2}× | {:.3} | {:.2} ms | {:.2} ms | {:.2}× |",
            median(of("fanout", &rate)),
            median(ratio("fanout", &rate)),
            median(of("fanout", &share)),
            median(of("latency", &p50)) / 1000.0,
            median(of("latency", &p99)) / 1000.0,
            median(ratio("latency", &p99)),
        ));
        if cpu {
            out.push_str(&format!(
                " {:.2} µs | {:.2}× | {:.2} µs | {:.2}× | {:.2} µs |",
                median(of("fanout", &cpu_per_delivery)),
                median(ratio("fanout", &cpu_per_delivery)),
                median(of("latency", &cpu_per_delivery)),
                median(ratio("latency", &cpu_per_delivery)),
                median(of("latency", &client_cpu_per_delivery)),
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_full_speed(variant: &'static str, deliveries_per_second: f64) -> Record {
        Record {
            target: variant.into(),
            deliveries_per_second,
            ..Record::default()
        }
    }

    #[test]
    fn the_table_gives_server_cpu_per_delivery_at_full_speed_and_its_ratio() {
        let measured = |variant: &'static str, scenario: &str, server_cpu_seconds: f64| RoundRecord {
            variant,
            round: 0,
            record: Record {
                target: variant.into(),
                scenario: scenario.into(),
                delivered: 1_000_000,
                expected: 1_000_000,
                server_cpu_seconds: Some(server_cpu_seconds),
                client_cpu_seconds: Some(1.0),
                ..Record::default()
            },
        };
        let records = [
            measured("first", "fanout", 0.5),
            measured("second", "fanout", 1.5),
            measured("first", "latency", 4.0),
            measured("second", "latency", 5.0),
        ];
        let table = markdown(&records, &["first", "second"], "variant", true);
        let row = |variant: &str| {
            table
                .lines()
                .find(|line| line.starts_with(&format!("| {variant} |")))
                .unwrap_or_else(|| panic!("a row for {variant} in\n{table}"))
                .to_owned()
        };
        assert!(
            table.contains("server CPU per delivery (full speed) | vs first |"),
            "{table}"
        );
        assert!(
            row("first").ends_with("| 0.50 µs | 1.00× | 4.00 µs | 1.00× | 1.00 µs |"),
            "{table}"
        );
        assert!(
            row("second").ends_with("| 1.50 µs | 3.00× | 5.00 µs | 1.25× | 1.00 µs |"),
            "{table}"
        );
    }

    #[tokio::test]
    async fn latency_runs_at_half_of_the_first_variant_s_full_speed_in_their_round() {
        let size = RoundSize {
            subscribers: 100,
            fanout_seconds: 1.0,
            latency_rate: LatencyRate::HalfOfFirst,
            latency_seconds: 1.0,
            rounds: 2,
        };
        // Round 0: the first variant delivers 200 000/s to 100 subscribers
        // (2 000 messages/s); round 1: 100 000/s. The second variant is
        // faster and must not set the rate.
        let mut calls = Vec::new();
        let mut first_full_speeds = [200_000.0, 100_000.0].into_iter();
        let records = run(
            &["first", "second"],
            size,
            async |variant, rate, _seconds| {
                calls.push((variant, rate));
                let deliveries_per_second = if variant == "first" && rate.is_none() {
                    first_full_speeds.next().unwrap()
                } else {
                    1_000_000.0
                };
                Ok(at_full_speed(variant, deliveries_per_second))
            },
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(
            calls,
            [
                ("first", None),
                ("second", None),
                ("first", Some(1_000)),
                ("second", Some(1_000)),
                // The order alternates; the rate still comes from "first".
                ("second", None),
                ("first", None),
                ("second", Some(500)),
                ("first", Some(500)),
            ]
        );
        assert_eq!(
            records.iter().filter(|r| r.record.scenario == "latency").count(),
            4
        );
    }
}
