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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn forwarded(echo_key: Option<u64>) -> Forwarded {
        Forwarded {
            subject: Subject::parse("chat.a", &SubjectLimits::default()).unwrap(),
            payload: Payload::from_bytes(Bytes::from_static(br#"{"n":1}"#)),
            envelope: Envelope {
                headers: Some(Headers::from_pairs([("Trace", "abc")]).unwrap()),
                reply: Some(Subject::parse("_INBOX.x", &SubjectLimits::default()).unwrap()),
            },
            echo_key,
        }
    }

    fn as_received(headers: HeaderMap, payload: Bytes) -> async_nats::Message {
        async_nats::Message {
            subject: "herald.chat.a".into(),
            reply: None,
            payload,
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn a_message_reads_back_as_it_was_published_without_herald_s_headers() {
        let (headers, payload) = write(&forwarded(Some(7)), "node-a", 42);
        assert_eq!(headers.get(MESSAGE_ID).unwrap().as_str(), "node-a-42");
        assert_eq!(
            payload,
            Bytes::from_static(br#"{"n":1}"#),
            "the payload is the JSON text, unchanged"
        );
        let read = super::read(&as_received(headers, payload), "node-a");
        assert!(read.payload.is_json());
        assert_eq!(
            read.echo_key,
            Some(7),
            "the publishing node gets its echo key back"
        );
        assert_eq!(read.envelope.reply.unwrap().as_str(), "_INBOX.x");
        let own: Vec<_> = read
            .envelope
            .headers
            .as_ref()
            .unwrap()
            .pairs()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            own,
            [("Trace".to_owned(), "abc".to_owned())],
            "only the publisher's headers remain"
        );
    }

    #[test]
    fn another_node_s_echo_key_means_nothing_here() {
        let (headers, payload) = write(&forwarded(Some(7)), "node-a", 1);
        assert_eq!(
            super::read(&as_received(headers, payload), "node-b").echo_key,
            None
        );
    }

    #[test]
    fn an_invalid_reply_subject_from_a_foreign_publisher_is_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(REPLY, "bad..subject");
        let read = super::read(&as_received(headers, Bytes::from_static(b"x")), "node-a");
        assert!(read.envelope.reply.is_none());
        assert!(!read.payload.is_json());
    }
}
