//! `session-operator`: turns a `SessionService` into Redis, the session service, its
//! autoscaler and its SLO alerts.

pub mod crd;
pub mod resources;
pub mod slo;
pub mod yaml;

/// The label that asks for a sidecar: `sessions.io/inject: <SessionService name>`.
pub const INJECT_LABEL: &str = "sessions.io/inject";
pub mod controller;
pub mod inject;
pub mod reconcile;
pub mod render;
pub mod telemetry;
pub mod webhook;
