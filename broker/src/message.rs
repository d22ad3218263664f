//! Published messages, shared by every subscriber and the history.
//!
//! A [`Message`] is one reference-counted allocation per publish. Its payload
//! is held as [`Bytes`] (often a slice of the very frame the publisher
//! sent): validated JSON from the JSON transports, or any bytes from a NATS
//! client, marked as JSON when they happen to be. It may carry NATS headers
//! and a reply subject. It carries a cache of its encoded frames, one slot per
//! wire encoding: the protocol (`protocol.rs`) fills a slot on first demand
//! and every recipient of that encoding shares it, so fan-out to ten
//! thousand subscribers encodes once. This module knows nothing of the
//! encodings themselves.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use thiserror::Error;

use crate::position::Position;
use crate::subject::Subject;

/// How many encoded frames a message can cache: one per wire encoding
/// (`protocol::Encoding::COUNT`, checked there at compile time).
pub(crate) const FRAME_SLOTS: usize = 3;

/// How deeply a payload's arrays and objects may nest. Every encoding can
/// carry this depth unchanged (MessagePack readers and JSON parsers commonly
/// stop near 128), so nothing is accepted that a subscriber could not get.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// How deeply a MessagePack command frame may nest: a payload's depth plus
/// the command around it.
const MAX_MSGPACK_FRAME_DEPTH: usize = MAX_PAYLOAD_DEPTH + 1;

/// How much of a frame besides its payload a payload may keep alive by
/// sharing the frame's memory (the command's envelope), rather than being
/// copied out of it.
pub const SHARING_SLACK: usize = 256;

/// A message payload: one JSON value, already validated, or bytes that are
/// not JSON (a NATS client may publish anything). Two payloads are equal
/// when their bytes and kind are.
#[derive(Clone)]
pub struct Payload {
    body: Bytes,
    /// Whether `body` is one JSON value within [`MAX_PAYLOAD_DEPTH`]: JSON
    /// subscribers then get it as `data`, as is; otherwise as `data_base64`.
    json: bool,
    /// The bytes this payload keeps alive: more than its length when it
    /// shares the memory of the frame it came in.
    retained: usize,
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    #[error("payload is not valid JSON: {reason}")]
    InvalidJson { reason: String },
    #[error("payload is not a MessagePack value that JSON can carry: {reason}")]
    InvalidMsgPack { reason: String },
    #[error("payload is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("payload nests arrays and objects deeper than {max} levels")]
    TooDeep { max: usize },
}

impl PayloadError {
    pub fn code(&self) -> &'static str {
        match self {
            PayloadError::TooLarge { .. } => "payload_too_large",
            _ => "invalid_payload",
        }
    }
}

