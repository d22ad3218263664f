//! # herald-gateway
//!
//! The gateway kit: everything Herald's transports share, so that a gateway
//! is only the adapter between its wire and a broker
//! [`Session`](herald_broker::Session). A new transport brings a router (or
//! a listener), decodes its frames into commands, and implements
//! [`EventWriter`] for its way of writing; the kit supplies the rest.
//!
//! | module | owns |
//! |---|---|
//! | [`context`] | [`GatewayContext`]: the broker, the authenticator, shutdown, connection tracking, disconnect counters |
//! | [`credentials`] | where a client's credential is read from (header, `?token=`, cookie) |
//! | [`origins`] | the `Origin` allow-list of browser pages |
//! | [`refusal`] | refusals a browser can read: `err` then an application close code |
//! | [`query`] | query strings with repeated keys (`?subject=a&subject=b`) |
//! | [`health`] | the dependencies `/healthz` and `/readyz` report on |
//! | [`error`] | [`HttpError`]: status, stable `code`, message, as a JSON body |
//! | [`notices`] | bounds on the log lines clients can cause (refusals, slow consumers) |
//! | [`limits`] | the per-connection command rate limit |
//! | [`frames`] | one command frame in: size check, decode, hand to the session |
//! | [`expiry`] | a first `auth` command, and a token's expiry on a long connection |
//! | [`tokens`] | user tokens (JWT): verification, claims, per-user permissions |
//! | [`reads`] | wildcard history reads on the blocking pool, off the async workers |
//! | [`writer`] | the writer driver: outbox → batches → one flush each; heartbeats, write timeouts, the final reason |
//! | [`drain`] | draining: every connection closed with `server_draining`, spread over a window |
//! | [`disconnect`] | [`DisconnectReason`]: why every connection ended, counted per reason |
//!
//! ## Invariants
//!
//! - Every connection ends with exactly one [`DisconnectReason`], logged and
//!   counted once, through [`GatewayContext::disconnected`].
//! - A write that makes no progress for the gateway's `write_timeout` closes
//!   the connection as a slow consumer and is counted as one.
//! - Nothing here routes or queues messages: that is the broker's.

pub mod context;
pub mod credentials;
pub mod disconnect;
pub mod drain;
pub mod error;
pub mod expiry;
pub mod frames;
pub mod health;
pub mod limits;
pub mod notices;
pub mod origins;
pub mod query;
pub mod reads;
pub mod refusal;
pub mod tokens;
pub mod writer;

pub use context::GatewayContext;
pub use credentials::Cookies;
pub use disconnect::{DisconnectCounters, DisconnectReason};
pub use error::HttpError;
pub use expiry::TokenClock;
pub use health::{Dependency, Health};
pub use limits::CommandRateLimiter;
pub use origins::AllowedOrigins;
pub use query::QueryParams;
pub use writer::{drive, EventWriter, WriterConfig};
