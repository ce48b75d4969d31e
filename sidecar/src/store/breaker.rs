//! A circuit breaker (and the Redis metrics) around a backend.
//!
//! After [`FAILURES_TO_OPEN`] consecutive failed calls the circuit opens: calls fail at once with
//! `Unavailable` (503 + `Retry-After` at the API) instead of waiting on a dead Redis. After
//! [`OPEN_FOR`] one trial call is let through (half-open); its success closes the circuit, its
//! failure opens it again. Only infrastructure failures count, never domain outcomes.
//!
//! Hand-written rather than a crate: the state machine is these few lines, and the crates on
//! offer are either unmaintained or tied to tower services rather than to a trait like ours.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Backend, BackendError, Commit, CommitOutcome, Probe, ReadOp, Reply};
use crate::metrics::Metrics;

/// Consecutive failures that open the circuit.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How long the circuit stays open before a trial call.
pub const OPEN_FOR: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// A backend behind a circuit breaker, with call durations and errors recorded.
pub struct Breaker {
    inner: Box<dyn Backend>,
    state: Mutex<State>,
    metrics: Metrics,
}

impl Breaker {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Backend>, metrics: Metrics) -> Self {
        metrics.circuit_state.set(0);
        Self {
            inner,
            state: Mutex::new(State::Closed { failures: 0 }),
            metrics,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may go through now (`Some(true)` for the half-open trial); moves Open to
    /// HalfOpen when the time has come.
    fn admit(&self) -> Option<bool> {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Some(false),
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                self.metrics.circuit_state.set(1);
                Some(true)
            }
            State::Open { .. } | State::HalfOpen => None,
        }
    }

    /// A trial that ended without an outcome (its future was dropped: the client went away)
    /// tells nothing about Redis; the next call becomes the trial instead. Without this the
    /// circuit would stay half-open, refusing every call, for good.
    fn abandon_trial(&self) {
        let mut state = self.state();
        if *state == State::HalfOpen {
            *state = State::Open {
                until: Instant::now(),
            };
            self.metrics.circuit_state.set(2);
        }
    }

    fn record(&self, ok: bool) {
        let mut state = self.state();
        let next = match (*state, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < FAILURES_TO_OPEN => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => State::Open {
                until: Instant::now() + OPEN_FOR,
            },
        };
        *state = next;
        self.metrics.circuit_state.set(match next {
            State::Closed { .. } => 0,
            State::HalfOpen => 1,
            State::Open { .. } => 2,
        });
    }

    async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = Result<T, BackendError>>,
    {
        let Some(trial) = self.admit() else {
            self.metrics.redis_errors.with_label_values(&[op]).inc();
            return Err(BackendError::Unavailable("circuit breaker open".into()));
        };
        let mut pending = PendingTrial {
            breaker: self,
            armed: trial,
        };
        let started = Instant::now();
        let result = f.await;
        pending.armed = false;
        self.metrics
            .redis_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let infrastructure_failure = matches!(result, Err(BackendError::Unavailable(_)));
        if infrastructure_failure {
            self.metrics.redis_errors.with_label_values(&[op]).inc();
        }
        self.record(!infrastructure_failure);
        result
    }
}

/// Held across the half-open trial's `.await`: dropped with the future, it abandons the trial.
struct PendingTrial<'a> {
    breaker: &'a Breaker,
    armed: bool,
}

impl Drop for PendingTrial<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.abandon_trial();
        }
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
