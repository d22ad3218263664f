//! A Herald message as a NATS message on the cluster, and back.
//!
//! The payload is the message's bytes, unchanged: a NATS client on the
//! cluster reads a JSON publish as its JSON text. The publisher's own NATS
//! headers travel as they are, next to Herald's, which a node removes
//! before delivering:
//!
//! | header | carries |
//! |---|---|
//! | `Nats-Msg-Id` | `<node>-<n>`: JetStream stores a resent publish once |
//! | `Herald-Node` | the publishing node's name |
//! | `Herald-Echo` | the publishing connection's key, when it asked not to get its own message back |
//! | `Herald-Reply` | the reply subject (JetStream keeps no reply subject of its own) |

use async_nats::HeaderMap;
use bytes::Bytes;
use herald_broker::{Envelope, Forwarded, Headers, Payload, Subject, SubjectLimits};

pub const MESSAGE_ID: &str = "Nats-Msg-Id";
pub const NODE: &str = "Herald-Node";
pub const ECHO: &str = "Herald-Echo";
pub const REPLY: &str = "Herald-Reply";

/// The headers and payload `message` is published with.
pub fn write(message: &Forwarded, node: &str, id: u64) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    if let Some(own) = &message.envelope.headers {
        for (name, value) in own.pairs() {
            headers.append(name, value);
        }
    }
    headers.insert(MESSAGE_ID, format!("{node}-{id}"));
    headers.insert(NODE, node);
    if let Some(key) = message.echo_key {
        headers.insert(ECHO, key.to_string());
    }
    if let Some(reply) = &message.envelope.reply {
        headers.insert(REPLY, reply.as_str());
    }
    (headers, message.payload.body().clone())
}

/// A message read off the stream.
#[derive(Debug)]
pub struct Read {
    pub payload: Payload,
    pub envelope: Envelope,
    /// The publishing connection's key, when this node published it.
    pub echo_key: Option<u64>,
}

/// Reads a stream message; `node` is this node's name (an echo key only
/// means something to the node that made it).
pub fn read(message: &async_nats::Message, node: &str) -> Read {
    let mut read = Read {
        payload: Payload::from_bytes(message.payload.clone()),
        envelope: Envelope::default(),
        echo_key: None,
    };
    let Some(headers) = &message.headers else {
        return read;
    };
    let from_here = headers.get(NODE).is_some_and(|name| name.as_str() == node);
    if from_here {
        read.echo_key = headers.get(ECHO).and_then(|key| key.as_str().parse().ok());
    }
    // Anyone on the cluster may publish: a reply subject is checked again.
    read.envelope.reply = headers
        .get(REPLY)
        .and_then(|reply| Subject::parse(reply.as_str(), &SubjectLimits::default()).ok());
    let own: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(name, _)| ![MESSAGE_ID, NODE, ECHO, REPLY].contains(&name.as_ref()))
        .flat_map(|(name, values)| values.iter().map(move |value| (name.as_ref(), value.as_str())))
        .collect();
    if !own.is_empty() {
        read.envelope.headers = Headers::from_pairs(own).ok();
    }
    read
}
