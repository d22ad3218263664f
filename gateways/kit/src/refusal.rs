//! Refusals a browser can read. A browser sees a refused WebSocket upgrade
//! only as close code 1006 and a refused `EventSource` only as an error
//! event, with no status and no body. So streaming transports accept the
//! connection first, then say why they refuse it in the protocol's own
//! `err` event, and end it with an application close code.
//!
//! The close code is `4000 +` the HTTP status the same refusal gets over
//! HTTP (long polling and the HTTP API answer with the status itself), so
//! one table serves every transport:
//!
//! | close | status | codes | reconnect? |
//! |---|---|---|---|
//! | 4400 | 400 | `invalid_query`, `invalid_subject`, ... | no: fix the request |
//! | 4401 | 401 | `unauthorized`, `invalid_credential`, `token_rejected`, `token_not_yet_valid`, `token_expired` | with a new credential |
//! | 4403 | 403 | `forbidden`, `origin_not_allowed` | no |
//! | 4408 | 408 | `auth_timeout` | yes |
//! | 4429 | 429 | `rate_limited` | yes, after a backoff |
//! | 4503 | 503 | `shutting_down` | yes, after a backoff (another node) |

use axum::http::StatusCode;
use herald_broker::CloseReason;

use crate::error::HttpError;

/// The application close code of a refusal answered over HTTP with `status`.
pub fn close_code(status: StatusCode) -> u16 {
    4000 + status.as_u16().min(999)
}

/// The close code of a connection the server ends for `reason`: RFC 6455's
/// codes, and for an expired token the refusal code of a credential. The
/// WebSocket close frame carries it, and the WebTransport session's
/// application close, so clients of both read one table.
pub fn close_code_of(reason: &CloseReason) -> u16 {
    match reason {
        // Going away.
        CloseReason::Shutdown | CloseReason::IdleTimeout | CloseReason::StreamExpired => 1001,
        // Message too big.
        CloseReason::FrameTooLarge { .. } => 1009,
        // Protocol error.
        CloseReason::InvalidFrame(_) => 1002,
        // Invalid frame payload data.
        CloseReason::InvalidUtf8 => 1007,
        // Policy violation.
        CloseReason::SlowConsumer | CloseReason::ReplyBacklog | CloseReason::ProtocolViolation(_) => 1008,
        // Like every refusal of a credential: 4000 + 401.
        CloseReason::TokenExpired => close_code(StatusCode::UNAUTHORIZED),
        // Service restart: the client may reconnect at once.
        CloseReason::Draining => 1012,
        // 4000 + 403: told to go; reconnecting needs the operator's leave.
        CloseReason::Removed => close_code(StatusCode::FORBIDDEN),
    }
}

/// Whether a client refused this way may simply reconnect (after a
/// backoff): the others must change something first.
pub fn may_retry(error: &HttpError) -> bool {
    matches!(
        error.status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
}

/// The `err` event of a refusal, as JSON: the protocol's `err` (no `id`,
/// the connection is ending), with the close code that follows it.
pub fn err_event_json(error: &HttpError) -> String {
    serde_json::json!({
        "op": "err",
        "code": error.code,
        "message": error.message,
        "close": close_code(error.status),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_follow_the_http_status() {
        assert_eq!(close_code(StatusCode::UNAUTHORIZED), 4401);
        assert_eq!(close_code(StatusCode::FORBIDDEN), 4403);
        assert_eq!(close_code(StatusCode::SERVICE_UNAVAILABLE), 4503);
        assert!(may_retry(&HttpError::shutting_down()));
        assert!(!may_retry(&HttpError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            ""
        )));
        let event: serde_json::Value =
            serde_json::from_str(&err_event_json(&HttpError::shutting_down())).unwrap();
        assert_eq!(event["close"], 4503);
        assert_eq!(event["code"], "shutting_down");
    }

    #[test]
    fn server_closes_use_rfc_6455_codes() {
        use axum::extract::ws::close_code;
        assert_eq!(close_code_of(&CloseReason::Shutdown), close_code::AWAY);
        assert_eq!(
            close_code_of(&CloseReason::FrameTooLarge { max: 1 }),
            close_code::SIZE
        );
        assert_eq!(
            close_code_of(&CloseReason::InvalidFrame("x".into())),
            close_code::PROTOCOL
        );
        assert_eq!(close_code_of(&CloseReason::InvalidUtf8), close_code::INVALID);
        assert_eq!(close_code_of(&CloseReason::SlowConsumer), close_code::POLICY);
        assert_eq!(close_code_of(&CloseReason::TokenExpired), 4401);
    }
}
