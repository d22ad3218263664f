//! Query strings as the transports use them: a key may repeat
//! (`?subject=a&subject=b`), values are percent-decoded.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// The decoded `key=value` pairs of a query string, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub fn parse(query: Option<&str>) -> QueryParams {
        let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        QueryParams(pairs)
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The first value of `key`.
    pub fn one(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(QueryParams::parse(parts.uri.query()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_and_encoded_values() {
        let query = QueryParams::parse(Some("subject=chat.%2A&subject=news.%3E&wait=5&token=a%2Bb"));
        assert_eq!(query.all("subject"), vec!["chat.*", "news.>"]);
        assert_eq!(query.one("wait"), Some("5"));
        assert_eq!(query.one("token"), Some("a+b"));
        assert_eq!(query.one("cursor"), None);
        assert!(QueryParams::parse(None).all("subject").is_empty());
    }
}
