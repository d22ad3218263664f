//! The client protocol: commands clients send and events the server sends,
//! in JSON and MessagePack encodings of the same structures. Every transport
//! speaks it; `docs/protocol.md` is its specification.
//!
//! Decoding is lenient about what it does not know (extra fields are
//! ignored, so newer clients keep working) and strict about what it does
//! (a missing subject, an unknown op or a mistyped field is a [`DecodeError`]
//! carrying the command's `id` when it could be read).
//!
//! Every event is encoded here. A `msg` event is encoded once per message
//! and encoding ([`Message::frame`]) and shared by all its recipients; the
//! other events are rare and encoded when written.

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

use crate::message::{Headers, Message, Payload, PayloadError, FRAME_SLOTS};
use crate::position::Position;
use crate::subject::Pattern;

/// Protocol version; carried in documentation and the handshake of
/// transports that have one.
pub const PROTOCOL_VERSION: u32 = 1;

/// A wire encoding of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// UTF-8 JSON text, one object per frame.
    Json,
    /// MessagePack, one map per frame, with the same field names as JSON.
    MsgPack,
    /// Server events only: the JSON event as the `data:` of a
    /// `text/event-stream` event, named by its `op`, with the position as
    /// its `id:` where it has one (Server-Sent Events). Commands never come
    /// in this encoding; decoding reads them as JSON.
    EventStream,
}

impl Encoding {
    /// How many encodings there are; sizes per-encoding caches.
    pub const COUNT: usize = 3;

    pub(crate) fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::MsgPack => 1,
            Encoding::EventStream => 2,
        }
    }
}

// A message caches one frame per encoding.
const _: () = assert!(Encoding::COUNT == FRAME_SLOTS);

/// A command from a client, decoded but not yet validated against the
/// broker's rules (subjects are checked by the [`Session`](crate::Session)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe {
        id: Option<u64>,
        subject: String,
        since: Option<String>,
        /// Also deliver who joins and leaves `subject`, as messages on
        /// `$presence.<subject>`.
        presence: bool,
        /// Join this queue group: each message goes to one member of the
        /// group, whatever transport each member uses.
        queue: Option<String>,
        /// Only the latest value matters: where the transport has
        /// unreliable datagrams (WebTransport), messages ride on them and
        /// may be dropped or coalesced; elsewhere an ordinary subscription.
        latest: bool,
    },
    Unsubscribe {
        id: Option<u64>,
        subject: String,
        /// The queue group the subscription joined, if it did.
        queue: Option<String>,
    },
    Publish {
        id: Option<u64>,
        subject: String,
        payload: Payload,
        /// `false`: not delivered back to the publishing connection (a
        /// chat page does not receive its own typing events). Default true.
        echo: bool,
        /// Where a responder should answer (request/reply).
        reply: Option<String>,
        headers: Option<Headers>,
    },
    Ping {
        id: Option<u64>,
    },
    History {
        id: Option<u64>,
        subject: String,
        since: Option<String>,
        limit: Option<usize>,
    },
    /// Who is subscribed to `subject` (a presence subject): the count and
    /// the first members.
    Presence {
        id: Option<u64>,
        subject: String,
    },
    /// The first command of a connection opened without a credential.
    Auth {
        id: Option<u64>,
        token: String,
    },
    /// A new token for the same user, before (or just after) the current
    /// one expires.
    Refresh {
        id: Option<u64>,
        token: String,
    },
}

impl Command {
    /// Whether handling this command reads history across subjects (a
    /// wildcard resume or history request): the kind of command worth
    /// keeping off an async worker.
    pub fn reads_wide_history(&self) -> bool {
        match self {
            Command::Subscribe {
                subject,
                since: Some(_),
                ..
            }
            | Command::History { subject, .. } => crate::subject::names_wildcards(subject),
            _ => false,
        }
    }

