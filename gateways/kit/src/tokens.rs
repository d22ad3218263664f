//! User tokens: JWTs verified with the configured key, turned into the
//! connection's [`Access`]. Every transport reads credentials through the
//! broker's `Authenticator`, which hands anything shaped like a JWT to this
//! verifier, so every transport enforces the same rules with the same codes.
//!
//! A token is accepted only with the algorithm of the key it is checked
//! against (HS256 for `auth.jwt_hs256_secret`; RS256 or ES256 for the
//! public key in `auth.jwt_public_key_file`), so `alg: none` and algorithm
//! confusion (an HS256 token "signed" with the public key) are refused.
//! `exp` is required; `nbf`, and `aud`/`iss` when configured, are checked.
//!
//! Herald's claim, shaped like NATS user permissions:
//!
//! ```json
//! {"sub": "alice", "exp": 1767225600,
//!  "herald": {"pub": {"allow": ["chat.*.typing"], "deny": []},
//!             "sub": {"allow": ["chat.>", "user.{sub}.>"], "deny": ["chat.admin.>"]},
//!             "info": {"name": "Alice"}}}
//! ```
//!
//! Deny wins; `{sub}` in a pattern is the token's user id, which must then
//! be a single subject token (no `.`, no wildcard), so a user id cannot
//! widen a pattern.

use std::sync::Arc;

use herald_broker::{
    Access, AuthConfig, AuthError, Pattern, Permissions, SubjectLimits, TokenVerifier, User,
};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// What may be wrong with the `[auth]` token settings.
#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("auth.jwt_hs256_secret is shorter than 32 bytes; use a long random secret")]
    SecretTooShort,
    #[error("auth.jwt_public_key_file {path}: {reason}")]
    PublicKey { path: String, reason: String },
}

/// Verifies user tokens with the configured keys.
pub struct JwtVerifier {
    /// Each key with the one algorithm it accepts.
    keys: Vec<(Algorithm, DecodingKey)>,
    audience: Option<String>,
    issuer: Option<String>,
    limits: SubjectLimits,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<Algorithm> = self.keys.iter().map(|(algorithm, _)| *algorithm).collect();
        f.debug_struct("JwtVerifier")
            .field("algorithms", &algorithms)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl JwtVerifier {
    /// The verifier `[auth]` describes, or `None` when no token key is set.
    pub fn from_config(
        config: &AuthConfig,
        limits: &SubjectLimits,
    ) -> Result<Option<JwtVerifier>, TokenConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = config
            .jwt_hs256_secret
            .as_ref()
            .filter(|secret| !secret.0.is_empty())
        {
            if secret.0.len() < 32 {
                return Err(TokenConfigError::SecretTooShort);
            }
            keys.push((Algorithm::HS256, DecodingKey::from_secret(secret.0.as_bytes())));
        }
        if let Some(path) = &config.jwt_public_key_file {
            let failed = |reason: String| TokenConfigError::PublicKey {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|error| failed(error.to_string()))?;
            let key = match (DecodingKey::from_rsa_pem(&pem), DecodingKey::from_ec_pem(&pem)) {
                (Ok(rsa), _) => (Algorithm::RS256, rsa),
                (_, Ok(ec)) => (Algorithm::ES256, ec),
                (Err(error), _) => {
                    return Err(failed(format!("not an RSA or P-256 public key in PEM: {error}")))
                }
            };
            keys.push(key);
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(JwtVerifier {
            keys,
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            limits: *limits,
        }))
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
        } else {
            validation.validate_aud = false;
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation
    }
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<Arc<dyn Access>, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::TokenRejected("not a JWT"))?;
        let (algorithm, key) = self
            .keys
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .ok_or(AuthError::TokenRejected(
                "signed with an algorithm this server does not accept",
            ))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation(*algorithm)).map_err(|error| {
                match error.kind() {
                    ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                    ErrorKind::ImmatureSignature => AuthError::TokenNotYetValid,
                    ErrorKind::InvalidSignature => AuthError::TokenRejected("bad signature"),
                    ErrorKind::InvalidAudience => AuthError::TokenRejected("wrong audience"),
                    ErrorKind::InvalidIssuer => AuthError::TokenRejected("wrong issuer"),
                    ErrorKind::MissingRequiredClaim(_) => {
                        AuthError::TokenRejected("exp and sub are required")
                    }
                    _ => AuthError::TokenRejected("malformed token"),
                }
            })?;
        Ok(Arc::new(data.claims.into_access(&self.limits)?))
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    herald: HeraldClaim,
}

#[derive(Default, Deserialize)]
struct HeraldClaim {
    #[serde(default, rename = "pub")]
    publish: Rules,
    #[serde(default, rename = "sub")]
    subscribe: Rules,
    #[serde(default)]
    info: serde_json::Value,
}

#[derive(Default, Deserialize)]
struct Rules {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// A user's access, from a verified token.
#[derive(Debug)]
pub struct TokenAccess {
    pub user: User,
    pub permissions: Permissions,
    /// The token's `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Access for TokenAccess {
    fn may_publish(&self, subject: &str) -> bool {
        self.permissions.may_publish(subject)
    }

    fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.permissions.may_subscribe(pattern)
    }

    fn expires_at_millis(&self) -> Option<u64> {
        Some(self.expires_at.saturating_mul(1000))
    }

    fn user(&self) -> Option<&User> {
        Some(&self.user)
    }
}

impl Claims {
    fn into_access(self, limits: &SubjectLimits) -> Result<TokenAccess, AuthError> {
        let user = self.sub;
        let single_token = !user.is_empty()
            && !user.contains(['.', '*', '>'])
            && herald_broker::validate_subject(&user, limits).is_ok();
        let patterns = |texts: &[String]| -> Result<Vec<Pattern>, AuthError> {
            texts
                .iter()
                .map(|text| {
                    if text.contains("{sub}") && !single_token {
                        return Err(AuthError::TokenRejected(
                            "{sub} needs a user id that is one subject token",
                        ));
                    }
                    let text = text.replace("{sub}", &user);
                    Pattern::parse(&text, limits)
                        .map_err(|_| AuthError::TokenRejected("a permission is not a valid pattern"))
                })
                .collect()
        };
        let claim = self.herald;
        Ok(TokenAccess {
            permissions: Permissions {
                publish: patterns(&claim.publish.allow)?,
                publish_deny: patterns(&claim.publish.deny)?,
                subscribe: patterns(&claim.subscribe.allow)?,
                subscribe_deny: patterns(&claim.subscribe.deny)?,
            },
            user: User {
                id: user,
                info: claim.info,
            },
            expires_at: self.exp,
        })
    }
}
