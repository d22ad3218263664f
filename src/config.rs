//! Configuration: one typed struct, layered defaults → file → environment.
//!
//! Each section is declared once, next to the code it configures, and
//! nested here as it is: `[broker]` is the core's `BrokerConfig`, `[auth]`
//! its `AuthConfig`, `[websocket]` the WebSocket gateway's own config, and
//! so on. The defaults are the server's own sections
//! (`src/herald.default.toml`) followed by each compiled-in gateway's
//! section, with their comments; `herald config default` prints them, so
//! the documented defaults and the real ones cannot drift apart. Unknown
//! keys are errors, sizes and durations are typed ("64KiB", "20s"), and
//! everything is validated before the server starts.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use herald_broker::{AuthConfig, Authenticator, BrokerConfig, SubjectRuleConfig, SubjectRules};
use herald_gateway::tokens::JwtVerifier;
use serde::Deserialize;

/// The server's own sections of the defaults, with their comments.
const SERVER_DEFAULTS: &str = include_str!("herald.default.toml");

/// The compiled-in defaults: the server's sections, then each gateway's.
pub fn default_config_text() -> String {
    let mut text = String::from(SERVER_DEFAULTS);
    let gateway_sections: &[&str] = &[
        herald_admin::DEFAULT_CONFIG,
        #[cfg(feature = "http")]
        herald_http::DEFAULT_CONFIG,
        #[cfg(feature = "websocket")]
        herald_websocket::DEFAULT_CONFIG,
        #[cfg(feature = "sse")]
        herald_sse::DEFAULT_CONFIG,
        #[cfg(feature = "longpoll")]
        herald_longpoll::DEFAULT_CONFIG,
        #[cfg(feature = "nats")]
        herald_nats::DEFAULT_CONFIG,
        #[cfg(feature = "quic")]
        herald_quic::DEFAULT_CONFIG,
        #[cfg(feature = "cluster")]
        herald_cluster::DEFAULT_CONFIG,
    ];
    for section in gateway_sections {
        text.push('\n');
        text.push_str(section);
    }
    text
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub broker: BrokerConfig,
    /// `[[subjects]]`: per-pattern rules (history, presence, who may publish).
    #[serde(default)]
    pub subjects: Vec<SubjectRuleConfig>,
    pub tls: crate::tls::TlsConfig,
    pub admin: herald_admin::AdminConfig,
    #[cfg(feature = "http")]
    pub http: herald_http::HttpConfig,
    #[cfg(feature = "websocket")]
    pub websocket: herald_websocket::WebSocketConfig,
    #[cfg(feature = "sse")]
    pub sse: herald_sse::SseConfig,
    #[cfg(feature = "longpoll")]
    pub longpoll: herald_longpoll::LongPollConfig,
    #[cfg(feature = "nats")]
    pub nats: herald_nats::NatsConfig,
    #[cfg(feature = "quic")]
    pub quic: herald_quic::QuicConfig,
    #[cfg(feature = "cluster")]
    pub cluster: herald_cluster::ClusterConfig,
}

/// Where history is kept: the `[storage]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub history: HistoryStorage,
    /// The database file, for `history = "disk"`.
    pub path: std::path::PathBuf,
    /// How often history on disk is committed and fsynced; a crash loses
    /// at most this much.
    #[serde(with = "herald_broker::units::duration")]
    pub flush_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStorage {
    /// In memory: gone at restart (a new epoch; resumers get a gap).
    Memory,
    /// On disk: positions and retained messages survive a restart.
    Disk,
}

/// The `[server]` section: the listener and the process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(with = "herald_broker::units::duration")]
    pub shutdown_grace: Duration,
    #[serde(with = "herald_broker::units::duration")]
    pub sweep_interval: Duration,
    /// A write to a connection that makes no progress for this long closes it.
    #[serde(with = "herald_broker::units::duration")]
    pub write_timeout: Duration,
    /// Longest a client may take to send a request's headers, and longest
    /// a keep-alive connection may wait idle for its next request.
    #[serde(with = "herald_broker::units::duration")]
    pub header_read_timeout: Duration,
    /// Connections open at once, over every transport; more are refused
    /// with 503.
    pub max_connections: usize,
    /// Connections open at once from one address (one /64 for IPv6).
    pub max_connections_per_ip: usize,
    /// Browser origins allowed to connect (WebSocket, SSE, long polling)
    /// and to call the HTTP API (CORS); `"*"` for any.
    pub allowed_origins: Vec<String>,
    /// How long a drain spreads the closing of connections over.
    #[serde(with = "herald_broker::units::duration")]
    pub drain_window: Duration,
    /// How long a streaming connection's writer gathers events before it
    /// writes them.
    #[serde(with = "herald_broker::units::duration")]
    pub write_delay: Duration,
}

