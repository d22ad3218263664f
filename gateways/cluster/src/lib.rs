//! # herald-cluster
//!
//! The cluster bridge: with `[cluster] nats_url`, Herald nodes share one
//! order of messages and one history through a NATS JetStream stream, and
//! scale out behind any load balancer. Nothing here is a clustering layer
//! of Herald's own: NATS routes the messages, JetStream orders and keeps
//! them, NATS superclusters and leaf nodes span regions.
//!
//! | module | owns |
//! |---|---|
//! | (this file) | the `[cluster]` section, the [`Bridge`]: connection, state, the publisher and the feed |
//! | [`wire`] | how a Herald message is written as a NATS message and read back |
//!
//! How a message travels. A client publishes on node A over any transport;
//! the broker hands it to the bridge ([`Upstream`]), which publishes it to
//! JetStream on `<subject_prefix>.<subject>` with A's name and a message id
//! in headers (the id makes a resend after a reconnect a no-op). JetStream
//! stores it and gives it the stream's next sequence: its position on every
//! node. Every node, A included, follows the stream with one ordered
//! consumer and applies each message in stream order
//! ([`Broker::apply`]): recorded in history, fanned out to local
//! subscribers. So every node delivers the same messages in the same order
//! with the same positions, a resume token from one node is good on all of
//! them, and nothing loops: messages come in only from the stream and go
//! out only from clients. NATS clients connected to the cluster see the
//! messages on the prefixed subjects and publish into Herald there
//! (JetStream captures their publishes like Herald's).
//!
//! Faults. The client reconnects by itself (backoff to
//! `reconnect_max_delay`); the ordered consumer resumes after the last
//! sequence applied, so what was stored meanwhile is replayed, not lost.
//! Sequences the stream no longer holds when the node gets back (its limits
//! discarded them) are skipped and reported to resuming clients as a gap.
//! While disconnected, publishes are refused at once (`cluster_unavailable`)
//! rather than queued without a position; local subscribers stay connected.
//! The state is on `/healthz` and `/readyz`, and logged once per change.

pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use herald_broker::{Acknowledgement, Broker, ClusterError, Forwarded, Position, Upstream};
use herald_gateway::Dependency;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The `[cluster]` section of the defaults, with its comments.
pub const DEFAULT_CONFIG: &str = include_str!("cluster.default.toml");

/// The `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs, comma-separated; empty: a single node.
    pub nats_url: String,
    pub node_name: String,
    pub subject_prefix: String,
    pub stream: String,
    pub jetstream_domain: String,
    pub replicas: usize,
    pub publish_ack: PublishAck,
    #[serde(with = "herald_broker::units::duration")]
    pub publish_timeout: Duration,
    pub max_pending_publishes: usize,
    pub stream_messages_per_subject: usize,
    pub credentials_file: String,
    pub user: String,
    pub password: String,
    pub token: String,
    pub tls_ca_file: String,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub tls_required: bool,
    #[serde(with = "herald_broker::units::duration")]
    pub reconnect_max_delay: Duration,
}

/// When a publish is answered in cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishAck {
    /// Once JetStream has stored it, with its position.
    Stored,
    /// Once it is written to NATS, without a position.
    Sent,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: String::new(),
            node_name: String::new(),
            subject_prefix: "herald".into(),
            stream: "HERALD".into(),
            jetstream_domain: String::new(),
            replicas: 1,
            publish_ack: PublishAck::Stored,
            publish_timeout: Duration::from_secs(5),
            max_pending_publishes: 10_000,
            stream_messages_per_subject: 10_000,
            credentials_file: String::new(),
            user: String::new(),
            password: String::new(),
            token: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_required: false,
            reconnect_max_delay: Duration::from_secs(5),
        }
    }
}

impl ClusterConfig {
    pub fn is_enabled(&self) -> bool {
        !self.nats_url.trim().is_empty()
    }