    /// The command's `op`, as clients write it.
    pub fn op(&self) -> &'static str {
        match self {
            Command::Subscribe { .. } => "sub",
            Command::Unsubscribe { .. } => "unsub",
            Command::Publish { .. } => "pub",
            Command::Ping { .. } => "ping",
            Command::History { .. } => "history",
            Command::Presence { .. } => "presence",
            Command::Auth { .. } => "auth",
            Command::Refresh { .. } => "refresh",
        }
    }

    pub fn id(&self) -> Option<u64> {
        match self {
            Command::Subscribe { id, .. }
            | Command::Unsubscribe { id, .. }
            | Command::Publish { id, .. }
            | Command::Ping { id }
            | Command::History { id, .. }
            | Command::Presence { id, .. }
            | Command::Auth { id, .. }
            | Command::Refresh { id, .. } => *id,
        }
    }
}

/// A frame that is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind}")]
pub struct DecodeError {
    /// The command's `id`, when the frame was readable enough to have one.
    pub id: Option<u64>,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeErrorKind {
    #[error("frame is not a valid command object: {reason}")]
    Malformed { reason: String },
    #[error("unknown op {op:?}; expected sub, unsub, pub, ping, history, presence, auth or refresh")]
    UnknownOp { op: String },
    #[error("op {op:?} needs the field {field:?}")]
    MissingField { op: &'static str, field: &'static str },
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

impl DecodeError {
    /// Stable snake_case code for the `err` event.
    pub fn code(&self) -> &'static str {
        match &self.kind {
            DecodeErrorKind::Malformed { .. } => "malformed_frame",
            DecodeErrorKind::UnknownOp { .. } => "unknown_op",
            DecodeErrorKind::MissingField { .. } => "missing_field",
            DecodeErrorKind::Payload(error) => error.code(),
        }
    }
}

/// Every field any command may carry; unknown ones are ignored.
#[derive(Deserialize)]
struct WireCommand<'a> {
    #[serde(borrow, default)]
    op: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    presence: Option<bool>,
    #[serde(default)]
    latest: Option<bool>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    reply: Option<String>,
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, HeaderValues>>,
    /// Present-but-null must stay distinguishable from absent: `null` is a
    /// perfectly good payload.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

/// A header's value in a command: one string or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Decodes one command frame.
pub fn decode_command(encoding: Encoding, frame: &Bytes) -> Result<Command, DecodeError> {
    match encoding {
        Encoding::Json | Encoding::EventStream => decode_json_command(frame),
        Encoding::MsgPack => {
            // MessagePack commands are read through their JSON form: one
            // decoder to keep right, and the payload is JSON either way.
            let json = Payload::from_msgpack(frame).map_err(|error| DecodeError {
                id: None,
                kind: DecodeErrorKind::Malformed {
                    reason: error.to_string(),
                },
            })?;
            decode_json_command(json.body())
        }
    }
}

fn decode_json_command(frame: &Bytes) -> Result<Command, DecodeError> {
    let wire: WireCommand<'_> = serde_json::from_slice(frame).map_err(|error| DecodeError {
        id: None,
        kind: DecodeErrorKind::Malformed {
            reason: error.to_string(),
        },
    })?;
    let id = wire.id;
    let fail = |kind| DecodeError { id, kind };
    let required = |value: Option<String>, op: &'static str, field: &'static str| {
        value.ok_or(DecodeError {
            id,
            kind: DecodeErrorKind::MissingField { op, field },
        })
    };
    let Some(op) = wire.op else {
        return Err(fail(DecodeErrorKind::MissingField { op: "", field: "op" }));
    };
    match &*op {
        "sub" => Ok(Command::Subscribe {
            id,
            subject: required(wire.subject, "sub", "subject")?,
            since: wire.since,
            presence: wire.presence.unwrap_or(false),
            queue: wire.queue,
            latest: wire.latest.unwrap_or(false),
        }),
        "unsub" => Ok(Command::Unsubscribe {
            id,
            subject: required(wire.subject, "unsub", "subject")?,
            queue: wire.queue,
        }),
        "pub" => {
            let subject = required(wire.subject, "pub", "subject")?;
            let data = wire.data.ok_or_else(|| {
                fail(DecodeErrorKind::MissingField {
                    op: "pub",
                    field: "data",
                })
            })?;
            let headers = wire
                .headers
                .map(|headers| {
                    let pairs = headers.iter().flat_map(|(name, values)| {
                        match values {
                            HeaderValues::One(value) => std::slice::from_ref(value),
                            HeaderValues::Many(values) => &values[..],
                        }
                        .iter()
                        .map(move |value| (name.as_str(), value.as_str()))
                    });
                    Headers::from_pairs(pairs)
                })
                .transpose()
                .map_err(|error| {
                    fail(DecodeErrorKind::Malformed {
                        reason: error.to_string(),
                    })
                })?;
            Ok(Command::Publish {
                id,
                subject,
                echo: wire.echo.unwrap_or(true),
                reply: wire.reply,
                headers,
                payload: Payload::from_validated_json(frame, data.get())
                    .map_err(|error| fail(error.into()))?,
            })
        }
        "ping" => Ok(Command::Ping { id }),
        "history" => Ok(Command::History {
            id,
            subject: required(wire.subject, "history", "subject")?,
            since: wire.since,
            limit: wire.limit,
        }),
        "presence" => Ok(Command::Presence {
            id,
            subject: required(wire.subject, "presence", "subject")?,
        }),
        "auth" => Ok(Command::Auth {
            id,
            token: required(wire.token, "auth", "token")?,
        }),
        "refresh" => Ok(Command::Refresh {
            id,
            token: required(wire.token, "refresh", "token")?,
        }),
        other => Err(fail(DecodeErrorKind::UnknownOp {
            op: other.chars().take(32).collect(),
        })),
    }
}

