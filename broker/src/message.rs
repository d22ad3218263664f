//! Published messages, shared by every subscriber and the history.
//!
//! A [`Message`] is one reference-counted allocation per publish. Its payload
//! is validated JSON held as [`Bytes`] (often a slice of the very frame the
//! publisher sent). It carries a cache of its encoded frames, one slot per
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
    /// When it was published, in milliseconds since the Unix epoch by the
    /// broker's clock: history ages by it and clients receive it as `ts`.
    published_at_millis: u64,
    payload: Payload,
    /// Encoded frames, one slot per wire encoding, filled on demand.
    frames: [OnceLock<Bytes>; FRAME_SLOTS],
}

impl Message {
    pub fn new(subject: Subject, position: Position, published_at_millis: u64, payload: Payload) -> Message {
        Message(Arc::new(MessageInner {
            subject,
            position,
            published_at_millis,
            payload,
            frames: Default::default(),
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

    /// What the message weighs against a subscriber's byte limit.
    pub fn size(&self) -> usize {
        self.0.payload.len() + self.0.subject.as_str().len()
    }

    /// The frame cached in `slot`, encoded by `encode` the first time.
    pub(crate) fn cached_frame(&self, slot: usize, encode: impl FnOnce(&Message) -> Bytes) -> Bytes {
        self.0.frames[slot].get_or_init(|| encode(self)).clone()
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
