//! One WebTransport session: admission, the control stream's reader, and
//! the kit's writer driver with a writer that routes each event to its
//! stream (or datagram).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::{Bytes, BytesMut};
use herald_broker::protocol::Gap;
use herald_broker::subject::Pattern;
use herald_broker::{CloseReason, Command, Encoding, Outbound, Reply, Session, Subject};
use herald_gateway::credentials::Admission;
use herald_gateway::expiry::{self, TokenClock};
use herald_gateway::frames::{decode_frame, handle_command, Handled};
use herald_gateway::{
    drive, refusal, CommandRateLimiter, DisconnectReason, EventWriter, GatewayContext, HttpError,
    QueryParams, WriterConfig,
};
use tokio::time::timeout;
use wtransport::endpoint::IncomingSession;
use wtransport::quinn::{ConnectionError as QuicConnectionError, ReadError};
use wtransport::{Connection, RecvStream, SendStream, VarInt};

use crate::framing::{put_frame, FrameReader};
use crate::QuicConfig;

const TRANSPORT: &str = "webtransport";

/// How long the final frames of a session may take once it is closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The stream error code for a stream the server does not take (a second
/// control stream, a client's unidirectional stream).
pub const STREAM_REFUSED: u32 = 0x10;

#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) context: GatewayContext,
    pub(crate) config: QuicConfig,
    pub(crate) sessions: AtomicUsize,
}

pub(crate) async fn serve(incoming: IncomingSession, gateway: &Gateway) {
    let config = &gateway.config;
    let context = &gateway.context;
    let request = match timeout(config.handshake_timeout, incoming).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            tracing::debug!(%error, "WebTransport handshake failed");
            return context.disconnected(TRANSPORT, 0, &DisconnectReason::ReadError);
        }
        Err(_elapsed) => return context.disconnected(TRANSPORT, 0, &DisconnectReason::ReadError),
    };
    let (path, query) = match request.path().split_once('?') {
        Some((path, query)) => (path, QueryParams::parse(Some(query))),
        None => (request.path(), QueryParams::default()),
    };
    if path != config.path {
        request.not_found().await;
        return context.disconnected(TRANSPORT, 0, &DisconnectReason::Refused);
    }
    let headers = header_map(request.headers());
    let encoding = match query.one("encoding") {
        None | Some("json") => Ok(Encoding::Json),
        Some("msgpack") => Ok(Encoding::MsgPack),
        Some(other) => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_encoding",
            format!("?encoding={other}: use json or msgpack"),
        )),
    };
    let admission = match &encoding {
        Ok(_) => context.admission(&headers, &query),
        Err(error) => Admission::Refused(error.clone()),
    };
    let encoding = encoding.unwrap_or(Encoding::Json);
    let connection = match request.accept().await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "WebTransport session not established");
            return context.disconnected(TRANSPORT, 0, &DisconnectReason::ReadError);
        }
    };
    // Everything the client says goes on its first bidirectional stream.
    let (control, commands) = match timeout(config.auth_timeout, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(_)) => return context.disconnected(TRANSPORT, 0, &DisconnectReason::ClientClosed),
        Err(_elapsed) => {
            connection.close(
                VarInt::from_u32(close_code_for(&CloseReason::IdleTimeout)),
                b"no control stream",
            );
            return context.disconnected(TRANSPORT, 0, &DisconnectReason::Refused);
        }
    };
    let mut commands = Commands {
        stream: commands,
        reader: FrameReader::new(config.hard_frame_limit_bytes),
    };
    let (access, auth_id) = match admission {
        Admission::Admitted(access) => (access, None),
        Admission::AwaitingAuth => {
            let first = timeout(config.auth_timeout, commands.next()).await;
            let admitted = match first {
                Err(_elapsed) => Err(expiry::auth_timed_out()),
                Ok(Ok(frame)) => expiry::first_auth(context, encoding, &frame, config.max_frame_bytes),
                Ok(_) => Err(expiry::ended_before_auth()),
            };
            match admitted {
                Ok(admitted) => admitted,
                Err(error) => return refuse(&connection, control, &error, encoding, context).await,
            }
        }
        Admission::Refused(error) => return refuse(&connection, control, &error, encoding, context).await,
    };
    let mut session = Session::new(&context.broker, access);
    if auth_id.is_some() {
        session.outbox().push_reply(Reply::Ack {
            id: auth_id,
            position: None,
        });
    }
    let outbox = session.outbox().clone();
    let routes = Arc::new(Routes::default());
    let mut writer = QuicWriter {
        connection: connection.clone(),
        control,
        control_buffer: BytesMut::with_capacity(1024),
        lanes: (0..config.message_streams).map(|_| None).collect(),
        stream_buffer: config.stream_buffer_bytes,
        routes: routes.clone(),
        datagrams: Vec::new(),
    };
    let writer_config = WriterConfig {
        // QUIC keeps the session alive itself (keep_alive_interval).
        heartbeat_interval: Duration::from_secs(3600),
        write_timeout: config.write_timeout,
        max_duration: None,
        // The reader watches the token: it can take a `refresh`.
        access_expires_at_millis: None,
    };
    let session_id = session.id();
    let reading = read_commands(
        &connection,
        commands,
        &mut session,
        &routes,
        encoding,
        config,
        context,
    );
    let writing = drive(&mut writer, &outbox, encoding, &writer_config, context);
    tokio::pin!(reading, writing);
    let reason = tokio::select! {
        reason = &mut writing => reason,
        read = &mut reading => match read {
            ReadEnd::Gone(reason) => reason,
            ReadEnd::Closing => timeout(CLOSE_GRACE, writing).await.unwrap_or(DisconnectReason::CloseTimeout),
        },
    };
    // The session's close says why the server ended it (also when the
    // final `err` could not be written: a slow consumer's write timed out).
    match outbox.close_reason() {
        Some(close) => connection.close(VarInt::from_u32(close_code_for(&close)), close.code().as_bytes()),
        None => connection.close(VarInt::from_u32(0), b""),
    }
    context.disconnected(TRANSPORT, session_id, &reason);
}