/// Positions the subscriber may have missed, inclusive at both ends. Sent
/// when history no longer covers a resume, or when a full queue dropped
/// messages; the client can fetch what is still retained with `history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The subscription the gap belongs to, as the client wrote it.
    pub subject: Pattern,
    pub from: Position,
    pub to: Position,
    /// How many messages were dropped, when the broker knows exactly.
    pub missed: Option<u64>,
}

/// A server event other than `msg`.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The command with this id succeeded; a publish carries the position.
    Ack {
        id: Option<u64>,
        position: Option<Position>,
    },
    /// The command failed, or (without id) the connection is being closed.
    Error {
        id: Option<u64>,
        code: &'static str,
        message: String,
    },
    Pong {
        id: Option<u64>,
    },
    /// The answer to `presence`.
    Presence {
        id: Option<u64>,
        subject: String,
        /// Every distinct user present, exactly.
        count: usize,
        /// The first `broker.presence.max_list` of them.
        members: Vec<crate::presence::Member>,
    },
    /// The answer to `history`: an optional gap, then messages in position order.
    History {
        id: Option<u64>,
        subject: Pattern,
        gap: Option<Gap>,
        messages: Vec<Message>,
    },
}

/// One event on its way to a client. Queues hold millions of these, so
/// the rare, large variants are boxed and an entry is two words.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A message for the whole connection (every transport but NATS).
    Message(Message),
    /// A message for one subscription of the connection, by the id it was
    /// subscribed with (a NATS `sid`). Boxed, so that every variant is one
    /// pointer: with the id inline, every push (this variant or not) was
    /// staged as a 16-byte value and copied, 15% slower on 1 000
    /// subscribers (`fanout/broker_publish/1000`). NATS pays the box.
    Delivery(Box<(crate::outbox::SubscriptionId, Message)>),
    Gap(Box<Gap>),
    Reply(Box<Reply>),
}

// An entry stays two words: a tag and one pointer.
const _: () = assert!(std::mem::size_of::<Outbound>() == 16);

impl Outbound {
    /// The message this event carries, if it is one.
    pub fn message(&self) -> Option<&Message> {
        match self {
            Outbound::Message(message) => Some(message),
            Outbound::Delivery(delivery) => Some(&delivery.1),
            Outbound::Gap(_) | Outbound::Reply(_) => None,
        }
    }

