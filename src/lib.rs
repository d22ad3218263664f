//! # herald
//!
//! The `herald` server: wires the broker core to its gateways on one HTTP
//! listener, from a [`Config`]. `main` is glue (CLI, logging, signals); the
//! entry point is [`run`] (or [`Herald`], to keep handles on the broker and
//! the counters), which tests call on port 0.
//!
//! | feature | gateway | routes |
//! |---|---|---|
//! | `http` | `herald-http` | `POST /v1/publish`, `GET /v1/history`, `GET /healthz` |
//! | `websocket` | `herald-websocket` | `GET /ws` |
//! | `sse` | `herald-sse` | `GET /sse` |
//! | `longpoll` | `herald-longpoll` | `GET /poll` |
//! | `nats` | `herald-nats` | the NATS client protocol on `[nats] listen` |
//! | `quic` | `herald-quic` | WebTransport on `[quic] listen` (UDP), `GET /v1/quic` |
//! | `cluster` | `herald-cluster` | with `[cluster] nats_url`: one node of a cluster sharing a JetStream stream |
//!
//! All are on by default; a gateway compiled in can still be turned off
//! with its section's `enabled = false`.

pub mod client;
pub mod config;
mod listener;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::Router;
use herald_broker::{Broker, SystemClock};
use herald_gateway::{AllowedOrigins, DisconnectCounters, GatewayContext, HttpError};
use herald_store::{DiskJournal, StoreOptions};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::Config;
use config::HistoryStorage;

/// Opens `config` for local development (`herald serve --dev`): anyone
/// may subscribe and publish to every subject without a credential, from
/// any browser origin.
pub fn open_for_development(config: &mut Config) {
    config.auth.anonymous_subscribe = vec![">".into()];
    config.auth.anonymous_publish = vec![">".into()];
    config.server.allowed_origins = vec!["*".into()];
}

/// Serves Herald on `listener` until `shutdown` completes; see [`Herald::run`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Herald::new(config)?.run(listener, shutdown).await
}

/// A configured server, not yet listening.
#[derive(Debug)]
pub struct Herald {
    config: Config,
    context: GatewayContext,
    /// History on disk, closed (everything written, marked clean) once
    /// every connection is done.
    journal: Option<Arc<DiskJournal>>,
    /// The NATS listener, once bound.
    #[cfg(feature = "nats")]
    nats_listener: Option<TcpListener>,
    /// The WebTransport endpoint, once bound.
    #[cfg(feature = "quic")]
    quic: Option<herald_quic::QuicGateway>,
    /// The cluster bridge, in cluster mode.
    #[cfg(feature = "cluster")]
    bridge: Option<Arc<herald_cluster::Bridge>>,
    /// The admin listener, once bound, when `[admin] listen` is set.
    admin_listener: Option<TcpListener>,
    /// The certificate of the HTTP listeners, with `[tls]`.
    tls: Option<Arc<tls::Tls>>,
}

