//! How a session's events reach the wire: messages (and gaps) on the
//! message stream of their subject, latest-value messages as datagrams,
//! everything else on the control stream; and which subscriptions want
//! only the latest value.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use herald_broker::protocol::{encode_mark, Gap};
use herald_broker::subject::Pattern;
use herald_broker::{CloseReason, Command, Encoding, Outbound, Position, Session, Subject};
use herald_gateway::EventWriter;
use wtransport::{Connection, SendStream};

use crate::framing::put_frame;
use crate::QuicConfig;

/// A subscription that changed how its messages travel.
pub(crate) enum RouteChange {
    Subscribed { subject: String, latest: bool },
    Unsubscribed { subject: String },
}

impl RouteChange {
    pub(crate) fn of(command: &Command) -> Option<RouteChange> {
        match command {
            Command::Subscribe {
                subject,
                latest,
                queue: None,
                ..
            } => Some(RouteChange::Subscribed {
                subject: subject.clone(),
                latest: *latest,
            }),
            Command::Unsubscribe {
                subject, queue: None, ..
            } => Some(RouteChange::Unsubscribed {
                subject: subject.clone(),
            }),
            _ => None,
        }
    }
}

/// Which subscriptions want only the latest value. A message travels as a
/// datagram when its subject matches one of those and no reliable
/// subscription of the session: reliable wins.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// Read on every message; the lock is taken only while a latest-value
    /// subscription exists.
    any_latest: AtomicBool,
    patterns: Mutex<RoutePatterns>,
}

#[derive(Debug, Default)]
struct RoutePatterns {
    latest: Vec<Pattern>,
    reliable: Vec<Pattern>,
}

impl Routes {
    pub(crate) fn apply(&self, change: RouteChange, session: &Session) {
        let mut patterns = self.patterns.lock().unwrap_or_else(|e| e.into_inner());
        let held = |subject: &str| {
            session
                .subscriptions()
                .iter()
                .find(|p| p.as_str() == subject)
                .cloned()
        };
        match change {
            RouteChange::Subscribed { subject, latest } => {
                // Only a subscription the session now holds (not a refused one).
                if let Some(pattern) = held(&subject) {
                    patterns.latest.retain(|p| p.as_str() != subject);
                    patterns.reliable.retain(|p| p.as_str() != subject);
                    match latest {
                        true => patterns.latest.push(pattern),
                        false => patterns.reliable.push(pattern),
                    }
                }
            }
            RouteChange::Unsubscribed { subject } => {
                if held(&subject).is_none() {
                    patterns.latest.retain(|p| p.as_str() != subject);
                    patterns.reliable.retain(|p| p.as_str() != subject);
                }
            }
        }
        self.any_latest
            .store(!patterns.latest.is_empty(), Ordering::Release);
    }

    fn is_latest_only(&self, subject: &str) -> bool {
        if !self.any_latest.load(Ordering::Acquire) {
            return false;
        }
        let patterns = self.patterns.lock().unwrap_or_else(|e| e.into_inner());
        patterns.latest.iter().any(|p| p.matches(subject))
            && !patterns.reliable.iter().any(|p| p.matches(subject))
    }
}

/// Writes events where they belong: messages (and gaps) on the message
/// stream of their subject, latest-value messages as datagrams, everything
/// else on the control stream.
pub(crate) struct QuicWriter {
    connection: Connection,
    control: SendStream,
    control_buffer: BytesMut,
    /// One per message stream, opened on first use.
    lanes: Vec<Option<Lane>>,
    /// Bytes a lane gathers before writing them within a batch.
    stream_buffer: usize,
    routes: Arc<Routes>,
    /// This batch's latest-value messages: the newest per subject.
    datagrams: Vec<(Subject, Bytes)>,
    encoding: Encoding,
    /// The last message written (events go out in position order): every
    /// message stream has carried all of its messages up to it.
    written_through: Option<Position>,
    /// What the last round of marks said.
    marked_through: Option<Position>,
}

/// How often, at most, every message stream says how far it has carried
/// the session's messages (`mark`). Across streams there is no order: a
/// client resumes from the least of its streams' marks, so this is how
/// far behind what it received a resume may start (and replay what it
/// already has, which it drops).
pub(crate) const MARK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What a lane allocates at a time. Batches are split off one allocation
/// until it is used up (`BytesMut::split` keeps the spare capacity), so a
/// busy lane allocates once per this many bytes, not once per frame.
const LANE_ALLOCATION: usize = 16 * 1024;

/// A message stream as the writer sees it: the frames gathered for it in
/// this batch, written at the batch's flush (or sooner, past
/// `stream_buffer`). quinn takes them into its send buffer, bounded by
/// `send_window`; a packet lost on one stream is retransmitted without
/// holding back the others. A stream whose peer stops reading it holds the
/// writer, as a WebSocket that stops reading would: the session's queue,
/// overflow policy and `write_timeout` apply.
struct Lane {
    stream: SendStream,
    pending: BytesMut,
}

impl Lane {
    async fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut chunk = [self.pending.split().freeze()];
        self.stream
            .quic_stream_mut()
            .write_all_chunks(&mut chunk)
            .await
            .map_err(io::Error::other)
    }
}

impl QuicWriter {
    pub(crate) fn new(
        connection: Connection,
        control: SendStream,
        config: &QuicConfig,
        routes: Arc<Routes>,
        encoding: Encoding,
    ) -> QuicWriter {
        QuicWriter {
            connection,
            control,
            control_buffer: BytesMut::with_capacity(1024),
            lanes: (0..config.message_streams).map(|_| None).collect(),
            stream_buffer: config.stream_buffer_bytes,
            routes,
            datagrams: Vec::new(),
            encoding,
            written_through: None,
            marked_through: None,
        }
    }