    /// The wire frame of this event.
    pub fn encode(&self, encoding: Encoding) -> Bytes {
        match (self, encoding) {
            (Outbound::Message(message), _) => message.frame(encoding),
            (Outbound::Delivery(delivery), _) => delivery.1.frame(encoding),
            (_, Encoding::EventStream) => {
                let json = self.encode(Encoding::Json);
                event_stream_frame(self.op(), self.event_id(), &json)
            }
            (Outbound::Gap(gap), _) => encode_serde(encoding, &WireGap::from(&**gap)),
            (Outbound::Reply(reply), _) => match &**reply {
                Reply::History {
                    id,
                    subject,
                    gap,
                    messages,
                } => encode_history(encoding, *id, subject, gap.as_ref(), messages),
                reply => encode_serde(encoding, &WireReply::from(reply)),
            },
        }
    }

    /// The event's `op`.
    pub fn op(&self) -> &'static str {
        match self {
            Outbound::Message(_) | Outbound::Delivery(_) => "msg",
            Outbound::Gap(_) => "gap",
            Outbound::Reply(reply) => match &**reply {
                Reply::Ack { .. } => "ack",
                Reply::Error { .. } => "err",
                Reply::Pong { .. } => "pong",
                Reply::Presence { .. } => "presence",
                Reply::History { .. } => "history",
            },
        }
    }

    /// The position a client resumes from once it has this event: a
    /// message's own, or the one an `ack` carries. Gaps have none: they name
    /// a range, and what follows a gap may be older than its end (another
    /// subscription's messages), so a gap never advances a resume token.
    pub fn event_id(&self) -> Option<Position> {
        match self {
            Outbound::Message(_) | Outbound::Delivery(_) => self.message().map(Message::position),
            Outbound::Reply(reply) => match &**reply {
                Reply::Ack { position, .. } => *position,
                _ => None,
            },
            Outbound::Gap(_) => None,
        }
    }
}

impl Message {
    /// The `msg` event for `encoding`: encoded by the first recipient that
    /// needs it, then shared by every other.
    pub fn frame(&self, encoding: Encoding) -> Bytes {
        self.cached_frame(encoding.index(), |message| encode_message(message, encoding))
            .clone()
    }

    /// Calls `read` with the `msg` event for `encoding`, borrowed: a writer
    /// that copies it into its own buffer takes no reference count on the
    /// shared frame per recipient.
    pub fn with_frame<R>(&self, encoding: Encoding, read: impl FnOnce(&[u8]) -> R) -> R {
        read(self.cached_frame(encoding.index(), |message| encode_message(message, encoding)))
    }
}