    /// Checks what NATS would refuse later, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        for url in self.nats_url.split(',') {
            url.trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|error| format!("cluster.nats_url: {:?} is not a NATS URL: {error}", url.trim()))?;
        }
        for (key, path) in [
            ("credentials_file", &self.credentials_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if !path.is_empty() && std::fs::metadata(path).is_err() {
                return Err(format!("cluster.{key}: cannot read {path:?}"));
            }
        }
        let prefix = &self.subject_prefix;
        let prefix_ok = !prefix.is_empty()
            && prefix.split('.').all(|token| {
                !token.is_empty() && !token.contains(['*', '>']) && !token.contains(char::is_whitespace)
            });
        if !prefix_ok {
            return Err(format!(
                "cluster.subject_prefix {prefix:?} must be one or more NATS subject tokens without wildcards"
            ));
        }
        let stream_ok = !self.stream.is_empty()
            && !self.stream.contains(['.', '*', '>', '/', '\\'])
            && !self.stream.contains(char::is_whitespace);
        if !stream_ok {
            return Err(format!(
                "cluster.stream {:?} must be a JetStream stream name (no spaces, '.', '*', '>', slashes)",
                self.stream
            ));
        }
        if !matches!(self.replicas, 1..=5) {
            return Err(format!(
                "cluster.replicas is {}; JetStream keeps 1 to 5",
                self.replicas
            ));
        }
        if self.publish_timeout.is_zero() || self.max_pending_publishes == 0 {
            return Err(
                "cluster.publish_timeout and cluster.max_pending_publishes must be above zero".into(),
            );
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err("cluster.tls_cert_file and cluster.tls_key_file go together".into());
        }
        Ok(())
    }

    /// The identity of this configuration's numbering, the same on every
    /// node that names the same stream (and domain): a resume token from
    /// one node is then read as the same position on another, and one from
    /// another stream (another region) as a different numbering.
    pub fn epoch(&self) -> u32 {
        // FNV-1a: stable across processes and versions, unlike a seeded hash.
        let mut hash: u32 = 0x811c_9dc5;
        let identity = format!("{}\u{0}{}", self.jetstream_domain, self.stream);
        for byte in identity.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash
    }
}

/// What the stream keeps: the broker's history settings, so that the
/// window a client resumes within is the same on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_messages_per_subject: usize,
    pub max_age: Duration,
    pub max_bytes: usize,
}

/// One bridge per clustered node; see the crate docs.
#[derive(Debug)]
pub struct Bridge {
    config: ClusterConfig,
    limits: StreamLimits,
    node: String,
    /// `<subject_prefix>.`
    prefix: String,
    broker: Arc<Broker>,
    outgoing: mpsc::Sender<Outgoing>,
    outgoing_receiver: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// Publishes handed to the bridge and not yet answered.
    pending: AtomicUsize,
    /// Publishes answered with an error, by their code's index in
    /// [`ClusterError::CODES`]: the one place a NATS client's failed
    /// publish shows (a NATS publish has no answer).
    refused: [AtomicU64; ClusterError::CODES.len()],
    next_message_id: AtomicU64,
    /// The NATS connection is up.
    linked: AtomicBool,
    /// Counts connections to NATS: the feed restarts when it changes.
    links: tokio::sync::watch::Sender<u64>,
    status: Mutex<Status>,
}

struct Outgoing {
    message: Forwarded,
    done: Acknowledgement,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("message", &self.message)
            .finish()
    }
}

/// The bridge's state as `/healthz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not connected to NATS yet.
    Connecting,
    /// Connected; the stream cannot be used (JetStream off, no permission).
    StreamUnavailable,
    /// Connected; applying what the stream stored while this node was away.
    CatchingUp,
    /// Connected and following the stream live.
    Connected,
    /// Lost NATS; reconnecting.
    Disconnected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::StreamUnavailable => "stream_unavailable",
            State::CatchingUp => "catching_up",
            State::Connected => "connected",
            State::Disconnected => "disconnected",
        }
    }
}

