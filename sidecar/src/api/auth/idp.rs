//! The identity provider's signing keys: found through OIDC discovery (or a configured JWKS
//! URL), cached, refreshed on a schedule and when a token names a key not seen yet.
//!
//! What the documents ask of the Auth Service dependency — deny when it is down — holds here
//! as: tokens signed by cached keys keep working while the provider is unreachable; a token
//! needing a key not cached is refused (401), never let through. Refreshes for unknown keys
//! are rate-limited ([`UNKNOWN_KEY_REFRESH_EVERY`]), so a flood of made-up `kid`s costs the
//! provider one fetch per interval; fetches go through a circuit breaker, one at a time (those
//! waiting take its result), each bounded by [`FETCH_TIMEOUT`], and a request never waits
//! longer than [`REQUEST_WAIT`] for one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Denied, LEEWAY_S, https};
use crate::circuit::Circuit;
use crate::metrics::Metrics;

/// Scheduled refresh of the key set (providers rotate keys over days, announcing new ones
/// ahead of use).
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// At most one refresh for an unknown `kid` per this interval (the default of
/// [`IdpConfig::unknown_key_refresh_every`]).
pub(crate) const UNKNOWN_KEY_REFRESH_EVERY: Duration = Duration::from_secs(10);
/// The longest one fetch (discovery and key set together) may take; a slower one fails.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a request waits for the keys (a fetch in progress, then its own).
pub const REQUEST_WAIT: Duration = Duration::from_millis(2_500);
/// Failed fetches in a row that open the circuit, and how long it stays open.
const FAILURES_TO_OPEN: u32 = 3;
const OPEN_FOR: Duration = Duration::from_secs(30);

/// Where the provider is and what its tokens must say.
#[derive(Debug, Clone)]
pub struct IdpConfig {
    /// The `iss` tokens carry; `<issuer>/.well-known/openid-configuration` is its discovery
    /// document.
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// The key set's URL, when it is not to be discovered.
    pub jwks_url: Option<String>,
    /// A PEM bundle of the CAs the provider's certificate is checked against, instead of the
    /// system's roots (a private provider).
    pub ca_file: Option<PathBuf>,
    /// At most one fetch for an unknown key per this interval.
    pub unknown_key_refresh_every: Duration,
}

impl IdpConfig {
    /// A provider reached through discovery, with the system's roots.
    #[must_use]
    pub(crate) fn new(issuer: String, audience: String) -> Self {
        Self {
            issuer,
            audience,
            jwks_url: None,
            ca_file: None,
            unknown_key_refresh_every: UNKNOWN_KEY_REFRESH_EVERY,
        }
    }
}

/// One usable key.
#[derive(Clone)]
struct Key {
    algorithm: Algorithm,
    decoding: DecodingKey,
}

/// The keys, by `kid` (keys without one under the empty string).
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Key>,
}

pub struct IdentityProvider {
    config: IdpConfig,
    keys: RwLock<KeySet>,
    /// Held while fetching: one fetch at a time, the others wait for its result.
    fetching: tokio::sync::Mutex<()>,
    /// Completed fetches, so one that waited for another's knows it need not fetch again.
    fetched: AtomicU64,
    tls: Result<Arc<rustls::ClientConfig>, String>,
    /// When an unknown key last triggered a fetch.
    last_unknown_refresh: std::sync::Mutex<Option<Instant>>,
    circuit: Circuit,
    metrics: Metrics,
}

