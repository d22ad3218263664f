//! Message positions and the resume tokens that carry them.
//!
//! Every message gets a [`Position`]: the epoch of the history store that
//! numbered it and a sequence from one node-wide counter. Sequences grow in
//! publish order per subject, so comparing two positions of the same epoch
//! orders messages. The epoch changes whenever the numbering restarts (an
//! in-memory broker restarting), which lets a resume token from the old
//! numbering be recognised instead of being misread.
//!
//! A position travels as one opaque, URL- and header-safe token of 16
//! characters (it fits an SSE `Last-Event-ID`). Clients must not parse it.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use thiserror::Error;

/// Length of every resume token, in characters.
pub const TOKEN_LENGTH: usize = 16;
const TOKEN_BYTES: usize = 12;

/// Where a message sits in the broker's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// Identity of the numbering this sequence belongs to.
    pub epoch: u32,
    /// Node-wide sequence; the first message is 1, so 0 means "before anything".
    pub sequence: u64,
}

/// A resume token that cannot be resumed from.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidToken {
    #[error("resume token {token:?} is not one this server issued")]
    Unreadable { token: String },
    /// Well-formed, of this server's numbering, but past its last
    /// position: resuming there would silently skip what comes next.
    #[error("resume token {token:?} is ahead of this server's stream (last position {last})")]
    Ahead { token: String, last: String },
    /// A clustered node has not yet applied the position the token names
    /// (another node delivered it first): worth retrying in a moment, or
    /// on another node.
    #[error(
        "resume token {token:?} is ahead of what this node has received from its cluster so far (last position {last}); retry in a moment"
    )]
    NotCaughtUp { token: String, last: String },
}

impl InvalidToken {
    pub fn code(&self) -> &'static str {
        match self {
            InvalidToken::NotCaughtUp { .. } => "not_caught_up",
            _ => "invalid_token",
        }
    }
}

impl Position {
    pub const fn new(epoch: u32, sequence: u64) -> Position {
        Position { epoch, sequence }
    }

    /// The opaque resume token for this position.
    pub fn token(&self) -> Token {
        let mut raw = [0u8; TOKEN_BYTES];
        raw[..4].copy_from_slice(&self.epoch.to_be_bytes());
        raw[4..].copy_from_slice(&self.sequence.to_be_bytes());
        let mut text = [0u8; TOKEN_LENGTH];
        let written = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut text)
            .expect("12 bytes always encode to 16 characters");
        debug_assert_eq!(written, TOKEN_LENGTH);
        Token(text)
    }

    /// Reads a token produced by [`Position::token`].
    pub fn from_token(token: &str) -> Result<Position, InvalidToken> {
        let invalid = || InvalidToken::Unreadable {
            token: token.chars().take(64).collect(),
        };
        if token.len() != TOKEN_LENGTH {
            return Err(invalid());
        }
        let mut raw = [0u8; TOKEN_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(token, &mut raw) {
            Ok(TOKEN_BYTES) => {}
            _ => return Err(invalid()),
        }
        let epoch = u32::from_be_bytes(raw[..4].try_into().expect("4 bytes"));
        let sequence = u64::from_be_bytes(raw[4..].try_into().expect("8 bytes"));
        Ok(Position { epoch, sequence })
    }
}

/// A resume token held inline, without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; TOKEN_LENGTH]);

impl Token {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base64 is ASCII")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.as_str())
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.token().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for position in [
            Position::new(0, 0),
            Position::new(1, 1),
            Position::new(0xdead_beef, 42),
            Position::new(u32::MAX, u64::MAX),
        ] {
            let token = position.token();
            assert_eq!(token.as_str().len(), TOKEN_LENGTH);
            assert!(token
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(Position::from_token(token.as_str()), Ok(position));
        }
    }

    #[test]
    fn bad_tokens_are_rejected() {
        for bad in [
            "",
            "short",
            "AAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAA\nA",
        ] {
            assert!(Position::from_token(bad).is_err(), "{bad:?}");
        }
    }
}
