//! Who is calling. Sidecar mode trusts the pod (only it can reach loopback). Server mode
//! requires an HS256 bearer token: `sub` is the user; the scope `sessions:service` marks a
//! trusted service that may act for any user.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

use crate::error::Error;
use crate::sessions::Caller;

/// The scope that lets a token act for every user.
pub const SERVICE_SCOPE: &str = "sessions:service";

/// How callers are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// Every caller is trusted (sidecar mode).
    TrustPod,
    /// Bearer JWT (server mode).
    Jwt(DecodingKey),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::TrustPod => "TrustPod",
            Auth::Jwt(_) => "Jwt",
        })
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
}

impl Auth {
    /// HS256 with `secret`.
    #[must_use]
    pub fn hs256(secret: &[u8]) -> Self {
        Auth::Jwt(DecodingKey::from_secret(secret))
    }

    /// The caller behind these headers.
    ///
    /// # Errors
    /// 401 when a token is required and missing, expired or invalid.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        let Auth::Jwt(key) = self else {
            return Ok(Caller::Trusted);
        };
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Error::Unauthorized)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = decode::<Claims>(token.trim(), key, &validation)
            .map_err(|_| Error::Unauthorized)?
            .claims;
        if claims.scope.split_whitespace().any(|s| s == SERVICE_SCOPE) {
            Ok(Caller::Trusted)
        } else {
            Ok(Caller::User(claims.sub))
        }
    }
}
