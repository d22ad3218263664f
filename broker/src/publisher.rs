//! Publishing on behalf of one caller: what a connection's publishes and
//! the HTTP API's share. A [`Publisher`] is a caller's access, its publish
//! budget and the broker: no queue, no subscriptions, nothing registered,
//! so a backend's HTTP publish costs no connection's worth of state.
//! Each message's subject is validated once, here, before it is published.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::Access;
use crate::broker::{BatchError, Broker, PublishError, Route};
use crate::cluster::Acknowledgement;
use crate::message::{Envelope, Payload, PayloadError};
use crate::outbox::Outbox;
use crate::position::Position;
use crate::session::{PublishBudget, SessionBatchError, SessionError};
use crate::stats::Transport;
use crate::subject::validate_subject;

/// Publishes for one caller: checks each message against what the caller
/// may do, then publishes it.
pub struct Publisher {
    broker: Arc<Broker>,
    /// The label its publishes are counted under.
    transport: Transport,
    pub(crate) access: Arc<dyn Access>,
    /// An anonymous caller's publishes per second (a user's budget is the
    /// broker's; backends are not limited).
    budget: Option<Mutex<PublishBudget>>,
    /// Which publisher a [`Route`] was checked for: a route is only good
    /// for the access it was checked against.
    id: u64,
}

/// Publisher ids; 0 is none.
static NEXT_PUBLISHER_ID: AtomicU64 = AtomicU64::new(1);

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("transport", &self.transport)
            .field("user", &self.access.user().map(|user| &user.id))
            .finish()
    }
}

impl Publisher {
    pub fn new(transport: Transport, broker: &Arc<Broker>, access: Arc<dyn Access>) -> Publisher {
        Publisher {
            budget: PublishBudget::for_access(broker.config().max_client_publishes_per_second, &*access),
            broker: broker.clone(),
            transport,
            access,
            id: NEXT_PUBLISHER_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Everything checked before a publish: the subject, the permission,
    /// the caller's publish rate and the payload's size (with headers).
    pub fn check(&self, subject: &str, payload_len: usize) -> Result<(), SessionError> {
        self.check_subject(subject)?;
        self.check_message(payload_len)
    }

    /// The subject's part of [`Publisher::check`]: valid, and this caller
    /// may publish to it.
    fn check_subject(&self, subject: &str) -> Result<(), SessionError> {
        validate_subject(subject, &self.broker.config().subject_limits)?;
        let client_refused = || !self.access.is_backend() && !self.broker.policy(subject).client_publish;
        if !self.access.may_publish(subject) || client_refused() {
            return Err(SessionError::Forbidden {
                operation: "publish to",
                subject: subject.to_owned(),
            });
        }
        Ok(())
    }

    /// Every message's part of [`Publisher::check`]: the publish budget
    /// and the payload limit.
    fn check_message(&self, payload_len: usize) -> Result<(), SessionError> {
        if let Some(budget) = &self.budget {
            budget
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()?;
        } else if let Some(user) = self.access.user().filter(|_| !self.access.is_backend()) {
            self.broker.spend_publish_budget(&user.id)?;
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

    /// Checks and publishes on a single node; returns the position.
    /// Delivered to every matching subscriber but `skip` (the publisher's
    /// own connection, when it asked not to be echoed).
    pub fn publish(
        &self,
        subject: &str,
        payload: Payload,
        envelope: Envelope,
        skip: Option<&Arc<Outbox>>,
    ) -> Result<Position, SessionError> {
        self.publish_keeping_route(&mut None, subject, payload, envelope, skip)
    }

    /// [`Publisher::publish`] for a caller that keeps to a subject (a
    /// pipelined connection): `kept` is the route of its last publish, and
    /// while the subject stays the same and this publisher checked it, the
    /// subject is not checked or looked up again; the publish budget and
    /// the payload limit are checked for every message. Otherwise it is
    /// checked like any publish, in the same order (subject, permission,
    /// budget, size, then its channel), and becomes the kept route.
    pub(crate) fn publish_keeping_route(
        &self,
        kept: &mut Option<Route>,
        subject: &str,
        payload: Payload,
        envelope: Envelope,
        skip: Option<&Arc<Outbox>>,
    ) -> Result<Position, SessionError> {
        let size = payload.len() + envelope.headers_len();
        let route = match kept.take() {
            Some(route) if route.checked_for == self.id && route.subject() == subject => {
                self.check_message(size)?;
                route
            }
            _ => {
                self.check(subject, size)?;
                let mut route = self.broker.route(subject)?;
                route.checked_for = self.id;
                route
            }
        };
        let position = self.broker.publish_routed(&route, payload, envelope, skip);
        *kept = Some(route);
        self.broker.stats().published(self.transport, 1);
        Ok(position)
    }

    /// Checks and publishes on any node, and tells `done` the position: at
    /// once on a single node; on a clustered one when the cluster has
    /// ordered it (or, under the `sent` acknowledgement policy, without a
    /// position once it is on its way). An error here means nothing was
    /// sent and `done` is dropped.
    pub fn submit(
        &self,
        subject: &str,
        payload: Payload,
        envelope: Envelope,
        skip: Option<&Arc<Outbox>>,
        done: Acknowledgement,
    ) -> Result<(), SessionError> {
        self.check(subject, payload.len() + envelope.headers_len())?;
        self.broker
            .submit_checked(subject, payload, envelope, skip, done)?;
        self.broker.stats().published(self.transport, 1);
        Ok(())
    }

    /// Checks every message of `batch`, then submits each in order (see
    /// [`Publisher::submit`]), telling `done_for(index)` its position. A
    /// refused message refuses the batch before anything is sent; a cluster
    /// that stops taking messages midway leaves the ones before it sent.
    pub fn submit_batch<S: AsRef<str>>(
        &self,
        batch: Vec<(S, Payload)>,
        mut done_for: impl FnMut(usize) -> Acknowledgement,
    ) -> Result<(), SessionBatchError> {
        for (index, (subject, payload)) in batch.iter().enumerate() {
            self.check(subject.as_ref(), payload.len())
                .map_err(|error| SessionBatchError { index, error })?;
        }
        for (index, (subject, payload)) in batch.into_iter().enumerate() {
            self.broker
                .submit_checked(
                    subject.as_ref(),
                    payload,
                    Envelope::default(),
                    None,
                    done_for(index),
                )
                .map_err(|error| SessionBatchError {
                    index,
                    error: error.into(),
                })?;
            self.broker.stats().published(self.transport, 1);
        }
        Ok(())
    }

    /// Publishes every message of `batch` if the caller may publish each
    /// of them, or none: a batch is never half-published.
    pub fn publish_batch<S: AsRef<str>>(
        &self,
        batch: Vec<(S, Payload)>,
    ) -> Result<Vec<Position>, SessionBatchError> {
        for (index, (subject, payload)) in batch.iter().enumerate() {
            self.check(subject.as_ref(), payload.len())
                .map_err(|error| SessionBatchError { index, error })?;
        }
        let positions = self
            .broker
            .publish_batch_checked(batch)
            .map_err(|BatchError { index, error }| SessionBatchError {
                index,
                error: error.into(),
            })?;
        self.broker
            .stats()
            .published(self.transport, positions.len() as u64);
        Ok(positions)
    }
}