#[derive(Debug)]
struct Status {
    state: State,
    since_millis: u64,
    last_error: Option<String>,
    /// The last stream sequence this node applied (or skipped).
    applied: u64,
    /// Sequences the stream had discarded before this node applied them.
    lost: u64,
    /// Messages the stream held beyond the last one applied, when it was
    /// delivered: how far behind the cluster this node is.
    lag: u64,
    /// Where catching up ends: the stream's last sequence when the feed
    /// (re)started.
    catch_up_through: u64,
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Bridge {
    /// A bridge for `broker`, not yet connected: [`Bridge::run`] connects.
    /// Makes the broker clustered (its publishes come here from now on).
    pub fn new(broker: Arc<Broker>, config: ClusterConfig, limits: StreamLimits) -> Arc<Bridge> {
        let node = match config.node_name.trim() {
            "" => format!("herald-{:08x}", rand_u32()),
            name => name.to_owned(),
        };
        let (outgoing, receiver) = mpsc::channel(config.max_pending_publishes);
        let bridge = Arc::new(Bridge {
            prefix: format!("{}.", config.subject_prefix),
            limits,
            node,
            broker: broker.clone(),
            outgoing,
            outgoing_receiver: Mutex::new(Some(receiver)),
            pending: AtomicUsize::new(0),
            refused: Default::default(),
            next_message_id: AtomicU64::new(1),
            linked: AtomicBool::new(false),
            links: tokio::sync::watch::Sender::new(0),
            status: Mutex::new(Status {
                state: State::Connecting,
                since_millis: now_millis(),
                last_error: None,
                applied: 0,
                lost: 0,
                lag: 0,
                catch_up_through: 0,
            }),
            config,
        });
        broker.set_upstream(bridge.clone());
        bridge
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn state(&self) -> State {
        self.lock_status().state
    }

    fn lock_status(&self) -> MutexGuard<'_, Status> {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves to `state`, logging the change once (never a repeat).
    fn set_state(&self, state: State, error: Option<String>) {
        let mut status = self.lock_status();
        if status.state == state {
            if error.is_some() {
                status.last_error = error;
            }
            return;
        }
        let previous = status.state;
        status.state = state;
        status.since_millis = now_millis();
        if error.is_some() {
            status.last_error = error.clone();
        }
        let applied = status.applied;
        drop(status);
        let (node, from, to) = (&self.node, previous.as_str(), state.as_str());
        match state {
            State::Connected | State::CatchingUp => {
                tracing::info!(node, from, to, applied, "cluster bridge")
            }
            _ => tracing::warn!(
                node,
                from,
                to,
                applied,
                error = error.as_deref().unwrap_or(""),
                "cluster bridge"
            ),
        }
    }

    /// Connects, then follows the stream and publishes until `shutdown`;
    /// never returns early: every failure is retried with backoff.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(receiver) = self
            .outgoing_receiver
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
        else {
            return;
        };
        let client = match self.connect().await {
            Ok(client) => client,
            Err(error) => {
                // Only a configuration that cannot work (an unreadable
                // credentials file) fails here; unreachable servers are
                // retried in the background.
                self.set_state(State::Connecting, Some(error.clone()));
                tracing::error!(%error, "cluster bridge cannot start");
                return;
            }
        };
        let mut context = match self.config.jetstream_domain.as_str() {
            "" => jetstream::new(client.clone()),
            domain => jetstream::with_domain(client.clone(), domain),
        };
        context.set_timeout(self.config.publish_timeout);
        let publisher = tokio::spawn(self.clone().publish_loop(context.clone(), receiver));
        tokio::select! {
            () = self.clone().follow(context) => {}
            () = shutdown.cancelled() => {}
        }
        publisher.abort();
        // Publishes still waiting are answered: the node is going away.
        let _ = client.flush().await;
    }

    async fn connect(self: &Arc<Self>) -> Result<async_nats::Client, String> {
        let config = &self.config;
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.node)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(5));
        let max_delay = config.reconnect_max_delay;
        options = options.reconnect_delay_callback(move |attempts| {
            let doubled = Duration::from_millis(100).saturating_mul(1 << attempts.min(16) as u32);
            doubled.min(max_delay)
        });
        if !config.credentials_file.is_empty() {
            options = options
                .credentials_file(&config.credentials_file)
                .await
                .map_err(|error| {
                    format!("cluster.credentials_file {:?}: {error}", config.credentials_file)
                })?;
        }
        if !config.user.is_empty() {
            options = options.user_and_password(config.user.clone(), config.password.clone());
        }
        if !config.token.is_empty() {
            options = options.token(config.token.clone());
        }
        if !config.tls_ca_file.is_empty() {
            options = options.add_root_certificates(config.tls_ca_file.clone().into());
        }
        if !config.tls_cert_file.is_empty() {
            options = options.add_client_certificate(
                config.tls_cert_file.clone().into(),
                config.tls_key_file.clone().into(),
            );
        }
        options = options.require_tls(config.tls_required);
        let bridge = Arc::downgrade(self);
        options = options.event_callback(move |event| {
            let bridge = bridge.clone();
            async move {
                let Some(bridge) = bridge.upgrade() else { return };
                match event {
                    async_nats::Event::Connected => {
                        bridge.linked.store(true, Ordering::Release);
                        // The feed starts over after the last sequence
                        // applied: a consumer from before the outage may be
                        // gone with the server that held it.
                        bridge.links.send_modify(|links| *links += 1);
                    }
                    async_nats::Event::Disconnected => {
                        bridge.linked.store(false, Ordering::Release);
                        bridge.set_state(State::Disconnected, None);
                    }
                    // A refused connection (bad credentials, TLS) comes
                    // as a client error: shown on /healthz, retried.
                    async_nats::Event::ServerError(error) => {
                        bridge.lock_status().last_error = Some(error.to_string());
                    }
                    async_nats::Event::ClientError(error) => {
                        bridge.lock_status().last_error = Some(error.to_string());
                    }
                    other => tracing::debug!(event = %other, "cluster bridge: NATS event"),
                }
            }
        });
        let urls: Vec<async_nats::ServerAddr> = config
            .nats_url
            .split(',')
            .map(|url| url.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|error| format!("cluster.nats_url {:?}: {error}", config.nats_url))?;
        options.connect(urls).await.map_err(|error| error.to_string())
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.config.stream.clone(),
            subjects: vec![format!("{}>", self.prefix)],
            // Not only the history window: also how far a node may fall
            // behind on one subject before the stream discards what it has
            // not applied yet (then reported as a gap).
            max_messages_per_subject: self
                .limits
                .max_messages_per_subject
                .max(self.config.stream_messages_per_subject) as i64,
            max_age: self.limits.max_age,
            max_bytes: self.limits.max_bytes as i64,
            storage: stream::StorageType::File,
            num_replicas: self.config.replicas,
            discard: stream::DiscardPolicy::Old,
            // A publish resent after a reconnect within this window is
            // recognised by its id and stored once.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    /// Follows the stream for ever: (re)creates the ordered consumer after
    /// the last sequence applied whenever it ends.
    async fn follow(self: Arc<Self>, context: jetstream::Context) {
        let mut failures: u32 = 0;
        let mut links = self.links.subscribe();
        loop {
            if failures > 0 {
                let delay = Duration::from_millis(100).saturating_mul(1 << failures.min(16));
                tokio::time::sleep(delay.min(self.config.reconnect_max_delay)).await;
            }
            failures += 1;
            if !self.linked.load(Ordering::Acquire) {
                let _ = tokio::time::timeout(self.config.reconnect_max_delay, links.changed()).await;
                continue;
            }
            links.borrow_and_update();
            let stream = match context.get_or_create_stream(self.stream_config()).await {
                Ok(stream) => stream,
                Err(error) => {
                    self.set_state(State::StreamUnavailable, Some(error.to_string()));
                    continue;
                }
            };
            let info = stream.cached_info().state.clone();
            let applied = self.lock_status().applied;
            // The first time, the node catches up on the stream's history
            // without delivering it (nobody here waited for it); afterwards
            // it resumes right after what it applied.
            let start = match applied {
                0 => info.first_sequence.max(1),
                applied => applied + 1,
            };
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: format!("{}>", self.prefix),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    // Pulls expire after 2 s with a heartbeat every second,
                    // so a lost pull or a vanished consumer is noticed (and
                    // the consumer recreated) in seconds, not the library's
                    // default half minute. Idle, it costs a pull every 2 s.
                    max_expires: Duration::from_secs(2),
                    ..Default::default()
                })
                .await;
            let mut messages = match consumer {
                Ok(consumer) => match consumer.messages().await {
                    Ok(messages) => messages,
                    Err(error) => {
                        self.set_state(State::StreamUnavailable, Some(error.to_string()));
                        continue;
                    }
                },
                Err(error) => {
                    self.set_state(State::StreamUnavailable, Some(error.to_string()));
                    continue;
                }
            };
            let silent_through = if applied == 0 { info.last_sequence } else { 0 };
            {
                let mut status = self.lock_status();
                status.catch_up_through = info.last_sequence;
            }
            self.update_readiness();
            loop {
                tokio::select! {
                    next = messages.next() => match next {
                        Some(Ok(message)) => self.apply(message, silent_through),
                        Some(Err(error)) => {
                            tracing::debug!(%error, "cluster bridge: feed interrupted");
                            break;
                        }
                        None => break,
                    },
                    _ = links.changed() => break,
                }
            }
            failures = 1;
        }
    }

    /// How far behind the stream this node may be and still take
    /// publishes: half of what the stream keeps per subject.
    fn max_lag(&self) -> u64 {
        (self.config.stream_messages_per_subject as u64 / 2).max(1)
    }

    /// Connected and caught up, or catching up.
    fn update_readiness(&self) {
        let (applied, through) = {
            let status = self.lock_status();
            (status.applied, status.catch_up_through)
        };
        if !self.linked.load(Ordering::Acquire) {
            return;
        }
        let state = if applied >= through {
            State::Connected
        } else {
            State::CatchingUp
        };
        self.set_state(state, None);
    }

    /// Applies one message of the stream to the local broker.
    fn apply(&self, message: jetstream::Message, silent_through: u64) {
        let Ok(info) = message.info() else {
            tracing::warn!(subject = %message.subject, "cluster bridge: a stream message without its position");
            return;
        };
        let sequence = info.stream_sequence;
        let published_at = (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        // One look at the status per message: what was skipped, and whether
        // this message ends a catch-up.
        let (skipped_from, ends_catch_up) = {
            let mut status = self.lock_status();
            let previous = status.applied;
            if sequence <= previous {
                return;
            }
            status.applied = sequence;
            status.lag = info.pending;
            let skipped_from = (previous > 0 && sequence > previous + 1).then_some(previous + 1);
            if let Some(from) = skipped_from {
                status.lost += sequence - from;
            }
            let ends_catch_up = sequence >= status.catch_up_through && status.state != State::Connected;
            (skipped_from, ends_catch_up)
        };
        if let Some(from) = skipped_from {
            // Discarded by the stream's limits (or deleted) before this node
            // applied them: subscribers are told of a gap.
            tracing::warn!(
                from,
                through = sequence - 1,
                "cluster bridge: the stream no longer holds these messages; reported as a gap"
            );
            self.broker.skip_lost(sequence - 1);
        }
        let Some(subject) = message.subject.as_str().strip_prefix(&self.prefix) else {
            return;
        };
        let read = wire::read(&message.message, &self.node);
        let live = sequence > silent_through;
        if let Err(error) = self.broker.apply(
            subject,
            sequence,
            published_at,
            read.payload,
            read.envelope,
            read.echo_key,
            live,
        ) {
            // A NATS client published something Herald cannot carry (an
            // invalid subject, an oversized payload): skipped, not fatal.
            tracing::debug!(subject, %error, "cluster bridge: message skipped");
        }
        if ends_catch_up {
            self.update_readiness();
        }
    }

    async fn publish_loop(
        self: Arc<Self>,
        context: jetstream::Context,
        mut receiver: mpsc::Receiver<Outgoing>,
    ) {
        let epoch = self.broker.epoch();
        while let Some(Outgoing { message, done }) = receiver.recv().await {
            let id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
            let subject = format!("{}{}", self.prefix, message.subject);
            let (headers, payload) = wire::write(&message, &self.node, id);
            let sent = context.publish_with_headers(subject, headers, payload).await;
            let ack = match sent {
                Err(error) => {
                    self.answer(done, Err(ClusterError::Unavailable { state: "send_failed" }));
                    tracing::debug!(%error, "cluster bridge: publish not sent");
                    continue;
                }
                Ok(ack) => ack,
            };
            match self.config.publish_ack {
                PublishAck::Sent => self.answer(done, Ok(None)),
                PublishAck::Stored => {
                    let bridge = self.clone();
                    let timeout = self.config.publish_timeout;
                    tokio::spawn(async move {
                        let result = match ack.await {
                            Ok(ack) => Ok(Some(Position::new(epoch, ack.sequence))),
                            Err(error) => Err(match error.kind() {
                                jetstream::context::PublishErrorKind::TimedOut => ClusterError::Unconfirmed {
                                    millis: timeout.as_millis() as u64,
                                },
                                jetstream::context::PublishErrorKind::BrokenPipe => {
                                    ClusterError::Unavailable {
                                        state: "disconnected",
                                    }
                                }
                                _ => ClusterError::Refused {
                                    reason: error.to_string(),
                                },
                            }),
                        };
                        bridge.answer(done, result);
                    });
                }
            }
        }
    }

    fn answer(&self, done: Acknowledgement, result: Result<Option<Position>, ClusterError>) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(position) => done(Ok(position)),
            Err(error) => self.refuse(done, error),
        }
    }

    /// Answers `done` with `error`, counted by its code.
    fn refuse(&self, done: Acknowledgement, error: ClusterError) {
        if let Some(code) = ClusterError::CODES.iter().position(|code| *code == error.code()) {
            self.refused[code].fetch_add(1, Ordering::Relaxed);
        }
        done(Err(error));
    }
}