impl Herald {
    /// Validates `config` and builds the broker; with history on disk this
    /// opens the database and restores what it holds.
    pub fn new(mut config: Config) -> anyhow::Result<Herald> {
        config.validate()?;
        let tls = match config.tls.is_enabled() {
            true => Some(tls::Tls::new(&config.tls)?),
            false => None,
        };
        // WebTransport presents the listener's certificate unless given its own.
        #[cfg(feature = "quic")]
        if tls.is_some() && config.quic.cert_file.is_empty() {
            config.quic.cert_file = config.tls.cert_file.display().to_string();
            config.quic.key_file = config.tls.key_file.display().to_string();
        }
        config.broker.rules = config.subject_rules()?;
        #[cfg(feature = "cluster")]
        let clustered = config.cluster.is_enabled();
        let (broker, journal) = match config.storage.history {
            // A cluster's numbering is its stream's, the same on every node.
            #[cfg(feature = "cluster")]
            HistoryStorage::Memory if clustered => {
                let clock = Arc::new(SystemClock::new());
                let broker = Broker::with_clock(config.broker.clone(), clock, config.cluster.epoch());
                (broker, None)
            }
            HistoryStorage::Memory => (Broker::new(config.broker.clone()), None),
            HistoryStorage::Disk => {
                let options = StoreOptions {
                    path: config.storage.path.clone(),
                    flush_interval: config.storage.flush_interval,
                    // The journal keeps what the longest-lived rule keeps.
                    max_age: config.broker.rules.longest_age(&config.broker.history),
                };
                let (restored, journal) = herald_store::open(&options)?;
                let journal = Arc::new(journal);
                let clock = Arc::new(SystemClock::new());
                let broker = Broker::restored(config.broker.clone(), clock, restored, journal.clone());
                (broker, Some(journal))
            }
        };
        #[cfg(feature = "cluster")]
        let bridge = clustered.then(|| {
            let history = &config.broker.history;
            let limits = herald_cluster::StreamLimits {
                max_messages_per_subject: config.broker.rules.largest_size(history),
                max_age: config.broker.rules.longest_age(history),
                max_bytes: history.max_bytes,
            };
            herald_cluster::Bridge::new(broker.clone(), config.cluster.clone(), limits)
        });
        let auth = Arc::new(config.authenticator()?);
        let mut context = GatewayContext::new(broker, auth).with_admission(
            AllowedOrigins::new(&config.server.allowed_origins),
            &config.auth.token_cookie,
            config.auth.refresh_grace,
        );
        context.write_delay = config.server.write_delay;
        #[cfg(feature = "cluster")]
        if let Some(bridge) = &bridge {
            context.health = context.health.clone().with(bridge.clone());
        }
        Ok(Herald {
            context,
            config,
            journal,
            #[cfg(feature = "nats")]
            nats_listener: None,
            #[cfg(feature = "quic")]
            quic: None,
            #[cfg(feature = "cluster")]
            bridge,
            admin_listener: None,
            tls,
        })
    }

    /// Binds the NATS listener (`[nats] listen`) now, when it is enabled,
    /// and returns its address: for a configuration asking for port 0.
    /// [`Herald::run`] binds it otherwise.
    pub async fn bind_nats(&mut self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        #[cfg(feature = "nats")]
        if self.config.nats.enabled {
            if self.nats_listener.is_none() {
                let address = self.config.nats.listen;
                let listener = TcpListener::bind(address).await.with_context(|| {
                    format!(
                        "cannot listen for NATS clients on {address} (nats.listen): \
                         is another NATS server running? Set [nats] listen, or enabled = false"
                    )
                })?;
                self.nats_listener = Some(listener);
            }
            let listener = self.nats_listener.as_ref().expect("bound above");
            return Ok(Some(listener.local_addr()?));
        }
        Ok(None)
    }

    /// Binds the WebTransport endpoint (`[quic] listen`, UDP) now, when it
    /// is enabled, and returns what pages are told at `GET /v1/quic`.
    /// [`Herald::run`] binds it otherwise.
    #[cfg(feature = "quic")]
    pub async fn bind_quic(&mut self) -> anyhow::Result<Option<Arc<herald_quic::QuicEndpoint>>> {
        if !self.config.quic.enabled {
            return Ok(None);
        }
        if self.quic.is_none() {
            let mut gateway = herald_quic::QuicGateway::bind(self.context.clone(), self.config.quic.clone())
                .await
                .context("set [quic] listen, or enabled = false")?;
            let same_files = self.config.quic.cert_file == self.config.tls.cert_file.display().to_string();
            if let Some(tls) = self.tls.as_ref().filter(|_| same_files) {
                gateway.reload_on(tls.changes());
            }
            self.quic = Some(gateway);
        }
        Ok(self.quic.as_ref().and_then(|quic| quic.advertised().get()))
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.context.broker
    }

    /// Cancelling it starts draining: what SIGUSR1, `herald drain` and
    /// `POST /v1/admin/drain` do.
    pub fn drain_trigger(&self) -> tokio_util::sync::CancellationToken {
        self.context.draining.clone()
    }

    /// Notifying it reloads the TLS certificate files (what SIGHUP does);
    /// `None` without `[tls]`.
    pub fn tls_reload_trigger(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.tls.as_ref().map(|tls| tls.reload_trigger())
    }

    /// Binds the admin listener (`[admin] listen`) when one is configured;
    /// its address.
    pub async fn bind_admin(&mut self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        let Some(address) = self.config.admin.listen else {
            return Ok(None);
        };
        if self.admin_listener.is_none() {
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (admin.listen)"))?;
            self.admin_listener = Some(listener);
        }
        Ok(Some(
            self.admin_listener.as_ref().expect("bound above").local_addr()?,
        ))
    }

