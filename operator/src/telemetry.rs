//! The operator's own metrics and logs.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::crd::RedisClusterStatus;

/// Reconcile counts, durations and errors, whether this replica leads, the webhook's
/// admissions, and each Redis Cluster's health and the steps taken on it.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `result`: `success`, `requeue` (not ready yet or an optional API missing), `error`.
    pub reconciles: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    /// `reason`: the failure's condition reason (`ApplyFailed`, `SecretReadFailed`, …).
    pub errors: IntCounterVec,
    pub leader: IntGauge,
    /// `result`: `injected`, `skipped` (not asked for, or excluded), `denied`.
    pub webhook_admissions: IntCounterVec,
    /// Redis Cluster steps carried out, by `namespace`, `session_service` and `action`
    /// (`slot_moved`, `failover`, `meet`: a peer address repaired or a node joined).
    cluster_actions: IntCounterVec,
    /// By `namespace` and `session_service`.
    pub cluster_keys_moved: IntCounterVec,
    /// Each cluster as last seen, by `namespace` and `session_service`.
    cluster_masters: IntGaugeVec,
    cluster_slots_assigned: IntGaugeVec,
    cluster_failing_nodes: IntGaugeVec,
}

const SERVICE: &[&str] = &["namespace", "session_service"];

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), SERVICE);
        let metrics = Self {
            registry: Registry::new(),
            reconciles: counter(
                "session_operator_reconciles_total",
                "Reconciles of SessionServices, by result.",
                &["result"],
            )?,
            reconcile_duration: HistogramVec::new(
                HistogramOpts::new(
                    "session_operator_reconcile_duration_seconds",
                    "Time one reconcile of a SessionService took.",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &[],
            )?,
            errors: counter(
                "session_operator_reconcile_errors_total",
                "Failures inside reconciles, by condition reason.",
                &["reason"],
            )?,
            leader: IntGauge::new(
                "session_operator_leader",
                "1 while this replica holds the leader lease and runs the controller.",
            )?,
            webhook_admissions: counter(
                "session_operator_webhook_admissions_total",
                "Pod admissions answered by the webhook, by result (injected, skipped, denied).",
                &["result"],
            )?,
            cluster_actions: counter(
                "session_operator_redis_cluster_actions_total",
                "Redis Cluster steps carried out by the operator, by SessionService and action.",
                &["namespace", "session_service", "action"],
            )?,
            cluster_keys_moved: counter(
                "session_operator_redis_cluster_keys_moved_total",
                "Keys moved between Redis Cluster masters by the operator's slot migrations.",
                SERVICE,
            )?,
            cluster_masters: gauge(
                "session_operator_redis_cluster_masters",
                "Masters owning slots in the Redis Cluster, as the operator last saw it.",
            )?,
            cluster_slots_assigned: gauge(
                "session_operator_redis_cluster_slots_assigned",
                "Hash slots (of 16384) owned by a master, as the operator last saw the cluster.",
            )?,
            cluster_failing_nodes: gauge(
                "session_operator_redis_cluster_failing_nodes",
                "Nodes marked failing and pods not answering, as the operator last saw the cluster.",
            )?,
        };
        // Counted from the start, so a rate is 0 rather than absent before the first one.
        for result in ["injected", "skipped", "denied"] {
            metrics.webhook_admissions.with_label_values(&[result]);
        }
        for c in [
            Box::new(metrics.reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.reconcile_duration.clone()),
            Box::new(metrics.errors.clone()),
            Box::new(metrics.leader.clone()),
            Box::new(metrics.webhook_admissions.clone()),
            Box::new(metrics.cluster_actions.clone()),
            Box::new(metrics.cluster_keys_moved.clone()),
            Box::new(metrics.cluster_masters.clone()),
            Box::new(metrics.cluster_slots_assigned.clone()),
            Box::new(metrics.cluster_failing_nodes.clone()),
        ] {
            metrics.registry.register(c)?;
        }
        Ok(metrics)
    }

    /// Counts `n` Redis Cluster steps of `action` on one SessionService.
    pub fn cluster_step(&self, namespace: &str, name: &str, action: &str, n: usize) {
        self.cluster_actions
            .with_label_values(&[namespace, name, action])
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Records a cluster's health as a pass saw it; `None` (the cluster did not answer, or the
    /// SessionService no longer runs one) drops its series rather than keep a stale value.
    pub fn observe_cluster(&self, namespace: &str, name: &str, seen: Option<&RedisClusterStatus>) {
        let gauges = [
            &self.cluster_masters,
            &self.cluster_slots_assigned,
            &self.cluster_failing_nodes,
        ];
        let Some(seen) = seen else {
            for gauge in gauges {
                let _ = gauge.remove_label_values(&[namespace, name]);
            }
            return;
        };
        let values = [
            seen.masters.len(),
            seen.masters
                .iter()
                .map(|m| usize::try_from(m.slots).unwrap_or(0))
                .sum(),
            seen.failing.len(),
        ];
        for (gauge, value) in gauges.into_iter().zip(values) {
            gauge
                .with_label_values(&[namespace, name])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Structured JSON logs on stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
