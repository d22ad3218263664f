//! One NATS client: `INFO`, then `CONNECT` (credentials, options), then a
//! reader and the kit's writer driver side by side, sharing the session's
//! outbox and the table of the client's subscription ids.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use herald_broker::{
    Acknowledgement, CloseReason, Encoding, Envelope, Headers, Outbound, Outbox, Payload, Reply, Session,
    SessionError, SubscriptionId, Transport,
};
use herald_gateway::{drive, DisconnectReason, EventWriter, WriterConfig};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::parser::{parse, ClientOp, ParseError, ParserLimits};
use crate::Gateway;

/// The `code` of an error this gateway words itself: its message is the
/// NATS error text as is.
const NATS_ERROR: &str = "nats_error";

/// How long the writer may take to deliver the final `-ERR` once closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A buffered batch is written out once it is this large, so a long batch
/// of large messages does not pile up in memory before the flush.
const WRITE_CHUNK: usize = 64 * 1024;

/// The most one read takes from a client's socket.
const READ_CHUNK: usize = 16 * 1024;

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// What a client may say in CONNECT; everything else is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConnectOptions {
    verbose: bool,
    pedantic: bool,
    echo: Option<bool>,
    headers: bool,
    auth_token: Option<String>,
    user: Option<String>,
    pass: Option<String>,
    jwt: Option<String>,
    protocol: Option<u8>,
}

/// The client's subscription ids, shared by the reader (which adds and
/// removes them) and the writer (which names them in `MSG` and counts
/// auto-unsubscribes down).
#[derive(Debug, Default)]
struct Sids {
    /// Looked up for every delivery; the ids are the server's own.
    by_id: HashMap<SubscriptionId, Sid, ahash::RandomState>,
}

#[derive(Debug)]
struct Sid {
    /// The sid as the client wrote it.
    text: Bytes,
    /// Messages delivered since the `SUB`.
    delivered: u64,
    /// `UNSUB sid max`: the subscription ends once `max` messages were
    /// delivered in all (counted from the `SUB`, as nats-server counts).
    max: Option<u64>,
}

