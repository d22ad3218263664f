//! What bidirectional transports (WebSocket, WebTransport) do about
//! credentials after the connection is open: read a first `auth` command
//! from a client that connected without a credential, and watch the
//! token's expiry, warning once and allowing a `refresh` before closing.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use herald_broker::{Access, CloseReason, Command, Encoding, Reply, Session};
use tokio::time::Instant;

use crate::{GatewayContext, HttpError};

/// Reads the first command of a connection that must authenticate: it must
/// be an `auth` with a token the server accepts. Returns the access and
/// the command's id, or why the connection is refused.
pub fn first_auth(
    context: &GatewayContext,
    encoding: Encoding,
    frame: &Bytes,
    max_frame_bytes: usize,
) -> Result<(Arc<dyn Access>, Option<u64>), HttpError> {
    if frame.len() > max_frame_bytes {
        return Err(unauthorized("the first command must be a small auth command"));
    }
    match herald_broker::decode_command(encoding, frame) {
        Ok(Command::Auth { id, token }) => match context.auth.authenticate(Some(&token)) {
            Ok(access) => Ok((access, id)),
            Err(error) => Err(error.into()),
        },
        _ => Err(unauthorized(
            "a credential is required: send {\"op\":\"auth\",\"token\":...} as the first command, or the token in ?token=",
        )),
    }
}

/// The refusal of a connection that ended before it authenticated.
pub fn ended_before_auth() -> HttpError {
    unauthorized("the connection ended before an auth command")
}

/// The refusal of a connection that sent no `auth` within its time.
pub fn auth_timed_out() -> HttpError {
    HttpError::new(
        StatusCode::REQUEST_TIMEOUT,
        "auth_timeout",
        "no auth command in time: send {\"op\":\"auth\",\"token\":...} first, or the token in ?token=",
    )
}

fn unauthorized(message: &str) -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// When the connection's token expires, and what then: first an `err`
/// `token_expired` and a grace period for a `refresh`, then the close.
#[derive(Debug)]
pub struct TokenClock {
    deadline: Option<Instant>,
    warned: bool,
    grace: Duration,
}

impl TokenClock {
    /// The clock of `session`'s current access.
    pub fn new(session: &Session, grace: Duration) -> TokenClock {
        let now_millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        TokenClock {
            deadline: session
                .access_expires_at_millis()
                .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_millis))),
            warned: false,
            grace,
        }
    }

    /// Completes at the next deadline: the expiry, then the grace's end.
    pub async fn ring(&self) {
        match self.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }

    /// The token expired (or its grace ended): at the end of the grace the
    /// session is closed with `token_expired` and `true` returned;
    /// otherwise the client is told and gets the grace period.
    pub fn expired(&mut self, session: &Session) -> bool {
        if self.warned {
            session.outbox().close(CloseReason::TokenExpired);
            return true;
        }
        self.warned = true;
        self.deadline = Some(Instant::now() + self.grace);
        session.outbox().push_reply(Reply::Error {
            id: None,
            code: "token_expired",
            message: format!(
                "the token expired: send {{\"op\":\"refresh\",\"token\":...}} within {} s or the connection closes",
                self.grace.as_secs()
            ),
        });
        false
    }
}