impl ServerConfig {
    pub(crate) fn listener_limits(&self) -> crate::listener::ListenerLimits {
        crate::listener::ListenerLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_read_timeout: self.header_read_timeout,
            write_timeout: self.write_timeout,
        }
    }
}

impl Config {
    /// The compiled-in defaults alone.
    pub fn default_config() -> Config {
        Config::load(None, false).expect("the compiled-in defaults are valid")
    }

    /// Defaults, then `file` if given, then `HERALD_<SECTION>__<KEY>`
    /// environment variables; validated.
    pub fn load(file: Option<&Path>, read_environment: bool) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Toml::string(&default_config_text()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        if read_environment {
            // Only keys with a section (HERALD_SERVER__LISTEN): plain
            // HERALD_LISTEN and friends belong to the command line.
            figment = figment.merge(
                Env::prefixed("HERALD_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            );
        }
        let config: Config = figment.extract().context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what each section cannot check alone.
    pub fn validate(&self) -> anyhow::Result<()> {
        let broker = &self.broker;
        if broker.queue.max_messages == 0 || broker.queue.max_bytes == 0 {
            bail!("broker.queue limits must be positive");
        }
        if self.storage.history == HistoryStorage::Disk && self.storage.flush_interval.is_zero() {
            bail!("storage.flush_interval must be positive");
        }
        let server = &self.server;
        if server.write_timeout.is_zero() || server.header_read_timeout.is_zero() {
            bail!("server.write_timeout and server.header_read_timeout must be positive");
        }
        if server.max_connections == 0 || server.max_connections_per_ip == 0 {
            bail!("server.max_connections and server.max_connections_per_ip must be positive");
        }
        if server.drain_window.is_zero() || server.drain_window > Duration::from_secs(3600) {
            bail!("server.drain_window must be between 1ms and 1h");
        }
        if server.write_delay > Duration::from_secs(1) {
            bail!("server.write_delay must be at most 1s (it delays every delivery)");
        }
        self.admin.validate().map_err(anyhow::Error::msg)?;
        self.tls.validate()?;
        #[cfg(feature = "websocket")]
        {
            self.websocket.validate().map_err(anyhow::Error::msg)?;
            if broker.max_payload_bytes > self.websocket.max_frame_bytes {
                bail!("broker.max_payload must fit in websocket.max_frame");
            }
        }
        #[cfg(feature = "http")]
        self.http.validate().map_err(anyhow::Error::msg)?;
        #[cfg(feature = "sse")]
        self.sse.validate().map_err(anyhow::Error::msg)?;
        #[cfg(feature = "longpoll")]
        self.longpoll.validate().map_err(anyhow::Error::msg)?;
        #[cfg(feature = "nats")]
        self.nats.validate().map_err(anyhow::Error::msg)?;
        #[cfg(feature = "quic")]
        self.quic.validate().map_err(anyhow::Error::msg)?;
        #[cfg(feature = "cluster")]
        if self.cluster.is_enabled() {
            self.cluster.validate().map_err(anyhow::Error::msg)?;
            if self.storage.history == HistoryStorage::Disk {
                bail!(
                    "storage.history = \"disk\" and cluster.nats_url exclude each other: \
                     a cluster keeps its history in JetStream"
                );
            }
        }
        self.authenticator()?;
        self.subject_rules()?;
        Ok(())
    }

    /// The `[[subjects]]` rules, patterns checked.
    pub fn subject_rules(&self) -> anyhow::Result<SubjectRules> {
        Ok(SubjectRules::from_config(
            &self.subjects,
            &self.broker.subject_limits,
        )?)
    }

    /// The authenticator the `[auth]` section describes: API keys,
    /// anonymous access, and user tokens when a token key is configured.
    pub fn authenticator(&self) -> anyhow::Result<Authenticator> {
        let limits = &self.broker.subject_limits;
        let authenticator =
            Authenticator::from_config(&self.auth, limits)?.with_operator_key(&self.admin.key.0);
        Ok(match JwtVerifier::from_config(&self.auth, limits)? {
            Some(tokens) => authenticator.with_tokens(std::sync::Arc::new(tokens)),
            None => authenticator,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_match_every_section_s_own_defaults() {
        let config = Config::default_config();
        assert_eq!(config.server.listen, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(config.broker, BrokerConfig::default());
        assert_eq!(config.auth, AuthConfig::default());
        #[cfg(feature = "http")]
        assert_eq!(config.http, herald_http::HttpConfig::default());
        #[cfg(feature = "websocket")]
        assert_eq!(config.websocket, herald_websocket::WebSocketConfig::default());
        #[cfg(feature = "sse")]
        assert_eq!(config.sse, herald_sse::SseConfig::default());
        #[cfg(feature = "longpoll")]
        assert_eq!(config.longpoll, herald_longpoll::LongPollConfig::default());
        #[cfg(feature = "nats")]
        assert_eq!(config.nats, herald_nats::NatsConfig::default());
        #[cfg(feature = "quic")]
        assert_eq!(config.quic, herald_quic::QuicConfig::default());
        #[cfg(feature = "cluster")]
        assert_eq!(config.cluster, herald_cluster::ClusterConfig::default());
    }

    #[test]
    fn bad_files_fail_closed_with_a_clear_message() {
        let dir = std::env::temp_dir().join(format!("herald-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("[server]\nlisten = \"nowhere\"\n", "listen"),
            ("[server]\nlisen = \"127.0.0.1:1\"\n", "lisen"),
            ("[broker]\noverflow_policy = \"maybe\"\n", "overflow_policy"),
            ("[broker.queue]\nmax_bytes = \"lots\"\n", "max_bytes"),
            ("[websocket]\nheartbeat_interval = \"1m\"\n", "heartbeat_interval"),
            ("[sse]\nretry = \"soon\"\n", "retry"),
            ("[longpoll]\ndefault_wait = \"2m\"\n", "default_wait"),
            ("[[auth.api_keys]]\nkey = \"short\"\n", "shorter than 16"),
            (
                "[[auth.api_keys]]\nkey = \"0123456789abcdef\"\nmax_commands_per_second = 0\n",
                "max_commands_per_second must be positive",
            ),
            ("[admin]\nkey = \"short\"\n", "admin.key is shorter"),
            (
                "[tls]\ncert_file = \"/x.pem\"\n",
                "tls.cert_file and tls.key_file go together",
            ),
            ("[server]\ndrain_window = \"0s\"\n", "server.drain_window"),
            ("[server]\nwrite_delay = \"2s\"\n", "server.write_delay"),
            ("[auth]\nanonymous = \"publish\"\n", "anonymous"),
            (
                "[auth]\nanonymous_subscribe = [\"a.>.b\"]\n",
                "anonymous_subscribe",
            ),
            ("[[subjects]]\npattern = \"chat..x\"\n", "subjects[0].pattern"),
            ("[[subjects]]\npattern = \"chat\"\nhistory = 3\n", "history"),
            (
                "[[auth.api_keys]]\nkey = \"0123456789abcdef\"\npublish = [\"a..b\"]\n",
                "publish",
            ),
            #[cfg(feature = "cluster")]
            (
                "[storage]\nhistory = \"disk\"\n[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n",
                "cluster keeps its history in JetStream",
            ),
            #[cfg(feature = "cluster")]
            (
                "[cluster]\nnats_url = \"nats://h:1\"\nreplicas = 0\n",
                "cluster.replicas",
            ),
        ];
        for (index, (text, expected)) in cases.iter().enumerate() {
            let path = dir.join(format!("case{index}.toml"));
            std::fs::write(&path, text).unwrap();
            let error = format!("{:#}", Config::load(Some(&path), false).unwrap_err());
            assert!(error.contains(expected), "{text:?} -> {error}");
        }
        assert!(Config::load(Some(&dir.join("missing.toml")), false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