impl IdentityProvider {
    /// A provider with no keys yet; [`IdentityProvider::refresh`] fetches them.
    #[must_use]
    pub fn new(config: IdpConfig, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            circuit: Circuit::new(
                FAILURES_TO_OPEN,
                OPEN_FOR,
                metrics.jwks_circuit_state.clone(),
            ),
            tls: https::client_config(config.ca_file.as_deref()),
            config,
            keys: RwLock::new(KeySet::default()),
            fetching: tokio::sync::Mutex::new(()),
            fetched: AtomicU64::new(0),
            last_unknown_refresh: std::sync::Mutex::new(None),
            metrics,
        })
    }

    /// Refreshes the keys now and then every [`REFRESH_EVERY`], until the provider is dropped.
    pub(crate) fn keep_fresh(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                if let Err(error) = this.refresh("scheduled").await {
                    tracing::warn!(issuer = %this.config.issuer, %error, "could not refresh the identity provider's keys; tokens signed by the keys already known keep working");
                }
                drop(this);
                tokio::time::sleep(REFRESH_EVERY).await;
            }
        });
    }

    /// The validation of a token signed with `algorithm`: that algorithm only, the issuer, the
    /// audience, `exp` and `sub` required, `nbf` checked, [`LEEWAY_S`] of clock skew.
    pub(super) fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_S;
        validation
    }

    /// The key a token names; fetches the set again (rate-limited, bounded in time) when it
    /// is not known.
    pub(super) async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, Denied> {
        if let Some(key) = self.cached(kid) {
            return matching(&key, alg);
        }
        if !self.may_refresh_for_unknown_key() {
            // Rate-limited, but a fetch may be under way for this very key (another request
            // naming it claimed the slot a moment ago, as when the provider starts signing with
            // a new key): wait for that fetch, bounded, without one of our own.
            let _ = tokio::time::timeout(REQUEST_WAIT, self.fetching.lock()).await;
            let key = self.cached(kid).ok_or(Denied::UnknownKey)?;
            return matching(&key, alg);
        }
        let seen = self.fetched.load(Ordering::Acquire);
        let refreshed = async {
            let _one_at_a_time = self.fetching.lock().await;
            if self.fetched.load(Ordering::Acquire) != seen {
                return Ok(()); // fetched while this one waited: take that result
            }
            self.fetch_now("unknown_key").await
        };
        match tokio::time::timeout(REQUEST_WAIT, refreshed).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(issuer = %self.config.issuer, %error, "a token names a key not known yet and the identity provider's keys could not be fetched; refused");
            }
            Err(_) => {
                tracing::warn!(issuer = %self.config.issuer, "a token names a key not known yet and the identity provider's keys did not arrive in time; refused");
            }
        }
        let key = self.cached(kid).ok_or(Denied::UnknownKey)?;
        matching(&key, alg)
    }

    fn cached(&self, kid: Option<&str>) -> Option<Key> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.keys.get(kid.unwrap_or_default()).cloned()
    }

    /// Whether an unknown key may trigger a fetch now; claims the slot when it may.
    fn may_refresh_for_unknown_key(&self) -> bool {
        let mut last = self
            .last_unknown_refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < self.config.unknown_key_refresh_every) {
            self.metrics
                .jwks_refreshes
                .with_label_values(&["unknown_key", "rate_limited"])
                .inc();
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Fetches the key set (after discovery when no URL is configured) and replaces the cache.
    /// A fetch dropped midway leaves the cache as it was.
    ///
    /// # Errors
    /// When the provider cannot be reached, answers an error, or the circuit is open.
    pub async fn refresh(&self, trigger: &'static str) -> Result<(), String> {
        let _one_at_a_time = self.fetching.lock().await;
        self.fetch_now(trigger).await
    }

    /// One fetch, with the fetch lock held by the caller.
    async fn fetch_now(&self, trigger: &'static str) -> Result<(), String> {
        let bounded = async {
            tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
                .await
                .unwrap_or_else(|_| {
                    Err("the identity provider did not answer within 2 s".to_owned())
                })
        };
        let outcome = self
            .circuit
            .call(bounded, Result::is_err)
            .await
            .unwrap_or_else(|| {
                Err(
                    "the circuit to the identity provider is open after repeated failures"
                        .to_owned(),
                )
            });
        let result = if outcome.is_ok() { "ok" } else { "failed" };
        self.metrics
            .jwks_refreshes
            .with_label_values(&[trigger, result])
            .inc();
        let keys = outcome?;
        self.metrics
            .jwks_keys
            .set(i64::try_from(keys.keys.len()).unwrap_or(i64::MAX));
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        self.fetched.fetch_add(1, Ordering::Release);
        Ok(())
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let tls = self.tls.as_ref().map_err(Clone::clone)?;
        let url = match &self.config.jwks_url {
            Some(url) => url.clone(),
            None => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let document = https::get_json(tls, &discovery).await?;
                document["jwks_uri"]
                    .as_str()
                    .ok_or_else(|| format!("{discovery} names no jwks_uri"))?
                    .to_owned()
            }
        };
        let set: JwkSet = serde_json::from_value(https::get_json(tls, &url).await?)
            .map_err(|e| format!("{url} is not a JWK set: {e}"))?;
        let mut keys = KeySet::default();
        for jwk in &set.keys {
            if jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != PublicKeyUse::Signature)
            {
                continue;
            }
            let Some(algorithm) = algorithm_of(jwk) else {
                continue;
            };
            let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            keys.keys.insert(
                jwk.common.key_id.clone().unwrap_or_default(),
                Key {
                    algorithm,
                    decoding,
                },
            );
        }
        if keys.keys.is_empty() {
            return Err(format!("{url} holds no RS256, ES256 or EdDSA signing key"));
        }
        Ok(keys)
    }
}

/// The key, when the token's algorithm is the key's: a token cannot pick another algorithm
/// (nor a key of another type) than its key was published for.
fn matching(key: &Key, alg: Algorithm) -> Result<DecodingKey, Denied> {
    if key.algorithm == alg {
        Ok(key.decoding.clone())
    } else {
        Err(Denied::Algorithm)
    }
}

/// The algorithm a published key is for: its `alg`, else what its type implies; `None` for
/// anything but RS256, ES256 (P-256) and EdDSA (Ed25519).
fn algorithm_of(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Some(implied),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Some(implied),
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Some(implied),
        Some(_) => None,
    }
}
