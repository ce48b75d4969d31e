//! Who is calling. Sidecar mode trusts the pod (only it can reach loopback). Server mode
//! requires a bearer JWT: signed with the shared HS256 secret, or by the identity provider
//! (RS256, ES256 or EdDSA, verified against its published keys, with its issuer and this
//! service's audience). `sub` is the user; the scope `sessions:service` (in `scope`, or in
//! `scp` as some providers write it) marks a trusted service that may act for any user.
//!
//! Every refusal is a 401 with a stable code saying why ([`Denied`]).

mod https;
pub(crate) mod idp;

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

pub use idp::{IdentityProvider, IdpConfig};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::sessions::Caller;

/// The scope that lets a token act for every user.
pub(crate) const SERVICE_SCOPE: &str = "sessions:service";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub(crate) const LEEWAY_S: u64 = 30;

/// How callers are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// Every caller is trusted (sidecar mode).
    TrustPod,
    /// Bearer JWT (server mode).
    Jwt(Arc<Verifier>),
}

/// The keys server mode accepts tokens from.
pub struct Verifier {
    /// The shared secrets, for HS256 tokens: one, or two while the secret is rotated.
    hs256: Vec<DecodingKey>,
    /// The identity provider, for RS256, ES256 and EdDSA tokens.
    idp: Option<Arc<IdentityProvider>>,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::TrustPod => "TrustPod",
            Auth::Jwt(_) => "Jwt",
        })
    }
}

/// Why a token was refused: each has its own problem code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("a bearer token is required")]
    Missing,
    #[error("the token is not a well-formed JWT with the required claims (sub, exp)")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token's algorithm is not accepted here (or does not match its key)")]
    Algorithm,
    #[error(
        "the token is signed by a key the identity provider does not publish (or it cannot be reached)"
    )]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
}

impl Denied {
    /// The stable problem code.
    #[must_use]
    pub(crate) fn code(self) -> &'static str {
        match self {
            Denied::Missing => "unauthorized",
            Denied::Malformed => "token_malformed",
            Denied::Expired => "token_expired",
            Denied::NotYetValid => "token_not_yet_valid",
            Denied::WrongIssuer => "token_wrong_issuer",
            Denied::WrongAudience => "token_wrong_audience",
            Denied::Algorithm => "token_algorithm_refused",
            Denied::UnknownKey => "token_unknown_key",
            Denied::Signature => "token_signature_invalid",
        }
    }

    fn of(error: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match error.kind() {
            K::ExpiredSignature => Denied::Expired,
            K::ImmatureSignature => Denied::NotYetValid,
            K::InvalidIssuer => Denied::WrongIssuer,
            K::InvalidAudience => Denied::WrongAudience,
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::InvalidKeyFormat => {
                Denied::Algorithm
            }
            K::InvalidSignature => Denied::Signature,
            _ => Denied::Malformed,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    scp: Vec<String>,
}

impl Claims {
    fn is_service(&self) -> bool {
        self.scope.split_whitespace().any(|s| s == SERVICE_SCOPE)
            || self.scp.iter().any(|s| s == SERVICE_SCOPE)
    }
}

impl Auth {
    /// HS256 with `secret` only.
    #[must_use]
    pub fn hs256(secret: &[u8]) -> Self {
        Self::server(&[secret], None, None)
    }

    /// Server mode: the shared secrets (a token signed with any of them is accepted: two
    /// while the secret is rotated) and/or the identity provider.
    #[must_use]
    pub fn server(
        secrets: &[&[u8]],
        idp: Option<Arc<IdentityProvider>>,
        metrics: Option<Metrics>,
    ) -> Self {
        Auth::Jwt(Arc::new(Verifier {
            hs256: secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s))
                .collect(),
            idp,
            metrics,
        }))
    }

    /// The caller behind these headers.
    ///
    /// # Errors
    /// 401 with the reason when a token is required and missing or refused.
    pub(crate) async fn caller(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        let Auth::Jwt(verifier) = self else {
            return Ok(Caller::Trusted);
        };
        let outcome = verifier.verify(headers).await;
        if let Some(metrics) = &verifier.metrics {
            let result = match &outcome {
                Ok(_) => "accepted",
                Err(denied) => denied.code(),
            };
            metrics.auth_outcomes.with_label_values(&[result]).inc();
        }
        let claims = outcome.map_err(Error::Unauthorized)?;
        if claims.is_service() {
            Ok(Caller::Trusted)
        } else {
            Ok(Caller::User(claims.sub))
        }
    }
}

impl Verifier {
    async fn verify(&self, headers: &HeaderMap) -> Result<Claims, Denied> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(Denied::Missing)?;
        let header = decode_header(token).map_err(|e| match e.kind() {
            // `alg: none` and other unknown algorithms fail to parse.
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => Denied::Algorithm,
            jsonwebtoken::errors::ErrorKind::Json(_) if names_an_algorithm(token) => {
                Denied::Algorithm
            }
            _ => Denied::Malformed,
        })?;
        match header.alg {
            // The shared secret only ever checks HS256: a token "signed" with a provider's
            // public key as an HMAC secret meets the shared secret, not that key.
            Algorithm::HS256 => {
                if self.hs256.is_empty() {
                    return Err(Denied::Algorithm);
                }
                let mut validation = Validation::new(Algorithm::HS256);
                validation.set_required_spec_claims(&["exp", "sub"]);
                validation.leeway = LEEWAY_S;
                // The signature is checked before the claims: only a wrong signature sends
                // the token on to the next secret.
                for key in &self.hs256 {
                    match decode::<Claims>(token, key, &validation) {
                        Ok(t) => return Ok(t.claims),
                        Err(e) if Denied::of(&e) == Denied::Signature => {}
                        Err(e) => return Err(Denied::of(&e)),
                    }
                }
                Err(Denied::Signature)
            }
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                let idp = self.idp.as_ref().ok_or(Denied::Algorithm)?;
                let key = idp.key(header.kid.as_deref(), header.alg).await?;
                decode::<Claims>(token, &key, &idp.validation(header.alg))
                    .map(|t| t.claims)
                    .map_err(|e| Denied::of(&e))
            }
            _ => Err(Denied::Algorithm),
        }
    }
}

/// Whether the token's header is JSON naming some `alg` (one jsonwebtoken does not know, such
/// as `none`): a refused algorithm rather than a malformed token.
fn names_an_algorithm(token: &str) -> bool {
    let Some(head) = token.split('.').next() else {
        return false;
    };
    data_encoding::BASE64URL_NOPAD
        .decode(head.as_bytes())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|h| h["alg"].is_string())
}
