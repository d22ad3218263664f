//! Draining (lame-duck mode): before a restart, close every open streaming
//! connection with `server_draining`, spread evenly over a window, so that
//! clients reconnect (to another node, or to this one once it is back) a
//! few at a time instead of all in the same second.
//!
//! While draining, [`GatewayContext::draining`] is cancelled: `/readyz`
//! answers 503 and new streaming connections are refused with 503
//! `server_draining`, so a load balancer stops sending clients here.

use std::time::Duration;

use herald_broker::CloseReason;
use tokio::time::Instant;

use crate::GatewayContext;

/// How often the drain wakes to close the connections now due.
const TICK: Duration = Duration::from_millis(10);

/// Closes the connections open now, connection `i` of `n` at
/// `window × i / n` from the start, and returns at the end of the window
/// (however few there were: until then `/readyz` keeps saying 503, so that
/// load balancers notice before the server goes); returns how many were
/// closed. Ends early if the server shuts down meanwhile.
pub async fn close_spread(context: &GatewayContext, window: Duration) -> usize {
    let mut queues = context.broker.connection_queues();
    // Session ids grow with age: the oldest go first.
    queues.sort_by_key(|(id, _)| *id);
    let count = queues.len();
    tracing::warn!(
        connections = count,
        window = ?window,
        "draining: closing connections with server_draining, spread over the window"
    );
    let start = Instant::now();
    let mut closed = 0;
    let mut next = 0;
    while next < count {
        let elapsed = start.elapsed();
        // Every connection whose turn has come: `due` is how many of the
        // `count` should be closed `elapsed` into the window.
        let due = if elapsed >= window {
            count
        } else {
            ((elapsed.as_secs_f64() / window.as_secs_f64()) * count as f64).floor() as usize + 1
        };
        for (_, outbox) in &queues[next..due.min(count)] {
            if !outbox.is_closed() {
                outbox.close(CloseReason::Draining);
                closed += 1;
            }
        }
        next = due.min(count);
        if next < count {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = context.shutdown.cancelled() => break,
            }
        }
    }
    tracing::info!(closed, "draining: every connection was told to reconnect");
    tokio::select! {
        () = tokio::time::sleep_until(start + window) => {}
        () = context.shutdown.cancelled() => {}
    }
    closed
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_broker::{AllowAll, Broker, BrokerConfig, Session, Transport};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn closes_are_spread_evenly_over_the_window() {
        let broker = Broker::new(BrokerConfig::default());
        let context = GatewayContext::new(
            broker.clone(),
            Arc::new(herald_broker::Authenticator::new(
                Vec::new(),
                herald_broker::Permissions::default(),
            )),
        );
        let sessions: Vec<Session> = (0..200)
            .map(|_| Session::on(Transport::WebSocket, &broker, Arc::new(AllowAll)))
            .collect();
        let window = Duration::from_secs(10);
        let start = Instant::now();
        let drain = tokio::spawn({
            let context = context.clone();
            async move { close_spread(&context, window).await }
        });
        // Sample each tenth of the window: how many are closed by then.
        let mut closed_by = Vec::new();
        for tenth in 1..=10 {
            tokio::time::sleep_until(start + window * tenth / 10 - Duration::from_millis(1)).await;
            closed_by.push(sessions.iter().filter(|s| s.outbox().is_closed()).count());
        }
        assert_eq!(drain.await.unwrap(), 200);
        let per_tenth: Vec<usize> = closed_by
            .iter()
            .scan(0, |before, &now| {
                let in_tenth = now - *before;
                *before = now;
                Some(in_tenth)
            })
            .collect();
        assert!(per_tenth.iter().all(|n| (19..=21).contains(n)), "{per_tenth:?}");
        assert!(sessions
            .iter()
            .all(|s| s.outbox().close_reason() == Some(CloseReason::Draining)));
    }
}
