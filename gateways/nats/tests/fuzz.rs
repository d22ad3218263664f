//! The NATS parser against random bytes and mutated valid operations: it
//! never panics, never takes more than it was given, and whatever it
//! refuses is one of NATS's errors.

use bytes::{Buf, BytesMut};
use herald_nats::parser::{parse, ParserLimits};
use proptest::prelude::*;

const LIMITS: ParserLimits = ParserLimits {
    max_control_line: 256,
    max_payload: 1024,
};

const VALID: &[&str] = &[
    "CONNECT {\"verbose\":false}\r\n",
    "PUB a.b 5\r\nhello\r\n",
    "PUB a.b _INBOX.x 0\r\n\r\n",
    "HPUB a.b 12 14\r\nNATS/1.0\r\n\r\nok\r\n",
    "SUB a.* q 1\r\n",
    "UNSUB 1 10\r\n",
    "PING\r\n",
    "PONG\r\n",
];

/// Feeds `input` in pieces of `step` bytes, parsing after each, as reads
/// arrive; stops at the first error.
fn feed(input: &[u8], step: usize) {
    let mut buffer = BytesMut::new();
    for chunk in input.chunks(step.max(1)) {
        buffer.extend_from_slice(chunk);
        loop {
            match parse(&buffer, &LIMITS) {
                Ok(Some((_, taken))) => {
                    assert!(
                        taken > 0 && taken <= buffer.len(),
                        "an operation takes what it was given"
                    );
                    buffer.advance(taken);
                }
                Ok(None) => {
                    // Waiting holds at most one line and one payload.
                    assert!(buffer.len() <= LIMITS.max_control_line + 2 + LIMITS.max_payload + 2 + step);
                    break;
                }
                Err(error) => {
                    let text = error.to_string();
                    assert!(
                        [
                            "Unknown Protocol Operation",
                            "Maximum Control Line Exceeded",
                            "Maximum Payload Violation",
                            "Parser Error"
                        ]
                        .contains(&text.as_str()),
                        "{text}"
                    );
                    return;
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048), step in 1usize..300) {
        feed(&input, step);
    }

    #[test]
    fn mutated_operations_never_panic(
        picks in proptest::collection::vec(0..VALID.len(), 1..8),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        step in 1usize..64,
    ) {
        let mut input: Vec<u8> = picks.iter().flat_map(|&i| VALID[i].bytes()).collect();
        for (at, byte) in flips {
            let at = at % input.len();
            input[at] = byte;
        }
        feed(&input, step);
    }

    #[test]
    fn valid_operations_split_anywhere_all_parse(picks in proptest::collection::vec(0..VALID.len(), 1..8), step in 1usize..64) {
        let input: Vec<u8> = picks.iter().flat_map(|&i| VALID[i].bytes()).collect();
        let mut buffer = BytesMut::new();
        let mut parsed = 0;
        for chunk in input.chunks(step) {
            buffer.extend_from_slice(chunk);
            while let Some((_, taken)) = parse(&buffer, &LIMITS).expect("valid input") {
                buffer.advance(taken);
                parsed += 1;
            }
        }
        prop_assert_eq!(parsed, picks.len());
        prop_assert!(buffer.is_empty());
    }
}
