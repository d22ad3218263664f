//! The client half of the NATS protocol: bytes in, operations out.
//!
//! Operations are lines (`SUB orders.* 1\r\n`); `PUB` and `HPUB` are a
//! line and then exactly as many bytes as the line announced, then CRLF.
//! [`parse`] reads the first whole operation at the front of a read buffer
//! without copying or allocating: the operation borrows the buffer, and the
//! caller handles it, then drops the bytes it took. A partial operation is
//! left for the next read. A line is never longer than `max_control_line`,
//! a payload never larger than `max_payload`: both are checked before
//! anything past them is waited for, so a client cannot make the server
//! hold more than the limits whatever it sends.

/// One operation from a client, borrowed from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// `CONNECT {json}`: the options, unparsed.
    Connect(&'a [u8]),
    /// `PUB`, or `HPUB` when `headers` is there: the header block and the
    /// payload, each exactly as sent.
    Pub {
        subject: &'a str,
        reply: Option<&'a str>,
        headers: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    Sub {
        subject: &'a str,
        queue: Option<&'a str>,
        sid: &'a str,
    },
    Unsub {
        sid: &'a str,
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

/// The most arguments any operation has (`HPUB subject reply hdr total`).
const MAX_ARGUMENTS: usize = 4;

/// The operations a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Ping,
    Pong,
    Connect,
    Sub,
    Unsub,
    Pub,
    Hpub,
}

impl Verb {
    /// The operation named by `word`, in any case.
    fn of(word: &[u8]) -> Option<Verb> {
        let mut upper = [0u8; 7];
        let upper = upper.get_mut(..word.len())?;
        for (to, from) in upper.iter_mut().zip(word) {
            *to = from.to_ascii_uppercase();
        }
        Some(match &*upper {
            b"PUB" => Verb::Pub,
            b"HPUB" => Verb::Hpub,
            b"PING" => Verb::Ping,
            b"PONG" => Verb::Pong,
            b"SUB" => Verb::Sub,
            b"UNSUB" => Verb::Unsub,
            b"CONNECT" => Verb::Connect,
            _ => return None,
        })
    }
}

fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// The first whole operation in `input` and how many bytes it took;
/// `Ok(None)` when more bytes are needed.
pub fn parse<'a>(
    input: &'a [u8],
    limits: &ParserLimits,
) -> Result<Option<(ClientOp<'a>, usize)>, ParseError> {
    let window = &input[..input.len().min(limits.max_control_line + 2)];
    let Some(end) = memchr::memchr(b'\n', window) else {
        return if input.len() > limits.max_control_line + 1 {
            Err(ParseError::ControlLineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = &input[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > limits.max_control_line {
        return Err(ParseError::ControlLineTooLong);
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::UnknownOperation)?;
    let verb_end = line.bytes().position(is_blank).unwrap_or(line.len());
    let verb = Verb::of(&line.as_bytes()[..verb_end]).ok_or(ParseError::UnknownOperation)?;
    let rest = line[verb_end..].trim_start_matches([' ', '\t']);
    let mut arguments = [""; MAX_ARGUMENTS];
    let mut count = 0;
    // CONNECT reads `rest` whole; no other operation has more arguments
    // than MAX_ARGUMENTS.
    if verb != Verb::Connect {
        let bytes = rest.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            if is_blank(bytes[at]) {
                at += 1;
                continue;
            }
            let start = at;
            while at < bytes.len() && !is_blank(bytes[at]) {
                at += 1;
            }
            if count == MAX_ARGUMENTS {
                return Err(ParseError::Malformed);
            }
            arguments[count] = &rest[start..at];
            count += 1;
        }
    }
    let arguments = &arguments[..count];
    let taken = end + 1;
    let op = match verb {
        Verb::Ping | Verb::Pong if !arguments.is_empty() => return Err(ParseError::Malformed),
        Verb::Ping => ClientOp::Ping,
        Verb::Pong => ClientOp::Pong,
        Verb::Connect => {
            if rest.is_empty() {
                return Err(ParseError::Malformed);
            }
            ClientOp::Connect(rest.trim_end().as_bytes())
        }
        Verb::Sub => match *arguments {
            [subject, sid] => ClientOp::Sub {
                subject,
                queue: None,
                sid,
            },
            [subject, queue, sid] => ClientOp::Sub {
                subject,
                queue: Some(queue),
                sid,
            },
            _ => return Err(ParseError::Malformed),
        },
        Verb::Unsub => match *arguments {
            [sid] => ClientOp::Unsub { sid, max_msgs: None },
            [sid, max] => ClientOp::Unsub {
                sid,
                max_msgs: Some(number(max)?),
            },
            _ => return Err(ParseError::Malformed),
        },
        Verb::Pub => {
            let (subject, reply, size) = match *arguments {
                [subject, size] => (subject, None, number(size)?),
                [subject, reply, size] => (subject, Some(reply), number(size)?),
                _ => return Err(ParseError::Malformed),
            };
            return with_payload(input, taken, limits, size, |body| ClientOp::Pub {
                subject,
                reply,
                headers: None,
                payload: body,
            });
        }
        Verb::Hpub => {
            let (subject, reply, header_size, size) = match *arguments {
                [subject, headers, size] => (subject, None, number(headers)?, number(size)?),
                [subject, reply, headers, size] => (subject, Some(reply), number(headers)?, number(size)?),
                _ => return Err(ParseError::Malformed),
            };
            if header_size > size {
                return Err(ParseError::Malformed);
            }
            return with_payload(input, taken, limits, size, |body| {
                let (headers, payload) = body.split_at(header_size as usize);
                ClientOp::Pub {
                    subject,
                    reply,
                    headers: Some(headers),
                    payload,
                }
            });
        }
    };
    Ok(Some((op, taken)))
}

/// A `PUB`/`HPUB` whose line took `line` bytes: once its `size` bytes and
/// the CRLF after them are there, the operation `make` builds from them.
fn with_payload<'a>(
    input: &'a [u8],
    line: usize,
    limits: &ParserLimits,
    size: u64,
    make: impl FnOnce(&'a [u8]) -> ClientOp<'a>,
) -> Result<Option<(ClientOp<'a>, usize)>, ParseError> {
    if size > limits.max_payload as u64 {
        return Err(ParseError::PayloadTooLarge);
    }
    let end = line + size as usize;
    if input.len() < end + 2 {
        return Ok(None);
    }
    if &input[end..end + 2] != b"\r\n" {
        return Err(ParseError::Malformed);
    }
    Ok(Some((make(&input[line..end]), end + 2)))
}

/// A size or count: decimal digits only.
fn number(text: &str) -> Result<u64, ParseError> {
    // At most 19 digits: never more than u64::MAX.
    if text.is_empty() || text.len() > 19 {
        return Err(ParseError::Malformed);
    }
    text.bytes().try_fold(0u64, |value, byte| match byte {
        b'0'..=b'9' => Ok(value * 10 + u64::from(byte - b'0')),
        _ => Err(ParseError::Malformed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParserLimits = ParserLimits {
        max_control_line: 64,
        max_payload: 16,
    };

    /// Every operation in `input`, as (debug text, bytes taken).
    fn all(input: &[u8]) -> Result<Vec<String>, ParseError> {
        let mut at = 0;
        let mut ops = Vec::new();
        while let Some((op, taken)) = parse(&input[at..], &LIMITS)? {
            ops.push(format!("{op:?}"));
            at += taken;
        }
        assert_eq!(at, input.len(), "left over: {:?}", &input[at..]);
        Ok(ops)
    }

    #[test]
    fn every_operation_parses_in_any_case_and_spacing() {
        let input = b"ping\r\nPONG\nSUB a.* 1\r\nsub  a.>\tq  22\r\nUNSUB 1\r\nunsub 22 5\r\nPUB a.b 2\r\nhi\r\npub a.b _INBOX.x 0\r\n\r\nHPUB a.b 12 14\r\nNATS/1.0\r\n\r\nok\r\n";
        let mut ops = Vec::new();
        let mut at = 0;
        while let Some((op, taken)) = parse(&input[at..], &LIMITS).unwrap() {
            ops.push(op);
            at += taken;
        }
        assert_eq!(ops.len(), 9);
        assert_eq!(ops[0], ClientOp::Ping);
        assert_eq!(ops[1], ClientOp::Pong);
        assert_eq!(
            ops[3],
            ClientOp::Sub {
                subject: "a.>",
                queue: Some("q"),
                sid: "22"
            }
        );
        assert_eq!(
            ops[5],
            ClientOp::Unsub {
                sid: "22",
                max_msgs: Some(5)
            }
        );
        assert_eq!(
            ops[7],
            ClientOp::Pub {
                subject: "a.b",
                reply: Some("_INBOX.x"),
                headers: None,
                payload: b""
            }
        );
        assert_eq!(
            ops[8],
            ClientOp::Pub {
                subject: "a.b",
                reply: None,
                headers: Some(b"NATS/1.0\r\n\r\n"),
                payload: b"ok"
            }
        );
    }

    #[test]
    fn a_split_operation_waits_for_the_rest() {
        let input = b"PUB a 5\r\nhello\r\nPING\r\n";
        for cut in 0..input.len() {
            let first = parse(&input[..cut], &LIMITS).unwrap();
            let at = match first {
                Some((_, taken)) => taken,
                None => 0,
            };
            let rest = all(&input[at..]).unwrap();
            assert_eq!(usize::from(at > 0) + rest.len(), 2, "cut at {cut}");
        }
    }

    #[test]
    fn bad_input_gets_the_nats_error() {
        let cases: [(&[u8], ParseError); 10] = [
            (b"HELLO\r\n", ParseError::UnknownOperation),
            (b"PUB a\r\n", ParseError::Malformed),
            (b"PUB a -1\r\n", ParseError::Malformed),
            (b"PUB a 2\r\nhiX\r\n", ParseError::Malformed),
            (b"PUB a 17\r\n", ParseError::PayloadTooLarge),
            (b"HPUB a 20 10\r\n", ParseError::Malformed),
            (b"SUB a\r\n", ParseError::Malformed),
            (b"SUB a b c d e\r\n", ParseError::Malformed),
            (b"PING now\r\n", ParseError::Malformed),
            (b"\xff\xfe\r\n", ParseError::UnknownOperation),
        ];
        for (input, expected) in cases {
            assert_eq!(all(input), Err(expected), "{input:?}");
        }
        let long = format!("SUB {} 1\r\n", "a".repeat(80));
        assert_eq!(all(long.as_bytes()), Err(ParseError::ControlLineTooLong));
        // Without a line end, the limit applies as soon as it is passed.
        assert_eq!(parse(&[b'x'; 70], &LIMITS), Err(ParseError::ControlLineTooLong));
        assert_eq!(
            ParseError::PayloadTooLarge.to_string(),
            "Maximum Payload Violation"
        );
    }
}
