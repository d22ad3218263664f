//! The client half of the NATS protocol: bytes in, operations out.
//!
//! Operations are lines (`SUB orders.* 1\r\n`); `PUB` and `HPUB` are a
//! line and then exactly as many bytes as the line announced, then CRLF.
//! The parser takes whole operations off the front of a read buffer and
//! leaves a partial one there for the next read. A line is never longer than
//! `max_control_line`, a payload never larger than `max_payload`: both are
//! checked before anything is buffered past them, so a client cannot make
//! the server hold more than the limits whatever it sends.

use bytes::{Buf, Bytes, BytesMut};

/// One operation from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// `CONNECT {json}`: the options, unparsed.
    Connect(Bytes),
    /// `PUB`, or `HPUB` when `headers` is there: the header block and the
    /// payload, each exactly as sent.
    Pub {
        subject: String,
        reply: Option<String>,
        headers: Option<Bytes>,
        payload: Bytes,
    },
    Sub {
        subject: String,
        queue: Option<String>,
        sid: String,
    },
    Unsub {
        sid: String,
        max_msgs: Option<u64>,
    },
    Ping,
    Pong,
}

/// Why the input is not the NATS protocol. Every one of them ends the
/// connection, as it does on nats-server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Unknown Protocol Operation")]
    UnknownOperation,
    #[error("Maximum Control Line Exceeded")]
    ControlLineTooLong,
    #[error("Maximum Payload Violation")]
    PayloadTooLarge,
    /// A known operation with arguments that do not fit it.
    #[error("Parser Error")]
    Malformed,
}

/// Limits the parser holds a client to.
#[derive(Debug, Clone, Copy)]
pub struct ParserLimits {
    pub max_control_line: usize,
    /// Largest payload, headers included.
    pub max_payload: usize,
}

