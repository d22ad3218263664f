//! Published messages, shared by every subscriber and the history.
//!
//! A [`Message`] is one reference-counted allocation per publish. Its payload
//! is validated JSON held as [`Bytes`] (often a slice of the very frame the
//! publisher sent). The `msg` event each wire encoding sends is built at most
//! once per message, on first demand, and then shared by every recipient of
//! that encoding: fan-out to ten thousand subscribers encodes once.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use thiserror::Error;

use crate::position::Position;
use crate::protocol::Encoding;
use crate::subject::Subject;

/// A message payload: one JSON value, already validated.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Bytes);

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    #[error("payload is not valid JSON: {reason}")]
    InvalidJson { reason: String },
    #[error("payload is not a MessagePack value that JSON can carry: {reason}")]
    InvalidMsgPack { reason: String },
    #[error("payload is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
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
    /// Validates `json` as exactly one JSON value.
    pub fn from_json(json: Bytes) -> Result<Payload, PayloadError> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&json).map_err(|error| {
            PayloadError::InvalidJson {
                reason: error.to_string(),
            }
        })?;
        Ok(Payload(json))
    }

    /// Wraps JSON that a parser has already validated, such as a
    /// `serde_json::value::RawValue` read out of `frame`: when the text lies
    /// inside `frame`, the payload shares its memory instead of copying.
    pub fn from_validated_json(frame: &Bytes, json: &str) -> Payload {
        let frame_range = frame.as_ptr_range();
        let json_range = json.as_bytes().as_ptr_range();
        if frame_range.start <= json_range.start && json_range.end <= frame_range.end {
            Payload(frame.slice_ref(json.as_bytes()))
        } else {
            Payload(Bytes::copy_from_slice(json.as_bytes()))
        }
    }

    /// Converts one MessagePack value to its JSON form. Binary strings become
    /// arrays of numbers; maps need string keys.
    pub fn from_msgpack(msgpack: &[u8]) -> Result<Payload, PayloadError> {
        let mut json = Vec::with_capacity(msgpack.len() + msgpack.len() / 4 + 8);
        let mut reader = rmp_serde::Deserializer::new(msgpack);
        let mut writer = serde_json::Serializer::new(&mut json);
        serde_transcode::transcode(&mut reader, &mut writer).map_err(|error| {
            PayloadError::InvalidMsgPack {
                reason: error.to_string(),
            }
        })?;
        if !reader.get_ref().is_empty() {
            return Err(PayloadError::InvalidMsgPack {
                reason: "trailing bytes after the value".to_owned(),
            });
        }
        Ok(Payload(Bytes::from(json)))
    }

    pub fn json(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends the MessagePack form of this payload to `out`.
    pub fn write_msgpack(&self, out: &mut Vec<u8>) {
        let mut reader = serde_json::Deserializer::from_slice(&self.0);
        let mut writer = rmp_serde::Serializer::new(&mut *out);
        // Validated JSON always has a MessagePack form; should that ever be
        // wrong, the subscriber gets `nil` rather than a broken frame.
        if serde_transcode::transcode(&mut reader, &mut writer).is_err() {
            debug_assert!(false, "validated JSON failed to transcode");
            rmp::encode::write_nil(out).expect("writing to a Vec cannot fail");
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({})", String::from_utf8_lossy(&self.0))
    }
}

/// A published message. Cloning is a reference-count increment.
#[derive(Clone)]
pub struct Message(Arc<MessageInner>);

struct MessageInner {
    subject: Subject,
    position: Position,
    /// When it was published, by the broker's clock; history ages by it.
    published_at_millis: u64,
    payload: Payload,
    /// The encoded `msg` event, one slot per [`Encoding`], filled on demand.
    frames: [OnceLock<Bytes>; Encoding::COUNT],
}

impl Message {
    pub fn new(subject: Subject, position: Position, published_at_millis: u64, payload: Payload) -> Message {
        Message(Arc::new(MessageInner {
            subject,
            position,
            published_at_millis,
            payload,
            frames: [OnceLock::new(), OnceLock::new()],
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

    pub fn published_at_millis(&self) -> u64 {
        self.0.published_at_millis
    }

    /// What the message weighs against a subscriber's byte limit.
    pub fn size(&self) -> usize {
        self.0.payload.len() + self.0.subject.as_str().len()
    }

    /// The `msg` event for `encoding`, encoded once and shared afterwards.
    pub fn frame(&self, encoding: Encoding) -> Bytes {
        self.0.frames[encoding.index()]
            .get_or_init(|| self.encode_frame(encoding))
            .clone()
    }

    fn encode_frame(&self, encoding: Encoding) -> Bytes {
        let inner = &*self.0;
        let token = inner.position.token();
        match encoding {
            Encoding::Json => {
                let mut out = Vec::with_capacity(inner.payload.len() + inner.subject.as_str().len() + 64);
                out.extend_from_slice(br#"{"op":"msg","subject":"#);
                serde_json::to_writer(&mut out, inner.subject.as_str())
                    .expect("writing to a Vec cannot fail");
                out.extend_from_slice(br#","pos":""#);
                out.extend_from_slice(token.as_str().as_bytes());
                out.extend_from_slice(br#"","data":"#);
                out.extend_from_slice(inner.payload.json());
                out.push(b'}');
                Bytes::from(out)
            }
            Encoding::MsgPack => {
                let mut out = Vec::with_capacity(inner.payload.len() + inner.subject.as_str().len() + 48);
                write_msgpack_str_pairs(
                    &mut out,
                    4,
                    &[
                        ("op", "msg"),
                        ("subject", inner.subject.as_str()),
                        ("pos", token.as_str()),
                    ],
                );
                rmp::encode::write_str(&mut out, "data").expect("writing to a Vec cannot fail");
                inner.payload.write_msgpack(&mut out);
                Bytes::from(out)
            }
        }
    }
}

/// Writes a map header for `map_len` entries followed by string pairs.
fn write_msgpack_str_pairs(out: &mut Vec<u8>, map_len: u32, pairs: &[(&str, &str)]) {
    rmp::encode::write_map_len(out, map_len).expect("writing to a Vec cannot fail");
    for (key, value) in pairs {
        rmp::encode::write_str(out, key).expect("writing to a Vec cannot fail");
        rmp::encode::write_str(out, value).expect("writing to a Vec cannot fail");
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("subject", &self.0.subject)
            .field("position", &self.0.position)
            .field("payload", &self.0.payload)
            .finish()
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.0.position == other.0.position && self.0.subject == other.0.subject
    }
}

impl Eq for Message {}
