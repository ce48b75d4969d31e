//! The operator's dashboard: reconciles and their errors, the leader, the webhook's
//! admissions and the Redis Cluster steps it took, over every SessionService it manages.

use super::{Panel, Unit};

pub(crate) fn panels() -> Vec<Panel> {
    let rate = |by: &str, metric: &str| format!("sum by ({by}) (rate({metric}[$__rate_interval]))");
    let quantile = |q: f64| {
        format!(
            "histogram_quantile({q}, sum by (le) (rate(session_operator_reconcile_duration_seconds_bucket[$__rate_interval])))"
        )
    };
    vec![
        Panel::stat(
            "Leaders",
            "Replicas holding the leader lease: exactly one runs the controller; 0 means nothing reconciles.",
            Unit::Number,
        )
        .query("sum(session_operator_leader)", "")
        .below("red")
        .threshold(1.0, "green")
        .threshold(2.0, "red"),
        Panel::stat(
            "Reconcile errors (1 h)",
            "Failures inside reconciles over the last hour; the reasons are the conditions' reasons.",
            Unit::Number,
        )
        .query(
            "sum(increase(session_operator_reconcile_errors_total[1h])) or vector(0)",
            "",
        )
        .threshold(1.0, "orange"),
        Panel::stat(
            "Admissions denied (1 h)",
            "Pods the webhook refused over the last hour (their SessionService is missing or unreadable).",
            Unit::Number,
        )
        .query(
            r#"sum(increase(session_operator_webhook_admissions_total{result="denied"}[1h])) or vector(0)"#,
            "",
        )
        .threshold(1.0, "orange"),
        Panel::stat(
            "Leader by pod",
            "Which replica leads now.",
            Unit::Number,
        )
        .query("max by (instance) (session_operator_leader) == 1", "{{instance}}"),
        Panel::graph(
            "Reconciles by result",
            "Reconciles per second: success, requeue (waiting for something to be ready, or an optional API is missing) and error.",
            Unit::PerSecond,
        )
        .query(&rate("result", "session_operator_reconciles_total"), "{{result}}"),
        Panel::graph(
            "Reconcile duration",
            "How long one reconcile of a SessionService takes.",
            Unit::Seconds,
        )
        .query(&quantile(0.5), "p50")
        .query(&quantile(0.99), "p99"),
        Panel::graph(
            "Reconcile errors by reason",
            "Failures inside reconciles per second, by the condition reason they set (ApplyFailed, SecretReadFailed, …).",
            Unit::PerSecond,
        )
        .query(&rate("reason", "session_operator_reconcile_errors_total"), "{{reason}}"),
        Panel::graph(
            "Webhook admissions",
            "Pod admissions per second: the sidecar injected, the pod left as it was (no label, or excluded), or denied.",
            Unit::PerSecond,
        )
        .query(&rate("result", "session_operator_webhook_admissions_total"), "{{result}}"),
        Panel::graph(
            "Redis Cluster steps",
            "Slots moved, coordinated failovers and peer addresses repaired, per second, by SessionService.",
            Unit::PerSecond,
        )
        .query(
            &rate("namespace, session_service, action", "session_operator_redis_cluster_actions_total"),
            "{{namespace}}/{{session_service}} {{action}}",
        ),
        Panel::graph(
            "Keys moved by slot migrations",
            "Keys moved between masters per second while the operator reshards.",
            Unit::PerSecond,
        )
        .query(
            &rate("namespace, session_service", "session_operator_redis_cluster_keys_moved_total"),
            "{{namespace}}/{{session_service}}",
        ),
    ]
}