pub(crate) async fn serve(socket: TcpStream, peer: SocketAddr, gateway: Arc<Gateway>) {
    let context = &gateway.context;
    let client_id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
    let (mut read, mut write) = socket.into_split();
    let info = info_line(&gateway, client_id, peer);
    let Ok(_permit) = gateway.connections.try_acquire() else {
        refuse(&mut write, &info, "Maximum Connections Exceeded", &gateway).await;
        return;
    };
    if context.shutdown.is_cancelled() {
        return refuse(&mut write, &info, "Server Shutdown", &gateway).await;
    }
    if context.draining.is_cancelled() {
        // nats-server's words for a server in lame duck mode.
        return refuse(&mut write, &info, "Server Lame Duck Mode", &gateway).await;
    }
    if timeout(gateway.config.write_timeout, write.write_all(&info))
        .await
        .is_err()
    {
        return context.disconnected("nats", 0, &DisconnectReason::WriteTimeout);
    }
    // Sent: a connection does not keep its greeting for life.
    drop(info);
    let limits = ParserLimits {
        max_control_line: gateway.config.max_control_line,
        max_payload: context.broker.config().max_payload_bytes,
    };
    let mut buffer = BytesMut::with_capacity(4096);
    let first = timeout(
        gateway.config.auth_timeout,
        read_connect(&mut read, &mut buffer, &limits),
    )
    .await;
    let options = match first {
        Err(_elapsed) => return refuse(&mut write, b"", "Authorization Timeout", &gateway).await,
        Ok(Err(ReadFailure::Closed)) => {
            return context.disconnected("nats", 0, &DisconnectReason::ClientClosed)
        }
        Ok(Err(ReadFailure::Io)) => return context.disconnected("nats", 0, &DisconnectReason::ReadError),
        Ok(Err(ReadFailure::Protocol(error))) => {
            return refuse(&mut write, b"", &error.to_string(), &gateway).await
        }
        Ok(Err(ReadFailure::NotConnect)) => {
            return refuse(&mut write, b"", "Authorization Violation", &gateway).await
        }
        Ok(Ok(Some(options))) if options.protocol.unwrap_or(0) <= 1 => options,
        Ok(Ok(Some(_))) => return refuse(&mut write, b"", "Invalid Client Protocol", &gateway).await,
        Ok(Ok(None)) => return refuse(&mut write, b"", "Parser Error", &gateway).await,
    };
    let credential = options
        .auth_token
        .as_deref()
        .or(options.pass.as_deref())
        .or(options.jwt.as_deref())
        .filter(|credential| !credential.is_empty());
    let access = match context.auth.authenticate(credential) {
        Ok(access) => access,
        Err(error) => {
            tracing::debug!(%peer, user = ?options.user, code = error.code(), "nats: CONNECT refused");
            return refuse(&mut write, b"", "Authorization Violation", &gateway).await;
        }
    };
    let mut session = Session::on(Transport::Nats, &context.broker, access);
    if options.verbose {
        session.outbox().push_reply(Reply::Ack {
            id: None,
            position: None,
        });
    }
    let outbox = session.outbox().clone();
    let sids = Arc::new(Mutex::new(Sids::default()));
    let (finished_tx, finished) = mpsc::unbounded_channel();
    let pings_out = Arc::new(AtomicU32::new(0));
    let mut writer = NatsWriter {
        socket: write,
        buffer: BytesMut::new(),
        sids: sids.clone(),
        finished: finished_tx,
        headers: options.headers,
        pings_out: pings_out.clone(),
        max_pings_out: gateway.config.max_pings_out,
        outbox: outbox.clone(),
    };
    let writer_config = WriterConfig {
        heartbeat_interval: gateway.config.ping_interval,
        write_timeout: gateway.config.write_timeout,
        max_duration: None,
        access_expires_at_millis: session.access_expires_at_millis(),
        write_delay: gateway.context.write_delay,
    };
    let session_id = session.id();
    let mut reader = Reader {
        socket: read,
        buffer,
        limits,
        session: &mut session,
        sids,
        ids: HashMap::new(),
        next_id: 1,
        finished,
        pings_out,
        verbose: options.verbose,
        echo: options.echo.unwrap_or(true),
        reply_room: 0,
        publish_pause: match context.broker.config().max_client_publishes_per_second {
            0 => Duration::ZERO,
            per_second => Duration::from_secs(1) / per_second,
        },
    };
    let reason = {
        let reading = reader.run();
        let writing = drive(&mut writer, &outbox, Encoding::Json, &writer_config, context);
        tokio::pin!(reading, writing);
        tokio::select! {
            reason = &mut writing => reason,
            read = &mut reading => match read {
                ReadEnd::Gone(reason) => reason,
                ReadEnd::Closing => timeout(CLOSE_GRACE, writing).await.unwrap_or(DisconnectReason::CloseTimeout),
            },
        }
    };
    let _ = writer.socket.shutdown().await;
    context.disconnected("nats", session_id, &reason);
}

/// The INFO line this server greets every client with.
fn info_line(gateway: &Gateway, client_id: u64, peer: SocketAddr) -> Bytes {
    let info = serde_json::json!({
        "server_id": "HERALD",
        "server_name": "herald",
        "version": env!("CARGO_PKG_VERSION"),
        "proto": 1,
        "go": "none (Herald)",
        "host": gateway.address.ip().to_string(),
        "port": gateway.address.port(),
        "headers": true,
        "max_payload": gateway.context.broker.config().max_payload_bytes,
        "auth_required": !gateway.context.auth.allows_anonymous(),
        "client_id": client_id,
        "client_ip": peer.ip().to_string(),
    });
    Bytes::from(format!("INFO {info}\r\n"))
}

/// Writes `before` (the INFO, when not yet sent) and `-ERR '<text>'`, then
/// closes: a client refused before it has a session.
async fn refuse(write: &mut OwnedWriteHalf, before: &[u8], text: &str, gateway: &Gateway) {
    let mut out = BytesMut::from(before);
    out.extend_from_slice(format!("-ERR '{text}'\r\n").as_bytes());
    let _ = timeout(CLOSE_GRACE, async {
        write.write_all(&out).await?;
        write.shutdown().await
    })
    .await;
    gateway
        .context
        .disconnected("nats", 0, &DisconnectReason::Refused);
}

