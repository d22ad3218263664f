//! # herald-quic
//!
//! Herald's WebTransport gateway: the client protocol (`docs/protocol.md`)
//! over HTTP/3 on QUIC, for browsers (`new WebTransport(url)`) and for the
//! native [`client`]. It owns the UDP endpoint and its certificate, the
//! framing of commands and events on QUIC streams, and which stream (or
//! datagram) each event travels on; sessions, queues and permissions are
//! the broker's, credentials and the writer loop the gateway kit's. The
//! whole design, with the reasons, is in `docs/quic.md`.
//!
//! One session, as the wire sees it:
//!
//! - the client opens one bidirectional **control stream**: commands in,
//!   acks, errors, presence and history pages out, each frame a 4-byte
//!   big-endian length and the event in the negotiated encoding
//!   (`?encoding=json|msgpack`);
//! - the server opens up to `message_streams` unidirectional **message
//!   streams**, framed the same way; a subject always travels on the same
//!   one (by hash), so its messages stay in order while a packet lost on
//!   one stream holds back only the subjects that share it;
//! - a `sub` with `"latest": true` gets its messages as **datagrams** when
//!   they fit: unreliable, coalesced to the newest per subject in each
//!   batch, for data where only the latest value matters.
//!
//! | module | owns |
//! |---|---|
//! | [`framing`] | length-prefixed frames on a stream, bounded |
//! | `certificate` | the TLS identity: files, or a generated short-lived one |
//! | `connection` | one session: admission, the control stream's commands |
//! | `writer` | which stream or datagram each event takes; latest-value routing |
//! | [`client`] | a native client, for tests and the load generator |

mod certificate;
pub mod client;
mod connection;
pub mod framing;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use herald_gateway::GatewayContext;
use serde::{Deserialize, Serialize};
use wtransport::endpoint::endpoint_side::Server;
use wtransport::endpoint::IncomingSession;
use wtransport::Endpoint;

pub use certificate::CertificateHash;
/// The WebTransport library, for users of the native [`client`].
pub use wtransport;

/// The `[quic]` section of the configuration, with its comments.
pub const DEFAULT_CONFIG: &str = include_str!("quic.default.toml");

/// The longest validity a browser accepts for a certificate trusted by
/// its hash (`serverCertificateHashes`).
pub const MAX_SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);

/// Settings of the WebTransport gateway: the `[quic]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    pub enabled: bool,
    /// The UDP address.
    pub listen: SocketAddr,
    /// The session's path.
    pub path: String,
    /// The URL `GET /v1/quic` gives pages ("": from `listen` and `path`).
    pub public_url: String,
    /// PEM certificate chain; with `key_file`, replaces the generated
    /// development certificate.
    pub cert_file: String,
    pub key_file: String,
    #[serde(with = "herald_broker::units::duration")]
    pub self_signed_validity: Duration,
    pub max_connections: usize,
    #[serde(with = "herald_broker::units::duration")]
    pub handshake_timeout: Duration,
    #[serde(with = "herald_broker::units::duration")]
    pub idle_timeout: Duration,
    #[serde(with = "herald_broker::units::duration")]
    pub keep_alive_interval: Duration,
    #[serde(
        rename = "max_frame",
        deserialize_with = "herald_broker::units::size::deserialize"
    )]
    pub max_frame_bytes: usize,
    #[serde(
        rename = "hard_frame_limit",
        deserialize_with = "herald_broker::units::size::deserialize"
    )]
    pub hard_frame_limit_bytes: usize,
    pub message_streams: usize,
    #[serde(
        rename = "stream_buffer",
        deserialize_with = "herald_broker::units::size::deserialize"
    )]
    pub stream_buffer_bytes: usize,
    #[serde(
        rename = "datagram_buffer",
        deserialize_with = "herald_broker::units::size::deserialize"
    )]
    pub datagram_buffer_bytes: usize,
    #[serde(
        rename = "send_window",
        deserialize_with = "herald_broker::units::size::deserialize"
    )]
    pub send_window_bytes: usize,
    #[serde(
        rename = "socket_buffer",
        deserialize_with = "herald_broker::units::size::deserialize"
    )]
    pub socket_buffer_bytes: usize,
    #[serde(with = "herald_broker::units::duration")]
    pub write_timeout: Duration,
    pub max_commands_per_second: u32,
    #[serde(with = "herald_broker::units::duration")]
    pub auth_timeout: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            path: "/wt".into(),
            public_url: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            self_signed_validity: Duration::from_secs(13 * 24 * 3600),
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(10),
            max_frame_bytes: 64 * 1024,
            hard_frame_limit_bytes: 1024 * 1024,
            message_streams: 4,
            stream_buffer_bytes: 64 * 1024,
            datagram_buffer_bytes: 64 * 1024,
            send_window_bytes: 256 * 1024,
            socket_buffer_bytes: 4 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            max_commands_per_second: 1000,
            auth_timeout: Duration::from_secs(10),
        }
    }
}

