//! Who may do what: API keys with pattern permissions, and what anonymous
//! connections may do.
//!
//! Every gateway turns the credential a client presents (the gateway kit
//! reads it from the request) into an [`Access`] with
//! [`Authenticator::authenticate`], then hands that `Access` to the
//! connection's [`Session`](crate::Session), which checks it on every
//! subscribe, publish and history read. Anonymous publishing is off unless
//! configured.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use thiserror::Error;

use crate::subject::{Pattern, SubjectError, SubjectLimits, FULL_WILDCARD, SINGLE_WILDCARD};

/// The shortest API key accepted in configuration.
pub const MIN_KEY_LENGTH: usize = 16;

/// What one connection may do. Checked on every subscribe, publish and
/// history read; identities and their rules (tokens, API keys) are built by
/// [`Authenticator::authenticate`].
pub trait Access: Send + Sync + fmt::Debug {
    /// May this connection publish on `subject` (already validated)?
    fn may_publish(&self, subject: &str) -> bool;
    /// May this connection subscribe to, or read the history of, `pattern`?
    fn may_subscribe(&self, pattern: &Pattern) -> bool;
    /// When this access ends (a token's `exp`), in milliseconds since the
    /// Unix epoch: a streaming connection is closed with `token_expired`
    /// then. `None`: it does not expire.
    fn expires_at_millis(&self) -> Option<u64> {
        None
    }
    /// The user this connection speaks for (a token's `sub` and `info`):
    /// what presence shows. API keys and anonymous connections have none.
    fn user(&self) -> Option<&User> {
        None
    }
    /// Whether this is a backend (an API key, a trusted server) rather than
    /// a client (a browser with a user token, or anonymous): subject rules
    /// may keep clients from publishing where backends can.
    fn is_backend(&self) -> bool {
        false
    }
    /// Whether this is an operator (the admin key): the only access that
    /// may subscribe to `$sys.` subjects.
    fn is_operator(&self) -> bool {
        false
    }
    /// Commands per second this access's connections may send, when it
    /// has a rate of its own (an API key's `max_commands_per_second`); the
    /// transport's limit otherwise.
    fn max_commands_per_second(&self) -> Option<u32> {
        None
    }
}

/// The admin key's access on client transports: `$sys.` subjects (what
/// the dashboard watches), nothing else.
#[derive(Debug, Clone, Copy, Default)]
pub struct OperatorAccess;

impl Access for OperatorAccess {
    fn may_publish(&self, _subject: &str) -> bool {
        false
    }

    fn may_subscribe(&self, _pattern: &Pattern) -> bool {
        false
    }

    fn is_backend(&self) -> bool {
        true
    }

    fn is_operator(&self) -> bool {
        true
    }
}

/// Who a user-token connection is: the token's `sub` and its `info`.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    /// Whatever the token's `herald.info` holds; shown by presence.
    pub info: serde_json::Value,
}

/// Access that allows everything: development mode and trusted servers.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Access for AllowAll {
    fn may_publish(&self, _subject: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _pattern: &Pattern) -> bool {
        true
    }

    fn is_backend(&self) -> bool {
        true
    }
}

/// Allow- and deny-lists of patterns for publishing and subscribing; deny
/// wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// A subject may be published to if one of these patterns matches it...
    pub publish: Vec<Pattern>,
    /// ...and none of these does.
    pub publish_deny: Vec<Pattern>,
    /// A pattern may be subscribed to if one of these covers every subject
    /// it can match...
    pub subscribe: Vec<Pattern>,
    /// ...and it cannot match any subject one of these matches: deny is
    /// decided at subscribe time, never per delivery.
    pub subscribe_deny: Vec<Pattern>,
}

impl Access for Permissions {
    fn may_publish(&self, subject: &str) -> bool {
        self.publish.iter().any(|allowed| allowed.matches(subject))
            && !self.publish_deny.iter().any(|denied| denied.matches(subject))
    }

    fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.subscribe.iter().any(|allowed| covers(allowed, pattern))
            && !self
                .subscribe_deny
                .iter()
                .any(|denied| intersect(denied, pattern))
    }
}

/// What an API key may do: its permissions, as a backend.
#[derive(Debug)]
struct KeyAccess {
    permissions: Permissions,
    max_commands_per_second: Option<u32>,
}

impl Access for KeyAccess {
    fn may_publish(&self, subject: &str) -> bool {
        self.permissions.may_publish(subject)
    }

    fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.permissions.may_subscribe(pattern)
    }

    fn is_backend(&self) -> bool {
        true
    }

    fn max_commands_per_second(&self) -> Option<u32> {
        self.max_commands_per_second
    }
}

