//! Cursor reads: how a transport without a connection (long polling)
//! follows subjects. A [`Poll`] is stateless between requests: the client
//! holds the cursor, and any request with it continues exactly there.
//!
//! A poll builds no session and never takes the publish-order lock. It
//! reads an exact cut through the broker's committed watermark: everything
//! at or below it is in history. When nothing is there yet, a [`Watch`]
//! registers a small queue in the router for the poll's patterns and waits
//! for the first message. What makes that lossless without the lock: once
//! the watch is registered, every message numbered later is matched with it
//! in place and reaches its queue (as for any subscription), and every
//! message numbered earlier is in history as soon as it is committed. The
//! watch reads history up to the last number handed out at registration
//! (waiting, if a publish is midway, for it to commit) and takes everything
//! after that from its queue.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::auth::Access;
use crate::broker::{Broker, Replay};
use crate::message::Message;
use crate::outbox::{Outbox, OverflowPolicy, QueueLimits};
use crate::position::Position;
use crate::protocol::{Gap, Outbound};
use crate::session::{subscribable_patterns, SessionError};
use crate::subject::Pattern;

/// One poll request: patterns, permissions checked, and a cursor.
#[derive(Debug)]
pub struct Poll {
    broker: Arc<Broker>,
    patterns: Vec<Pattern>,
    cursor: Position,
}

/// What a poll answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollPage {
    /// Positions that may be missing (history no longer holds them, or a
    /// page overflowed while it waited).
    pub gaps: Vec<Gap>,
    /// Messages after the request's cursor, in position order.
    pub messages: Vec<Message>,
    /// Where the next poll continues: every matching message at or before it
    /// has been answered.
    pub cursor: Position,
}

impl PollPage {
    pub fn is_empty(&self) -> bool {
        self.gaps.is_empty() && self.messages.is_empty()
    }
}

impl Poll {
    /// Checks the request: every subject a valid pattern the caller may read,
    /// the cursor a token this server issues. Without a cursor the poll
    /// starts at the newest message: it waits for what comes next.
    pub fn new<S: AsRef<str>>(
        broker: &Arc<Broker>,
        access: &dyn Access,
        subjects: &[S],
        cursor: Option<&str>,
    ) -> Result<Poll, SessionError> {
        let patterns = subscribable_patterns(broker, access, subjects)?;
        broker.check_breadth(&patterns)?;
        let cursor = match cursor {
            Some(token) => broker.resume_point(token)?,
            None => broker.last_position(),
        };
        Ok(Poll {
            broker: broker.clone(),
            patterns,
            cursor,
        })
    }

    /// Whether reading this poll's history visits more than one subject.
    pub fn reads_wildcards(&self) -> bool {
        self.patterns.iter().any(Pattern::has_wildcards)
    }

    /// Everything history holds after the cursor, now, up to a page.
    pub fn read(&self) -> PollPage {
        let committed = self.broker.committed_sequence();
        let replay = self.broker.replay(&self.patterns, Some(self.cursor), committed);
        // A cursor may be ahead of the committed mark: the previous answer
        // came from a watch while its last message was still fanning out.
        // The cursor never moves back, or that message would come twice.
        let mut through = Position::new(self.broker.epoch(), committed);
        if self.cursor.epoch == through.epoch {
            through = through.max(self.cursor);
        }
        page(self.broker.config().queue, replay, through)
    }

    /// Starts waiting for messages after `cursor` (the cursor of the empty
    /// page [`Poll::read`] answered). Registered until dropped.
    pub fn watch(self, cursor: Position) -> Watch {
        let limits = self.broker.config().queue;
        let queue = QueueLimits {
            max_replies: 0,
            ..limits
        };
        let outbox = Arc::new(Outbox::new(queue, OverflowPolicy::DropOldest));
        // The one subscribe door, without `since`: it reads no history and
        // takes no lock; anything numbered after the cut reaches the queue.
        let live_after = self.broker.subscribe(&self.patterns, &outbox, None).cut.sequence;
        Watch {
            broker: self.broker,
            patterns: self.patterns,
            outbox,
            cursor,
            live_after,
            history_read: false,
        }
    }
}

