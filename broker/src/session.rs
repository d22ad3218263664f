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
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use thiserror::Error;

use crate::broker::{Broker, PublishError};
use crate::message::{Message, Payload, PayloadError};
use crate::outbox::Outbox;
use crate::position::{InvalidToken, Position};
use crate::protocol::{Command, DecodeError, Gap, Reply};
use crate::subject::{validate_subject, Pattern, SubjectError};

/// What one connection may do. Checked on every subscribe, publish and
/// history read; identities and their rules (tokens, API keys) are built by
/// the edge that authenticated the connection.
pub trait Access: Send + Sync + fmt::Debug {
    /// May this connection publish on `subject` (already validated)?
    fn may_publish(&self, subject: &str) -> bool;
    /// May this connection subscribe to, or read the history of, `pattern`?
    fn may_subscribe(&self, pattern: &Pattern) -> bool;
}

/// Access that allows everything: development mode and trusted servers.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Access for AllowAll {
    fn may_publish(&self, _subject: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _pattern: &Pattern) -> bool {
        true
    }
}

/// Access that allows subscribing but not publishing: the safe default for
/// anonymous browsers when anonymous subscribing is enabled.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubscribeOnly;

impl Access for SubscribeOnly {
    fn may_publish(&self, _subject: &str) -> bool {
        false
    }

    fn may_subscribe(&self, _pattern: &Pattern) -> bool {
        true
    }
}

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
}

impl SessionError {
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Subject(error) => error.code(),
            SessionError::Token(_) => "invalid_token",
            SessionError::Publish(error) => error.code(),
            SessionError::Decode(error) => error.code(),
            SessionError::Forbidden { .. } => "forbidden",
            SessionError::TooManySubscriptions { .. } => "too_many_subscriptions",
            SessionError::NotSubscribed { .. } => "not_subscribed",
        }
    }
}

/// A connection's handle in the router: its outbox, compared by identity.
#[derive(Clone)]
pub(crate) struct SubscriberRef(Arc<Outbox>);

impl SubscriberRef {
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.0
    }
}

impl PartialEq for SubscriberRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SubscriberRef {}

impl Hash for SubscriberRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state)
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

/// One client connection's view of the broker.
pub struct Session {
    broker: Arc<Broker>,
    id: u64,
    outbox: Arc<Outbox>,
    access: Arc<dyn Access>,
    /// Patterns held, in subscription order; small, so a Vec.
    patterns: Vec<Pattern>,
}

impl Session {
    pub(crate) fn new(broker: Arc<Broker>, id: u64, access: Arc<dyn Access>) -> Session {
        let config = broker.config();
        let outbox = Arc::new(Outbox::new(config.queue, config.overflow_policy));
        Session {
            broker,
            id,
            outbox,
            access,
            patterns: Vec::new(),
        }
    }