/// Whether some subject is matched by both patterns.
pub fn intersect(a: &Pattern, b: &Pattern) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.tokens().collect(), b.tokens().collect());
    let mut index = 0;
    loop {
        match (a.get(index), b.get(index)) {
            (None, None) => return true,
            // `>` matches one or more tokens: whatever the other has left.
            (Some(&FULL_WILDCARD), Some(_)) | (Some(_), Some(&FULL_WILDCARD)) => return true,
            (Some(x), Some(y)) if *x == SINGLE_WILDCARD || *y == SINGLE_WILDCARD || x == y => index += 1,
            _ => return false,
        }
    }
}

/// Verifies a token (a JWT) presented as a credential: the gateway kit
/// implements it with the configured keys.
pub trait TokenVerifier: Send + Sync + fmt::Debug {
    fn verify(&self, token: &str) -> Result<Arc<dyn Access>, AuthError>;
}

/// Whether a credential has the shape of a JWT (three dot-separated
/// base64url parts) rather than an API key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.split('.').count() == 3
}

/// Whether every subject matched by `requested` is matched by `allowed`.
pub fn covers(allowed: &Pattern, requested: &Pattern) -> bool {
    let mut requested_tokens = requested.tokens();
    for allowed_token in allowed.tokens() {
        let Some(requested_token) = requested_tokens.next() else {
            return false;
        };
        match allowed_token {
            FULL_WILDCARD => return true,
            SINGLE_WILDCARD if requested_token != FULL_WILDCARD => {}
            literal if literal == requested_token && requested_token != SINGLE_WILDCARD => {}
            _ => return false,
        }
    }
    requested_tokens.next().is_none()
}

/// One API key and what it may do.
#[derive(Clone)]
pub struct ApiKey {
    pub key: String,
    pub permissions: Permissions,
    /// Commands per second a connection with this key may send, instead
    /// of the transport's limit for clients.
    pub max_commands_per_second: Option<u32>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("ApiKey")
            .field("key", &"<redacted>")
            .field("permissions", &self.permissions)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("a credential is required: send an API key or a token as 'Authorization: Bearer <credential>' or ?token=<credential>")]
    Missing,
    #[error("the credential is not a valid API key")]
    Invalid,
    /// An `Authorization` header the server cannot read: refused rather
    /// than served as anonymous, so a client's mistake is seen at once.
    #[error("the Authorization header must be 'Bearer <credential>'")]
    Malformed,
    #[error("the token has expired: get a new one")]
    TokenExpired,
    #[error("the token is not valid yet (nbf)")]
    TokenNotYetValid,
    /// A token refused for any other reason: bad signature, an algorithm
    /// the server does not accept for its key, wrong audience or issuer,
    /// malformed claims.
    #[error("the token is refused: {0}")]
    TokenRejected(&'static str),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthorized",
            AuthError::Invalid | AuthError::Malformed => "invalid_credential",
            AuthError::TokenExpired => "token_expired",
            AuthError::TokenNotYetValid => "token_not_yet_valid",
            AuthError::TokenRejected(_) => "token_rejected",
        }
    }
}

/// A secret from configuration: never printed.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The `[auth]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Patterns a connection without a credential may subscribe to and
    /// read the history of; empty: none.
    pub anonymous_subscribe: Vec<String>,
    /// Subjects a connection without a credential may publish to; empty:
    /// none. `herald serve --dev` opens both lists to `>`.
    pub anonymous_publish: Vec<String>,
    pub api_keys: Vec<ApiKeyConfig>,
    /// The cookie SSE and long-poll requests may carry their token in
    /// (`EventSource` cannot set headers); empty: no cookie is read.
    pub token_cookie: String,
    /// How long a WebSocket connection whose token expired stays open for
    /// a `refresh` command, after its `err` `token_expired`.
    #[serde(with = "crate::units::duration")]
    pub refresh_grace: std::time::Duration,
    /// User tokens (JWT) signed with this shared secret (HS256).
    #[serde(default)]
    pub jwt_hs256_secret: Option<Secret>,
    /// User tokens (JWT) signed with the private half of this public key
    /// (PEM: RSA for RS256, P-256 for ES256).
    #[serde(default)]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// When set, a token's `aud` must name it.
    #[serde(default)]
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must be it.
    #[serde(default)]
    pub jwt_issuer: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous_subscribe: Vec::new(),
            anonymous_publish: Vec::new(),
            api_keys: Vec::new(),
            token_cookie: "herald_token".into(),
            refresh_grace: std::time::Duration::from_secs(30),
            jwt_hs256_secret: None,
            jwt_public_key_file: None,
            jwt_audience: None,
            jwt_issuer: None,
        }
    }
}