impl QuicConfig {
    /// Checks the settings against each other; the message names the keys.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || self.path.contains('?') {
            return Err(format!(
                "quic.path must start with / and hold no query: {:?}",
                self.path
            ));
        }
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err("quic.cert_file and quic.key_file go together: set both or neither".into());
        }
        if self.self_signed_validity > MAX_SELF_SIGNED_VALIDITY
            || self.self_signed_validity < Duration::from_secs(2)
        {
            return Err("quic.self_signed_validity must be between 2s and 14d (the browsers' limit)".into());
        }
        if self.idle_timeout > Duration::from_secs(24 * 3600) {
            return Err("quic.idle_timeout must be at most 1d".into());
        }
        if self.keep_alive_interval >= self.idle_timeout {
            return Err("quic.keep_alive_interval must be shorter than quic.idle_timeout".into());
        }
        if self.max_frame_bytes > self.hard_frame_limit_bytes {
            return Err("quic.max_frame must not exceed quic.hard_frame_limit".into());
        }
        if !(1..=64).contains(&self.message_streams) {
            return Err("quic.message_streams must be between 1 and 64".into());
        }
        if self.send_window_bytes < 16 * 1024 {
            return Err("quic.send_window must be at least 16KiB".into());
        }
        if self.stream_buffer_bytes == 0
            || self.max_connections == 0
            || self.max_commands_per_second == 0
            || self.write_timeout.is_zero()
            || self.auth_timeout.is_zero()
            || self.handshake_timeout.is_zero()
        {
            return Err(
                "quic.stream_buffer, max_connections, max_commands_per_second, write_timeout, \
                 auth_timeout and handshake_timeout must be positive"
                    .into(),
            );
        }
        Ok(())
    }

    fn uses_files(&self) -> bool {
        !self.cert_file.is_empty()
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("cannot listen for WebTransport on UDP {address} (quic.listen): {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load the certificate (quic.cert_file, quic.key_file): {0}")]
    Certificate(String),
    #[error("invalid [quic] setting: {0}")]
    Config(String),
}

/// The endpoint's UDP socket, its buffers as large as `socket_buffer`
/// (the kernel caps them at `net.core.rmem_max` / `wmem_max`): one socket
/// takes every session's packets, and with the kernel's default (about
/// 200 KiB) a burst of acknowledgements from many sessions overflows it,
/// and every dropped packet costs a retransmission.
fn bind_socket(config: &QuicConfig) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(config.listen);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if config.listen.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    let _ = socket.set_recv_buffer_size(config.socket_buffer_bytes);
    let _ = socket.set_send_buffer_size(config.socket_buffer_bytes);
    // Linux reports twice what it grants (its bookkeeping overhead).
    let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
    if granted < config.socket_buffer_bytes {
        tracing::warn!(
            wanted = config.socket_buffer_bytes,
            granted,
            "WebTransport: the UDP receive buffer is smaller than quic.socket_buffer; \
             raise net.core.rmem_max (and wmem_max) to avoid drops under load"
        );
    }
    socket.bind(&config.listen.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// What a page needs to open a session: the body of `GET /v1/quic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicEndpoint {
    pub url: String,
    /// Empty with a configured certificate (the browser checks it against
    /// its roots); with the generated one, its hash, for
    /// `serverCertificateHashes`.
    pub certificate_hashes: Vec<CertificateHash>,
}

/// The current [`QuicEndpoint`], replaced when the certificate rotates.
#[derive(Debug, Clone, Default)]
pub struct Advertised(Arc<RwLock<Option<Arc<QuicEndpoint>>>>);

impl Advertised {
    pub fn get(&self) -> Option<Arc<QuicEndpoint>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, endpoint: QuicEndpoint) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(endpoint));
    }
}

/// `GET /v1/quic` on the HTTP listener.
pub fn router(advertised: Advertised) -> Router {
    Router::new()
        .route("/v1/quic", get(describe))
        .with_state(advertised)
}

async fn describe(State(advertised): State<Advertised>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match advertised.get() {
        Some(endpoint) => Json(&*endpoint).into_response(),
        None => herald_gateway::HttpError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "quic_unavailable",
            "the WebTransport listener is not running",
        )
        .into_response(),
    }
}

/// Completes when `changes` changes; never without one (or once its
/// sender is gone).
async fn files_changed(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match changes {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                *changes = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// A bound WebTransport endpoint, not yet serving.
pub struct QuicGateway {
    endpoint: Endpoint<Server>,
    gateway: Arc<connection::Gateway>,
    advertised: Advertised,
    identity: certificate::Current,
    /// Changes whenever the configured certificate files were reloaded
    /// elsewhere (the HTTP listener's `[tls]` watcher): read them again.
    file_changes: Option<tokio::sync::watch::Receiver<u64>>,
}

impl std::fmt::Debug for QuicGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicGateway")
            .field("address", &self.endpoint.local_addr().ok())
            .field("advertised", &self.advertised.get())
            .finish_non_exhaustive()
    }
}