/// `{"op":"msg","subject":..,"pos":..,"ts":..,"data":..}` in `encoding`,
/// with `reply` and `headers` when the message has them. A payload that is
/// not JSON goes to JSON subscribers as `"data_base64"` (standard base64,
/// padded) instead of `data`, and to MessagePack subscribers as a `bin`
/// `data`.
fn encode_message(message: &Message, encoding: Encoding) -> Bytes {
    let write = "writing to a Vec cannot fail";
    let subject = message.subject().as_str();
    let payload = message.payload();
    let token = message.position().token();
    let ts = message.published_at_millis();
    let reply = message.reply().map(|reply| reply.as_str());
    let headers = message.headers().map(grouped_headers);
    match encoding {
        Encoding::Json => {
            let mut out = Vec::with_capacity(payload.len() + subject.len() + 80);
            out.extend_from_slice(br#"{"op":"msg","subject":"#);
            serde_json::to_writer(&mut out, subject).expect(write);
            out.extend_from_slice(br#","pos":""#);
            out.extend_from_slice(token.as_str().as_bytes());
            out.extend_from_slice(br#"","ts":"#);
            serde_json::to_writer(&mut out, &ts).expect(write);
            if let Some(reply) = reply {
                out.extend_from_slice(br#","reply":"#);
                serde_json::to_writer(&mut out, reply).expect(write);
            }
            if let Some(headers) = &headers {
                out.extend_from_slice(br#","headers":"#);
                serde_json::to_writer(&mut out, &HeaderMap(headers)).expect(write);
            }
            if payload.is_json() {
                out.extend_from_slice(br#","data":"#);
                put_one_line(&mut out, payload.body());
            } else {
                use base64::Engine as _;
                out.extend_from_slice(br#","data_base64":""#);
                let start = out.len();
                out.resize(start + base64::encoded_len(payload.len(), true).unwrap_or(0), 0);
                let written = base64::engine::general_purpose::STANDARD
                    .encode_slice(payload.body(), &mut out[start..])
                    .expect("sized by encoded_len");
                out.truncate(start + written);
                out.push(b'"');
            }
            out.push(b'}');
            Bytes::from(out)
        }
        Encoding::MsgPack => {
            let mut out = Vec::with_capacity(payload.len() + subject.len() + 64);
            let fields = 5 + u32::from(reply.is_some()) + u32::from(headers.is_some());
            rmp::encode::write_map_len(&mut out, fields).expect(write);
            for (key, value) in [("op", "msg"), ("subject", subject), ("pos", token.as_str())] {
                rmp::encode::write_str(&mut out, key).expect(write);
                rmp::encode::write_str(&mut out, value).expect(write);
            }
            rmp::encode::write_str(&mut out, "ts").expect(write);
            rmp::encode::write_uint(&mut out, ts).expect(write);
            if let Some(reply) = reply {
                rmp::encode::write_str(&mut out, "reply").expect(write);
                rmp::encode::write_str(&mut out, reply).expect(write);
            }
            if let Some(headers) = &headers {
                rmp::encode::write_str(&mut out, "headers").expect(write);
                out.extend_from_slice(&rmp_serde::to_vec(&HeaderMap(headers)).expect(write));
            }
            rmp::encode::write_str(&mut out, "data").expect(write);
            payload.write_msgpack(&mut out);
            Bytes::from(out)
        }
        Encoding::EventStream => {
            event_stream_frame("msg", Some(message.position()), &message.frame(Encoding::Json))
        }
    }
}

/// Headers as JSON and MessagePack carry them: each name once, with its
/// values in order (a NATS header may repeat).
fn grouped_headers(headers: &Headers) -> Vec<(&str, Vec<&str>)> {
    let mut grouped: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, value) in headers.pairs() {
        match grouped.iter_mut().find(|(seen, _)| *seen == name) {
            Some((_, values)) => values.push(value),
            None => grouped.push((name, vec![value])),
        }
    }
    grouped
}

/// Serialises grouped headers as a map, in their order.
struct HeaderMap<'a>(&'a [(&'a str, Vec<&'a str>)]);

impl Serialize for HeaderMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, values)| (name, values)))
    }
}

/// One `text/event-stream` event: `id:` (when given), `event:`, and the
/// JSON as `data:`. A payload may hold line breaks (pretty-printed JSON);
/// each starts a new `data:` line, which the client joins with `\n`, so
/// it reads back the same JSON value.
/// Appends JSON text as one line. In valid JSON a raw line break can only
/// be whitespace between tokens (inside a string it must be escaped), so
/// it becomes a space: the value is the same, and every JSON event is one
/// line, which lets several events share a WebSocket frame (JSON lines) and
/// an SSE event keep one `data:` line.
fn put_one_line(out: &mut Vec<u8>, json: &[u8]) {
    let start = out.len();
    out.extend_from_slice(json);
    if json.iter().any(|byte| matches!(byte, b'\n' | b'\r')) {
        for byte in &mut out[start..] {
            if matches!(byte, b'\n' | b'\r') {
                *byte = b' ';
            }
        }
    }
}