/// One API key as configured: the patterns it may publish to and
/// subscribe to, as text.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub key: String,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Commands per second one connection with this key may send over
    /// WebSocket or WebTransport (a backend publishing pipelined), instead
    /// of the transport's `max_commands_per_second`, which is meant for
    /// browsers.
    #[serde(default)]
    pub max_commands_per_second: Option<u32>,
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("key", &"<redacted>")
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .field("max_commands_per_second", &self.max_commands_per_second)
            .finish()
    }
}

/// Why an `[auth]` section was refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthConfigError {
    #[error("auth.api_keys[{index}].max_commands_per_second must be positive (leave it out for the transport's limit)")]
    ZeroCommandRate { index: usize },
    #[error("auth.api_keys[{index}].key is shorter than {MIN_KEY_LENGTH} characters; use a long random key")]
    KeyTooShort { index: usize },
    #[error("auth.{field}: {pattern:?}: {error}")]
    InvalidAnonymousPattern {
        field: &'static str,
        pattern: String,
        error: SubjectError,
    },
    #[error("auth.api_keys[{index}].{field}: {pattern:?}: {error}")]
    InvalidPattern {
        index: usize,
        field: &'static str,
        pattern: String,
        error: SubjectError,
    },
}

/// Turns credentials into access.
pub struct Authenticator {
    keys: Vec<(String, Arc<dyn Access>)>,
    /// The admin key, if set: operator access.
    operator_key: Option<String>,
    anonymous: Option<Arc<dyn Access>>,
    anonymous_publish: bool,
    tokens: Option<Arc<dyn TokenVerifier>>,
}

impl Authenticator {
    /// `anonymous`: what a connection without a credential may do; with
    /// no pattern at all, such a connection is refused (`unauthorized`).
    pub fn new(keys: Vec<ApiKey>, anonymous: Permissions) -> Authenticator {
        let anonymous_publish = !anonymous.publish.is_empty();
        let anonymous: Option<Arc<dyn Access>> =
            if anonymous.publish.is_empty() && anonymous.subscribe.is_empty() {
                None
            } else {
                Some(Arc::new(anonymous))
            };
        let keys = keys
            .into_iter()
            .map(|key| {
                let access = KeyAccess {
                    permissions: key.permissions,
                    max_commands_per_second: key.max_commands_per_second,
                };
                (key.key, Arc::new(access) as Arc<dyn Access>)
            })
            .collect();
        Authenticator {
            keys,
            operator_key: None,
            anonymous_publish,
            anonymous,
            tokens: None,
        }
    }

    /// Also accepts the admin key, as [`OperatorAccess`].
    pub fn with_operator_key(mut self, key: &str) -> Authenticator {
        self.operator_key = (!key.is_empty()).then(|| key.to_owned());
        self
    }

    /// Whether `credential` is the admin key (compared in constant time).
    pub fn is_operator_key(&self, credential: &str) -> bool {
        self.operator_key
            .as_ref()
            .is_some_and(|key| constant_time_eq(key.as_bytes(), credential.as_bytes()))
    }

    /// Also accepts user tokens (JWT), verified by `tokens`.
    pub fn with_tokens(mut self, tokens: Arc<dyn TokenVerifier>) -> Authenticator {
        self.tokens = Some(tokens);
        self
    }

