//! Which browser pages may connect: the `Origin` allow-list every
//! streaming transport (WebSocket, SSE, long poll) checks before it admits
//! a request, and the HTTP API's CORS answers.
//!
//! A request without `Origin` is not from a browser page (a backend, curl)
//! and passes; so does a page served by the same host as Herald (its
//! origin's host and port are the request's `Host`). Any other origin must
//! be listed in `server.allowed_origins`, or the list must hold `"*"`.
//! A WebSocket has no CORS to protect it: without this check any page on
//! the internet could open one with its visitor's cookies.

use axum::http::{header, HeaderMap, StatusCode};

use crate::error::HttpError;

/// The configured allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    any: bool,
    listed: Vec<String>,
}

impl AllowedOrigins {
    /// From `server.allowed_origins`: exact origins (`https://app.example`,
    /// scheme, host and port as the browser sends them) or `"*"`.
    pub fn new(origins: &[String]) -> AllowedOrigins {
        AllowedOrigins {
            any: origins.iter().any(|origin| origin == "*"),
            listed: origins
                .iter()
                .map(|origin| origin.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Refuses a request from a page whose origin is not allowed, with 403
    /// `origin_not_allowed`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        if self.any {
            return Ok(());
        }
        let refused = || {
            HttpError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!(
                    "pages from {} may not connect: add the origin to server.allowed_origins",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            )
        };
        let origin = origin.to_str().map_err(|_| refused())?.to_ascii_lowercase();
        let same_host = origin
            .split_once("://")
            .zip(headers.get(header::HOST).and_then(|host| host.to_str().ok()))
            .is_some_and(|((_, authority), host)| authority.eq_ignore_ascii_case(host));
        if same_host || self.listed.contains(&origin) {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        headers
    }

    #[test]
    fn listed_same_host_and_originless_requests_pass_others_are_refused() {
        let allowed = AllowedOrigins::new(&["https://app.example".into()]);
        let host = "push.example:7400";
        assert!(allowed.check(&headers(None, host)).is_ok());
        assert!(allowed.check(&headers(Some("https://app.example"), host)).is_ok());
        assert!(allowed.check(&headers(Some("HTTPS://APP.EXAMPLE"), host)).is_ok());
        assert!(allowed
            .check(&headers(Some("https://push.example:7400"), host))
            .is_ok());
        for foreign in [
            "https://evil.example",
            "https://app.example:8443",
            "null",
            "http://app.example",
        ] {
            let error = allowed.check(&headers(Some(foreign), host)).unwrap_err();
            assert_eq!(
                (error.status, error.code),
                (StatusCode::FORBIDDEN, "origin_not_allowed"),
                "{foreign}"
            );
        }
        assert!(AllowedOrigins::new(&[])
            .check(&headers(Some("https://app.example"), host))
            .is_err());
        assert!(AllowedOrigins::new(&["*".into()])
            .check(&headers(Some("https://evil.example"), host))
            .is_ok());
    }
}
