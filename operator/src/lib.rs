//! `session-operator`: turns a `SessionService` into Redis, the session service, its
//! autoscaler and its SLO alerts, and injects the sidecar into application pods. Items are `pub`
//! only where the binary or the integration tests use them; the rest is `pub(crate)`.
//!
//! - [`crd`]: the custom resource, its defaults and CEL rules.
//! - [`resources`]: one pure builder per kind of child object; [`slo`]: the SLO rules;
//!   [`dashboards`]: the Grafana dashboards, built from the same definitions as the rules.
//! - [`reconcile`]: apply, prune, status and Events, and the rotations of the Redis users'
//!   passwords and of the JWT key; [`controller`]: `run`, leader election.
//! - [`cluster`]: Redis Cluster day 2 — forming, repairing, resharding, scaling and rolling the
//!   cluster by talking to the Redis pods.
//! - [`capabilities`]: what the API server serves, so objects carry nothing it does not know.
//! - [`render`]: the operator's output without a cluster.
//! - [`inject`]: the sidecar patch; [`webhook`]: the admission webhook and its certificate.
//! - [`status_report`]: the `status` command for people on call; [`dead_letters`]: the
//!   `dead-letters` command; [`http_client`]: their plain HTTP client.
//! - [`telemetry`]: metrics and logs; [`yaml`]: YAML in and out.

pub mod capabilities;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod dashboards;
pub mod dead_letters;
pub mod http_client;
pub mod inject;
pub mod reconcile;
pub mod render;
pub mod resources;
pub mod slo;
pub mod status_report;
pub mod telemetry;
pub mod webhook;
pub mod yaml;

/// The label that asks for a sidecar: `sessions.io/inject: <SessionService name>`.
pub(crate) const INJECT_LABEL: &str = "sessions.io/inject";