enum ReadFailure {
    Closed,
    Io,
    Protocol(ParseError),
    NotConnect,
}

/// Reads the first operation, which must be CONNECT, and takes it: its
/// options, or `None` when they are not CONNECT's JSON.
async fn read_connect(
    socket: &mut OwnedReadHalf,
    buffer: &mut BytesMut,
    limits: &ParserLimits,
) -> Result<Option<ConnectOptions>, ReadFailure> {
    loop {
        if let Some((op, taken)) = parse(buffer, limits).map_err(ReadFailure::Protocol)? {
            let ClientOp::Connect(json) = op else {
                // Credentials come in CONNECT, so nothing may come before it.
                return Err(ReadFailure::NotConnect);
            };
            let options = serde_json::from_slice(json).ok();
            buffer.advance(taken);
            return Ok(options);
        }
        buffer.reserve(4096);
        match socket.read_buf(buffer).await {
            Ok(0) => return Err(ReadFailure::Closed),
            Ok(_) => {}
            Err(_) => return Err(ReadFailure::Io),
        }
    }
}

/// Why the reader stopped handling what it had read.
enum Parsed {
    /// The rest is an incomplete operation, or nothing.
    NeedsBytes,
    /// The client has as many replies waiting as it may.
    NeedsRoom,
    /// The next operation is a publish to hold back for this long.
    Throttled(Duration),
    Invalid(ParseError),
}

/// What became of one operation.
enum Handled {
    Done,
    /// A publish not taken yet, to be handled again after this long: its
    /// sender is over its rate (`broker.max_client_publishes_per_second`),
    /// or the cluster has as many publishes waiting as it takes.
    Throttled(Duration),
}

/// How long a publisher waits before trying a busy cluster again.
const CLUSTER_BUSY_PAUSE: Duration = Duration::from_millis(1);

/// How a connection's reading side ended.
enum ReadEnd {
    /// The client closed or the socket failed.
    Gone(DisconnectReason),
    /// The server closed the session; the writer owes the final `-ERR`.
    Closing,
}

struct Reader<'a> {
    socket: OwnedReadHalf,
    buffer: BytesMut,
    limits: ParserLimits,
    session: &'a mut Session,
    sids: Arc<Mutex<Sids>>,
    /// The client's sids and the ids the broker knows them by.
    ids: HashMap<Bytes, SubscriptionId>,
    next_id: SubscriptionId,
    /// Subscriptions the writer finished (`UNSUB sid max` reached).
    finished: mpsc::UnboundedReceiver<SubscriptionId>,
    pings_out: Arc<AtomicU32>,
    verbose: bool,
    echo: bool,
    /// Operations that may still be handled before the reply queue is
    /// looked at again ([`Outbox::reply_room_left`]).
    reply_room: usize,
    /// How long one publish's budget takes to come back, for a sender
    /// held to a publish rate.
    publish_pause: Duration,
}

