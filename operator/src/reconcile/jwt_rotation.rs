//! Rotating the generated JWT key without a refused token. Issuers (the services that sign
//! tokens, and the operator's command-line tools) read the key from the Secret `<name>-jwt`;
//! the session service reads it when its pods start.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;

use super::rotation::{RotationReport, requested, server_pods_without};
use crate::crd::SessionService;
use crate::resources::server::jwt_keys_digest;
use crate::resources::{JwtPhase, JwtRotation, Secrets, random_jwt_key};

/// The annotation that asks for a new generated JWT key.
pub(crate) const ROTATE_JWT_ANNOTATION: &str = "sessions.io/rotate-jwt-secret";

/// The annotation on the session-service pod template with a digest of the JWT keys it
/// accepts.
pub(crate) const JWT_KEYS_ANNOTATION: &str = "sessions.io/jwt-keys";

/// Starts, advances or finishes a rotation of the generated JWT key, in three steps, so that
/// no token is refused on the way: the session service learns the new key while issuers still
/// sign with the old one (`Adding`: the Deployment rolls); once every session-service pod
/// accepts both, issuers get the new key in `jwt-secret` and the old one stays accepted
/// (`Retiring`) for `server.jwtRotationGraceSeconds`; then the old key goes and the Deployment
/// rolls onto the new one alone. A Secret of your own (`server.jwtSecretName`) is rotated the
/// same way by hand: its `extra-jwt-secret` is accepted too.
pub(crate) async fn advance(
    client: &Client,
    ss: &SessionService,
    namespace: &str,
    secrets: &mut Secrets,
) -> RotationReport {
    if ss.spec.server.jwt_secret_name.is_some() {
        return RotationReport::default();
    }
    let requested = requested(ss, ROTATE_JWT_ANNOTATION);
    let Some(rotation) = secrets.jwt_rotation.clone() else {
        return match requested {
            Some(request) => start_jwt(secrets, request),
            None => RotationReport::default(),
        };
    };
    let waiting = |message: String| RotationReport {
        message: Some(format!("rotating the JWT key: {message}")),
        in_progress: true,
    };
    let now = Timestamp::now();
    match rotation.phase {
        JwtPhase::Done => match requested {
            Some(request) if request != rotation.request => start_jwt(secrets, request),
            _ => RotationReport {
                message: Some(format!(
                    "JWT key rotated for request {}: the old key is retired",
                    rotation.request
                )),
                in_progress: false,
            },
        },
        JwtPhase::Adding => {
            let digest = jwt_keys_digest(secrets);
            match server_pods_without(client, ss, namespace, JWT_KEYS_ANNOTATION, &digest).await {
                Ok(old) if old.is_empty() => {
                    let grace =
                        SignedDuration::from_secs(ss.spec.server.jwt_rotation_grace_seconds.max(0));
                    // Whole seconds, rounded up: the status reads better, and it is later.
                    let retire_at = Timestamp::from_second((now + grace).as_second() + 1)
                        .unwrap_or(now + grace)
                        .to_string();
                    let new = rotation.extra.clone().unwrap_or_else(random_jwt_key);
                    let old_key = std::mem::replace(&mut secrets.jwt_secret, new);
                    secrets.jwt_rotation = Some(JwtRotation {
                        phase: JwtPhase::Retiring,
                        extra: Some(old_key),
                        retire_at: Some(retire_at.clone()),
                        ..rotation
                    });
                    waiting(format!(
                        "issuers now sign with the new key (the Secret's jwt-secret); tokens of the old key are accepted until {retire_at}"
                    ))
                }
                Ok(old) => waiting(format!(
                    "waiting for {} session-service pod(s) to accept the new key (the Deployment rolls): {}; issuers keep signing with the current key",
                    old.len(),
                    old.join(", ")
                )),
                Err(message) => waiting(message),
            }
        }
        JwtPhase::Retiring => {
            let until: Option<Timestamp> =
                rotation.retire_at.as_deref().and_then(|t| t.parse().ok());
            match until {
                Some(until) if now < until => waiting(format!(
                    "issuers sign with the new key; tokens of the old key are accepted until {until}"
                )),
                _ => {
                    secrets.jwt_rotation = Some(JwtRotation {
                        phase: JwtPhase::Done,
                        extra: None,
                        retire_at: None,
                        ..rotation.clone()
                    });
                    RotationReport {
                        message: Some(format!(
                            "JWT key rotated for request {}: the old key is retired",
                            rotation.request
                        )),
                        in_progress: false,
                    }
                }
            }
        }
    }
}

fn start_jwt(secrets: &mut Secrets, request: String) -> RotationReport {
    secrets.jwt_rotation = Some(JwtRotation {
        request,
        phase: JwtPhase::Adding,
        extra: Some(random_jwt_key()),
        retire_at: None,
    });
    RotationReport {
        message: Some(
            "rotating the JWT key: the session service learns the new key; issuers keep signing with the current one"
                .to_owned(),
        ),
        in_progress: true,
    }
}
