//! The Redis dashboard: the sidecars' and the session service's Redis calls (rate, latency and
//! errors by operation), the inbound events set aside, and, in cluster mode, the cluster's
//! health as the operator last saw it.

use super::{Panel, Unit, service_selector};
use crate::crd::{RedisMode, SessionService};

pub(crate) fn panels(ss: &SessionService) -> Vec<Panel> {
    let select = service_selector(ss);
    let by_op =
        |metric: &str| format!("sum by (op) (rate({metric}{{{select}}}[$__rate_interval]))");
    let quantile = |q: f64| {
        format!(
            "histogram_quantile({q}, sum by (le, op) (rate(session_redis_command_duration_seconds_bucket{{{select}}}[$__rate_interval])))"
        )
    };
    let mut panels = Vec::new();
    if ss.spec.redis.mode == RedisMode::Cluster {
        let (namespace, name) = (
            kube::ResourceExt::namespace(ss).unwrap_or_else(|| "default".to_owned()),
            kube::ResourceExt::name_any(ss),
        );
        let cluster = |metric: &str| {
            format!(r#"{metric}{{namespace="{namespace}",session_service="{name}"}}"#)
        };
        panels.extend([
            Panel::stat(
                "Masters",
                "Masters owning slots, as the operator's last look at the cluster found them.",
                Unit::Number,
            )
            .query(&cluster("session_operator_redis_cluster_masters"), ""),
            Panel::stat(
                "Slots assigned",
                "Share of the 16 384 hash slots owned by a master: below 100 % some keys cannot be served.",
                Unit::Ratio,
            )
            .query(&format!("{} / 16384", cluster("session_operator_redis_cluster_slots_assigned")), "")
            .below("red")
            .threshold(1.0, "green"),
            Panel::stat(
                "Failing nodes",
                "Nodes the cluster marks as failing, and pods that do not answer.",
                Unit::Number,
            )
            .query(&cluster("session_operator_redis_cluster_failing_nodes"), "")
            .threshold(1.0, "red"),
            Panel::stat(
                "Cluster steps (1 h)",
                "Slots moved, failovers and repairs the operator carried out over the last hour.",
                Unit::Number,
            )
            .query(
                &format!(
                    "sum(increase({}[1h])) or vector(0)",
                    cluster("session_operator_redis_cluster_actions_total")
                ),
                "",
            ),
        ]);
    }
    panels.extend([
        Panel::graph(
            "Redis calls by operation",
            "Read and commit scripts per second, by operation, from every sidecar and session-service pod.",
            Unit::PerSecond,
        )
        .query(&by_op("session_redis_command_duration_seconds_count"), "{{op}}"),
        Panel::graph(
            "Redis errors by operation",
            "Failed Redis calls per second, including those the open circuit breaker refused without trying.",
            Unit::PerSecond,
        )
        .query(&by_op("session_redis_errors_total"), "{{op}}"),
        Panel::graph(
            "Redis latency p50 by operation",
            "Median duration of a Redis call, seen from the client (network included).",
            Unit::Seconds,
        )
        .query(&quantile(0.5), "{{op}}"),
        Panel::graph(
            "Redis latency p99 by operation",
            "99th percentile of a Redis call, seen from the client.",
            Unit::Seconds,
        )
        .query(&quantile(0.99), "{{op}}"),
        Panel::graph(
            "Dead letters",
            "Inbound events set aside per second, by reason, and dead letters replayed through the API, by result.",
            Unit::PerSecond,
        )
        .query(
            &format!("sum by (reason) (rate(session_dead_letters_total{{{select}}}[$__rate_interval]))"),
            "set aside: {{reason}}",
        )
        .query(
            &format!("sum by (result) (rate(session_dead_letter_replays_total{{{select}}}[$__rate_interval]))"),
            "replay: {{result}}",
        ),
    ]);
    panels
}
