//! `$sys.stats`: the server's counters as one JSON message every
//! `stats_interval`, published only while someone (the dashboard, with the
//! admin key) subscribes. Counters are totals since start; a watcher
//! computes rates from two of them.

use std::time::Duration;

use herald_gateway::disconnect::DISCONNECT_CODES;
use herald_gateway::GatewayContext;
use serde_json::{json, Map, Value};

/// Subjects listed in a stats message, most subscribed first.
const TOP_SUBJECTS: usize = 10;

/// Publishes `$sys.stats` every `interval` until shutdown.
pub async fn publish_stats(context: GatewayContext, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                context.broker.publish_operator("stats", || stats_json(&context).to_string());
            }
            () = context.shutdown.cancelled() => return,
        }
    }
}

/// What one `$sys.stats` message holds.
pub fn stats_json(context: &GatewayContext) -> Value {
    let broker = &context.broker;
    let stats = broker.stats().snapshot();
    let metrics = broker.metrics();
    let by_transport = |counts: &[(herald_broker::Transport, u64)]| -> Map<String, Value> {
        counts
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(transport, count)| (transport.label().to_owned(), json!(count)))
            .collect()
    };
    let connections: Map<String, Value> = stats
        .sessions
        .iter()
        .filter(|(transport, _)| {
            !matches!(
                transport,
                herald_broker::Transport::Internal | herald_broker::Transport::Cluster
            )
        })
        .map(|(transport, count)| (transport.label().to_owned(), json!(count)))
        .collect();
    let disconnects: Map<String, Value> = DISCONNECT_CODES
        .iter()
        .map(|code| (code.to_string(), json!(context.disconnects.count(code))))
        .filter(|(_, count)| count.as_u64() != Some(0))
        .collect();
    let mut subjects = broker.subjects();
    subjects.retain(|info| !info.subject.starts_with('$'));
    subjects.sort_by_key(|info| std::cmp::Reverse((info.subscribers, info.history_messages)));
    subjects.truncate(TOP_SUBJECTS);
    let mut cluster = Map::new();
    for dependency in context.health.dependencies() {
        cluster.insert(dependency.name().to_owned(), dependency.report());
    }
    let published: u64 = stats.published.iter().map(|(_, count)| count).sum();
    let delivered: u64 = stats.delivered.iter().map(|(_, count)| count).sum();
    json!({
        "at_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64),
        "connections": connections,
        "published": published,
        "published_by_transport": by_transport(&stats.published),
        "delivered": delivered,
        "delivered_by_transport": by_transport(&stats.delivered),
        "dropped": stats.dropped.iter().map(|(_, count)| count).sum::<u64>(),
        "gaps": stats.gaps.iter().map(|(_, count)| count).sum::<u64>(),
        "slow_consumers": stats.slow_consumers,
        "disconnects": disconnects,
        "subscriptions": metrics.subscriptions,
        "history_subjects": metrics.history_subjects,
        "history_bytes": metrics.history_bytes,
        "top_subjects": subjects,
        "draining": context.draining.is_cancelled(),
        "dependencies": cluster,
    })
}