/// The request's headers as an HTTP header map (pseudo-headers left out).
fn header_map(headers: &std::collections::HashMap<String, String>) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| !name.starts_with(':'))
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect()
}

/// Tells a client why it is refused, in an `err` on its control stream,
/// then closes the session with the refusal's application code.
async fn refuse(
    connection: &Connection,
    mut control: SendStream,
    error: &HttpError,
    encoding: Encoding,
    context: &GatewayContext,
) {
    let event = Outbound::Reply(Box::new(Reply::Error {
        id: None,
        code: error.code,
        message: error.message.clone(),
    }))
    .encode(encoding);
    let mut frame = BytesMut::new();
    put_frame(&mut frame, &event);
    let _ = timeout(CLOSE_GRACE, async {
        control.write_all(&frame).await?;
        control.finish().await
    })
    .await;
    connection.close(
        VarInt::from_u32(u32::from(refusal::close_code(error.status))),
        error.code.as_bytes(),
    );
    context.disconnected(TRANSPORT, 0, &DisconnectReason::Refused);
}

/// Frames from the control stream.
struct Commands {
    stream: RecvStream,
    reader: FrameReader,
}

/// Why the control stream gave no frame.
enum CommandsEnd {
    /// The client finished its control stream.
    Finished,
    TooLarge,
    Failed(ReadError),
}

impl Commands {
    /// The next command frame. Cancel-safe: what the stream delivered is
    /// in `reader` before the next await.
    async fn next(&mut self) -> Result<Bytes, CommandsEnd> {
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(_too_large) => return Err(CommandsEnd::TooLarge),
            }
            // quinn's own buffers, no read buffer held by an idle session.
            match self.stream.quic_stream_mut().read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.reader.extend(&chunk.bytes),
                Ok(None) => return Err(CommandsEnd::Finished),
                Err(error) => return Err(CommandsEnd::Failed(error)),
            }
        }
    }
}

/// How a session's reading side ended.
enum ReadEnd {
    Gone(DisconnectReason),
    /// The server closed the session; the writer owes the client a final
    /// `err` and the close.
    Closing,
}

