//! A circuit breaker (and the Redis metrics) around a backend.
//!
//! After [`FAILURES_TO_OPEN`] consecutive failed calls the circuit opens: calls fail at once with
//! `Unavailable` (503 + `Retry-After` at the API) instead of waiting on a dead Redis. After
//! [`OPEN_FOR`] one trial call is let through (half-open); its success closes the circuit, its
//! failure opens it again. Only infrastructure failures count, never domain outcomes. The
//! state machine is [`Circuit`].

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Backend, BackendError, Commit, CommitOutcome, Probe, ReadOp, Reply};
use crate::circuit::Circuit;
use crate::metrics::Metrics;

/// Consecutive failures that open the circuit.
pub(crate) const FAILURES_TO_OPEN: u32 = 3;
/// How long the circuit stays open before a trial call.
pub(crate) const OPEN_FOR: Duration = Duration::from_millis(500);

/// A backend behind a circuit breaker, with call durations and errors recorded.
pub struct Breaker {
    inner: Box<dyn Backend>,
    circuit: Circuit,
    metrics: Metrics,
}

impl Breaker {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Backend>, metrics: Metrics) -> Self {
        Self {
            inner,
            circuit: Circuit::new(FAILURES_TO_OPEN, OPEN_FOR, metrics.circuit_state.clone()),
            metrics,
        }
    }

    async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = Result<T, BackendError>>,
    {
        let unavailable =
            |r: &Result<T, BackendError>| matches!(r, Err(BackendError::Unavailable(_)));
        let started = Instant::now();
        let Some(result) = self.circuit.call(f, unavailable).await else {
            self.metrics.redis_errors.with_label_values(&[op]).inc();
            return Err(BackendError::Unavailable("circuit breaker open".into()));
        };
        self.metrics
            .redis_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if unavailable(&result) {
            self.metrics.redis_errors.with_label_values(&[op]).inc();
        }
        result
    }
}

#[async_trait]
impl Backend for Breaker {
    async fn read(&self, ops: Vec<ReadOp>) -> Result<Vec<Reply>, BackendError> {
        self.call("read", self.inner.read(ops)).await
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, BackendError> {
        self.call("commit", self.inner.commit(commit)).await
    }

    async fn probe(&self, probes: Vec<Probe>) -> Result<Vec<bool>, BackendError> {
        self.call("probe", self.inner.probe(probes)).await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.call("ping", self.inner.ping()).await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryBackend;

    #[tokio::test]
    async fn opens_after_failures_and_recovers_through_half_open() {
        let b = Breaker::new(Box::new(MemoryBackend::new()), Metrics::new("t"));
        let fail = || async { Err::<(), _>(BackendError::Unavailable("down".into())) };
        for _ in 0..FAILURES_TO_OPEN {
            assert!(b.call("read", fail()).await.is_err());
        }
        assert_eq!(b.metrics.circuit_state.get(), 2);
        let started = Instant::now();
        let refused = b.call("read", async { Ok(()) }).await;
        assert!(matches!(refused, Err(BackendError::Unavailable(m)) if m.contains("circuit")));
        assert!(
            started.elapsed() < Duration::from_millis(5),
            "fails fast while open"
        );
        tokio::time::sleep(OPEN_FOR).await;
        assert!(
            b.call("read", async { Ok(()) }).await.is_ok(),
            "the trial call goes through"
        );
        assert_eq!(b.metrics.circuit_state.get(), 0);
        let domain = b
            .call("commit", async {
                Err::<(), _>(BackendError::AppendFailed("x".into()))
            })
            .await;
        assert!(domain.is_err());
        assert_eq!(
            b.metrics.circuit_state.get(),
            0,
            "domain failures do not count"
        );
    }

    #[tokio::test]
    async fn a_dropped_trial_call_does_not_leave_the_circuit_half_open() {
        let b = Breaker::new(Box::new(MemoryBackend::new()), Metrics::new("t"));
        for _ in 0..FAILURES_TO_OPEN {
            let _ = b
                .call("read", async {
                    Err::<(), _>(BackendError::Unavailable("down".into()))
                })
                .await;
        }
        tokio::time::sleep(OPEN_FOR).await;
        // The trial is cancelled at its await point (the client disconnected).
        let trial = b.call("read", std::future::pending::<Result<(), BackendError>>());
        assert!(
            tokio::time::timeout(Duration::from_millis(10), trial)
                .await
                .is_err()
        );
        assert!(
            b.call("read", async { Ok(()) }).await.is_ok(),
            "the next call is the new trial"
        );
        assert_eq!(b.metrics.circuit_state.get(), 0);
    }
}