impl Payload {
    /// Validates `json` as exactly one JSON value, nested at most
    /// [`MAX_PAYLOAD_DEPTH`] deep.
    pub fn from_json(json: Bytes) -> Result<Payload, PayloadError> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&json).map_err(|error| {
            PayloadError::InvalidJson {
                reason: error.to_string(),
            }
        })?;
        check_json_depth(&json)?;
        Ok(Payload {
            retained: json.len(),
            body: json,
            json: true,
        })
    }

    /// Takes any bytes (what a NATS client publishes): JSON when they are
    /// one JSON value nested at most [`MAX_PAYLOAD_DEPTH`] deep, opaque
    /// bytes otherwise. Never refused for its content.
    pub fn from_bytes(body: Bytes) -> Payload {
        // Most bytes that are not JSON are told by their first byte, without
        // a parser (whose error allocates).
        let first = body.iter().find(|byte| !b" \t\r\n".contains(byte));
        let json = first
            .is_some_and(|byte| matches!(byte, b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'))
            && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok()
            && check_json_depth(&body).is_ok();
        Payload {
            retained: body.len(),
            body,
            json,
        }
    }

    /// Wraps JSON that a parser has already validated, such as a
    /// `serde_json::value::RawValue` read out of `frame`, after checking its
    /// depth. When the text lies inside `frame` and the rest of the frame
    /// is small (at most [`SHARING_SLACK`] bytes, or the payload's own
    /// size), the payload shares the frame's memory instead of copying, and
    /// counts the whole frame as its size. A small payload in a large frame
    /// (one message of a batch, a value padded with whitespace) is copied,
    /// so it never keeps the rest alive.
    pub fn from_validated_json(frame: &Bytes, json: &str) -> Result<Payload, PayloadError> {
        check_json_depth(json.as_bytes())?;
        let frame_range = frame.as_ptr_range();
        let json_range = json.as_bytes().as_ptr_range();
        let inside = frame_range.start <= json_range.start && json_range.end <= frame_range.end;
        let rest = frame.len() - json.len().min(frame.len());
        if inside && rest <= json.len().max(SHARING_SLACK) {
            Ok(Payload {
                body: frame.slice_ref(json.as_bytes()),
                json: true,
                retained: frame.len(),
            })
        } else {
            Ok(Payload {
                body: Bytes::copy_from_slice(json.as_bytes()),
                json: true,
                retained: json.len(),
            })
        }
    }

    /// Converts one MessagePack value to its JSON form. Binary strings become
    /// arrays of numbers; maps need string keys. Values JSON cannot carry
    /// are refused rather than changed: NaN and infinite floats (JSON would
    /// turn them into `null`) and nesting beyond what a payload may have.
    pub fn from_msgpack(msgpack: &[u8]) -> Result<Payload, PayloadError> {
        if msgpack_value_len(msgpack)? != msgpack.len() {
            return Err(PayloadError::InvalidMsgPack {
                reason: "trailing bytes after the value".to_owned(),
            });
        }
        let mut json = Vec::with_capacity(msgpack.len() + msgpack.len() / 4 + 8);
        let mut reader = rmp_serde::Deserializer::new(msgpack);
        let mut writer = serde_json::Serializer::new(&mut json);
        serde_transcode::transcode(&mut reader, &mut writer).map_err(|error| {
            PayloadError::InvalidMsgPack {
                reason: error.to_string(),
            }
        })?;
        let retained = json.capacity();
        Ok(Payload {
            body: Bytes::from(json),
            json: true,
            retained,
        })
    }

    /// The payload's bytes: JSON text when [`Payload::is_json`].
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether the payload is one JSON value (every payload from a JSON
    /// transport is; a NATS client's may not be).
    pub fn is_json(&self) -> bool {
        self.json
    }

    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The memory this payload keeps alive, which limits count.
    pub fn retained_size(&self) -> usize {
        self.retained
    }

    /// Appends the MessagePack form of this payload to `out`: the JSON value
    /// transcoded, or bytes that are not JSON as a MessagePack `bin`.
    pub fn write_msgpack(&self, out: &mut Vec<u8>) {
        if !self.json {
            rmp::encode::write_bin(out, &self.body).expect("writing to a Vec cannot fail");
            return;
        }
        let mut reader = serde_json::Deserializer::from_slice(&self.body);
        let mut writer = rmp_serde::Serializer::new(&mut *out);
        // Validated JSON always has a MessagePack form; should that ever be
        // wrong, the subscriber gets `nil` rather than a broken frame.
        if serde_transcode::transcode(&mut reader, &mut writer).is_err() {
            debug_assert!(false, "validated JSON failed to transcode");
            rmp::encode::write_nil(out).expect("writing to a Vec cannot fail");
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.json == other.json && self.body == other.body
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.json {
            write!(f, "Payload({})", String::from_utf8_lossy(&self.body))
        } else {
            write!(f, "Payload(bytes {:?})", self.body)
        }
    }
}

/// Refuses valid JSON nested deeper than [`MAX_PAYLOAD_DEPTH`]. A linear
/// scan: brackets count unless they are inside a string.
fn check_json_depth(json: &[u8]) -> Result<(), PayloadError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_PAYLOAD_DEPTH {
                    return Err(PayloadError::TooDeep {
                        max: MAX_PAYLOAD_DEPTH,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The length in bytes of the MessagePack value at the front of `input`,
/// found by walking it without decoding it (no allocation for a value
/// nested up to eight levels, no UTF-8 check): what a client splitting a
/// `herald.msgpack.batch` frame into its events needs. Refuses what a
/// payload may not hold: NaN and infinite floats, and nesting deeper than
/// a frame may have.
pub fn msgpack_value_len(input: &[u8]) -> Result<usize, PayloadError> {
    walk_msgpack(input, MAX_MSGPACK_FRAME_DEPTH).map_err(|reason| PayloadError::InvalidMsgPack { reason })
}

/// Walks one MessagePack value and returns its length: refuses NaN and
/// infinite floats and nesting deeper than `max_depth`. The element counts
/// still to read at each level are the only state, so a hostile length
/// allocates nothing.
fn walk_msgpack(whole: &[u8], max_depth: usize) -> Result<usize, String> {
    use rmp::Marker;
    let truncated = || "truncated MessagePack value".to_owned();
    let mut input = whole;
    let mut pending: smallvec::SmallVec<[u64; 8]> = smallvec::smallvec![1];
    while let Some(remaining) = pending.last_mut() {
        if *remaining == 0 {
            pending.pop();
            continue;
        }
        *remaining -= 1;
        let marker = rmp::decode::read_marker(&mut input).map_err(|_| truncated())?;
        let mut take = |count: usize| -> Result<&[u8], String> {
            if input.len() < count {
                return Err(truncated());
            }
            let (taken, rest) = input.split_at(count);
            input = rest;
            Ok(taken)
        };
        let mut length = |width: usize| -> Result<usize, String> {
            let bytes = take(width)?;
            Ok(bytes
                .iter()
                .fold(0usize, |length, &byte| (length << 8) | usize::from(byte)))
        };
        let (skip, children) = match marker {
            Marker::F32 => {
                let bytes: [u8; 4] = take(4)?.try_into().expect("4 bytes");
                if !f32::from_be_bytes(bytes).is_finite() {
                    return Err("NaN and infinite floats have no JSON form".to_owned());
                }
                (0, 0)
            }
            Marker::F64 => {
                let bytes: [u8; 8] = take(8)?.try_into().expect("8 bytes");
                if !f64::from_be_bytes(bytes).is_finite() {
                    return Err("NaN and infinite floats have no JSON form".to_owned());
                }
                (0, 0)
            }
            Marker::FixArray(count) => (0, u64::from(count)),
            Marker::Array16 => (0, length(2)? as u64),
            Marker::Array32 => (0, length(4)? as u64),
            Marker::FixMap(count) => (0, 2 * u64::from(count)),
            Marker::Map16 => (0, 2 * length(2)? as u64),
            Marker::Map32 => (0, 2 * length(4)? as u64),
            Marker::FixStr(count) => (usize::from(count), 0),
            Marker::Str8 | Marker::Bin8 => (length(1)?, 0),
            Marker::Str16 | Marker::Bin16 => (length(2)?, 0),
            Marker::Str32 | Marker::Bin32 => (length(4)?, 0),
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 => (4, 0),
            Marker::U64 | Marker::I64 => (8, 0),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (length(1)? + 1, 0),
            Marker::Ext16 => (length(2)? + 1, 0),
            Marker::Ext32 => (length(4)? + 1, 0),
            Marker::Null | Marker::True | Marker::False | Marker::FixPos(_) | Marker::FixNeg(_) => (0, 0),
            Marker::Reserved => return Err("reserved MessagePack marker 0xc1".to_owned()),
        };
        take(skip)?;
        if children > 0 {
            if pending.len() > max_depth {
                return Err(format!("nested deeper than {max_depth} levels"));
            }
            pending.push(children);
        }
    }
    Ok(whole.len() - input.len())
}

/// NATS message headers: the header block exactly as a NATS client sent
/// it (`NATS/1.0\r\nKey: Value\r\n...\r\n\r\n`), checked once, so a NATS
/// subscriber gets it byte for byte and JSON subscribers get it as a map.
#[derive(Clone, PartialEq, Eq)]
pub struct Headers(Bytes);

/// Why a header block was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeadersError {
    #[error("a header block starts with NATS/1.0")]
    Version,
    #[error("a header block ends with an empty line (CRLF CRLF)")]
    Unterminated,
    #[error("headers are UTF-8 text")]
    NotUtf8,
    #[error("a header line is `Name: value`: {line:?}")]
    Line { line: String },
}

impl Headers {
    /// Checks a NATS header block: the version line (with an optional
    /// status, as in `NATS/1.0 503`), then `Name: value` lines, then an
    /// empty line.
    pub fn parse(block: Bytes) -> Result<Headers, HeadersError> {
        let text = std::str::from_utf8(&block).map_err(|_| HeadersError::NotUtf8)?;
        let Some(lines) = text.strip_suffix("\r\n\r\n") else {
            return Err(HeadersError::Unterminated);
        };
        let mut lines = lines.split("\r\n");
        let version = lines.next().unwrap_or_default();
        if version != "NATS/1.0" && !version.starts_with("NATS/1.0 ") {
            return Err(HeadersError::Version);
        }
        for line in lines {
            let valid = line
                .split_once(':')
                .is_some_and(|(name, _)| !name.is_empty() && !name.contains([' ', '\t']));
            if !valid {
                return Err(HeadersError::Line {
                    line: line.to_owned(),
                });
            }
        }
        Ok(Headers(block))
    }

    /// A header block holding these headers, in order.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Headers, HeadersError> {
        let mut block = String::from("NATS/1.0\r\n");
        for (name, value) in pairs {
            if value.contains(['\r', '\n']) {
                return Err(HeadersError::Line {
                    line: format!("{name}: {value}"),
                });
            }
            block.push_str(name);
            block.push_str(": ");
            block.push_str(value);
            block.push_str("\r\n");
        }
        block.push_str("\r\n");
        Headers::parse(Bytes::from(block))
    }

    /// The block as it goes on a NATS wire.
    pub fn block(&self) -> &Bytes {
        &self.0
    }

    /// The status of the version line (`503` in `NATS/1.0 503`), if any.
    pub fn status(&self) -> Option<&str> {
        let text = self.text();
        let version = &text[..text.find("\r\n").unwrap_or(text.len())];
        version
            .strip_prefix("NATS/1.0 ")
            .map(|rest| rest.split(' ').next().unwrap_or(rest))
            .filter(|status| !status.is_empty())
    }

    /// Each header's name and value (trimmed), in order; a name may repeat.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.text()
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name, value.trim()))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked in parse")
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Headers({:?})", self.text())
    }
}

/// What a message may carry besides its subject and payload; NATS clients
/// use both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub headers: Option<Headers>,
    /// Where a responder answers a request.
    pub reply: Option<Subject>,
}