    /// The message stream `index`, opened on first use.
    async fn lane(&mut self, index: usize) -> io::Result<&mut Lane> {
        if self.lanes[index].is_none() {
            let stream = self
                .connection
                .open_uni()
                .await
                .map_err(io::Error::other)?
                .await
                .map_err(io::Error::other)?;
            // No buffer yet: a stream opened for its marks carries a few
            // bytes a time.
            self.lanes[index] = Some(Lane {
                pending: BytesMut::new(),
                stream,
            });
        }
        Ok(self.lanes[index].as_mut().expect("opened above"))
    }

    /// Tells every message stream (opening those not used yet) the last
    /// message written, if that moved since the last marks.
    async fn mark_lanes(&mut self) -> io::Result<()> {
        let Some(through) = self.written_through.filter(|_| self.wants_heartbeat()) else {
            return Ok(());
        };
        let frame = encode_mark(self.encoding, through, self.lanes.len());
        for index in 0..self.lanes.len() {
            let lane = self.lane(index).await?;
            put_frame(&mut lane.pending, &frame);
            lane.write_pending().await?;
        }
        self.marked_through = Some(through);
        Ok(())
    }

    /// Adds `frame` to what the message stream that carries `subject`
    /// writes next.
    async fn send_on_lane(&mut self, subject: &str, frame: Bytes) -> io::Result<()> {
        let index = lane_of(subject, self.lanes.len());
        let stream_buffer = self.stream_buffer;
        let lane = self.lane(index).await?;
        let needed = 4 + frame.len();
        if lane.pending.capacity() - lane.pending.len() < needed {
            lane.pending
                .reserve(stream_buffer.min(LANE_ALLOCATION).max(needed));
        }
        put_frame(&mut lane.pending, &frame);
        if lane.pending.len() >= stream_buffer {
            lane.write_pending().await?;
        }
        Ok(())
    }

    fn send_datagrams(&mut self) -> Vec<(Subject, Bytes)> {
        let mut unsent = Vec::new();
        let max = self.connection.max_datagram_size();
        for (subject, frame) in self.datagrams.drain(..) {
            let fits = max.is_some_and(|max| frame.len() <= max);
            if !fits || self.connection.send_datagram(&frame).is_err() {
                unsent.push((subject, frame));
            }
        }
        unsent
    }
}

/// The message stream of a subject: FNV-1a of its text.
fn lane_of(subject: &str, lanes: usize) -> usize {
    let hash = subject.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % lanes as u64) as usize
}

impl EventWriter for QuicWriter {
    async fn feed(&mut self, frame: Bytes) -> io::Result<()> {
        put_frame(&mut self.control_buffer, &frame);
        Ok(())
    }

    async fn write_event(&mut self, event: &Outbound, encoding: Encoding) -> io::Result<()> {
        match event {
            Outbound::Message(_) | Outbound::Delivery(_) => {
                let message = event.message().expect("a message event");
                self.written_through = Some(message.position());
                let subject = message.subject();
                let frame = event.encode(encoding);
                if self.routes.is_latest_only(subject.as_str()) {
                    match self.datagrams.iter_mut().find(|(s, _)| s == subject) {
                        Some(pending) => pending.1 = frame,
                        None => self.datagrams.push((subject.clone(), frame)),
                    }
                    return Ok(());
                }
                self.send_on_lane(subject.as_str(), frame).await
            }
            // A gap travels with its subscription's messages; for an exact
            // subject that keeps it in order with them.
            Outbound::Gap(gap) => {
                let Gap { subject, .. } = &**gap;
                self.send_on_lane(subject.as_str(), event.encode(encoding)).await
            }
            Outbound::Reply(_) => self.feed(event.encode(encoding)).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        // A frame too large for a datagram (or a peer without them) goes
        // on its stream, reliably.
        for (subject, frame) in self.send_datagrams() {
            self.send_on_lane(subject.as_str(), frame).await?;
        }
        for lane in self.lanes.iter_mut().flatten() {
            lane.write_pending().await?;
        }
        if !self.control_buffer.is_empty() {
            let buffer = self.control_buffer.split();
            self.control.write_all(&buffer).await.map_err(io::Error::other)?;
        }
        Ok(())
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        // The session's timer (`MARK_INTERVAL`): QUIC keeps the session
        // alive itself.
        self.mark_lanes().await
    }

    fn wants_heartbeat(&self) -> bool {
        self.written_through != self.marked_through
    }

    async fn close(&mut self, _reason: &CloseReason) -> io::Result<()> {
        // What the message streams hold goes first, then the final `err`,
        // acknowledged by the peer before the session closes (a QUIC close
        // discards whatever is still unacknowledged).
        self.flush().await?;
        for lane in self.lanes.iter_mut().flatten() {
            lane.stream.finish().await.map_err(io::Error::other)?;
        }
        self.control.finish().await.map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_always_uses_the_same_stream_and_subjects_spread() {
        assert_eq!(lane_of("chat.a", 4), lane_of("chat.a", 4));
        let used: std::collections::HashSet<usize> =
            (0..64).map(|n| lane_of(&format!("room.{n}"), 4)).collect();
        assert_eq!(used.len(), 4);
        assert_eq!(lane_of("anything", 1), 0);
    }
}
