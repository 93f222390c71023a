//! Who is calling: the server API key and the user's JWT, as axum extractors, so a
//! handler states what it needs in its signature.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::auth::{Identity, bearer};
use crate::error::ApiError;

/// A request with the server API key (`Authorization: Bearer <key>` or `X-API-Key`).
/// The server API is closed when no key is configured.
pub struct ApiKey;

impl FromRequestParts<App> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let Some(expected) = app.config.api_key.as_deref() else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "the server API is closed: no API key is configured (SWITCHBOARD_API_KEY)",
            ));
        };
        let given = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| bearer(&parts.headers));
        match given {
            Some(g) if same_key(&g, expected) => Ok(ApiKey),
            _ => {
                app.hub.metrics().auth_failures.increment(1);
                Err(ApiError::unauthorized("missing or wrong API key"))
            }
        }
    }
}

/// Compares digests, not the keys: constant time, whatever the lengths, so neither the
/// key's bytes nor its length leak through timing.
fn same_key(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// A request with a valid user JWT (`Authorization: Bearer`).
pub struct User(pub Identity);

impl FromRequestParts<App> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        app.hub
            .authenticate(bearer(&parts.headers).as_deref())
            .map(User)
            .map_err(|_| {
                app.hub.metrics().auth_failures.increment(1);
                ApiError::unauthorized("Authentication failed")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_value() {
        assert!(same_key("k3y", "k3y"));
        assert!(!same_key("k3y", "k3z"));
        assert!(!same_key("k3", "k3y"));
        assert!(!same_key("", "k3y"));
    }
}
