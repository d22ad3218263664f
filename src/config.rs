//! Configuration: one typed struct, layered defaults → file → environment.
//!
//! The defaults are `src/herald.default.toml`, compiled in and printed by
//! `herald config default`, so the documented defaults and the real ones
//! cannot drift apart. Unknown keys are errors, sizes and durations are
//! typed ("64KiB", "20s"), and everything is validated before the server
//! starts.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytesize::ByteSize;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use herald_broker::{
    AnonymousAccess, ApiKey, BrokerConfig, HistoryLimits, OverflowPolicy, Pattern, Permissions, QueueLimits,
    SubjectLimits,
};
use serde::Deserialize;

/// The compiled-in defaults, with their comments.
pub const DEFAULT_CONFIG: &str = include_str!("herald.default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerSection,
    pub auth: AuthSection,
    pub http: HttpSection,
    pub websocket: WebSocketSection,
    pub broker: BrokerSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub anonymous: Anonymous,
    pub api_keys: Vec<ApiKeySection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Anonymous {
    None,
    Subscribe,
    Publish,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    pub key: String,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
}

impl std::fmt::Debug for ApiKeySection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeySection")
            .field("key", &"<redacted>")
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub max_body: ByteSize,
    pub max_batch: usize,
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSection {
    pub max_frame: ByteSize,
    pub hard_frame_limit: ByteSize,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    pub max_commands_per_second: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    pub max_payload: ByteSize,
    pub max_subscriptions_per_connection: usize,
    pub overflow_policy: Policy,
    pub max_history_page: usize,
    pub subjects: SubjectsSection,
    pub queue: QueueSection,
    pub history: HistorySection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    DropOldest,
    Disconnect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectsSection {
    pub max_length: usize,
    pub max_tokens: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    pub max_messages: usize,
    pub max_bytes: ByteSize,
    pub max_replies: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySection {
    pub max_messages_per_subject: usize,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_subjects: usize,
}

impl Config {
    /// The compiled-in defaults alone.
    pub fn default_config() -> Config {
        Config::load(None, false).expect("the compiled-in defaults are valid")
    }

    /// Defaults, then `file` if given, then `HERALD_<SECTION>__<KEY>`
    /// environment variables; validated.
    pub fn load(file: Option<&Path>, read_environment: bool) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Toml::string(DEFAULT_CONFIG));
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

    fn validate(&self) -> anyhow::Result<()> {
        let ws = &self.websocket;
        if ws.heartbeat_interval >= ws.idle_timeout {
            bail!("websocket.heartbeat_interval must be shorter than websocket.idle_timeout");
        }
        if ws.max_frame > ws.hard_frame_limit {
            bail!("websocket.max_frame must not exceed websocket.hard_frame_limit");
        }
        if self.broker.max_payload.as_u64() as usize > ws.max_frame.as_u64() as usize {
            bail!("broker.max_payload must fit in websocket.max_frame");
        }
        if self.broker.queue.max_messages == 0 || self.broker.queue.max_bytes.as_u64() == 0 {
            bail!("broker.queue limits must be positive");
        }
        for (index, key) in self.auth.api_keys.iter().enumerate() {
            if key.key.len() < 16 {
                bail!("auth.api_keys[{index}].key is shorter than 16 characters; use a long random key");
            }
        }
        self.api_keys()?;
        Ok(())
    }

    pub fn broker_config(&self) -> BrokerConfig {
        let broker = &self.broker;
        BrokerConfig {
            subject_limits: SubjectLimits {
                max_length: broker.subjects.max_length,
                max_tokens: broker.subjects.max_tokens,
            },
            max_payload_bytes: broker.max_payload.as_u64() as usize,
            history: HistoryLimits {
                max_messages_per_subject: broker.history.max_messages_per_subject,
                max_age: broker.history.max_age,
                max_subjects: broker.history.max_subjects,
            },
            queue: QueueLimits {
                max_messages: broker.queue.max_messages,
                max_bytes: broker.queue.max_bytes.as_u64() as usize,
                max_replies: broker.queue.max_replies,
            },
            overflow_policy: match broker.overflow_policy {
                Policy::DropOldest => OverflowPolicy::DropOldest,
                Policy::Disconnect => OverflowPolicy::Disconnect,
            },
            max_subscriptions_per_session: broker.max_subscriptions_per_connection,
            max_history_page: broker.max_history_page,
        }
    }

    pub fn anonymous_access(&self) -> AnonymousAccess {
        match self.auth.anonymous {
            Anonymous::None => AnonymousAccess::None,
            Anonymous::Subscribe => AnonymousAccess::Subscribe,
            Anonymous::Publish => AnonymousAccess::Publish,
        }
    }

    pub fn api_keys(&self) -> anyhow::Result<Vec<ApiKey>> {
        let limits = SubjectLimits {
            max_length: self.broker.subjects.max_length,
            max_tokens: self.broker.subjects.max_tokens,
        };
        let patterns = |index: usize, field: &str, texts: &[String]| {
            texts
                .iter()
                .map(|text| {
                    Pattern::parse(text, &limits)
                        .with_context(|| format!("auth.api_keys[{index}].{field}: {text:?}"))
                })
                .collect::<anyhow::Result<Vec<Pattern>>>()
        };
        self.auth
            .api_keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                Ok(ApiKey {
                    key: key.key.clone(),
                    permissions: Permissions {
                        publish: patterns(index, "publish", &key.publish)?,
                        subscribe: patterns(index, "subscribe", &key.subscribe)?,
                    },
                })
            })
            .collect()
    }

    pub fn http_config(&self) -> herald_http::HttpConfig {
        herald_http::HttpConfig {
            max_body_bytes: self.http.max_body.as_u64() as usize,
            max_batch: self.http.max_batch,
            cors_origins: self.http.cors_origins.clone(),
        }
    }

    pub fn websocket_config(&self) -> herald_websocket::WebSocketConfig {
        let ws = &self.websocket;
        herald_websocket::WebSocketConfig {
            max_frame_bytes: ws.max_frame.as_u64() as usize,
            hard_frame_limit_bytes: ws.hard_frame_limit.as_u64() as usize,
            heartbeat_interval: ws.heartbeat_interval,
            idle_timeout: ws.idle_timeout,
            write_timeout: ws.write_timeout,
            max_commands_per_second: ws.max_commands_per_second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_match_the_core_defaults() {
        let config = Config::default_config();
        assert_eq!(config.server.listen, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(config.broker_config(), BrokerConfig::default());
        assert_eq!(
            config.websocket_config(),
            herald_websocket::WebSocketConfig::default()
        );
        assert_eq!(config.http_config(), herald_http::HttpConfig::default());
        assert_eq!(config.anonymous_access(), AnonymousAccess::Subscribe);
    }

    #[test]
    fn bad_files_fail_closed_with_a_clear_message() {
        let dir = std::env::temp_dir().join(format!("herald-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("[server]\nlisten = \"nowhere\"\n", "listen"),
            ("[server]\nlisen = \"127.0.0.1:1\"\n", "lisen"),
            ("[broker]\noverflow_policy = \"maybe\"\n", "overflow_policy"),
            ("[websocket]\nheartbeat_interval = \"1m\"\n", "heartbeat_interval"),
            ("[[auth.api_keys]]\nkey = \"short\"\n", "shorter than 16"),
            (
                "[[auth.api_keys]]\nkey = \"0123456789abcdef\"\npublish = [\"a..b\"]\n",
                "publish",
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
