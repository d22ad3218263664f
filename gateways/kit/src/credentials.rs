//! Where a client's credential comes from, in one place for every
//! transport: `Authorization: Bearer <credential>`, else `?token=` (browsers
//! cannot set headers on a WebSocket or an `EventSource`), else, for SSE
//! and long polling, the cookie `auth.token_cookie`. A WebSocket may also
//! send its token in a first `auth` command instead.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use herald_broker::{Access, AuthError};

use crate::context::GatewayContext;
use crate::error::HttpError;
use crate::query::QueryParams;

/// The credential in an `Authorization` header: `None` without one. The
/// scheme is `Bearer`, in any case (RFC 7235); any other scheme, or no
/// credential after it, is refused rather than taken for no header at all.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, credential) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Some(credential))
}

/// The credential a request presents: the header wins over the query.
pub fn credential<'a>(headers: &'a HeaderMap, query: &'a QueryParams) -> Result<Option<&'a str>, AuthError> {
    Ok(bearer(headers)?.or_else(|| query.one("token")))
}

/// The value of the cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    if name.is_empty() {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// See [`GatewayContext::admission`].
pub enum Admission {
    Admitted(Arc<dyn Access>),
    /// No credential, and anonymous connections are refused: the first
    /// command must be `auth`.
    AwaitingAuth,
    Refused(HttpError),
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admission::Admitted(_) => f.write_str("Admitted"),
            Admission::AwaitingAuth => f.write_str("AwaitingAuth"),
            Admission::Refused(error) => f.debug_tuple("Refused").field(error).finish(),
        }
    }
}

/// Whether a streaming request may carry its token in a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cookies {
    /// SSE and long polling: `EventSource` can send nothing else.
    Read,
    /// WebSocket: a token travels in the URL or the first `auth` command.
    Ignore,
}

impl GatewayContext {
    /// What the client of this request may do; 401 with a code when its
    /// credential is refused or a credential is required.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: &QueryParams,
    ) -> Result<Arc<dyn Access>, HttpError> {
        Ok(self.auth.authenticate(credential(headers, query)?)?)
    }

    /// What every streaming transport checks before it subscribes anyone:
    /// the page's origin (403), that the server is not shutting down or
    /// draining (503),
    /// then the credential (401).
    pub fn admit(
        &self,
        headers: &HeaderMap,
        query: &QueryParams,
        cookies: Cookies,
    ) -> Result<Arc<dyn Access>, HttpError> {
        self.check_origin_and_state(headers)?;
        let presented = match credential(headers, query)? {
            Some(credential) => Some(credential),
            None if cookies == Cookies::Read => cookie(headers, &self.token_cookie),
            None => None,
        };
        Ok(self.auth.authenticate(presented)?)
    }

    /// What a bidirectional connection's opening request earned, decided
    /// before the connection is accepted and told after it: a browser
    /// cannot read why an upgrade or a session request was refused.
    pub fn admission(&self, headers: &HeaderMap, query: &QueryParams) -> Admission {
        if let Err(error) = self.check_origin_and_state(headers) {
            return Admission::Refused(error);
        }
        let authenticated = match credential(headers, query) {
            Err(error) => Err(error),
            Ok(None) if !self.auth.allows_anonymous() => return Admission::AwaitingAuth,
            Ok(presented) => self.auth.authenticate(presented),
        };
        match authenticated {
            Ok(access) => Admission::Admitted(access),
            Err(error) => Admission::Refused(error.into()),
        }
    }

    /// The checks of [`GatewayContext::admit`] that come before the
    /// credential.
    pub fn check_origin_and_state(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        self.origins.check(headers)?;
        if self.shutdown.is_cancelled() {
            return Err(HttpError::shutting_down());
        }
        if self.draining.is_cancelled() {
            return Err(HttpError::draining());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn the_header_wins_over_the_query() {
        let query = QueryParams::parse(Some("token=from-query"));
        assert_eq!(credential(&HeaderMap::new(), &query), Ok(Some("from-query")));
        let headers = with_authorization("Bearer  from-header ");
        assert_eq!(credential(&headers, &query), Ok(Some("from-header")));
        assert_eq!(credential(&HeaderMap::new(), &QueryParams::default()), Ok(None));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; herald_token=tok.en.x".parse().unwrap());
        headers.append(header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&headers, "herald_token"), Some("tok.en.x"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "herald"), None);
        assert_eq!(cookie(&headers, ""), None);
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_any_other_is_refused() {
        for value in ["bearer key", "BEARER key", "BeArEr   key"] {
            assert_eq!(bearer(&with_authorization(value)), Ok(Some("key")), "{value}");
        }
        for value in ["Basic a2V5Og==", "key", "Bearer", "Bearer   ", "Token key"] {
            assert_eq!(
                bearer(&with_authorization(value)),
                Err(AuthError::Malformed),
                "{value}"
            );
        }
        // A refused header is not overruled by a query token either.
        let query = QueryParams::parse(Some("token=from-query"));
        assert!(credential(&with_authorization("Basic abc"), &query).is_err());
    }
}