impl Envelope {
    /// The bytes it adds to a message.
    pub fn len(&self) -> usize {
        self.headers.as_ref().map_or(0, |headers| headers.block().len())
            + self.reply.as_ref().map_or(0, |reply| reply.as_str().len())
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_none() && self.reply.is_none()
    }

    /// The bytes of its headers, which count against the payload limit as
    /// they do on NATS.
    pub fn headers_len(&self) -> usize {
        self.headers.as_ref().map_or(0, |headers| headers.block().len())
    }
}

/// A published message. Cloning is a reference-count increment.
#[derive(Clone)]
pub struct Message(Arc<MessageInner>);

struct MessageInner {
    subject: Subject,
    position: Position,
    /// When it was published, in milliseconds since the Unix epoch by the
    /// broker's clock: history ages by it and clients receive it as `ts`.
    published_at_millis: u64,
    payload: Payload,
    envelope: Envelope,
    /// [`Message::size`], computed once: every queue it is offered to
    /// reads it.
    size: usize,
    /// Encoded frames, one slot per wire encoding, filled on demand.
    frames: [OnceLock<Bytes>; FRAME_SLOTS],
    /// A transport's own form of the frame, one slot per wire encoding,
    /// filled on demand ([`Message::transport_frame`]). Held here, not
    /// boxed: every recipient reads it, each from a cold cache once many
    /// messages are in flight, and a box is one more pointer to follow.
    transport_frames: [OnceLock<Bytes>; FRAME_SLOTS],
}