    /// How many connections ended, per reason.
    pub fn disconnects(&self) -> &Arc<DisconnectCounters> {
        &self.context.disconnects
    }

    /// Every enabled gateway's routes on one router, CORS applied to all;
    /// the admin routes too unless they have a listener of their own.
    fn router(&self) -> Router {
        #[allow(unused_mut)] // with no gateway compiled in, nothing is merged
        let mut app = Router::new();
        #[cfg(feature = "http")]
        {
            app = app.merge(herald_http::router(
                self.context.clone(),
                self.config.http.clone(),
            ));
        }
        if self.config.admin.listen.is_none() {
            app = app.merge(herald_admin::router(
                self.context.clone(),
                self.config.admin.clone(),
            ));
        }
        #[cfg(feature = "websocket")]
        if self.config.websocket.enabled {
            app = app.merge(herald_websocket::router(
                self.context.clone(),
                self.config.websocket.clone(),
            ));
        }
        #[cfg(feature = "sse")]
        if self.config.sse.enabled {
            app = app.merge(herald_sse::router(self.context.clone(), self.config.sse.clone()));
        }
        #[cfg(feature = "quic")]
        if let Some(quic) = &self.quic {
            app = app.merge(herald_quic::router(quic.advertised()));
        }
        #[cfg(feature = "longpoll")]
        if self.config.longpoll.enabled {
            app = app.merge(herald_longpoll::router(
                self.context.clone(),
                self.config.longpoll.clone(),
            ));
        }
        with_fallbacks(app, &self.config.server.allowed_origins)
    }

    /// The admin listener's routes: the admin API, `/metrics`, the
    /// dashboard, health, and `/ws` for the dashboard's feed.
    fn admin_router(&self) -> Router {
        #[allow(unused_mut)]
        let mut app = herald_admin::router(self.context.clone(), self.config.admin.clone());
        #[cfg(feature = "http")]
        {
            app = app.merge(herald_http::health_router(self.context.clone()));
        }
        #[cfg(feature = "websocket")]
        if self.config.websocket.enabled {
            app = app.merge(herald_websocket::router(
                self.context.clone(),
                self.config.websocket.clone(),
            ));
        }
        with_fallbacks(app, &[])
    }