impl QuicGateway {
    /// Loads or generates the certificate and binds `quic.listen`.
    pub async fn bind(context: GatewayContext, config: QuicConfig) -> Result<QuicGateway, QuicError> {
        let identity = certificate::Current::load(&config).await?;
        let socket = bind_socket(&config).map_err(|source| QuicError::Bind {
            address: config.listen,
            source,
        })?;
        let server_config = certificate::server_config(&config, identity.identity(), Some(socket))?;
        let endpoint = Endpoint::server(server_config).map_err(|source| QuicError::Bind {
            address: config.listen,
            source,
        })?;
        let address = endpoint.local_addr().map_err(|source| QuicError::Bind {
            address: config.listen,
            source,
        })?;
        let url = match config.public_url.as_str() {
            "" => format!("https://{address}{}", config.path),
            url => url.to_string(),
        };
        let advertised = Advertised::default();
        advertised.set(QuicEndpoint {
            url,
            certificate_hashes: identity.hashes(),
        });
        let gateway = Arc::new(connection::Gateway {
            context,
            config,
            sessions: AtomicUsize::new(0),
        });
        Ok(QuicGateway {
            endpoint,
            gateway,
            advertised,
            identity,
            file_changes: None,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Reads `cert_file` and `key_file` again whenever `changes` changes:
    /// the same files as the HTTP listener's, watched there. Sessions open
    /// keep their handshake; new ones get the new certificate.
    pub fn reload_on(&mut self, changes: tokio::sync::watch::Receiver<u64>) {
        self.file_changes = Some(changes);
    }

    /// What `GET /v1/quic` answers, kept current across rotations.
    pub fn advertised(&self) -> Advertised {
        self.advertised.clone()
    }

    /// Accepts sessions until the server shuts down; rotates a generated
    /// certificate at half its validity.
    pub async fn serve(mut self) {
        let context = self.gateway.context.clone();
        loop {
            let incoming = tokio::select! {
                incoming = self.endpoint.accept() => incoming,
                () = self.identity.rotation_due() => {
                    self.rotate();
                    continue;
                }
                () = files_changed(&mut self.file_changes) => {
                    self.reload_files().await;
                    continue;
                }
                () = context.shutdown.cancelled() => break,
            };
            self.admit(incoming);
        }
        // Sessions close themselves (each writer sees the shutdown and
        // sends its reason); the endpoint stays until they are done.
        context.connections.wait().await;
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    fn admit(&self, incoming: IncomingSession) {
        let sessions = &self.gateway.sessions;
        if sessions.load(Ordering::Relaxed) >= self.gateway.config.max_connections {
            tracing::debug!(remote = %incoming.remote_address(), "WebTransport session refused: quic.max_connections");
            self.gateway
                .context
                .disconnected("webtransport", 0, &herald_gateway::DisconnectReason::Refused);
            incoming.refuse();
            return;
        }
        sessions.fetch_add(1, Ordering::Relaxed);
        let gateway = self.gateway.clone();
        self.gateway.context.connections.spawn(async move {
            connection::serve(incoming, &gateway).await;
            gateway.sessions.fetch_sub(1, Ordering::Relaxed);
        });
    }

    async fn reload_files(&mut self) {
        let config = &self.gateway.config;
        let reloaded = match certificate::Current::load(config).await {
            Ok(identity) => certificate::server_config(config, identity.identity(), None)
                .and_then(|server_config| {
                    self.endpoint
                        .reload_config(server_config, false)
                        .map_err(|error| QuicError::Certificate(error.to_string()))
                })
                .map(|()| identity),
            Err(error) => Err(error),
        };
        match reloaded {
            Ok(identity) => {
                self.identity = identity;
                tracing::info!("WebTransport: certificate reloaded from its files");
            }
            Err(error) => {
                tracing::error!(%error, "WebTransport: certificate not reloaded; keeping the current one")
            }
        }
    }

    fn rotate(&mut self) {
        let config = &self.gateway.config;
        let renewed = self
            .identity
            .renew(config)
            .and_then(|()| certificate::server_config(config, self.identity.identity(), None))
            .and_then(|server_config| {
                self.endpoint
                    .reload_config(server_config, false)
                    .map_err(|error| QuicError::Certificate(error.to_string()))
            });
        match renewed {
            Ok(()) => {
                let current = self.advertised.get().expect("set at bind");
                self.advertised.set(QuicEndpoint {
                    url: current.url.clone(),
                    certificate_hashes: self.identity.hashes(),
                });
                tracing::info!("WebTransport: a new self-signed certificate replaced the old one");
            }
            Err(error) => tracing::error!(%error, "WebTransport: the certificate could not be renewed"),
        }
    }
}