impl Reader<'_> {
    async fn run(&mut self) -> ReadEnd {
        loop {
            // Operations borrow the buffer while they are handled.
            let mut buffer = std::mem::take(&mut self.buffer);
            let parsed = loop {
                // Backpressure: each operation queues at most one reply, so
                // one is handled only when there is room for its reply. A
                // client that sends without reading the answers is not read
                // further (TCP holds it back) instead of growing its queue
                // of replies; one that pipelines more than the limit and
                // reads is answered in full.
                if self.reply_room == 0 {
                    self.reply_room = self.session.outbox().reply_room_left();
                    if self.reply_room == 0 {
                        break Parsed::NeedsRoom;
                    }
                }
                match parse(&buffer, &self.limits) {
                    Ok(Some((op, taken))) => {
                        if let Handled::Throttled(pause) = self.handle(op) {
                            break Parsed::Throttled(pause);
                        }
                        self.reply_room -= 1;
                        buffer.advance(taken);
                    }
                    Ok(None) => break Parsed::NeedsBytes,
                    Err(error) => break Parsed::Invalid(error),
                }
            };
            self.buffer = buffer;
            if let Parsed::Invalid(error) = parsed {
                let outbox = self.session.outbox();
                outbox.close(CloseReason::ProtocolViolation(error.to_string()));
                return ReadEnd::Closing;
            }
            if self.session.outbox().is_closed() {
                return ReadEnd::Closing;
            }
            if let Parsed::NeedsRoom = parsed {
                self.session.outbox().reply_room().await;
            } else if let Parsed::Throttled(pause) = parsed {
                // Held back like a client whose replies wait: TCP slows the
                // sender, and nothing it sent is lost or refused (an
                // unknown -ERR would close nats.go and nats-py for good).
                tokio::time::sleep(pause).await;
            } else if let Err(reason) = self.read().await {
                return ReadEnd::Gone(reason);
            }
        }
    }

    /// Reads what the socket has, up to `READ_CHUNK` bytes, meanwhile
    /// forgetting subscriptions the writer finished. A connection waits
    /// for its socket without a read buffer once it has parsed everything:
    /// an idle subscriber holds none, a busy publisher keeps one.
    async fn read(&mut self) -> Result<(), DisconnectReason> {
        loop {
            self.buffer.reserve(READ_CHUNK);
            match self.socket.try_read_buf(&mut self.buffer) {
                Ok(0) => return Err(DisconnectReason::ClientClosed),
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(DisconnectReason::ReadError),
            }
            if self.buffer.is_empty() {
                self.buffer = BytesMut::new();
            }
            tokio::select! {
                ready = self.socket.readable() => ready.map_err(|_| DisconnectReason::ReadError)?,
                Some(id) = self.finished.recv() => self.forget(id),
            }
        }
    }

    fn handle(&mut self, op: ClientOp) -> Handled {
        let name = match &op {
            ClientOp::Pub { .. } => "pub",
            ClientOp::Sub { .. } => "sub",
            ClientOp::Unsub { .. } => "unsub",
            ClientOp::Connect(_) => "auth",
            ClientOp::Ping | ClientOp::Pong => "ping",
        };
        let done = match op {
            ClientOp::Ping => {
                self.session.outbox().push_reply(Reply::Pong { id: None });
                return Handled::Done;
            }
            ClientOp::Pong => {
                self.pings_out.store(0, Ordering::Relaxed);
                return Handled::Done;
            }
            ClientOp::Connect(_) => Ok(()),
            ClientOp::Pub { .. } if self.session.cluster_is_busy() => {
                return Handled::Throttled(CLUSTER_BUSY_PAUSE);
            }
            ClientOp::Pub {
                subject,
                reply,
                headers,
                payload,
            } => match self.publish(subject, reply, headers, payload) {
                Err(("rate_limited", _)) => return Handled::Throttled(self.publish_pause),
                done => done,
            },
            ClientOp::Sub { subject, queue, sid } => self.subscribe(subject, queue, sid),
            ClientOp::Unsub { sid, max_msgs } => {
                self.unsubscribe(sid, max_msgs);
                Ok(())
            }
        };
        self.session
            .count_command(name, done.as_ref().map(drop).map_err(|(code, _)| *code));
        match done {
            Ok(()) if self.verbose => self.session.outbox().push_reply(Reply::Ack {
                id: None,
                position: None,
            }),
            Ok(()) => {}
            Err((_, text)) => self.session.outbox().push_reply(Reply::Error {
                id: None,
                code: NATS_ERROR,
                message: text,
            }),
        }
        Handled::Done
    }

    fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), Refusal> {
        let refused = |error: SessionError| (error.code(), nats_error(&error, "Publish to", subject));
        let reply = reply
            .map(|reply| self.session.reply_subject(reply))
            .transpose()
            .map_err(refused)?;
        let headers = headers
            .map(|block| Headers::parse(Bytes::copy_from_slice(block)))
            .transpose()
            .map_err(|error| ("malformed_frame", format!("Invalid Headers: {error}")))?;
        let envelope = Envelope { headers, reply };
        // Copied out of the read buffer: a small message must not keep the
        // whole buffer alive for as long as history holds it.
        let payload = Payload::from_bytes(Bytes::copy_from_slice(payload));
        if !self.session.is_clustered() {
            return self
                .session
                .publish_on_route(subject, payload, envelope, self.echo)
                .map(drop)
                .map_err(refused);
        }
        // NATS publishes are not acknowledged, and a publish the cluster
        // does not take is not answered either: nats.go and nats-py close
        // for good on an -ERR they do not know, so one cluster outage would
        // end every Go and Python publisher on this node. The bridge counts
        // it (`herald_cluster_publishes_refused_total`). Until the cluster
        // answers, the publish holds a reply's room: the reader's
        // backpressure then bounds how many one client has in flight.
        let outbox = self.session.outbox().clone();
        outbox.reserve_reply();
        let done: Acknowledgement = Box::new(move |_| outbox.fulfil_reply(None));
        let submitted = self.session.submit(subject, payload, envelope, self.echo, done);
        if submitted.is_err() {
            self.session.outbox().fulfil_reply(None);
        }
        submitted.map_err(refused)
    }

    fn subscribe(&mut self, subject: &str, queue: Option<&str>, sid: &str) -> Result<(), Refusal> {
        if self.ids.contains_key(sid.as_bytes()) {
            // nats-server ignores a repeated sid; so does this.
            return Ok(());
        }
        let id = self.next_id;
        self.session
            .subscribe_member(id, subject, queue)
            .map_err(|error| (error.code(), nats_error(&error, "Subscription to", subject)))?;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let sid = Bytes::copy_from_slice(sid.as_bytes());
        self.lock_sids().by_id.insert(
            id,
            Sid {
                text: sid.clone(),
                delivered: 0,
                max: None,
            },
        );
        self.ids.insert(sid, id);
        Ok(())
    }

    fn unsubscribe(&mut self, sid: &str, max_msgs: Option<u64>) {
        let Some(&id) = self.ids.get(sid.as_bytes()) else {
            return;
        };
        let keep = max_msgs.is_some_and(|max| {
            let mut sids = self.lock_sids();
            let entry = sids.by_id.get_mut(&id);
            entry.is_some_and(|entry| {
                entry.max = Some(max);
                entry.delivered < max
            })
        });
        if !keep {
            self.forget(id);
        }
    }

    /// Ends the subscription `id` everywhere.
    fn forget(&mut self, id: SubscriptionId) {
        self.session.unsubscribe_member(id);
        self.lock_sids().by_id.remove(&id);
        self.ids.retain(|_, known| *known != id);
    }

    fn lock_sids(&self) -> std::sync::MutexGuard<'_, Sids> {
        self.sids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why a command was refused: the protocol's code (for the metrics) and
