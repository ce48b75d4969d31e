//! `session-operator`: turns a `SessionService` into Redis, the session service, its
//! autoscaler and its SLO alerts, and injects the sidecar into application pods.
//!
//! Public are only [`crd`] (the custom resource's types), [`cli`] (what the binary calls) and
//! [`testing`] (what the integration tests drive directly). Every other module is private;
//! inside them `pub` marks what those re-export. The modules:
//!
//! - [`crd`]: the custom resource, its defaults and CEL rules.
//! - `resources`: one pure builder per kind of child object; `slo`: the SLO rules;
//!   `dashboards`: the Grafana dashboards, built from the same definitions as the rules.
//! - `reconcile`: apply, prune, status and Events, and the rotations of the Redis users'
//!   passwords and of the JWT key; `controller`: `run`, leader election.
//! - `cluster`: Redis Cluster day 2 — forming, repairing, resharding, scaling and rolling the
//!   cluster by talking to the Redis pods.
//! - `capabilities`: what the API server serves, so objects carry nothing it does not know.
//! - `render`: the operator's output without a cluster.
//! - `inject`: the sidecar patch; `webhook`: the admission webhook and its certificate.
//! - `status_report`: the `status` command for people on call; `dead_letters`: the
//!   `dead-letters` command; `http_client`: their plain HTTP client.
//! - `telemetry`: metrics and logs; `yaml`: YAML in and out.

// Keeps the rule above checked: a `pub` item nothing re-exports is a warning.
#![warn(unreachable_pub)]

mod capabilities;
mod cluster;
mod controller;
// The derive of the custom resource generates code that the lint below misreads.
#[allow(unreachable_pub)]
pub mod crd;
mod dashboards;
mod dead_letters;
mod http_client;
mod inject;
mod reconcile;
mod render;
mod resources;
mod slo;
mod status_report;
mod telemetry;
pub mod testing;
mod webhook;
mod yaml;

/// What the `session-operator` binary calls, one module per command.
pub mod cli {
    /// `run`: the controller, the webhook and leader election.
    pub mod run {
        pub use crate::controller::{Options, run};
        pub use crate::telemetry::init_logging;
    }
    /// `status`: the report for people on call.
    pub mod status {
        pub use crate::status_report::{Options, Output, gather, text};
    }
    /// `dead-letters`: list, replay or drop dead-lettered events.
    pub mod dead_letters {
        pub use crate::dead_letters::{Options, run};
    }
    /// `crd`, `render`, `dashboards`, `inject`: the operator's output without a cluster.
    pub mod render {
        pub use crate::capabilities::Capabilities;
        pub use crate::dashboards::{for_operator, for_service};
        pub use crate::inject::inject_documents;
        pub use crate::render::{objects, parse};
        pub use crate::resources::Secrets;
        pub use crate::yaml::{from_yaml_documents, to_yaml, to_yaml_documents};
    }
}

/// The label that asks for a sidecar: `sessions.io/inject: <SessionService name>`.
pub(crate) const INJECT_LABEL: &str = "sessions.io/inject";