/// A poll waiting for its first message; unregisters when dropped.
#[derive(Debug)]
pub struct Watch {
    broker: Arc<Broker>,
    patterns: Vec<Pattern>,
    outbox: Arc<Outbox>,
    /// Everything matching at or before it has been answered.
    cursor: Position,
    /// Messages numbered after this reach `outbox`; the rest are in history.
    live_after: u64,
    /// Whether history up to `live_after` has been read (and was empty).
    history_read: bool,
}

impl Watch {
    /// Waits until there is something to answer, and returns it. Cancel-safe:
    /// dropping the future loses nothing, [`Watch::settle`] still answers.
    pub async fn next_page(&mut self) -> PollPage {
        let limits = self.broker.config().queue;
        if !self.history_read {
            // A publish numbered before registration may still be fanning
            // out; it commits within one fan-out.
            while self.broker.committed_sequence() < self.live_after {
                tokio::task::yield_now().await;
            }
            let replay = self
                .broker
                .replay(&self.patterns, Some(self.cursor), self.live_after);
            self.history_read = true;
            let through = Position::new(self.broker.epoch(), self.live_after);
            let page = page(limits, replay, through);
            if !page.is_empty() {
                return page;
            }
            self.cursor = through;
        }
        let mut batch = VecDeque::new();
        loop {
            // The queue is never closed, so this only returns with events.
            let _ = self.outbox.next_batch(&mut batch).await;
            if let Some(page) = self.take(&mut batch) {
                return page;
            }
        }
    }

    /// The answer when the wait ends with nothing to show (timeout,
    /// shutdown): an empty page whose cursor moves as far as is known to be
    /// answered, or a page after all if something arrived just now.
    pub fn settle(mut self) -> PollPage {
        let committed = self.broker.committed_sequence();
        if !self.history_read || committed < self.live_after {
            return PollPage {
                gaps: Vec::new(),
                messages: Vec::new(),
                cursor: self.cursor,
            };
        }
        // Everything matching up to `committed` was offered to the queue.
        let mut batch = VecDeque::new();
        if self.outbox.try_take_batch(&mut batch).is_some() {
            if let Some(page) = self.take(&mut batch) {
                return page;
            }
        }
        PollPage {
            gaps: Vec::new(),
            messages: Vec::new(),
            cursor: self.cursor.max(Position::new(self.broker.epoch(), committed)),
        }
    }

    /// The page made of what the queue delivered after `live_after`.
    fn take(&mut self, batch: &mut VecDeque<Outbound>) -> Option<PollPage> {
        let mut gaps = Vec::new();
        let mut messages = Vec::new();
        for event in batch.drain(..) {
            match event {
                Outbound::Message(message) if message.sequence() > self.live_after => messages.push(message),
                Outbound::Gap(gap) => gaps.push(*gap),
                _ => {}
            }
        }
        // A gap alone (a message too large for the page was dropped) is an
        // answer too: the positions it names are answered by naming them.
        let last = match messages.last() {
            Some(message) => message.position(),
            None => gaps.iter().map(|gap| gap.to).max()?,
        };
        self.cursor = self.cursor.max(last);
        Some(PollPage {
            gaps,
            messages,
            cursor: self.cursor,
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        for pattern in &self.patterns {
            self.broker.unsubscribe(pattern, &self.outbox);
        }
    }
}

/// A page of at most one queue's worth (messages and bytes, never less than
/// one message); when cut short, the cursor is the last message returned.
fn page(limits: QueueLimits, replay: Replay, through: Position) -> PollPage {
    let Replay { gaps, mut messages } = replay;
    let mut bytes = 0;
    let fits = messages
        .iter()
        .position(|message| {
            bytes += message.size();
            bytes > limits.max_bytes
        })
        .unwrap_or(messages.len())
        .clamp(1.min(messages.len()), limits.max_messages);
    let cursor = if fits < messages.len() {
        messages.truncate(fits);
        messages.last().map_or(through, Message::position)
    } else {
        through
    };
    PollPage {
        gaps,
        messages,
        cursor,
    }
}
