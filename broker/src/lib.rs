//! # herald-broker
//!
//! Herald's transport-neutral fan-out core. It owns subjects and patterns,
//! the subscription index, per-connection bounded queues, message positions
//! and history, and the client protocol with its JSON and MessagePack
//! codecs. It performs no network I/O and reads no clock of its own: time
//! comes from a [`Clock`], so its tests are deterministic.
//!
//! ## Map
//!
//! | module | owns |
//! |---|---|
//! | [`subject`] | subject and pattern rules, validated once |
//! | [`router`] | the subject → subscribers index (exact map + wildcard trie) |
//! | [`queue`] | queue groups: each message to one member of a group |
//! | [`message`] | shared messages, payloads, encode-once frames |
//! | [`outbox`] | bounded per-connection queues and overflow policies |
//! | [`position`] | positions and resume tokens |
//! | [`history`] | per-subject rings bounded by count and age |
//! | [`broker`] | publish: number, record, match, fan out; the one subscribe door |
//! | [`cluster`] | what a node of a cluster hands on, and how it hears back |
//! | [`session`] | the interface connection-based gateways use |
//! | [`connections`] | every open streaming connection, for operators |
//! | [`stats`] | what operators count: per transport, per reason, latencies |
//! | [`poll`] | cursor reads for gateways without a connection (long polling) |
//! | [`auth`] | access checks, API keys, permissions, anonymous access |
//! | [`protocol`] | client commands and server events, every encoding |
//! | [`units`] | how configuration writes sizes and durations |
//!
//! ## Invariants
//!
//! - Publishing never waits for a subscriber: it offers each message to
//!   bounded queues and moves on.
//! - Per subject, a subscriber receives messages in position order, none
//!   twice.
//! - Nothing is lost silently: every message a subscriber does not receive
//!   (full queue, history window) is named in a `gap` event.
//!
//! ```
//! use std::sync::Arc;
//! use herald_broker::{Acknowledge, AllowAll, Broker, BrokerConfig, Payload, Session};
//!
//! let broker = Broker::new(BrokerConfig::default());
//! let mut session = Session::new(&broker, Arc::new(AllowAll));
//! session.subscribe(&["chat.*"], None, Acknowledge::Never).unwrap();
//! let position = broker.publish("chat.lobby", Payload::from_json(r#"{"text":"hi"}"#.into()).unwrap()).unwrap();
//!
//! let mut batch = std::collections::VecDeque::new();
//! session.outbox().try_take_batch(&mut batch).unwrap().unwrap();
//! let frame = String::from_utf8(batch[0].encode(herald_broker::Encoding::Json).to_vec()).unwrap();
//! assert!(frame.starts_with(&format!(r#"{{"op":"msg","subject":"chat.lobby","pos":"{}","ts":"#, position.token())));
//! assert!(frame.ends_with(r#","data":{"text":"hi"}}"#));
//! ```

pub mod auth;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod connections;
pub mod history;
pub mod message;
pub mod outbox;
pub mod poll;
pub mod position;
pub mod presence;
pub mod protocol;
pub mod publisher;
pub mod queue;
pub mod router;
pub mod rules;
pub mod session;
pub mod stats;
pub mod subject;
pub mod units;

pub use auth::{
    Access, AllowAll, ApiKey, ApiKeyConfig, AuthConfig, AuthConfigError, AuthError, Authenticator,
    OperatorAccess, Permissions, Secret, TokenVerifier, User,
};
pub use broker::{
    BatchError, Broker, BrokerConfig, Journal, Metrics, PublishError, Replay, Restored, Resume,
    StoredMessage, SubjectInfo, INBOX_PREFIX,
};
pub use clock::{Clock, ManualClock, Stamp, SystemClock};
pub use cluster::{Acknowledgement, ClusterError, Forwarded, Upstream};
pub use connections::ConnectionInfo;
pub use history::{HistoryLimits, PatternTooBroad, RingLimits};
pub use message::{
    msgpack_value_len, Envelope, Headers, HeadersError, Message, Payload, PayloadError, MAX_PAYLOAD_DEPTH,
};
pub use outbox::{CloseReason, Offer, Outbox, OverflowPolicy, QueueLimits, SubscriptionId, WHOLE_CONNECTION};
pub use poll::{Poll, PollPage, Watch};
pub use position::{InvalidToken, Position};
pub use presence::{Member, PresenceLimits};
pub use protocol::{decode_command, Command, DecodeError, Encoding, Gap, Outbound, Reply, ServerEvent};
pub use publisher::Publisher;
pub use rules::{RuleError, SubjectPolicy, SubjectRuleConfig, SubjectRules};
pub use session::{Acknowledge, HistoryPage, Session, SessionBatchError, SessionError};
pub use stats::{Stats, StatsSnapshot, Transport};
pub use subject::{names_wildcards, validate_subject, Pattern, Subject, SubjectError, SubjectLimits};
