//! A [`Session`]: the one door a gateway uses for one client connection.
//!
//! Gateways decode frames into [`Command`]s and hand them to
//! [`Session::handle`]; they write whatever [`Outbox::next_batch`] yields.
//! The session validates every subject, checks every operation against the
//! connection's [`Access`], enforces per-connection limits and answers with
//! `ack` / `err` events in the same queue as the messages, so a client sees
//! its `sub` acknowledged before the messages it asked for.
//!
//! Dropping the session removes its subscriptions from the router.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::auth::Access;
use crate::broker::{Broker, PublishError, Replay, Route};
use crate::cluster::Acknowledgement;
use crate::history::PatternTooBroad;
use crate::message::{Envelope, Message, Payload};
use crate::outbox::{Outbox, SubscriptionId, WHOLE_CONNECTION};
use crate::position::{InvalidToken, Position};
use crate::presence::Member;
use crate::protocol::{Command, DecodeError, Gap, Reply};
use crate::publisher::Publisher;
use crate::queue::{validate_queue_name, QueueNameError};
use crate::stats::Transport;
use crate::subject::{Pattern, Subject, SubjectError, OPERATOR_PREFIX};

/// Why a session operation failed. Each maps to a stable `err` code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error(transparent)]
    Subject(#[from] SubjectError),
    #[error(transparent)]
    Token(#[from] InvalidToken),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("not allowed to {operation} {subject:?}")]
    Forbidden {
        operation: &'static str,
        subject: String,
    },
    #[error("this connection already holds {max} subscriptions")]
    TooManySubscriptions { max: usize },
    #[error("not subscribed to {subject:?}")]
    NotSubscribed { subject: String },
    #[error("no subject given: name at least one pattern to subscribe to")]
    NoSubjects,
    #[error(transparent)]
    TooBroad(#[from] PatternTooBroad),
    #[error("more than {per_second} publishes in one second from this connection: slow down")]
    RateLimited { per_second: u32 },
    #[error("{subject:?} has no presence: a [[subjects]] rule with presence = true turns it on")]
    NoPresence { subject: String },
    #[error("refresh refused: {0}")]
    Refresh(&'static str),
    #[error(transparent)]
    QueueName(#[from] QueueNameError),
    #[error(
        "a queue group subscription cannot take {option}: each message goes to one member, whoever is there"
    )]
    QueueOption { option: &'static str },
    #[error("subscription id {id} is already in use on this connection")]
    DuplicateId { id: SubscriptionId },
}

impl SessionError {
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Subject(error) => error.code(),
            SessionError::Token(error) => error.code(),
            SessionError::Publish(error) => error.code(),
            SessionError::Decode(error) => error.code(),
            SessionError::Forbidden { .. } => "forbidden",
            SessionError::TooManySubscriptions { .. } => "too_many_subscriptions",
            SessionError::NotSubscribed { .. } => "not_subscribed",
            SessionError::NoSubjects => "missing_field",
            SessionError::TooBroad(_) => "pattern_too_broad",
            SessionError::RateLimited { .. } => "rate_limited",
            SessionError::NoPresence { .. } => "no_presence",
            SessionError::Refresh(_) => "refresh_refused",
            SessionError::QueueName(_) => "invalid_queue",
            SessionError::QueueOption { .. } => "invalid_queue",
            SessionError::DuplicateId { .. } => "duplicate_subscription",
        }
    }
}

/// A batch that was refused whole, and which message refused it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("message {index} of the batch: {error}")]
pub struct SessionBatchError {
    pub index: usize,
    pub error: SessionError,
}

/// Whether a subscription is acknowledged with the position to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledge {
    /// No `ack`: a `sub` command without an `id` is answered only if it fails.
    Never,
    /// An `ack` carrying the position, ahead of the messages; with the
    /// command's `id` when it has one (one-way transports send it without,
    /// as the first event of a stream).
    Always { id: Option<u64> },
}