    /// Unique among this broker's sessions; for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The queue a gateway's writer drains.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn subscriptions(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Carries out a decoded command and queues its answer: `ack` (when the
    /// command has an id), `pong`, a `history` page or an `err`.
    pub fn handle(&mut self, command: Command) {
        let id = command.id();
        let result = match command {
            Command::Subscribe { subject, since, .. } => self.subscribe(id, &subject, since.as_deref()),
            Command::Unsubscribe { subject, .. } => self.unsubscribe(&subject).map(|()| self.ack(id, None)),
            Command::Publish { subject, payload, .. } => self
                .publish(&subject, payload)
                .map(|position| self.ack(id, Some(position))),
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

    /// Subscribes to `subject` (a pattern) and acknowledges with `id`. With
    /// `since`, first delivers what history holds after that token: a gap if
    /// history no longer covers it, then the missed messages in position
    /// order, then live messages, none twice.
    pub fn subscribe(
        &mut self,
        id: Option<u64>,
        subject: &str,
        since: Option<&str>,
    ) -> Result<(), SessionError> {
        let pattern = Pattern::parse(subject, &self.broker.config().subject_limits)?;
        if !self.access.may_subscribe(&pattern) {
            return Err(SessionError::Forbidden {
                operation: "subscribe to",
                subject: subject.to_owned(),
            });
        }
        let since = since.map(Position::from_token).transpose()?;
        let already_subscribed = self.patterns.contains(&pattern);
        let max = self.broker.config().max_subscriptions_per_session;
        if !already_subscribed && self.patterns.len() >= max {
            return Err(SessionError::TooManySubscriptions { max });
        }
        let ack = id.map(|id| Reply::Ack {
            id: Some(id),
            position: None,
        });
        let subscriber = SubscriberRef(self.outbox.clone());
        self.outbox.add_pattern(&pattern);
        match since {
            None => {
                self.broker.router().subscribe(&pattern, subscriber);
                if let Some(ack) = ack {
                    self.outbox.push_reply(ack);
                }
            }
            Some(since) => {
                // Live messages are held back until the replay is merged in
                // ahead of them; history is read only up to the cut, the
                // rest arrives live.
                self.outbox.begin_replay();
                let cut = self.broker.subscribe_at_cut(&pattern, subscriber);
                let (gap, messages) = self.bounded_replay(&pattern, since, cut);
                self.outbox.finish_replay(&pattern, ack, gap, messages);
            }
        }
        if !already_subscribed {
            self.patterns.push(pattern);
        }
        Ok(())
    }

    /// History after `since`, cut to what the queue can hold: the newest
    /// messages are kept and the older ones join the gap.
    fn bounded_replay(
        &self,
        pattern: &Pattern,
        since: Position,
        through: u64,
    ) -> (Option<Gap>, Vec<Message>) {
        let (gap, mut messages) = self.broker.history_through(pattern, Some(since), through);
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
        let mut gap = gap.map(|(from, to)| Gap {
            subject: pattern.clone(),
            from,
            to,
            missed: None,
        });
        if keep_from > 0 {
            let cut: Vec<Message> = messages.drain(..keep_from).collect();
            let last_cut = cut.last().expect("keep_from > 0").position();
            gap = Some(match gap {
                Some(gap) => Gap { to: last_cut, ..gap },
                None => Gap {
                    subject: pattern.clone(),
                    from: cut[0].position(),
                    to: last_cut,
                    missed: Some(cut.len() as u64),
                },
            });
        }
        (gap, messages)
    }

    pub fn unsubscribe(&mut self, subject: &str) -> Result<(), SessionError> {
        let pattern = Pattern::parse(subject, &self.broker.config().subject_limits)?;
        let Some(index) = self.patterns.iter().position(|p| p == &pattern) else {
            return Err(SessionError::NotSubscribed {
                subject: subject.to_owned(),
            });
        };
        self.patterns.remove(index);
        self.broker
            .router()
            .unsubscribe(&pattern, &SubscriberRef(self.outbox.clone()));
        self.outbox.remove_pattern(&pattern);
        Ok(())
    }

    /// Publishes if this connection may; returns the message's position.
    pub fn publish(&self, subject: &str, payload: Payload) -> Result<Position, SessionError> {
        self.check_publish(subject, payload.len())?;
        Ok(self.broker.publish(subject, payload)?)
    }

    /// Everything [`Session::publish`] checks before publishing: the subject,
    /// the permission and the payload size. Lets a batch be refused whole.
    pub fn check_publish(&self, subject: &str, payload_len: usize) -> Result<(), SessionError> {
        validate_subject(subject, &self.broker.config().subject_limits)?;
        if !self.access.may_publish(subject) {
            return Err(SessionError::Forbidden {
                operation: "publish to",
                subject: subject.to_owned(),
            });
        }
        let max = self.broker.config().max_payload_bytes;
        if payload_len > max {
            return Err(PublishError::from(PayloadError::TooLarge {
                size: payload_len,
                max,
            })
            .into());
        }
        Ok(())
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
        if !self.access.may_subscribe(&pattern) {
            return Err(SessionError::Forbidden {
                operation: "read the history of",
                subject: subject.to_owned(),
            });
        }
        let since = since.map(Position::from_token).transpose()?;
        let max = self.broker.config().max_history_page;
        let limit = limit.unwrap_or(max).min(max);
        let (gap, mut messages) = self.broker.history(&pattern, since);
        if since.is_some() {
            messages.truncate(limit);
        } else {
            messages.drain(..messages.len().saturating_sub(limit));
        }
        Ok(HistoryPage {
            gap: gap.map(|(from, to)| Gap {
                subject: pattern.clone(),
                from,
                to,
                missed: None,
            }),
            subject: pattern,
            messages,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let subscriber = SubscriberRef(self.outbox.clone());
        for pattern in &self.patterns {
            self.broker.router().unsubscribe(pattern, &subscriber);
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
