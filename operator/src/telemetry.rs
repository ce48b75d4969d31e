//! The operator's own metrics and logs.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Reconcile counts, durations and errors, and whether this replica leads.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `result`: `success`, `requeue` (not ready yet or an optional API missing), `error`.
    pub reconciles: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    /// `reason`: the failure's condition reason (`ApplyFailed`, `SecretReadFailed`, …).
    pub errors: IntCounterVec,
    pub leader: IntGauge,
    /// Redis Cluster steps the operator carried out, by `action` (`slot_moved`, `failover`,
    /// `meet`: a peer address repaired or a node joined).
    pub cluster_actions: IntCounterVec,
    pub cluster_keys_moved: IntCounter,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "session_operator_reconciles_total",
                "Reconciles of SessionServices, by result.",
            ),
            &["result"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "session_operator_reconcile_duration_seconds",
                "Time one reconcile of a SessionService took.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &[],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "session_operator_reconcile_errors_total",
                "Failures inside reconciles, by condition reason.",
            ),
            &["reason"],
        )?;
        let leader = IntGauge::new(
            "session_operator_leader",
            "1 while this replica holds the leader lease and runs the controller.",
        )?;
        let cluster_actions = IntCounterVec::new(
            Opts::new(
                "session_operator_redis_cluster_actions_total",
                "Redis Cluster steps carried out by the operator, by action.",
            ),
            &["action"],
        )?;
        let cluster_keys_moved = IntCounter::new(
            "session_operator_redis_cluster_keys_moved_total",
            "Keys moved between Redis Cluster masters by the operator's slot migrations.",
        )?;
        registry.register(Box::new(cluster_actions.clone()))?;
        registry.register(Box::new(cluster_keys_moved.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            leader,
            cluster_actions,
            cluster_keys_moved,
        })
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
