//! API errors: a status and a stable code, rendered as JSON.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_broker::{AuthError, PublishError, SessionError};

/// An error answered as `{"code","message"}` (and `"index"` for the
/// message of a batch that failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub index: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            index: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn payload_too_large(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    /// Names the message of a batch this error belongs to.
    pub fn at_index(mut self, index: usize) -> ApiError {
        self.index = Some(index);
        self
    }

    pub(crate) fn from_body_rejection(rejection: BytesRejection) -> ApiError {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large("body_too_large", rejection.body_text())
        } else {
            ApiError::new(status, "unreadable_body", rejection.body_text())
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, error.code(), error.to_string())
    }
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> ApiError {
        let status = match &error {
            SessionError::Forbidden { .. } => StatusCode::FORBIDDEN,
            SessionError::Publish(PublishError::Payload(herald_broker::PayloadError::TooLarge {
                ..
            })) => StatusCode::PAYLOAD_TOO_LARGE,
            SessionError::Publish(PublishError::History(_)) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(index) = self.index {
            body["index"] = index.into();
        }
        (self.status, Json(body)).into_response()
    }
}
