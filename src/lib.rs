//! # herald
//!
//! The `herald` server: wires the broker core to its gateways on one HTTP
//! listener, from a [`Config`]. `main` is glue (CLI, logging, signals); the
//! entry point is [`run`], which tests call on port 0.

pub mod config;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use herald_broker::{Authenticator, Broker};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Serves Herald on `listener` until `shutdown` completes, then shuts down
/// in stages: stop accepting, close every WebSocket with 1001, wait for
/// connections to finish (at most `server.shutdown_grace`), return.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let broker = Broker::new(config.broker_config());
    let auth = Arc::new(Authenticator::new(config.api_keys()?, config.anonymous_access()));
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();

    let websocket = herald_websocket::router(herald_websocket::WebSocketGateway {
        broker: broker.clone(),
        auth: auth.clone(),
        config: config.websocket_config(),
        shutdown: closing.clone(),
        connections: connections.clone(),
    });
    let app = herald_http::router(broker.clone(), auth, config.http_config()).merge(websocket);

    let sweeper = tokio::spawn({
        let (broker, closing) = (broker.clone(), closing.clone());
        let interval = config.server.sweep_interval;
        async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = ticks.tick() => { broker.sweep(); }
                    () = closing.cancelled() => return,
                }
            }
        }
    });

    let address = listener.local_addr().context("listener has no local address")?;
    tracing::info!(%address, "listening");
    let signal = {
        let closing = closing.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: closing connections");
            closing.cancel();
        }
    };
    // Without TCP_NODELAY a small frame can wait for the client's delayed
    // ACK: tens of milliseconds added to the latency tail.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let serve = axum::serve(listener, app).with_graceful_shutdown(signal);
    let grace = config.server.shutdown_grace;
    let serve = tokio::spawn(async move { serve.await });
    closing.cancelled().await;
    connections.close();
    let drained = tokio::time::timeout(grace, async {
        connections.wait().await;
        let _ = serve.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; exiting anyway"
        );
    }
    sweeper.abort();
    tracing::info!(metrics = ?broker.metrics(), "stopped");
    Ok(())
}