fn event_stream_frame(event: &str, id: Option<Position>, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + event.len() + 48);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.token().as_str().as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let mut rest = json;
    while let Some(at) = rest.iter().position(|&byte| byte == b'\n' || byte == b'\r') {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"\ndata: ");
        let crlf = rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n');
        rest = &rest[at + 1 + usize::from(crlf)..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[derive(Serialize)]
#[serde(tag = "op")]
enum WireReply<'a> {
    #[serde(rename = "ack")]
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pos: Option<String>,
    },
    #[serde(rename = "err")]
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: &'a str,
        message: &'a str,
    },
    #[serde(rename = "pong")]
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    #[serde(rename = "presence")]
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        subject: &'a str,
        count: usize,
        members: &'a [crate::presence::Member],
        truncated: bool,
    },
}

impl<'a> From<&'a Reply> for WireReply<'a> {
    fn from(reply: &'a Reply) -> Self {
        match reply {
            Reply::Ack { id, position } => WireReply::Ack {
                id: *id,
                pos: position.map(|p| p.token().to_string()),
            },
            Reply::Error { id, code, message } => WireReply::Error {
                id: *id,
                code,
                message,
            },
            Reply::Pong { id } => WireReply::Pong { id: *id },
            Reply::Presence {
                id,
                subject,
                count,
                members,
            } => WireReply::Presence {
                id: *id,
                subject,
                count: *count,
                members,
                truncated: members.len() < *count,
            },
            Reply::History { .. } => unreachable!("history replies are encoded by encode_history"),
        }
    }
}

#[derive(Serialize)]
struct WireGap<'a> {
    op: &'static str,
    subject: &'a str,
    from: String,
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    missed: Option<u64>,
}

impl<'a> From<&'a Gap> for WireGap<'a> {
    fn from(gap: &'a Gap) -> Self {
        WireGap {
            op: "gap",
            subject: gap.subject.as_str(),
            from: gap.from.token().to_string(),
            to: gap.to.token().to_string(),
            missed: gap.missed,
        }
    }
}

/// `{"op":"mark","pos":..,"lanes":..}`: a WebTransport message stream's
/// promise that every event it carries up to `position` came before it
/// (see `docs/quic.md`); `lanes` is how many message streams carry them.
pub fn encode_mark(encoding: Encoding, position: Position, lanes: usize) -> Bytes {
    #[derive(Serialize)]
    struct WireMark {
        op: &'static str,
        pos: String,
        lanes: usize,
    }
    encode_serde(
        encoding,
        &WireMark {
            op: "mark",
            pos: position.to_string(),
            lanes,
        },
    )
}

fn encode_serde<T: Serialize>(encoding: Encoding, value: &T) -> Bytes {
    let bytes = match encoding {
        Encoding::Json | Encoding::EventStream => {
            serde_json::to_vec(value).expect("protocol structs always serialize")
        }
        Encoding::MsgPack => rmp_serde::to_vec_named(value).expect("protocol structs always serialize"),
    };
    Bytes::from(bytes)
}

