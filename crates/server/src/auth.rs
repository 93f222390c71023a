//! JWT verification and room permissions.
//!
//! A token is verified once, at connect; what the hub keeps of it is an [`Identity`].
//! Tokens are never logged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use switchboard_protocol::{DM_ROOM_PREFIX, PERSONAL_ROOM_PREFIX, SYSTEM_ROOM, UserInfo, dm_peer};

use crate::config::AuthConfig;

/// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 30;

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Who a connection is, from its verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user: UserInfo,
    /// The `rooms` claim: patterns (`team-*`) of rooms the user may join when room
    /// permissions are on.
    pub rooms: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    avatar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

/// Why a token was refused. Clients only ever see `Authentication failed`; the kind is
/// for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token has an empty sub")]
    EmptySubject,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read JWT public key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid JWT key: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("no JWT secret configured")]
    NoSecret,
}

/// Verifies tokens as the config says.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    room_permissions: bool,
}

impl Verifier {
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, KeyError> {
        let (alg, key) = match cfg.jwt_algorithm.as_str() {
            "RS256" | "ES256" => {
                let path = cfg.jwt_public_key_file.clone().unwrap_or_default();
                let pem = std::fs::read(&path).map_err(|source| KeyError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                if cfg.jwt_algorithm == "RS256" {
                    (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)?)
                } else {
                    (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)?)
                }
            }
            _ => {
                let secret = cfg.jwt_secret.as_deref().ok_or(KeyError::NoSecret)?;
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret.as_bytes()),
                )
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        if cfg.allow_tokens_without_exp {
            validation.set_required_spec_claims(&["sub"]);
            validation.validate_exp = false;
        } else {
            validation.set_required_spec_claims(&["sub", "exp"]);
        }
        if let Some(iss) = &cfg.jwt_issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &cfg.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        Ok(Verifier {
            key,
            validation,
            room_permissions: cfg.room_permissions,
        })
    }

    /// Verifies a token and returns who it names.
    pub fn verify(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?;
        let c = data.claims;
        // With validate_exp off, an exp that is present must still hold.
        let now = unix_now();
        if let Some(exp) = c.exp
            && !self.validation.validate_exp
            && exp + LEEWAY_SECS < now
        {
            return Err(AuthError::Invalid(
                jsonwebtoken::errors::ErrorKind::ExpiredSignature.into(),
            ));
        }
        if c.iat.is_some_and(|iat| iat > now + LEEWAY_SECS) {
            return Err(AuthError::IssuedInFuture);
        }
        if c.sub.is_empty() {
            return Err(AuthError::EmptySubject);
        }
        let username = c.username.or(c.name).unwrap_or_else(|| c.sub.clone());
        Ok(Identity {
            user: UserInfo {
                id: c.sub,
                username,
                avatar: c.avatar,
            },
            rooms: c.rooms,
        })
    }

    /// Whether `identity` may join `room`: never another user's personal room; with room
    /// permissions on, only rooms its `rooms` claim matches (and `system`).
    pub fn may_join(&self, identity: &Identity, room: &str) -> bool {
        if let Some(owner) = room.strip_prefix(PERSONAL_ROOM_PREFIX) {
            return owner == identity.user.id;
        }
        // A private conversation is its two users' only.
        if room.starts_with(DM_ROOM_PREFIX) {
            return dm_peer(room, &identity.user.id).is_some();
        }
        if !self.room_permissions || room == SYSTEM_ROOM {
            return true;
        }
        identity
            .rooms
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|pattern| glob_match(pattern, room))
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What `switchboard token` signs.
pub struct TokenRequest<'a> {
    pub sub: &'a str,
    pub username: Option<&'a str>,
    pub avatar: Option<&'a str>,
    pub rooms: Option<Vec<String>>,
    pub ttl: Duration,
}

/// Mints an HS256 token with the configured secret.
pub fn mint(cfg: &AuthConfig, req: TokenRequest<'_>) -> Result<String, KeyError> {
    let secret = cfg.jwt_secret.as_deref().ok_or(KeyError::NoSecret)?;
    let now = unix_now();
    let claims = Claims {
        sub: req.sub.to_string(),
        username: req.username.map(str::to_string),
        name: None,
        avatar: req.avatar.map(str::to_string),
        rooms: req.rooms,
        iat: Some(now),
        exp: Some(now.saturating_add(req.ttl.as_secs())),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// coturn's REST credentials: username `<expiry>:<user>`, credential
/// base64(HMAC-SHA1(secret, username)).
pub fn turn_credential(secret: &str, user: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

/// Parses `30s`, `15m`, `1h`, `7d` or plain seconds.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 90s, 15m, 1h, 7d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    let secs = n
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("duration {s:?} is too long"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuthConfig {
        AuthConfig {
            jwt_secret: Some("secret".into()),
            ..AuthConfig::default()
        }
    }

    fn req(sub: &str) -> TokenRequest<'_> {
        TokenRequest {
            sub,
            username: None,
            avatar: None,
            rooms: Some(vec!["team-*".into()]),
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn mint_and_verify() {
        let v = Verifier::new(&cfg()).unwrap();
        let id = v
            .verify(Some(&mint(&cfg(), req("alice")).unwrap()))
            .unwrap();
        assert_eq!(id.user.id, "alice");
        assert_eq!(id.user.username, "alice", "username falls back to sub");
        assert!(v.verify(None).is_err());
        assert!(v.verify(Some("garbage")).is_err());
        let other = AuthConfig {
            jwt_secret: Some("other".into()),
            ..cfg()
        };
        assert!(
            v.verify(Some(&mint(&other, req("alice")).unwrap()))
                .is_err()
        );
    }

    #[test]
    fn permissions() {
        let mut c = cfg();
        c.room_permissions = true;
        let v = Verifier::new(&c).unwrap();
        let id = v.verify(Some(&mint(&c, req("alice")).unwrap())).unwrap();
        assert!(v.may_join(&id, "team-a"));
        assert!(!v.may_join(&id, "general"));
        assert!(v.may_join(&id, "user:alice"));
        assert!(!v.may_join(&id, "user:bob"));
        assert!(v.may_join(&id, "system"));
        assert!(
            v.may_join(&id, "dm:alice:bob"),
            "its own conversations, permissions or not"
        );
        assert!(!v.may_join(&id, "dm:bob:carol"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("team-*", "team-a"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXcYb"));
        assert!(!glob_match("team-*", "teamx"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn turn_credentials_follow_coturn() {
        // printf '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        let (u, c) = turn_credential("secret", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(c, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("99999999999999999d").is_err());
    }
}