impl Upstream for Bridge {
    fn forward(&self, message: Forwarded, done: Acknowledgement) {
        let (state, lag) = {
            let status = self.lock_status();
            (status.state, status.lag)
        };
        if !matches!(state, State::Connected | State::CatchingUp) || !self.linked.load(Ordering::Acquire) {
            self.refuse(
                done,
                ClusterError::Unavailable {
                    state: state.as_str(),
                },
            );
            return;
        }
        // A node far behind the stream would only make it worse: what its
        // clients publish is stored at once, but it cannot deliver even
        // what it already owes, and past `stream_messages_per_subject` its
        // subscribers start losing messages. Its own publishers wait.
        if lag > self.max_lag() {
            self.refuse(done, ClusterError::Behind { behind: lag });
            return;
        }
        let max = self.config.max_pending_publishes;
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.refuse(done, ClusterError::Busy { pending: max });
            return;
        }
        if let Err(error) = self.outgoing.try_send(Outgoing { message, done }) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            let Outgoing { done, .. } = error.into_inner();
            self.refuse(done, ClusterError::Busy { pending: max });
        }
    }

    fn is_busy(&self) -> bool {
        self.pending.load(Ordering::Acquire) >= self.config.max_pending_publishes
            || self.lock_status().lag > self.max_lag()
    }
}