/// `{"op":"history","id":..,"subject":..,"gap":{..},"messages":[<msg>,..]}`:
/// each element of `messages` is the message's own `msg` frame, reused.
fn encode_history(
    encoding: Encoding,
    id: Option<u64>,
    subject: &Pattern,
    gap: Option<&Gap>,
    messages: &[Message],
) -> Bytes {
    // Inside an event-stream event the body is plain JSON.
    let encoding = match encoding {
        Encoding::EventStream => Encoding::Json,
        other => other,
    };
    let frames: Vec<Bytes> = messages.iter().map(|m| m.frame(encoding)).collect();
    let mut out = Vec::with_capacity(frames.iter().map(Bytes::len).sum::<usize>() + 128);
    let gap = gap.map(WireGap::from);
    match encoding {
        Encoding::Json | Encoding::EventStream => {
            out.extend_from_slice(br#"{"op":"history","#);
            if let Some(id) = id {
                out.extend_from_slice(format!(r#""id":{id},"#).as_bytes());
            }
            out.extend_from_slice(br#""subject":"#);
            serde_json::to_writer(&mut out, subject.as_str()).expect("writing to a Vec cannot fail");
            if let Some(gap) = &gap {
                out.extend_from_slice(br#","gap":"#);
                serde_json::to_writer(&mut out, gap).expect("writing to a Vec cannot fail");
            }
            out.extend_from_slice(br#","messages":["#);
            for (index, frame) in frames.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(frame);
            }
            out.extend_from_slice(b"]}");
        }
        Encoding::MsgPack => {
            let fields = 3 + u32::from(id.is_some()) + u32::from(gap.is_some());
            let write = "writing to a Vec cannot fail";
            rmp::encode::write_map_len(&mut out, fields).expect(write);
            rmp::encode::write_str(&mut out, "op").expect(write);
            rmp::encode::write_str(&mut out, "history").expect(write);
            if let Some(id) = id {
                rmp::encode::write_str(&mut out, "id").expect(write);
                rmp::encode::write_uint(&mut out, id).expect(write);
            }
            rmp::encode::write_str(&mut out, "subject").expect(write);
            rmp::encode::write_str(&mut out, subject.as_str()).expect(write);
            if let Some(gap) = &gap {
                rmp::encode::write_str(&mut out, "gap").expect(write);
                out.extend_from_slice(&rmp_serde::to_vec_named(gap).expect(write));
            }
            rmp::encode::write_str(&mut out, "messages").expect(write);
            rmp::encode::write_array_len(&mut out, frames.len() as u32).expect(write);
            for frame in &frames {
                out.extend_from_slice(frame);
            }
        }
    }
    Bytes::from(out)
}

/// A server event as a client reads it. Used by Herald's own clients (the
/// load generator, the tests); the server never decodes events.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op")]
pub enum ServerEvent {
    #[serde(rename = "msg")]
    Msg {
        subject: String,
        pos: String,
        /// Milliseconds since the Unix epoch at publish time.
        ts: u64,
        /// The payload when it is JSON (`null` when it is not).
        #[serde(default)]
        data: serde_json::Value,
        /// The payload when it is not JSON, in standard base64.
        #[serde(default)]
        data_base64: Option<String>,
        #[serde(default)]
        reply: Option<String>,
        #[serde(default)]
        headers: Option<std::collections::BTreeMap<String, Vec<String>>>,
    },
    #[serde(rename = "ack")]
    Ack {
        #[serde(default)]
        id: Option<u64>,
        #[serde(default)]
        pos: Option<String>,
    },
    #[serde(rename = "err")]
    Err {
        #[serde(default)]
        id: Option<u64>,
        code: String,
        message: String,
    },
    #[serde(rename = "gap")]
    Gap {
        subject: String,
        from: String,
        to: String,
        #[serde(default)]
        missed: Option<u64>,
    },
    #[serde(rename = "pong")]
    Pong {
        #[serde(default)]
        id: Option<u64>,
    },
    /// WebTransport message streams only ([`encode_mark`]).
    #[serde(rename = "mark")]
    Mark { pos: String, lanes: usize },
    #[serde(rename = "history")]
    History {
        #[serde(default)]
        id: Option<u64>,
        subject: String,
        #[serde(default)]
        gap: Option<GapFields>,
        messages: Vec<ServerEvent>,
    },
    #[serde(rename = "presence")]
    Presence {
        #[serde(default)]
        id: Option<u64>,
        subject: String,
        count: usize,
        members: Vec<crate::presence::Member>,
        truncated: bool,
    },
}

/// The fields of a gap nested in a `history` event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GapFields {
    pub subject: String,
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub missed: Option<u64>,
}

/// Decodes a server event; for clients.
pub fn decode_event(encoding: Encoding, frame: &[u8]) -> Result<ServerEvent, String> {
    match encoding {
        Encoding::Json => serde_json::from_slice(frame).map_err(|e| e.to_string()),
        Encoding::MsgPack => rmp_serde::from_slice(frame).map_err(|e| e.to_string()),
        Encoding::EventStream => {
            let data: Vec<&str> = std::str::from_utf8(frame)
                .map_err(|e| e.to_string())?
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect();
            serde_json::from_str(&data.join("\n")).map_err(|e| e.to_string())
        }
    }
}
