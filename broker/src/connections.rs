//! Every open streaming connection, for operators: who is connected and
//! through what, so that one user's connections can be listed or closed,
//! and a draining server can close everyone in turn. Touched when a
//! connection opens, changes user or closes; never on the publish path.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::outbox::{CloseReason, Outbox};
use crate::stats::Transport;

/// One open connection, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionInfo {
    /// The session id (the `session` field of the server's log lines).
    pub id: u64,
    pub transport: &'static str,
    /// The user of its token; none for API keys and anonymous access.
    pub user: Option<String>,
    /// When it opened, in milliseconds since the Unix epoch.
    pub opened_at_ms: u64,
    /// Patterns it subscribes to.
    pub subscriptions: usize,
}

#[derive(Debug)]
struct Entry {
    transport: Transport,
    user: Option<String>,
    opened_at_ms: u64,
    outbox: Weak<Outbox>,
}

/// The open connections of one broker, by session id.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    entries: Mutex<ahash::AHashMap<u64, Entry>>,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, ahash::AHashMap<u64, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn open(
        &self,
        id: u64,
        transport: Transport,
        user: Option<String>,
        opened_at_ms: u64,
        outbox: &Arc<Outbox>,
    ) {
        let entry = Entry {
            transport,
            user,
            opened_at_ms,
            outbox: Arc::downgrade(outbox),
        };
        self.lock().insert(id, entry);
    }

    pub(crate) fn set_user(&self, id: u64, user: Option<String>) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.user = user;
        }
    }

    pub(crate) fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The open connections `filter` keeps, oldest first.
    pub(crate) fn list(&self, filter: impl Fn(Option<&str>) -> bool) -> Vec<ConnectionInfo> {
        let entries = self.lock();
        let mut listed: Vec<ConnectionInfo> = entries
            .iter()
            .filter(|(_, entry)| filter(entry.user.as_deref()))
            .filter_map(|(id, entry)| {
                let outbox = entry.outbox.upgrade()?;
                Some(ConnectionInfo {
                    id: *id,
                    transport: entry.transport.label(),
                    user: entry.user.clone(),
                    opened_at_ms: entry.opened_at_ms,
                    subscriptions: outbox.pattern_count(),
                })
            })
            .collect();
        drop(entries);
        listed.sort_by_key(|info| (info.opened_at_ms, info.id));
        listed
    }

    /// The queues of the connections `filter` keeps; closing them is the
    /// caller's (outside this lock).
    pub(crate) fn outboxes(&self, filter: impl Fn(Option<&str>) -> bool) -> Vec<(u64, Arc<Outbox>)> {
        self.lock()
            .iter()
            .filter(|(_, entry)| filter(entry.user.as_deref()))
            .filter_map(|(id, entry)| Some((*id, entry.outbox.upgrade()?)))
            .collect()
    }
}

/// Closes each of `outboxes` with `reason`; how many were still open.
pub(crate) fn close_all(outboxes: &[(u64, Arc<Outbox>)], reason: &CloseReason) -> usize {
    outboxes
        .iter()
        .filter(|(_, outbox)| !outbox.is_closed())
        .map(|(_, outbox)| outbox.close(reason.clone()))
        .count()
}
