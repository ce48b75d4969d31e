//! The status a reconcile reports, computed by pure functions from what the apply calls
//! returned: one condition per part, `Ready` over all of them, and `lastTransitionTime` kept
//! while a condition's status does not change (so an unchanged object gets no status write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{RedisClusterStatus, SessionServiceStatus};
use crate::resources::Part;

/// How one part fared in this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartState {
    pub ok: bool,
    /// CamelCase, as Kubernetes reasons are.
    pub reason: String,
    pub message: String,
}

impl PartState {
    pub(crate) fn ok(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
    pub(crate) fn not_ok(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The condition type of each part.
pub(crate) fn condition_type(part: Part) -> &'static str {
    match part {
        Part::Redis => "RedisReady",
        Part::Server => "ServerReady",
        Part::Autoscaling => "AutoscalingReady",
        Part::Alerts => "AlertsReady",
    }
}

/// The condition that says what the API server cannot give the spec (`degradations`, in
/// words); it does not count towards `Ready`: the SessionService works without those.
pub(crate) const FEATURES_AVAILABLE: &str = "FeaturesAvailable";

/// What the status reports besides the conditions.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observed {
    pub redis_endpoint: Option<String>,
    pub ready_replicas: Option<i32>,
    pub redis_cluster: Option<RedisClusterStatus>,
    pub redis_password_rotation: Option<String>,
    pub jwt_secret_rotation: Option<String>,
}

/// The new status: conditions in a fixed order, each keeping its transition time unless its
/// status changed.
pub(crate) fn status(
    parts: &[(Part, PartState)],
    degradations: &[String],
    generation: Option<i64>,
    old: Option<&SessionServiceStatus>,
    observed: Observed,
    now: Timestamp,
) -> SessionServiceStatus {
    let not_ready: Vec<&str> = parts
        .iter()
        .filter(|(_, s)| !s.ok)
        .map(|(p, _)| condition_type(*p))
        .collect();
    let ready = if not_ready.is_empty() {
        PartState::ok(
            "AllPartsReady",
            "Redis, the session service, autoscaling and alerts are ready",
        )
    } else {
        PartState::not_ok(
            "PartsNotReady",
            format!("not ready: {}", not_ready.join(", ")),
        )
    };
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let condition = |type_: &str, state: &PartState| {
        let status = if state.ok { "True" } else { "False" };
        let since = old_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: state.reason.clone(),
            message: state.message.clone(),
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    let features = if degradations.is_empty() {
        PartState::ok(
            "AllServed",
            "this API server serves every feature the spec asks for",
        )
    } else {
        PartState::not_ok("OlderApiServer", degradations.join("; "))
    };
    let mut conditions = vec![condition("Ready", &ready)];
    conditions.extend(parts.iter().map(|(p, s)| condition(condition_type(*p), s)));
    conditions.push(condition(FEATURES_AVAILABLE, &features));
    SessionServiceStatus {
        observed_generation: generation,
        conditions,
        redis_endpoint: observed.redis_endpoint,
        ready_replicas: observed.ready_replicas,
        redis_cluster: observed.redis_cluster,
        redis_password_rotation: observed.redis_password_rotation,
        jwt_secret_rotation: observed.jwt_secret_rotation,
    }
}

/// The conditions whose status differs from before: what deserves a Kubernetes Event.
pub(crate) fn transitions<'a>(
    new: &'a SessionServiceStatus,
    old: Option<&SessionServiceStatus>,
) -> Vec<&'a Condition> {
    let old = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    new.conditions
        .iter()
        .filter(|c| {
            !old.iter()
                .any(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason)
        })
        .collect()
}