    /// An authenticator from configuration, patterns checked against the
    /// broker's subject limits.
    pub fn from_config(
        config: &AuthConfig,
        limits: &SubjectLimits,
    ) -> Result<Authenticator, AuthConfigError> {
        let mut keys = Vec::with_capacity(config.api_keys.len());
        for (index, key) in config.api_keys.iter().enumerate() {
            if key.key.len() < MIN_KEY_LENGTH {
                return Err(AuthConfigError::KeyTooShort { index });
            }
            if key.max_commands_per_second == Some(0) {
                return Err(AuthConfigError::ZeroCommandRate { index });
            }
            let patterns = |field: &'static str, texts: &[String]| {
                parse_patterns(texts, limits, |pattern, error| AuthConfigError::InvalidPattern {
                    index,
                    field,
                    pattern,
                    error,
                })
            };
            keys.push(ApiKey {
                key: key.key.clone(),
                permissions: Permissions {
                    publish: patterns("publish", &key.publish)?,
                    subscribe: patterns("subscribe", &key.subscribe)?,
                    ..Permissions::default()
                },
                max_commands_per_second: key.max_commands_per_second,
            });
        }
        let anonymous = |field: &'static str, texts: &[String]| {
            parse_patterns(texts, limits, |pattern, error| {
                AuthConfigError::InvalidAnonymousPattern {
                    field,
                    pattern,
                    error,
                }
            })
        };
        let anonymous = Permissions {
            publish: anonymous("anonymous_publish", &config.anonymous_publish)?,
            subscribe: anonymous("anonymous_subscribe", &config.anonymous_subscribe)?,
            ..Permissions::default()
        };
        Ok(Authenticator::new(keys, anonymous))
    }

    /// The access of a connection presenting `credential` (or none).
    pub fn authenticate(&self, credential: Option<&str>) -> Result<Arc<dyn Access>, AuthError> {
        let Some(credential) = credential else {
            return self.anonymous.clone().ok_or(AuthError::Missing);
        };
        if let Some(tokens) = self.tokens.as_ref().filter(|_| looks_like_jwt(credential)) {
            return tokens.verify(credential);
        }
        // Compare against every key without stopping early, so the time
        // taken says nothing about which key was closest.
        let mut found = None;
        if self.is_operator_key(credential) {
            found = Some(Arc::new(OperatorAccess) as Arc<dyn Access>);
        }
        for (key, access) in &self.keys {
            if constant_time_eq(key.as_bytes(), credential.as_bytes()) {
                found = Some(access.clone());
            }
        }
        found.ok_or(AuthError::Invalid)
    }

    /// Whether a connection without a credential is let in at all.
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous.is_some()
    }

    /// Whether a connection without a credential may publish anywhere.
    pub fn anonymous_may_publish(&self) -> bool {
        self.anonymous_publish
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("anonymous", &self.anonymous)
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// Patterns from configuration text; the first that does not parse is
/// refused with the error `refused` builds from it.
fn parse_patterns(
    texts: &[String],
    limits: &SubjectLimits,
    refused: impl Fn(String, SubjectError) -> AuthConfigError,
) -> Result<Vec<Pattern>, AuthConfigError> {
    texts
        .iter()
        .map(|text| Pattern::parse(text, limits).map_err(|error| refused(text.clone(), error)))
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter()
        .zip(b)
        .fold(0u8, |difference, (x, y)| difference | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::SubjectLimits;

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text, &SubjectLimits::default()).unwrap()
    }

    #[test]
    fn patterns_intersect_when_some_subject_matches_both() {
        let cases = [
            ("chat.>", "chat.admin.>", true),
            ("chat.*", "chat.admin.>", false),
            ("chat.lobby", "chat.admin.>", false),
            ("chat.*.typing", "chat.admin.>", true),
            ("a.*", "a.b.c", false),
            ("a.*.c", "a.b.*", true),
            (">", "x", true),
            ("a.b", "a.b", true),
            ("a", "a.>", false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(intersect(&pattern(a), &pattern(b)), expected, "{a} & {b}");
            assert_eq!(intersect(&pattern(b), &pattern(a)), expected, "{b} & {a}");
        }
    }

    #[test]
    fn covering() {
        let cases = [
            (">", "a.b", true),
            (">", "a.>", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a.*", true),
            ("a.>", "a", false),
            ("a.>", ">", false),
            ("a.*", "a.b", true),
            ("a.*", "a.*", true),
            ("a.*", "a.>", false),
            ("a.*", "a.b.c", false),
            ("a.b", "a.b", true),
            ("a.b", "a.*", false),
            ("*.b", "x.b", true),
            ("*.b", "*.b", true),
            ("*.b", "x.c", false),
        ];
        for (allowed, requested, expected) in cases {
            assert_eq!(
                covers(&pattern(allowed), &pattern(requested)),
                expected,
                "{allowed} covers {requested}"
            );
        }
    }

    #[test]
    fn keys_and_anonymous_access() {
        let key = ApiKey {
            key: "secret-1".into(),
            permissions: Permissions {
                publish: vec![pattern("news.>")],
                subscribe: vec![pattern(">")],
                ..Permissions::default()
            },
            max_commands_per_second: None,
        };
        let read_news = Permissions {
            subscribe: vec![pattern("news.>")],
            ..Permissions::default()
        };
        let auth = Authenticator::new(vec![key], read_news);
        let access = auth.authenticate(Some("secret-1")).unwrap();
        assert!(access.may_publish("news.a"));
        assert!(!access.may_publish("chat.a"));
        assert_eq!(
            auth.authenticate(Some("secret-2")).unwrap_err(),
            AuthError::Invalid
        );
        let anonymous = auth.authenticate(None).unwrap();
        assert!(!anonymous.may_publish("news.a"));
        assert!(anonymous.may_subscribe(&pattern("news.*")));
        assert!(!anonymous.may_subscribe(&pattern(">")));
        assert!(!anonymous.is_backend() && access.is_backend());
        assert!(!auth.anonymous_may_publish());

        let closed = Authenticator::new(vec![], Permissions::default());
        assert_eq!(closed.authenticate(None).unwrap_err(), AuthError::Missing);
        let open = Permissions {
            publish: vec![pattern(">")],
            subscribe: vec![pattern(">")],
            ..Permissions::default()
        };
        assert!(Authenticator::new(vec![], open).anonymous_may_publish());
    }
}
