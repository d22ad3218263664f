//! `/metrics`: the broker's counters, the disconnect reasons and the
//! cluster bridge's state in the Prometheus text format (0.0.4), encoded
//! by `prometheus-client` from one snapshot per scrape. Nothing is kept
//! here between scrapes: the counters live where they are counted
//! ([`herald_broker::Stats`], [`herald_gateway::DisconnectCounters`]).
//!
//! Names follow Prometheus conventions: `herald_` prefix, base units in
//! the name (`_seconds`, `_bytes`), `_total` on counters (added by the
//! encoder). `docs/operations.md` lists them all.

use std::fmt;

use herald_broker::stats::HistogramSnapshot;
use herald_broker::Transport;
use herald_gateway::disconnect::DISCONNECT_CODES;
use herald_gateway::GatewayContext;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything `/metrics` shows, encoded now.
pub fn render(context: &GatewayContext) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(context.clone())));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}

#[derive(Debug)]
struct Snapshot(GatewayContext);

/// One metric: its descriptor, then a sample per label set.
fn family<'a, const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = ([(&'a str, &'a str); N], f64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, _, u64>(&(value as u64), None)?,
            _ => sample.encode_gauge(&value)?,
        }
    }
    Ok(())
}

fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: f64,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&(value as u64), None),
        _ => metric.encode_gauge(&value),
    }
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    snapshot: &HistogramSnapshot,
) -> fmt::Result {
    // `encode_histogram` takes each bucket's own count and adds them up.
    let mut previous = 0;
    let buckets: Vec<(f64, u64)> = snapshot
        .buckets
        .iter()
        .map(|(bound, cumulative)| {
            let own = cumulative - previous;
            previous = *cumulative;
            (*bound, own)
        })
        .collect();
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(snapshot.sum, snapshot.count, &buckets, None)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let context = &self.0;
        let broker = &context.broker;
        let stats = broker.stats().snapshot();
        let metrics = broker.metrics();
        let e = &mut encoder;
        family(
            e,
            "herald_connections",
            "Open sessions by transport (for http and longpoll: requests in flight).",
            MetricType::Gauge,
            stats
                .sessions
                .iter()
                .filter(|(transport, _)| !matches!(transport, Transport::Cluster | Transport::Internal))
                .map(|(transport, count)| ([("transport", transport.label())], *count as f64)),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "herald_commands",
                "Client commands by transport, op and outcome (ok, or the error code).",
                None,
                MetricType::Counter,
            )?;
            for (transport, op, outcome, count) in &stats.commands {
                let labels = [("transport", transport.label()), ("op", op), ("outcome", outcome)];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
        }
        family(
            e,
            "herald_messages_published",
            "Messages clients published through this node, by transport.",
            MetricType::Counter,
            stats
                .published
                .iter()
                .map(|(transport, count)| ([("transport", transport.label())], *count as f64)),
        )?;
        single(
            e,
            "herald_messages_routed",
            "Messages numbered and fanned out here, whoever published them (other nodes, presence events).",
            MetricType::Counter,
            metrics.published as f64,
        )?;
        family(
            e,
            "herald_messages_delivered",
            "Messages queued to (long polling: handed to) subscribers, by their transport.",
            MetricType::Counter,
            stats
                .delivered
                .iter()
                .map(|(transport, count)| ([("transport", transport.label())], *count as f64)),
        )?;
        family(
            e,
            "herald_writes",
            "Batches connections' writers wrote out, one flush each, by transport: deliveries per write is what server.write_delay gathers.",
            MetricType::Counter,
            stats
                .writes
                .iter()
                .map(|(transport, count)| ([("transport", transport.label())], *count as f64)),
        )?;
        family(
            e,
            "herald_messages_dropped",
            "Messages a subscriber did not get, by reason (each reported to it as a gap).",
            MetricType::Counter,
            stats
                .dropped
                .iter()
                .map(|(reason, count)| ([("reason", reason.label())], *count as f64)),
        )?;
        family(
            e,
            "herald_gaps",
            "Gap notices sent to clients, by reason.",
            MetricType::Counter,
            stats
                .gaps
                .iter()
                .map(|(reason, count)| ([("reason", reason.label())], *count as f64)),
        )?;
        family(
            e,
            "herald_disconnects",
            "Connections ended, by reason.",
            MetricType::Counter,
            DISCONNECT_CODES
                .iter()
                .map(|code| ([("reason", *code)], context.disconnects.count(code) as f64)),
        )?;
        single(
            e,
            "herald_slow_consumers",
            "Connections closed as slow consumers (queue overflow under the disconnect policy, or a stalled write).",
            MetricType::Counter,
            stats.slow_consumers as f64,
        )?;
        single(
            e,
            "herald_subscriptions",
            "Subscriptions held (pattern, connection).",
            MetricType::Gauge,
            metrics.subscriptions as f64,
        )?;
        single(
            e,
            "herald_history_subjects",
            "Subjects with history.",
            MetricType::Gauge,
            metrics.history_subjects as f64,
        )?;
        single(
            e,
            "herald_history_bytes",
            "Bytes history holds (against broker.history.max_bytes).",
            MetricType::Gauge,
            metrics.history_bytes as f64,
        )?;
        histogram(
            e,
            "herald_queue_depth_messages",
            "Messages waiting in a connection's queue when its writer took them.",
            &stats.queue_depth,
        )?;
        histogram(
            e,
            "herald_publish_to_enqueue_seconds",
            "From numbering a message to the last subscriber queue it was offered to (messages that matched a subscription).",
            &stats.publish_latency,
        )?;
        single(
            e,
            "herald_draining",
            "1 while the server drains before a restart.",
            MetricType::Gauge,
            f64::from(u8::from(context.draining.is_cancelled())),
        )?;
        single(
            e,
            "herald_ready",
            "1 when /readyz answers 200.",
            MetricType::Gauge,
            f64::from(u8::from(
                !context.draining.is_cancelled() && context.health.is_ready(),
            )),
        )?;
        for dependency in context.health.dependencies() {
            let report = dependency.report();
            let name = dependency.name();
            let current = report.get("state").and_then(|state| state.as_str()).unwrap_or("");
            family(
                e,
                &format!("herald_{name}_state"),
                "1 for the state the dependency is in, 0 for the others.",
                MetricType::Gauge,
                dependency
                    .states()
                    .iter()
                    .map(|state| ([("state", *state)], f64::from(u8::from(*state == current)))),
            )?;
            for (field, help) in [
                (
                    "lag",
                    "Messages the stream holds that this node has not applied yet.",
                ),
                (
                    "pending_publishes",
                    "Publishes sent to the stream and not yet acknowledged.",
                ),
            ] {
                if let Some(value) = report.get(field).and_then(|value| value.as_f64()) {
                    let unit = if field == "lag" { "_messages" } else { "" };
                    single(
                        e,
                        &format!("herald_{name}_{field}{unit}"),
                        help,
                        MetricType::Gauge,
                        value,
                    )?;
                }
            }
            if let Some(refused) = report
                .get("publishes_refused")
                .and_then(|value| value.as_object())
            {
                family(
                    e,
                    &format!("herald_{name}_publishes_refused"),
                    "Publishes the cluster did not take, by code (a NATS client is not told: core NATS publishes have no answer).",
                    MetricType::Counter,
                    refused
                        .iter()
                        .map(|(code, count)| ([("code", code.as_str())], count.as_f64().unwrap_or(0.0))),
                )?;
            }
        }
        family(
            e,
            "herald_build_info",
            "Always 1; the label is the running version.",
            MetricType::Gauge,
            [([("version", env!("CARGO_PKG_VERSION"))], 1.0)],
        )
    }
}