    /// Serves until `shutdown` completes, then shuts down in stages: stop
    /// accepting; tell every streaming connection (`shutdown`) and answer
    /// every waiting poll; wait for connections to finish, at most
    /// `server.shutdown_grace`; return.
    #[cfg_attr(
        not(any(feature = "nats", feature = "cluster", feature = "quic")),
        allow(unused_mut)
    )]
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // Bound first, so a port in use fails the start before anything
        // is served.
        #[cfg(feature = "nats")]
        let nats_address = self.bind_nats().await?;
        #[cfg(feature = "quic")]
        self.bind_quic().await?;
        self.bind_admin().await?;
        let app = self.router();
        let admin_app = self.admin_listener.is_some().then(|| self.admin_router());
        let context = self.context;
        let server = self.config.server;
        let sweeper = tokio::spawn({
            let (broker, closing) = (context.broker.clone(), context.shutdown.clone());
            let interval = server.sweep_interval;
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
        let limits = server.listener_limits().fitted_to_open_file_limit();
        let serve = tokio::spawn(listener::serve(
            listener,
            app,
            limits,
            self.tls.clone(),
            context.shutdown.clone(),
        ));
        if let Some(tls) = &self.tls {
            tokio::spawn(tls.clone().watch(context.shutdown.clone()));
        }
        // Logged after the HTTP listener's line, which scripts read the
        // address from.
        #[cfg(feature = "nats")]
        let nats = nats_address.map(|nats| {
            tracing::info!(%nats, "listening for NATS clients");
            let listener = self.nats_listener.take().expect("bound");
            tokio::spawn(herald_nats::serve(
                listener,
                context.clone(),
                self.config.nats.clone(),
            ))
        });
        #[cfg(feature = "quic")]
        let quic = self.quic.take().map(|quic| {
            if let Ok(address) = quic.local_addr() {
                tracing::info!(%address, "listening for WebTransport (UDP)");
            }
            tokio::spawn(quic.serve())
        });
        // The bridge outlives the connections: publishes made while they
        // close still get their answer.
        #[cfg(feature = "cluster")]
        let bridge_stop = tokio_util::sync::CancellationToken::new();
        #[cfg(feature = "cluster")]
        let bridge = self.bridge.take().map(|bridge| {
            let nats = without_credentials(&self.config.cluster.nats_url);
            tracing::info!(node = bridge.node(), %nats, "cluster mode: joining through NATS JetStream");
            tokio::spawn(bridge.run(bridge_stop.clone()))
        });
        let admin = self
            .admin_listener
            .take()
            .zip(admin_app)
            .map(|(listener, admin_app)| {
                if let Ok(address) = listener.local_addr() {
                    tracing::info!(%address, "listening for operators (admin API, /metrics, dashboard)");
                }
                tokio::spawn(listener::serve(
                    listener,
                    admin_app,
                    limits,
                    self.tls.clone(),
                    context.shutdown.clone(),
                ))
            });
        // Only the admin key may watch `$sys.stats`: without one, no feed.
        let feed = self.config.admin.is_enabled().then(|| {
            tokio::spawn(herald_admin::feed::publish_stats(
                context.clone(),
                self.config.admin.stats_interval,
            ))
        });
        // Until a shutdown signal; or a drain, then the shutdown that ends it.
        tokio::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => {}
            () = context.draining.cancelled() => {
                tokio::select! {
                    _ = herald_gateway::drain::close_spread(&context, server.drain_window) => {}
                    () = &mut shutdown => tracing::warn!("shutdown signal while draining: closing the rest now"),
                }
            }
        }
        tracing::info!("shutting down: closing connections");
        context.shutdown.cancel();
        context.connections.close();
        let drained = tokio::time::timeout(server.shutdown_grace, async {
            context.connections.wait().await;
            let _ = serve.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace = ?server.shutdown_grace,
                "connections still open after the grace period; exiting anyway"
            );
        }
        sweeper.abort();
        if let Some(feed) = feed {
            feed.abort();
        }
        if let Some(admin) = admin {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), admin).await;
        }
        #[cfg(feature = "cluster")]
        if let Some(bridge) = bridge {
            bridge_stop.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), bridge).await;
        }
        #[cfg(feature = "nats")]
        if let Some(nats) = nats {
            nats.abort();
        }
        #[cfg(feature = "quic")]
        if let Some(quic) = quic {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), quic).await;
        }
        if let Some(journal) = &self.journal {
            journal.close();
        }
        tracing::info!(
            metrics = ?context.broker.metrics(),
            disconnects = ?context.disconnects.snapshot(),
            "stopped"
        );
        Ok(())
    }
}

/// Where the admin API of a server with `config` answers: `admin.listen`,
/// else `server.listen` (an unspecified address asked on loopback).
pub fn admin_url(config: &Config) -> String {
    let mut address = config.admin.listen.unwrap_or(config.server.listen);
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if config.tls.is_enabled() { "https" } else { "http" };
    format!("{scheme}://{address}")
}

/// NATS URLs as they may be logged: `nats://user:pass@host` loses its
/// `user:pass@`.
#[cfg(feature = "cluster")]
fn without_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}{}", &url[..scheme + 3], &url[at + 1..])
                }
                (None, Some(at)) => url[at + 1..].to_owned(),
                _ => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Every answer is the JSON error body, unknown routes and methods too;
/// CORS for `origins`.
fn with_fallbacks(app: Router, origins: &[String]) -> Router {
    let app = app
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            HttpError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {method} {}", uri.path()),
            )
        })
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} does not take {method}", uri.path()),
            )
        });
    match cors_layer(origins) {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ]),
    )
}

#[cfg(all(test, feature = "cluster"))]
mod tests {
    #[test]
    fn credentials_in_nats_urls_are_not_logged() {
        assert_eq!(
            super::without_credentials(
                "nats://u:secret@10.0.0.1:4222, tls://tok@h:1,nats://plain:4222,h2:4222"
            ),
            "nats://10.0.0.1:4222,tls://h:1,nats://plain:4222,h2:4222"
        );
    }
}