/// nats-server's words (for the client's `-ERR`).
type Refusal = (&'static str, String);

/// A session error in nats-server's words.
fn nats_error(error: &SessionError, operation: &str, subject: &str) -> String {
    match error {
        SessionError::Forbidden { .. } => format!("Permissions Violation for {operation} \"{subject}\""),
        SessionError::Subject(_) => "Invalid Subject".to_owned(),
        SessionError::TooManySubscriptions { .. } => "Maximum Subscriptions Exceeded".to_owned(),
        SessionError::Publish(error) if error.code() == "payload_too_large" => {
            "Maximum Payload Violation".to_owned()
        }
        other => format!("{}: {other}", other.code()),
    }
}

/// The text of the `-ERR` that ends a connection, for each close reason;
/// `None` to close without one. nats-server says nothing when it drops a
/// slow consumer or shuts down, and clients rely on that: nats.go and
/// nats-py close for good on an `-ERR` they do not know, while a
/// connection that just ends is one they reconnect (and resubscribe).
fn closing_error(code: &str, message: &str) -> Option<String> {
    Some(match code {
        "slow_consumer" | "reply_backlog" | "shutdown" => return None,
        "idle_timeout" => "Stale Connection".to_owned(),
        "token_expired" => "User Authentication Expired".to_owned(),
        // The reader closes with nats-server's own words.
        "protocol_violation" => message
            .strip_prefix("protocol violation: ")
            .unwrap_or(message)
            .to_owned(),
        _ => message.to_owned(),
    })
}

struct NatsWriter {
    socket: OwnedWriteHalf,
    buffer: BytesMut,
    sids: Arc<Mutex<Sids>>,
    finished: mpsc::UnboundedSender<SubscriptionId>,
    /// Whether the client takes `HMSG` (said so in CONNECT).
    headers: bool,
    pings_out: Arc<AtomicU32>,
    max_pings_out: u32,
    outbox: Arc<Outbox>,
}

impl NatsWriter {
    /// Appends `MSG`/`HMSG` for subscription `id`, if it still exists:
    /// the line names the client's sid, the payload is the message's own
    /// bytes, shared by every recipient.
    fn put_message(&mut self, message: &herald_broker::Message, id: SubscriptionId) {
        let payload = message.payload().body();
        let headers = message.headers().filter(|_| self.headers).map(|h| h.block());
        let out = &mut self.buffer;
        {
            // The sid is copied straight from the table, under its lock.
            let mut sids = self.sids.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let Some(entry) = sids.by_id.get_mut(&id) else {
                // Unsubscribed after the message was queued.
                return;
            };
            out.put_slice(if headers.is_some() { b"HMSG " } else { b"MSG " });
            out.put_slice(message.subject().as_str().as_bytes());
            out.put_u8(b' ');
            out.put_slice(&entry.text);
            entry.delivered += 1;
            if entry.max.is_some_and(|max| entry.delivered >= max) {
                sids.by_id.remove(&id);
                let _ = self.finished.send(id);
            }
        }
        if let Some(reply) = message.reply() {
            out.put_u8(b' ');
            out.put_slice(reply.as_str().as_bytes());
        }
        let header_len = headers.map_or(0, |headers| headers.len());
        if let Some(headers) = headers {
            put_number(out, headers.len());
        }
        put_number(out, header_len + payload.len());
        out.put_slice(b"\r\n");
        if let Some(headers) = headers {
            out.put_slice(headers);
        }
        out.put_slice(payload);
        out.put_slice(b"\r\n");
    }

    fn put_reply(&mut self, reply: &Reply) {
        match reply {
            Reply::Ack { .. } => self.buffer.put_slice(b"+OK\r\n"),
            Reply::Pong { .. } => self.buffer.put_slice(b"PONG\r\n"),
            Reply::Error {
                id: None,
                code,
                message,
            } if *code != NATS_ERROR => {
                if let Some(text) = closing_error(code, message) {
                    self.buffer.put_slice(format!("-ERR '{text}'\r\n").as_bytes());
                }
            }
            Reply::Error { message, .. } => {
                self.buffer.put_slice(format!("-ERR '{message}'\r\n").as_bytes());
            }
            // Herald's own queries have no NATS form.
            Reply::History { .. } | Reply::Presence { .. } => {}
        }
    }
}

/// ` <n>` in decimal.
fn put_number(out: &mut BytesMut, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_u8(b' ');
    out.put_slice(&digits[at..]);
}

impl EventWriter for NatsWriter {
    async fn feed(&mut self, frame: Bytes) -> io::Result<()> {
        self.buffer.put_slice(&frame);
        Ok(())
    }

    async fn write_event(&mut self, event: &Outbound, _encoding: Encoding) -> io::Result<()> {
        match event {
            Outbound::Delivery(delivery) => self.put_message(&delivery.1, delivery.0),
            // Every NATS subscription has its own id; nothing is queued
            // for the whole connection.
            Outbound::Message(_) => {}
            Outbound::Reply(reply) => self.put_reply(reply),
            // A queue that dropped messages under `drop-oldest`: NATS has no
            // gap event, and an `-ERR` would make nats.go and nats-py close
            // the connection for good. Core NATS delivers at most once; the
            // drop is counted (`herald_messages_dropped_total`) and the
            // client goes on with the newer messages.
            Outbound::Gap(_) => {}
        }
        if self.buffer.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            self.socket.write_all(&self.buffer).await?;
            // A burst may have grown the buffer past a write chunk; an
            // idle subscriber should not hold on to that.
            if self.buffer.capacity() > WRITE_CHUNK {
                self.buffer = BytesMut::new();
            } else {
                self.buffer.clear();
            }
        }
        Ok(())
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        if self.pings_out.fetch_add(1, Ordering::Relaxed) >= self.max_pings_out {
            self.outbox.close(CloseReason::IdleTimeout);
            return Ok(());
        }
        self.socket.write_all(b"PING\r\n").await
    }

    async fn close(&mut self, _reason: &CloseReason) -> io::Result<()> {
        // The final `-ERR` was fed; the connection ends after the flush.
        Ok(())
    }
}