impl Acknowledge {
    /// How a command with this `id` is acknowledged.
    pub fn command(id: Option<u64>) -> Acknowledge {
        match id {
            Some(id) => Acknowledge::Always { id: Some(id) },
            None => Acknowledge::Never,
        }
    }
}

/// The answer to a history read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub subject: Pattern,
    /// Positions that may be missing before `messages`.
    pub gap: Option<Gap>,
    pub messages: Vec<Message>,
}

/// Parses the patterns a client asks for and checks that it may read them:
/// what every way of subscribing (a session, a poll) checks first.
/// Duplicates are dropped; the order is kept.
pub(crate) fn subscribable_patterns<S: AsRef<str>>(
    broker: &Broker,
    access: &dyn Access,
    subjects: &[S],
) -> Result<Vec<Pattern>, SessionError> {
    if subjects.is_empty() {
        return Err(SessionError::NoSubjects);
    }
    // Checked before parsing: a request naming thousands of subjects costs
    // nothing but this comparison.
    let max = broker.config().max_subscriptions_per_connection;
    if subjects.len() > max {
        return Err(SessionError::TooManySubscriptions { max });
    }
    let mut patterns: Vec<Pattern> = Vec::with_capacity(subjects.len());
    for subject in subjects {
        let subject = subject.as_ref();
        let limits = &broker.config().subject_limits;
        let (pattern, allowed) = match subject.starts_with(OPERATOR_PREFIX) {
            // The operators' namespace: no permission pattern reaches it,
            // not even `>`; only the admin key.
            true => (Pattern::parse_operator(subject, limits)?, access.is_operator()),
            false => {
                let pattern = Pattern::parse(subject, limits)?;
                let allowed = access.may_subscribe(&pattern);
                (pattern, allowed)
            }
        };
        if !allowed {
            return Err(SessionError::Forbidden {
                operation: "subscribe to",
                subject: subject.to_owned(),
            });
        }
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    Ok(patterns)
}

/// Publishes a client connection may make per second (a token bucket
/// that refills continuously).
#[derive(Debug)]
pub(crate) struct PublishBudget {
    per_second: u32,
    tokens: f64,
    refilled: std::time::Instant,
}

impl PublishBudget {
    /// The budget of an anonymous client connection; none for a backend,
    /// for a user (whose budget the broker keeps, shared by all their
    /// connections and requests), or with no limit set.
    pub(crate) fn for_access(
        per_second: u32,
        access: &dyn Access,
    ) -> Option<std::sync::Mutex<PublishBudget>> {
        (per_second > 0 && !access.is_backend() && access.user().is_none())
            .then(|| std::sync::Mutex::new(PublishBudget::new(per_second)))
    }

    pub(crate) fn new(per_second: u32) -> PublishBudget {
        PublishBudget {
            per_second,
            tokens: f64::from(per_second),
            refilled: std::time::Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = std::time::Instant::now();
        let rate = f64::from(self.per_second);
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate);
        self.refilled = now;
    }

    /// Whether a full second's budget is there again: nothing to remember.
    pub(crate) fn is_full(&mut self) -> bool {
        self.refill();
        self.tokens >= f64::from(self.per_second)
    }

    pub(crate) fn take(&mut self) -> Result<(), SessionError> {
        self.refill();
        if self.tokens < 1.0 {
            return Err(SessionError::RateLimited {
                per_second: self.per_second,
            });
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// A subscription of its own (a NATS `sid`) or in a queue group: live
/// only, apart from the connection's [`WHOLE_CONNECTION`] patterns.
#[derive(Debug)]
struct Membership {
    id: SubscriptionId,
    pattern: Pattern,
    queue: Option<Box<str>>,
}

/// One client connection's view of the broker.
pub struct Session {
    broker: Arc<Broker>,
    id: u64,
    /// The label of what it publishes, receives and asks.
    transport: Transport,
    outbox: Arc<Outbox>,
    /// Its access, its publish budget: what its publishes are checked by.
    publisher: Publisher,
    /// The subject its last `pub` went to, checked for its publisher: a
    /// client that keeps to one subject has it checked and looked up once.
    route: Option<Route>,
    /// Patterns held, in subscription order; small, so a Vec.
    patterns: Vec<Pattern>,
    /// Subscriptions under their own id, or in a queue group.
    memberships: Vec<Membership>,
    /// Rooms this connection is present in (as its access's user), and
    /// whether each announces joins and leaves.
    rooms: Vec<(Subject, bool)>,
}

impl Session {
    /// Opens a session for one client connection with what it may do.
    /// When the connection's access ends, in milliseconds since the Unix
    /// epoch (a token's expiry), if it does.
    pub fn access_expires_at_millis(&self) -> Option<u64> {
        self.publisher.access.expires_at_millis()
    }

    pub fn new(broker: &Arc<Broker>, access: Arc<dyn Access>) -> Session {
        Session::on(Transport::Internal, broker, access)
    }

    /// Opens a session for a connection (or a request) on `transport`,
    /// counted under it while open.
    pub fn on(transport: Transport, broker: &Arc<Broker>, access: Arc<dyn Access>) -> Session {
        let config = broker.config();
        let stats = broker.stats().clone();
        stats.session_opened(transport);
        let outbox = Arc::new(Outbox::metered(
            config.queue,
            config.overflow_policy,
            transport,
            stats,
        ));
        let id = broker.next_session_id();
        if !matches!(transport, Transport::Http | Transport::Internal) {
            let user = access.user().map(|user| user.id.clone());
            broker
                .connections()
                .open(id, transport, user, broker.now_millis(), &outbox);
        }
        Session {
            id,
            transport,
            broker: broker.clone(),
            outbox,
            publisher: Publisher::new(transport, broker, access),
            route: None,
            patterns: Vec::new(),
            memberships: Vec::new(),
            rooms: Vec::new(),
        }
    }

    /// Replaces what this connection may do: a first `auth` (before any
    /// subscription) or a `refresh`, which must be for the same user and
    /// still allow every subscription held.
    pub fn replace_access(&mut self, access: Arc<dyn Access>) -> Result<(), SessionError> {
        if !self.patterns.is_empty() || !self.memberships.is_empty() || !self.rooms.is_empty() {
            let same_user = match (self.publisher.access.user(), access.user()) {
                (Some(old), Some(new)) => old.id == new.id,
                (None, None) => true,
                _ => false,
            };
            if !same_user {
                return Err(SessionError::Refresh("the new token is for another user"));
            }
            let kept = self
                .patterns
                .iter()
                .chain(self.memberships.iter().map(|membership| &membership.pattern))
                .filter(|pattern| !pattern.is_system())
                .all(|pattern| access.may_subscribe(pattern));
            if !kept {
                return Err(SessionError::Refresh(
                    "the new token does not allow every subscription held: unsubscribe first",
                ));
            }
        }
        self.broker
            .connections()
            .set_user(self.id, access.user().map(|user| user.id.clone()));
        self.publisher = Publisher::new(self.transport, &self.broker, access);
        Ok(())
    }

    /// Unique among this broker's sessions; for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The command rate this connection's access carries, if its own (an
    /// API key's); the transport applies its limit otherwise.
    pub fn max_commands_per_second(&self) -> Option<u32> {
        self.publisher.access.max_commands_per_second()
    }

    /// Counts a command this session's gateway answered itself (`auth`,
    /// `refresh`, an undecodable frame, an HTTP publish).
    pub fn count_command(&self, op: &str, outcome: Result<(), &'static str>) {
        self.broker.stats().command(self.transport, op, outcome);
    }

    /// The queue a gateway's writer drains.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Whether publishes are answered later, when a cluster has ordered
    /// them ([`Session::submit`]).
    pub fn is_clustered(&self) -> bool {
        self.broker.is_clustered()
    }

    /// Whether a publish submitted now would be refused `cluster_busy`.
    pub fn cluster_is_busy(&self) -> bool {
        self.broker.cluster_is_busy()
    }

    pub fn subscriptions(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Carries out a decoded command and queues its answer: `ack` (when the
    /// command has an id), `pong`, a `history` page or an `err`.
    pub fn handle(&mut self, command: Command) {
        let id = command.id();
        let op = command.op();
        let result = match command {
            Command::Subscribe {
                subject,
                since,
                presence,
                queue: Some(queue),
                ..
            } => match (since, presence) {
                (Some(_), _) => Err(SessionError::QueueOption { option: "since" }),
                (_, true) => Err(SessionError::QueueOption { option: "presence" }),
                (None, false) => self
                    .subscribe_member(WHOLE_CONNECTION, &subject, Some(&queue))
                    .map(|_| self.ack(id, None)),
            },
            Command::Subscribe {
                subject,
                since,
                presence,
                queue: None,
                ..
            } => self
                .subscribe_with_presence(&[subject], since.as_deref(), Acknowledge::command(id), presence)
                .map(drop),
            Command::Presence { subject, .. } => self.presence(&subject).map(|(count, members)| {
                self.outbox.push_reply(Reply::Presence {
                    id,
                    subject,
                    count,
                    members,
                })
            }),
            // Verifying a token takes the server's keys: the gateway kit
            // answers these before they reach a session.
            Command::Auth { .. } | Command::Refresh { .. } => Err(SessionError::Refresh(
                "this transport takes its credential with the request",
            )),
            Command::Unsubscribe {
                subject, queue: None, ..
            } => self.unsubscribe(&subject).map(|()| self.ack(id, None)),
            Command::Unsubscribe {
                subject,
                queue: Some(queue),
                ..
            } => self
                .unsubscribe_queue(&subject, &queue)
                .map(|()| self.ack(id, None)),
            Command::Publish {
                subject,
                payload,
                echo,
                reply,
                headers,
                ..
            } => reply
                .map(|reply| self.reply_subject(&reply))
                .transpose()
                .and_then(|reply| {
                    let envelope = Envelope { headers, reply };
                    match self.is_clustered() {
                        false => self
                            .publish_on_route(&subject, payload, envelope, echo)
                            .map(|position| self.ack(id, Some(position))),
                        true => self.submit_answering(id, &subject, payload, envelope, echo),
                    }
                }),
            Command::Ping { .. } => {
                self.outbox.push_reply(Reply::Pong { id });
                Ok(())
            }
            Command::History {
                subject,
                since,
                limit,
                ..
            } => self.history(&subject, since.as_deref(), limit).map(|page| {
                self.outbox.push_reply(Reply::History {
                    id,
                    subject: page.subject,
                    gap: page.gap,
                    messages: page.messages,
                })
            }),
        };
        self.count_command(op, result.as_ref().map(drop).map_err(SessionError::code));
        if let Err(error) = result {
            self.reject(id, &error);
        }
    }

    /// Answers a command that failed, or a frame that could not be decoded.
    pub fn reject(&self, id: Option<u64>, error: &SessionError) {
        self.outbox.push_reply(Reply::Error {
            id,
            code: error.code(),
            message: error.to_string(),
        });
    }

    fn ack(&self, id: Option<u64>, position: Option<Position>) {
        if id.is_some() {
            self.outbox.push_reply(Reply::Ack { id, position });
        }
    }

    /// Subscribes to `subjects` (patterns) at one cut in the numbering, and
    /// returns the position to resume from: without `since`, the cut (every
    /// later message is delivered live); with it, `since` itself. With
    /// `since`, what history holds after it is delivered first: a gap per
    /// pattern whose history falls short, then the missed messages in
    /// position order, then live ones, none twice.
    ///
    /// `ack` says whether the client is told that position in an `ack`.
    pub fn subscribe<S: AsRef<str>>(
        &mut self,
        subjects: &[S],
        since: Option<&str>,
        ack: Acknowledge,
    ) -> Result<Position, SessionError> {
        self.subscribe_with_presence(subjects, since, ack, false)
    }

    /// Subscribes like [`Session::subscribe`]; with `presence_events`, also
    /// to the join and leave events of the subjects (`$presence.<pattern>`).
    pub fn subscribe_with_presence<S: AsRef<str>>(
        &mut self,
        subjects: &[S],
        since: Option<&str>,
        ack: Acknowledge,
        presence_events: bool,
    ) -> Result<Position, SessionError> {
        let mut patterns = subscribable_patterns(&self.broker, &*self.publisher.access, subjects)?;
        if presence_events {
            let events: Vec<Pattern> = patterns.iter().map(Pattern::presence_events).collect();
            patterns.extend(events);
        }
        let since = since.map(|token| self.broker.resume_point(token)).transpose()?;
        if since.is_some() {
            self.broker.check_breadth(&patterns)?;
        }
        let new_patterns: Vec<Pattern> = patterns
            .iter()
            .filter(|pattern| !self.patterns.contains(pattern))
            .cloned()
            .collect();
        let max = self.broker.config().max_subscriptions_per_connection;
        if self.patterns.len() + self.memberships.len() + new_patterns.len() > max {
            return Err(SessionError::TooManySubscriptions { max });
        }
        let ack = match ack {
            Acknowledge::Never => None,
            Acknowledge::Always { id } => Some(Reply::Ack { id, position: None }),
        };
        self.outbox.begin_subscription(ack);
        let resume = self.broker.subscribe(&patterns, &self.outbox, since);
        let position = since.unwrap_or(resume.cut);
        let Replay { gaps, messages } = self.bounded_replay(&patterns, resume.replay);
        self.outbox
            .finish_subscription(&patterns, position, gaps, messages);
        self.join_rooms(&new_patterns);
        self.patterns.extend(new_patterns);
        Ok(position)
    }

    /// Joins the room of each exact subject whose rule turns presence on,
    /// when this connection is a user's.
    fn join_rooms(&mut self, patterns: &[Pattern]) {
        let Some(user) = self.publisher.access.user() else {
            return;
        };
        for pattern in patterns
            .iter()
            .filter(|pattern| !pattern.has_wildcards() && !pattern.is_system())
        {
            let policy = self.broker.policy(pattern.as_str());
            if policy.presence {
                let room = Subject::from_validated(pattern.as_str());
                self.broker.join_presence(&room, user, policy.join_leave);
                self.rooms.push((room, policy.join_leave));
            }
        }
    }

    fn leave_room(&mut self, subject: &str) {
        let Some(index) = self.rooms.iter().position(|(room, _)| room.as_str() == subject) else {
            return;
        };
        let (room, announce) = self.rooms.swap_remove(index);
        if let Some(user) = self.publisher.access.user() {
            self.broker.leave_presence(&room, &user.id, announce);
        }
    }

    /// Who is present in `subject` (an exact subject this connection may
    /// subscribe to, whose rule turns presence on).
    pub fn presence(&self, subject: &str) -> Result<(usize, Vec<Member>), SessionError> {
        let room = Subject::parse(subject, &self.broker.config().subject_limits)?;
        let pattern = Pattern::parse(subject, &self.broker.config().subject_limits)?;
        if !self.publisher.access.may_subscribe(&pattern) {
            return Err(SessionError::Forbidden {
                operation: "read the presence of",
                subject: subject.to_owned(),
            });
        }
        if !self.broker.policy(subject).presence {
            return Err(SessionError::NoPresence {
                subject: subject.to_owned(),
            });
        }
        Ok(self.broker.presence(&room))
    }

    /// A replay cut to what the queue can hold: the newest messages are
    /// kept and the older ones join the gap of their pattern.
    fn bounded_replay(&self, patterns: &[Pattern], replay: Replay) -> Replay {
        let Replay {
            mut gaps,
            mut messages,
        } = replay;
        let limits = self.outbox.limits();
        let mut bytes = 0;
        let keep_from = messages
            .iter()
            .rposition(|message| {
                bytes += message.size();
                bytes > limits.max_bytes
            })
            .map_or(0, |index| index + 1)
            .max(messages.len().saturating_sub(limits.max_messages));
        for cut in messages.drain(..keep_from) {
            let subject = cut.subject().as_str();
            let Some(pattern) = patterns.iter().find(|p| p.matches(subject)) else {
                continue;
            };
            let position = cut.position();
            match gaps.iter_mut().find(|gap| &gap.subject == pattern) {
                Some(gap) => {
                    gap.from = gap.from.min(position);
                    gap.to = gap.to.max(position);
                    gap.missed = gap.missed.map(|missed| missed + 1);
                }
                None => gaps.push(Gap {
                    subject: pattern.clone(),
                    from: position,
                    to: position,
                    missed: Some(1),
                }),
            }
        }
        Replay { gaps, messages }
    }

    pub fn unsubscribe(&mut self, subject: &str) -> Result<(), SessionError> {
        let pattern = Pattern::parse(subject, &self.broker.config().subject_limits)?;
        let Some(index) = self.patterns.iter().position(|p| p == &pattern) else {
            return Err(SessionError::NotSubscribed {
                subject: subject.to_owned(),
            });
        };
        self.patterns.remove(index);
        self.broker.unsubscribe(&pattern, &self.outbox);
        let in_a_group = self.memberships.iter().any(|m| m.pattern == pattern);
        if !in_a_group {
            self.outbox.remove_pattern(&pattern);
        }
        let events = pattern.presence_events();
        if let Some(index) = self.patterns.iter().position(|p| p == &events) {
            self.patterns.remove(index);
            self.broker.unsubscribe(&events, &self.outbox);
            self.outbox.remove_pattern(&events);
        }
        self.leave_room(pattern.as_str());
        Ok(())
    }

    /// Publishes if this connection may; returns the message's position.
    pub fn publish(&self, subject: &str, payload: Payload) -> Result<Position, SessionError> {
        self.publish_with(subject, payload, Envelope::default(), true)
    }

    /// Publishes like [`Session::publish`], except to this connection's own
    /// subscriptions.
    pub fn publish_without_echo(&self, subject: &str, payload: Payload) -> Result<Position, SessionError> {
        self.publish_with(subject, payload, Envelope::default(), false)
    }

    /// Publishes with headers or a reply subject (checked with
    /// [`Session::reply_subject`]); without `echo`, not to this connection.
    /// Headers count against the payload limit.
    pub fn publish_with(
        &self,
        subject: &str,
        payload: Payload,
        envelope: Envelope,
        echo: bool,
    ) -> Result<Position, SessionError> {
        let skip = (!echo).then_some(&self.outbox);
        self.publisher.publish(subject, payload, envelope, skip)
    }

    /// [`Session::publish_with`] for a pipelined publisher (a WebSocket
    /// `pub`, a NATS `PUB`): a subject the last publish went to is not
    /// checked or looked up again ([`Publisher::publish_keeping_route`]).
    pub fn publish_on_route(
        &mut self,
        subject: &str,
        payload: Payload,
        envelope: Envelope,
        echo: bool,
    ) -> Result<Position, SessionError> {
        let skip = (!echo).then_some(&self.outbox);
        self.publisher
            .publish_keeping_route(&mut self.route, subject, payload, envelope, skip)
    }

    /// Publishes like [`Session::publish_with`] on any node, and tells
    /// `done` the message's position: at once on a single node; on a
    /// clustered one when the cluster has ordered it (or, under the
    /// `sent` acknowledgement policy, without a position once it is on its
    /// way). An error here means nothing was sent and `done` is dropped.
    pub fn submit(
        &self,
        subject: &str,
        payload: Payload,
        envelope: Envelope,
        echo: bool,
        done: Acknowledgement,
    ) -> Result<(), SessionError> {
        let skip = (!echo).then_some(&self.outbox);
        self.publisher.submit(subject, payload, envelope, skip, done)
    }

    /// A clustered node's `pub`: answered (`ack` with its `id`, or `err`)
    /// when the cluster has ordered it. The answer's room in the reply
    /// queue is taken now, so that pipelining stays bounded while the
    /// cluster is slow.
    fn submit_answering(
        &self,
        id: Option<u64>,
        subject: &str,
        payload: Payload,
        envelope: Envelope,
        echo: bool,
    ) -> Result<(), SessionError> {
        self.outbox.reserve_reply();
        let outbox = self.outbox.clone();
        let done: Acknowledgement = Box::new(move |result| {
            outbox.fulfil_reply(match result {
                Ok(position) => id.map(|_| Reply::Ack { id, position }),
                Err(error) => Some(Reply::Error {
                    id,
                    code: error.code(),
                    message: error.to_string(),
                }),
            })
        });
        let submitted = self.submit(subject, payload, envelope, echo, done);
        if submitted.is_err() {
            // Refused before it was sent: the caller answers at once.
            self.outbox.fulfil_reply(None);
        }
        submitted
    }

    /// A reply subject, validated as any subject. Anyone may name one: the
    /// responder needs the right to publish there.
    pub fn reply_subject(&self, reply: &str) -> Result<Subject, SessionError> {
        Ok(Subject::parse(reply, &self.broker.config().subject_limits)?)
    }

    /// Subscribes the connection's subscription `id` to `subject`, live only:
    /// a NATS `SUB` (each sid its own subscription, a message matching two
    /// delivered twice), or with `queue` a member of that queue group (any
    /// transport). Checked like every subscription; counts against
    /// `max_subscriptions_per_connection`.
    pub fn subscribe_member(
        &mut self,
        id: SubscriptionId,
        subject: &str,
        queue: Option<&str>,
    ) -> Result<Pattern, SessionError> {
        let pattern = subscribable_patterns(&self.broker, &*self.publisher.access, &[subject])?.remove(0);
        if let Some(queue) = queue {
            validate_queue_name(queue)?;
        }
        if id != WHOLE_CONNECTION && self.memberships.iter().any(|m| m.id == id) {
            return Err(SessionError::DuplicateId { id });
        }
        let held = self
            .memberships
            .iter()
            .any(|m| m.id == id && m.pattern == pattern && m.queue.as_deref() == queue);
        if held {
            return Ok(pattern);
        }
        let max = self.broker.config().max_subscriptions_per_connection;
        if self.patterns.len() + self.memberships.len() >= max {
            return Err(SessionError::TooManySubscriptions { max });
        }
        self.broker.subscribe_member(&pattern, &self.outbox, id, queue);
        // Drop-oldest gaps are owed under the connection's patterns.
        self.outbox.add_pattern(&pattern);
        self.memberships.push(Membership {
            id,
            pattern: pattern.clone(),
            queue: queue.map(Box::from),
        });
        Ok(pattern)
    }

    /// Ends the subscription `id` (a NATS `UNSUB`); false if there was none.
    pub fn unsubscribe_member(&mut self, id: SubscriptionId) -> bool {
        let Some(index) = self.memberships.iter().position(|m| m.id == id) else {
            return false;
        };
        self.leave_membership(index);
        true
    }

    /// Leaves the queue group `queue` on `subject`, joined by a `sub` with
    /// that `queue`.
    pub fn unsubscribe_queue(&mut self, subject: &str, queue: &str) -> Result<(), SessionError> {
        let pattern = Pattern::parse(subject, &self.broker.config().subject_limits)?;
        let index = self
            .memberships
            .iter()
            .position(|m| {
                m.id == WHOLE_CONNECTION && m.pattern == pattern && m.queue.as_deref() == Some(queue)
            })
            .ok_or_else(|| SessionError::NotSubscribed {
                subject: subject.to_owned(),
            })?;
        self.leave_membership(index);
        Ok(())
    }

    fn leave_membership(&mut self, index: usize) {
        let membership = self.memberships.swap_remove(index);
        self.broker.unsubscribe_member(
            &membership.pattern,
            &self.outbox,
            membership.id,
            membership.queue.as_deref(),
        );
        let still_held = self.patterns.contains(&membership.pattern)
            || self.memberships.iter().any(|m| m.pattern == membership.pattern);
        if !still_held {
            self.outbox.remove_pattern(&membership.pattern);
        }
    }

    /// Publishes every message of `batch` if this connection may publish
    /// each of them, or none: a batch is never half-published.
    pub fn publish_batch<S: AsRef<str>>(
        &self,
        batch: Vec<(S, Payload)>,
    ) -> Result<Vec<Position>, SessionBatchError> {
        self.publisher.publish_batch(batch)
    }

    /// Reads history for `subject` (a pattern). With `since`: the first
    /// `limit` messages after it, oldest first, so a client can page forward.
    /// Without: the newest `limit` messages.
    pub fn history(
        &self,
        subject: &str,
        since: Option<&str>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, SessionError> {
        let pattern = Pattern::parse(subject, &self.broker.config().subject_limits)?;
        if !self.publisher.access.may_subscribe(&pattern) {
            return Err(SessionError::Forbidden {
                operation: "read the history of",
                subject: subject.to_owned(),
            });
        }
        let since = since.map(|token| self.broker.resume_point(token)).transpose()?;
        self.broker.check_breadth(std::slice::from_ref(&pattern))?;
        let max = self.broker.config().max_history_page;
        let limit = limit.unwrap_or(max).min(max);
        let Replay { gaps, mut messages } = self.broker.replay(
            std::slice::from_ref(&pattern),
            since,
            self.broker.committed_sequence(),
        );
        // A page holds at most `limit` messages and the queue's byte limit
        // (at least one message): paging forward keeps the oldest, the
        // newest page the newest.
        let max_bytes = self.outbox.limits().max_bytes;
        if since.is_some() {
            messages.truncate(limit);
            let fit = count_within(messages.iter(), max_bytes);
            messages.truncate(fit);
        } else {
            messages.drain(..messages.len().saturating_sub(limit));
            let fit = count_within(messages.iter().rev(), max_bytes);
            messages.drain(..messages.len() - fit);
        }
        Ok(HistoryPage {
            gap: gaps.into_iter().next(),
            subject: pattern,
            messages,
        })
    }
}

/// How many of `messages`, in order, fit in `max_bytes` together; at least
/// one, so a single large message can still be read.
fn count_within<'a>(messages: impl Iterator<Item = &'a Message>, max_bytes: usize) -> usize {
    let mut bytes = 0;
    messages
        .enumerate()
        .take_while(|(index, message)| {
            bytes += message.size();
            *index == 0 || bytes <= max_bytes
        })
        .count()
}

impl Drop for Session {
    fn drop(&mut self) {
        self.broker.stats().session_closed(self.transport);
        self.broker.connections().close(self.id);
        for pattern in &self.patterns {
            self.broker.unsubscribe(pattern, &self.outbox);
        }
        for membership in &self.memberships {
            self.broker.unsubscribe_member(
                &membership.pattern,
                &self.outbox,
                membership.id,
                membership.queue.as_deref(),
            );
        }
        if let Some(user) = self.publisher.access.user() {
            for (room, announce) in &self.rooms {
                self.broker.leave_presence(room, &user.id, *announce);
            }
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("patterns", &self.patterns)
            .field("outbox", &self.outbox)
            .finish()
    }
}