impl Message {
    pub fn new(subject: Subject, position: Position, published_at_millis: u64, payload: Payload) -> Message {
        Message::with_envelope(
            subject,
            position,
            published_at_millis,
            payload,
            Envelope::default(),
        )
    }

    pub fn with_envelope(
        subject: Subject,
        position: Position,
        published_at_millis: u64,
        payload: Payload,
        envelope: Envelope,
    ) -> Message {
        let size = payload.retained_size() + subject.as_str().len() + envelope.len();
        Message(Arc::new(MessageInner {
            subject,
            position,
            published_at_millis,
            payload,
            envelope,
            size,
            frames: Default::default(),
            transport_frames: Default::default(),
        }))
    }

    pub fn subject(&self) -> &Subject {
        &self.0.subject
    }

    pub fn position(&self) -> Position {
        self.0.position
    }

    pub fn sequence(&self) -> u64 {
        self.0.position.sequence
    }

    pub fn payload(&self) -> &Payload {
        &self.0.payload
    }

    /// Milliseconds since the Unix epoch at publish time.
    pub fn published_at_millis(&self) -> u64 {
        self.0.published_at_millis
    }

    pub fn envelope(&self) -> &Envelope {
        &self.0.envelope
    }

    pub fn headers(&self) -> Option<&Headers> {
        self.0.envelope.headers.as_ref()
    }

    pub fn reply(&self) -> Option<&Subject> {
        self.0.envelope.reply.as_ref()
    }

    /// What the message weighs against a subscriber's byte limit and the
    /// history's budget: the memory its payload keeps alive, its subject,
    /// headers and reply subject.
    pub fn size(&self) -> usize {
        self.0.size
    }

    /// The message's frame for `encoding` in a transport's own form (a
    /// complete WebSocket frame), made by `make` for the first recipient
    /// and kept: every other recipient borrows it, so no per-recipient
    /// work is repeated, not even a reference count. One transport per
    /// encoding asks in practice (the broker does not know which).
    pub fn transport_frame(
        &self,
        encoding: crate::protocol::Encoding,
        make: impl FnOnce(&Message) -> Bytes,
    ) -> &Bytes {
        self.0.transport_frames[encoding.index()].get_or_init(|| make(self))
    }

    /// The frame cached in `slot`, encoded by `encode` the first time.
    pub(crate) fn cached_frame(&self, slot: usize, encode: impl FnOnce(&Message) -> Bytes) -> &Bytes {
        self.0.frames[slot].get_or_init(|| encode(self))
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("subject", &self.0.subject)
            .field("position", &self.0.position)
            .field("payload", &self.0.payload)
            .field("envelope", &self.0.envelope)
            .finish()
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.0.position == other.0.position && self.0.subject == other.0.subject
    }
}

impl Eq for Message {}