impl Dependency for Bridge {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn report(&self) -> serde_json::Value {
        let status = self.lock_status();
        serde_json::json!({
            "state": status.state.as_str(),
            "since_ms": status.since_millis,
            "node": self.node,
            "stream": self.config.stream,
            "applied": status.applied,
            "lost": status.lost,
            "lag": status.lag,
            "pending_publishes": self.pending.load(Ordering::Relaxed),
            "publishes_refused": ClusterError::CODES
                .iter()
                .zip(&self.refused)
                .map(|(code, count)| (code.to_string(), count.load(Ordering::Relaxed).into()))
                .collect::<serde_json::Map<_, _>>(),
            "last_error": status.last_error,
        })
    }

    fn is_ready(&self) -> bool {
        self.state() == State::Connected
    }

    fn states(&self) -> &'static [&'static str] {
        &[
            "connecting",
            "stream_unavailable",
            "catching_up",
            "connected",
            "disconnected",
        ]
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_millis());
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_names_the_stream_and_its_domain() {
        let config = |domain: &str, stream: &str| ClusterConfig {
            jetstream_domain: domain.into(),
            stream: stream.into(),
            ..ClusterConfig::default()
        };
        assert_eq!(config("", "HERALD").epoch(), config("", "HERALD").epoch());
        assert_ne!(config("", "HERALD").epoch(), config("", "HERALD2").epoch());
        assert_ne!(config("east", "HERALD").epoch(), config("west", "HERALD").epoch());
        // Stable across builds: a node upgraded mid-cluster must agree.
        assert_eq!(config("", "HERALD").epoch(), 0xf72c_4f5d);
    }

    #[test]
    fn a_node_far_behind_the_stream_refuses_its_own_publishes() {
        let broker = Broker::new(herald_broker::BrokerConfig::default());
        let config = ClusterConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            stream_messages_per_subject: 100,
            ..ClusterConfig::default()
        };
        let limits = StreamLimits {
            max_messages_per_subject: 100,
            max_age: Duration::from_secs(60),
            max_bytes: 1 << 20,
        };
        let bridge = Bridge::new(broker, config, limits);
        let answer = |bridge: &Bridge| {
            let (sender, receiver) = std::sync::mpsc::channel();
            let message = Forwarded {
                subject: herald_broker::Subject::parse("a", &Default::default()).unwrap(),
                payload: herald_broker::Payload::from_bytes(bytes::Bytes::from_static(b"1")),
                envelope: Default::default(),
                echo_key: None,
            };
            bridge.forward(message, Box::new(move |result| sender.send(result).unwrap()));
            receiver.try_recv().ok()
        };
        // Not connected: refused at once.
        assert!(matches!(
            answer(&bridge),
            Some(Err(ClusterError::Unavailable { .. }))
        ));
        bridge.linked.store(true, Ordering::Release);
        bridge.lock_status().state = State::Connected;
        bridge.lock_status().lag = 51;
        assert_eq!(answer(&bridge), Some(Err(ClusterError::Behind { behind: 51 })));
        assert_eq!(ClusterError::Behind { behind: 51 }.code(), "cluster_busy");
        // Within half of what the stream keeps: handed on (answered later).
        bridge.lock_status().lag = 50;
        assert_eq!(answer(&bridge), None);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let good = ClusterConfig {
            nats_url: "nats://127.0.0.1:4222, nats://10.0.0.2:4222".into(),
            ..ClusterConfig::default()
        };
        assert_eq!(good.validate(), Ok(()));
        let bad = [
            (
                "subject_prefix",
                ClusterConfig {
                    subject_prefix: "a.*".into(),
                    ..good.clone()
                },
            ),
            (
                "stream",
                ClusterConfig {
                    stream: "has.dot".into(),
                    ..good.clone()
                },
            ),
            (
                "replicas",
                ClusterConfig {
                    replicas: 7,
                    ..good.clone()
                },
            ),
            (
                "tls_cert_file",
                ClusterConfig {
                    tls_cert_file: "/nonexistent/cert.pem".into(),
                    ..good.clone()
                },
            ),
            (
                "nats_url",
                ClusterConfig {
                    nats_url: "nats://127.0.0.1:4222, http://[bad".into(),
                    ..good.clone()
                },
            ),
            (
                "credentials_file",
                ClusterConfig {
                    credentials_file: "/nonexistent/node.creds".into(),
                    ..good.clone()
                },
            ),
        ];
        for (key, config) in bad {
            let error = config.validate().unwrap_err();
            assert!(error.contains(&format!("cluster.{key}")), "{key}: {error}");
        }
    }
}
