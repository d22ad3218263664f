//! Structured fuzzing of what the kit reads from requests: query strings
//! and `Authorization` headers. Never panics; a credential read from a
//! header is exactly the text after the scheme. `make fuzz` runs it longer.

use axum::http::{header, HeaderMap, HeaderValue};
use herald_gateway::credentials::bearer;
use herald_gateway::QueryParams;
use proptest::prelude::*;

proptest! {
    #[test]
    fn query_strings(query in prop_oneof![".{0,80}", "([a-z%+=&]{1,6}){0,12}"]) {
        let params = QueryParams::parse(Some(&query));
        for key in ["subject", "since", "token", "wait", "cursor"] {
            let all = params.all(key);
            prop_assert_eq!(params.one(key).is_some(), !all.is_empty());
        }
    }

    #[test]
    fn authorization_headers(value in prop_oneof![".{0,40}", "(?i:bearer)[ \\t]{0,3}[ -~]{0,30}"]) {
        let Ok(value) = HeaderValue::from_str(&value) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.clone());
        if let Ok(Some(credential)) = bearer(&headers) {
            let text = value.to_str().unwrap().trim();
            prop_assert!(text[..6].eq_ignore_ascii_case("bearer"));
            prop_assert_eq!(credential, text[6..].trim());
            prop_assert!(!credential.is_empty());
        }
    }
}