/// Takes the next whole operation off the front of `buffer`; `Ok(None)`
/// when more bytes are needed (nothing is consumed then).
pub fn parse(buffer: &mut BytesMut, limits: &ParserLimits) -> Result<Option<ClientOp>, ParseError> {
    let Some(end) = buffer
        .iter()
        .take(limits.max_control_line + 2)
        .position(|&b| b == b'\n')
    else {
        return if buffer.len() > limits.max_control_line + 1 {
            Err(ParseError::ControlLineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buffer[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > limits.max_control_line {
        return Err(ParseError::ControlLineTooLong);
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::UnknownOperation)?;
    let (verb, rest) = match line.find([' ', '\t']) {
        Some(at) => (&line[..at], line[at..].trim_start_matches([' ', '\t'])),
        None => (line, ""),
    };
    let arguments: Vec<&str> = rest.split([' ', '\t']).filter(|part| !part.is_empty()).collect();
    let op = match verb.to_ascii_uppercase().as_str() {
        "PING" if arguments.is_empty() => ClientOp::Ping,
        "PONG" if arguments.is_empty() => ClientOp::Pong,
        "PING" | "PONG" => return Err(ParseError::Malformed),
        "CONNECT" => {
            if rest.is_empty() {
                return Err(ParseError::Malformed);
            }
            let json = Bytes::copy_from_slice(rest.trim_end().as_bytes());
            ClientOp::Connect(json)
        }
        "SUB" => match arguments[..] {
            [subject, sid] => ClientOp::Sub {
                subject: subject.to_owned(),
                queue: None,
                sid: sid.to_owned(),
            },
            [subject, queue, sid] => ClientOp::Sub {
                subject: subject.to_owned(),
                queue: Some(queue.to_owned()),
                sid: sid.to_owned(),
            },
            _ => return Err(ParseError::Malformed),
        },
        "UNSUB" => match arguments[..] {
            [sid] => ClientOp::Unsub {
                sid: sid.to_owned(),
                max_msgs: None,
            },
            [sid, max] => ClientOp::Unsub {
                sid: sid.to_owned(),
                max_msgs: Some(number(max)?),
            },
            _ => return Err(ParseError::Malformed),
        },
        "PUB" => {
            let (subject, reply, size) = match arguments[..] {
                [subject, size] => (subject, None, number(size)?),
                [subject, reply, size] => (subject, Some(reply), number(size)?),
                _ => return Err(ParseError::Malformed),
            };
            let (subject, reply) = (subject.to_owned(), reply.map(str::to_owned));
            return take_payload(buffer, end, limits, subject, reply, None, size);
        }
        "HPUB" => {
            let (subject, reply, header_size, size) = match arguments[..] {
                [subject, headers, size] => (subject, None, number(headers)?, number(size)?),
                [subject, reply, headers, size] => (subject, Some(reply), number(headers)?, number(size)?),
                _ => return Err(ParseError::Malformed),
            };
            if header_size > size {
                return Err(ParseError::Malformed);
            }
            let (subject, reply) = (subject.to_owned(), reply.map(str::to_owned));
            return take_payload(buffer, end, limits, subject, reply, Some(header_size), size);
        }
        _ => return Err(ParseError::UnknownOperation),
    };
    buffer.advance(end + 1);
    Ok(Some(op))
}

/// A `PUB`/`HPUB` whose line ends at `line_end`: waits for its `size`
/// bytes and the CRLF after them, then takes the whole operation.
fn take_payload(
    buffer: &mut BytesMut,
    line_end: usize,
    limits: &ParserLimits,
    subject: String,
    reply: Option<String>,
    header_size: Option<u64>,
    size: u64,
) -> Result<Option<ClientOp>, ParseError> {
    if size > limits.max_payload as u64 {
        return Err(ParseError::PayloadTooLarge);
    }
    let size = size as usize;
    let start = line_end + 1;
    if buffer.len() < start + size + 2 {
        // Room for the rest, so the next reads do not reallocate piecemeal.
        buffer.reserve(start + size + 2 - buffer.len());
        return Ok(None);
    }
    if &buffer[start + size..start + size + 2] != b"\r\n" {
        return Err(ParseError::Malformed);
    }
    buffer.advance(start);
    // Copied out: a small message must not keep the whole read buffer
    // alive for as long as history holds it.
    let body = Bytes::copy_from_slice(&buffer[..size]);
    buffer.advance(size + 2);
    let (headers, payload) = match header_size {
        Some(header_size) => {
            let header_size = header_size as usize;
            (Some(body.slice(..header_size)), body.slice(header_size..))
        }
        None => (None, body),
    };
    Ok(Some(ClientOp::Pub {
        subject,
        reply,
        headers,
        payload,
    }))
}

/// A size or count: decimal digits only.
fn number(text: &str) -> Result<u64, ParseError> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Malformed);
    }
    text.parse().map_err(|_| ParseError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParserLimits = ParserLimits {
        max_control_line: 64,
        max_payload: 16,
    };

    fn all(input: &[u8]) -> Result<Vec<ClientOp>, ParseError> {
        let mut buffer = BytesMut::from(input);
        let mut ops = Vec::new();
        while let Some(op) = parse(&mut buffer, &LIMITS)? {
            ops.push(op);
        }
        assert!(buffer.is_empty(), "left over: {buffer:?}");
        Ok(ops)
    }

    #[test]
    fn every_operation_parses_in_any_case_and_spacing() {
        let ops = all(b"ping\r\nPONG\nSUB a.* 1\r\nsub  a.>\tq  22\r\nUNSUB 1\r\nunsub 22 5\r\nPUB a.b 2\r\nhi\r\npub a.b _INBOX.x 0\r\n\r\nHPUB a.b 12 14\r\nNATS/1.0\r\n\r\nok\r\n").unwrap();
        assert_eq!(ops.len(), 9);
        assert_eq!(ops[0], ClientOp::Ping);
        assert_eq!(ops[1], ClientOp::Pong);
        assert_eq!(
            ops[3],
            ClientOp::Sub {
                subject: "a.>".into(),
                queue: Some("q".into()),
                sid: "22".into()
            }
        );
        assert_eq!(
            ops[5],
            ClientOp::Unsub {
                sid: "22".into(),
                max_msgs: Some(5)
            }
        );
        assert_eq!(
            ops[7],
            ClientOp::Pub {
                subject: "a.b".into(),
                reply: Some("_INBOX.x".into()),
                headers: None,
                payload: Bytes::new()
            }
        );
        let ClientOp::Pub { headers, payload, .. } = &ops[8] else {
            panic!("HPUB")
        };
        assert_eq!(headers.as_deref(), Some(&b"NATS/1.0\r\n\r\n"[..]));
        assert_eq!(&payload[..], b"ok");
    }

    #[test]
    fn a_split_operation_waits_for_the_rest() {
        let input = b"PUB a 5\r\nhello\r\nPING\r\n";
        for cut in 0..input.len() {
            let mut buffer = BytesMut::from(&input[..cut]);
            let mut ops = Vec::new();
            while let Some(op) = parse(&mut buffer, &LIMITS).unwrap() {
                ops.push(op);
            }
            buffer.extend_from_slice(&input[cut..]);
            while let Some(op) = parse(&mut buffer, &LIMITS).unwrap() {
                ops.push(op);
            }
            assert_eq!(ops.len(), 2, "cut at {cut}");
        }
    }

    #[test]
    fn bad_input_gets_the_nats_error() {
        let cases: [(&[u8], ParseError); 9] = [
            (b"HELLO\r\n", ParseError::UnknownOperation),
            (b"PUB a\r\n", ParseError::Malformed),
            (b"PUB a -1\r\n", ParseError::Malformed),
            (b"PUB a 2\r\nhiX\r\n", ParseError::Malformed),
            (b"PUB a 17\r\n", ParseError::PayloadTooLarge),
            (b"HPUB a 20 10\r\n", ParseError::Malformed),
            (b"SUB a\r\n", ParseError::Malformed),
            (b"PING now\r\n", ParseError::Malformed),
            (b"\xff\xfe\r\n", ParseError::UnknownOperation),
        ];
        for (input, expected) in cases {
            assert_eq!(all(input), Err(expected), "{input:?}");
        }
        let long = format!("SUB {} 1\r\n", "a".repeat(80));
        assert_eq!(all(long.as_bytes()), Err(ParseError::ControlLineTooLong));
        // Without a line end, the limit applies as soon as it is passed.
        let mut endless = BytesMut::from(&[b'x'; 70][..]);
        assert_eq!(parse(&mut endless, &LIMITS), Err(ParseError::ControlLineTooLong));
        assert_eq!(
            ParseError::PayloadTooLarge.to_string(),
            "Maximum Payload Violation"
        );
    }
}