/// Reads commands until the client leaves or the session is closed;
/// refuses every stream but the control stream, and takes datagrams only
/// to count them against the command rate.
async fn read_commands(
    connection: &Connection,
    mut commands: Commands,
    session: &mut Session,
    routes: &Routes,
    encoding: Encoding,
    config: &QuicConfig,
    context: &GatewayContext,
) -> ReadEnd {
    let mut limiter = CommandRateLimiter::new(config.max_commands_per_second);
    let mut token = TokenClock::new(session, context.refresh_grace);
    loop {
        // Backpressure: a client pipelining commands waits while its
        // answers are unread; the write timeout judges one that never reads.
        session.outbox().reply_room().await;
        let next = tokio::select! {
            next = commands.next() => next,
            () = token.ring() => {
                if token.expired(session) {
                    return ReadEnd::Closing;
                }
                continue;
            }
            stream = connection.accept_bi() => {
                if let Ok((mut send, receive)) = stream {
                    let _ = send.reset(VarInt::from_u32(STREAM_REFUSED));
                    receive.stop(VarInt::from_u32(STREAM_REFUSED));
                }
                continue;
            }
            stream = connection.accept_uni() => {
                if let Ok(receive) = stream {
                    receive.stop(VarInt::from_u32(STREAM_REFUSED));
                }
                continue;
            }
            datagram = connection.receive_datagram() => {
                if datagram.is_ok() {
                    if let Err(reason) = limiter.admit() {
                        session.outbox().close(reason);
                        return ReadEnd::Closing;
                    }
                }
                continue;
            }
        };
        let frame = match next {
            Ok(frame) => frame,
            Err(CommandsEnd::Finished) => return ReadEnd::Gone(DisconnectReason::ClientClosed),
            Err(CommandsEnd::TooLarge) => {
                session.outbox().close(CloseReason::FrameTooLarge {
                    max: config.hard_frame_limit_bytes,
                });
                return ReadEnd::Closing;
            }
            Err(CommandsEnd::Failed(error)) => return ReadEnd::Gone(read_failure(error)),
        };
        if let Err(reason) = limiter.admit() {
            session.outbox().close(reason);
            return ReadEnd::Closing;
        }
        let Some(command) = decode_frame(session, encoding, &frame, config.max_frame_bytes) else {
            continue;
        };
        let route = RouteChange::of(&command);
        if handle_command(session, command, &context.auth) == Handled::AccessReplaced {
            token = TokenClock::new(session, context.refresh_grace);
        }
        if let Some(change) = route {
            routes.apply(change, session);
        }
        if session.outbox().is_closed() {
            return ReadEnd::Closing;
        }
    }
}

/// Why reading the control stream failed.
fn read_failure(error: ReadError) -> DisconnectReason {
    match error {
        ReadError::ConnectionLost(QuicConnectionError::TimedOut) => {
            DisconnectReason::Closed(CloseReason::IdleTimeout)
        }
        ReadError::ConnectionLost(
            QuicConnectionError::ApplicationClosed(_) | QuicConnectionError::LocallyClosed,
        ) => DisconnectReason::ClientClosed,
        _ => DisconnectReason::ReadError,
    }
}

/// A subscription that changed how its messages travel.
enum RouteChange {
    Subscribed { subject: String, latest: bool },
    Unsubscribed { subject: String },
}

impl RouteChange {
    fn of(command: &Command) -> Option<RouteChange> {
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
struct Routes {
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
    fn apply(&self, change: RouteChange, session: &Session) {
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
struct QuicWriter {
    connection: Connection,
    control: SendStream,
    control_buffer: BytesMut,
    /// One per message stream, opened on first use.
    lanes: Vec<Option<Lane>>,
    /// Bytes a lane gathers before handing them to its stream's task.
    stream_buffer: usize,
    routes: Arc<Routes>,
    /// This batch's latest-value messages: the newest per subject.
    datagrams: Vec<(Subject, Bytes)>,
}

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
    /// Adds `frame` to what the message stream that carries `subject`
    /// writes next.
    async fn send_on_lane(&mut self, subject: &str, frame: Bytes) -> io::Result<()> {
        let index = lane_of(subject, self.lanes.len());
        if self.lanes[index].is_none() {
            let stream = self
                .connection
                .open_uni()
                .await
                .map_err(io::Error::other)?
                .await
                .map_err(io::Error::other)?;
            self.lanes[index] = Some(Lane {
                pending: BytesMut::with_capacity(self.stream_buffer.min(LANE_ALLOCATION)),
                stream,
            });
        }
        let lane = self.lanes[index].as_mut().expect("opened above");
        put_frame(&mut lane.pending, &frame);
        if lane.pending.len() >= self.stream_buffer {
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
        Ok(())
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

/// The application error code a session closes with: the WebSocket close
/// code of the same reason, so clients of both read one table
/// (`docs/quic.md`).
pub(crate) fn close_code_for(reason: &CloseReason) -> u32 {
    u32::from(match reason {
        CloseReason::Shutdown | CloseReason::IdleTimeout | CloseReason::StreamExpired => 1001,
        CloseReason::FrameTooLarge { .. } => 1009,
        CloseReason::InvalidFrame(_) => 1002,
        CloseReason::InvalidUtf8 => 1007,
        CloseReason::SlowConsumer | CloseReason::ReplyBacklog | CloseReason::ProtocolViolation(_) => 1008,
        CloseReason::TokenExpired => refusal::close_code(StatusCode::UNAUTHORIZED),
    })
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
