//! Errors answered over HTTP: a status and a stable `code`, as the JSON
//! body `{"code","message"}` (plus `"index"` for the message of a batch).
//! The codes are the protocol's (`docs/protocol.md`); every gateway that
//! refuses a request over HTTP answers through this type.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_broker::{
    AuthError, ClusterError, InvalidToken, PayloadError, PublishError, SessionBatchError, SessionError,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub index: Option<usize>,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code,
            message: message.into(),
            index: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn payload_too_large(code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    pub fn shutting_down() -> HttpError {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; retry on another node or later",
        )
    }

    pub fn draining() -> HttpError {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_draining",
            "the server is draining before a restart; connect to another node, or retry shortly",
        )
    }

    /// Names the message of a batch this error belongs to.
    pub fn at_index(mut self, index: usize) -> HttpError {
        self.index = Some(index);
        self
    }
}

impl From<AuthError> for HttpError {
    fn from(error: AuthError) -> HttpError {
        HttpError::new(StatusCode::UNAUTHORIZED, error.code(), error.to_string())
    }
}

impl From<SessionError> for HttpError {
    fn from(error: SessionError) -> HttpError {
        let status = match &error {
            SessionError::Forbidden { .. } => StatusCode::FORBIDDEN,
            SessionError::Publish(PublishError::Payload(PayloadError::TooLarge { .. })) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            SessionError::Publish(PublishError::History(_)) => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Publish(PublishError::Cluster(error)) => cluster_status(error),
            SessionError::Token(InvalidToken::NotCaughtUp { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        };
        HttpError::new(status, error.code(), error.to_string())
    }
}

impl From<PayloadError> for HttpError {
    fn from(error: PayloadError) -> HttpError {
        HttpError::from(SessionError::from(PublishError::from(error)))
    }
}

impl From<SessionBatchError> for HttpError {
    fn from(error: SessionBatchError) -> HttpError {
        HttpError::from(error.error).at_index(error.index)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(index) = self.index {
            body["index"] = index.into();
        }
        (self.status, Json(body)).into_response()
    }
}

/// A publish the cluster did not take: unavailable, busy or unconfirmed are
/// worth retrying (503); a refusal by the cluster is the gateway's upstream
/// failing (502).
pub fn cluster_status(error: &ClusterError) -> StatusCode {
    match error {
        ClusterError::Refused { .. } => StatusCode::BAD_GATEWAY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<ClusterError> for HttpError {
    fn from(error: ClusterError) -> HttpError {
        HttpError::new(cluster_status(&error), error.code(), error.to_string())
    }
}
