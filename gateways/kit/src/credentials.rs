//! Where a client's credential comes from, in one place for every
//! transport: `Authorization: Bearer <credential>`, else `?token=` (browsers
//! cannot set headers on a WebSocket or an `EventSource`).

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use herald_broker::Access;

use crate::context::GatewayContext;
use crate::error::HttpError;
use crate::query::QueryParams;

/// The credential in an `Authorization` header (`Bearer <credential>`).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

/// The credential a request presents: the header wins over the query.
pub fn credential<'a>(headers: &'a HeaderMap, query: &'a QueryParams) -> Option<&'a str> {
    bearer(headers).or_else(|| query.one("token"))
}

impl GatewayContext {
    /// What the client of this request may do; 401 with a code when its
    /// credential is refused or a credential is required.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: &QueryParams,
    ) -> Result<Arc<dyn Access>, HttpError> {
        Ok(self.auth.authenticate(credential(headers, query))?)
    }

    /// What every transport checks before it subscribes anyone: that the
    /// server is not shutting down (503), then the credential.
    pub fn admit(&self, headers: &HeaderMap, query: &QueryParams) -> Result<Arc<dyn Access>, HttpError> {
        if self.shutdown.is_cancelled() {
            return Err(HttpError::shutting_down());
        }
        self.authenticate(headers, query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_wins_over_the_query() {
        let mut headers = HeaderMap::new();
        let query = QueryParams::parse(Some("token=from-query"));
        assert_eq!(credential(&headers, &query), Some("from-query"));
        headers.insert(header::AUTHORIZATION, "Bearer  from-header ".parse().unwrap());
        assert_eq!(credential(&headers, &query), Some("from-header"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        assert_eq!(credential(&HeaderMap::new(), &QueryParams::default()), None);
    }
}
