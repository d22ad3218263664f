//! # herald-admin
//!
//! What operators use to see and steer a running server, behind the admin
//! key (`[admin] key`):
//!
//! | route | does |
//! |---|---|
//! | `GET /metrics` | Prometheus text format ([`metrics`]); the key unless `public_metrics` |
//! | `GET /v1/admin/subjects` | subjects and subscribed patterns: subscribers, history size |
//! | `GET /v1/admin/connections?user=` | open streaming connections (one user's) |
//! | `DELETE /v1/admin/users/{user}/connections` | disconnects a user (`removed`, close code 4403) |
//! | `DELETE /v1/admin/history?subject=` | clears a subject's history (memory and disk) |
//! | `POST /v1/admin/drain` | starts draining (what SIGUSR1 and `herald drain` do) |
//! | `GET /dashboard` | the live dashboard: a page that asks for the key, then watches `$sys.stats` over `/ws` |
//!
//! The dashboard's numbers come from [`feed`]: while someone subscribes to
//! `$sys.stats` (only the admin key may), the server publishes its
//! counters there every `stats_interval`.

pub mod api;
pub mod feed;
pub mod metrics;

use std::net::SocketAddr;
use std::time::Duration;

use herald_broker::Secret;
use serde::Deserialize;

/// The `[admin]` section of the configuration, with its comments.
pub const DEFAULT_CONFIG: &str = include_str!("admin.default.toml");

/// The `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin key; empty: the admin API is off.
    pub key: Secret,
    /// A listener of its own ("": the main one).
    #[serde(deserialize_with = "optional_address")]
    pub listen: Option<SocketAddr>,
    /// `/metrics` without the key.
    pub public_metrics: bool,
    #[serde(with = "herald_broker::units::duration")]
    pub stats_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            key: Secret(String::new()),
            listen: None,
            public_metrics: false,
            stats_interval: Duration::from_secs(1),
        }
    }
}

impl AdminConfig {
    /// Checks the settings; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.key.0.is_empty() && self.key.0.len() < herald_broker::auth::MIN_KEY_LENGTH {
            return Err(format!(
                "admin.key is shorter than {} characters; use a long random key",
                herald_broker::auth::MIN_KEY_LENGTH
            ));
        }
        if self.stats_interval < Duration::from_millis(100) {
            return Err("admin.stats_interval must be at least 100ms".into());
        }
        Ok(())
    }

    pub fn is_enabled(&self) -> bool {
        !self.key.0.is_empty()
    }
}

fn optional_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an address such as 127.0.0.1:7402")))
}

pub use api::router;
