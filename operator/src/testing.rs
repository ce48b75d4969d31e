//! What the integration tests drive directly and the binary does not: one module per module of
//! the crate, each re-exporting what the tests use from it (the binary's own entry points
//! included, so that a test names one module for one part of the operator). Every module of
//! the crate but [`crate::crd`] is private; the binary goes through [`crate::cli`].

/// Redis Cluster day 2, one convergence step at a time.
pub mod cluster {
    pub use crate::cluster::placement::{data_slots, key_slot};
    pub use crate::cluster::topology::{NodeLine, parse_nodes};
    pub use crate::cluster::{Access, Member, Phase, Report, Shape, converge, converge_once};
}

/// Reconciling one `SessionService`.
pub mod reconcile {
    pub use crate::reconcile::{
        Context, Error, MISSING_API_CHECK, PROGRESS_CHECK, RESYNC, backoff, error_policy, reconcile,
    };
}

/// The admission webhook and its certificate.
pub mod webhook {
    pub use crate::webhook::{Options, Policy, certs, count, review, serve};
}

/// The SLO rules.
pub mod slo {
    pub use crate::slo::{alert_name, rule_groups};
}

/// The child objects' builders.
pub mod resources {
    pub use crate::resources::{Object, RedisPasswords, Runtime, Secrets, desired};
}

/// The sidecar patch.
pub mod inject {
    pub use crate::inject::{CONTAINER, inject_documents, sidecar_container};
}

/// The `status` command's parts.
pub mod status_report {
    pub use crate::status_report::{Options, Output, gather, query, slis, text};
}

/// The `dead-letters` command.
pub mod dead_letters {
    pub use crate::dead_letters::{Action, Options, run};
}

/// The Grafana dashboards.
pub mod dashboards {
    pub use crate::dashboards::{for_operator, for_service, queries};
}

/// Rendering without a cluster.
pub mod render {
    pub use crate::render::{objects, parse};
}

/// What the API server serves.
pub mod capabilities {
    pub use crate::capabilities::Capabilities;
}

/// The controller's options.
pub mod controller {
    pub use crate::controller::Options;
}

/// The operator's metrics.
pub mod telemetry {
    pub use crate::telemetry::Metrics;
}

/// YAML in and out.
pub mod yaml {
    pub use crate::yaml::{from_yaml_documents, to_yaml, to_yaml_documents};
}
