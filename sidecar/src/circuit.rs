//! A circuit breaker's state machine, shared by the Redis backend ([`crate::store::breaker`])
//! and the identity provider's key fetch ([`crate::api::auth`]).
//!
//! After `failures_to_open` consecutive failed calls the circuit opens: calls are refused at
//! once instead of waiting on a dead peer. After `open_for` one trial call is let through
//! (half-open); its success closes the circuit, its failure opens it again. A trial whose
//! future is dropped before it ends tells nothing about the peer: the next call becomes the
//! trial, so the circuit can never stay half-open for good.
//!
//! Hand-written rather than a crate: the state machine is these few lines, and the crates on
//! offer are either unmaintained or tied to tower services rather than to any future.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// One circuit; its state is also kept in a gauge: 0 closed, 1 half-open, 2 open.
pub(crate) struct Circuit {
    state: Mutex<State>,
    failures_to_open: u32,
    open_for: Duration,
    gauge: IntGauge,
}

impl Circuit {
    #[must_use]
    pub(crate) fn new(failures_to_open: u32, open_for: Duration, gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            failures_to_open,
            open_for,
            gauge,
        }
    }

    /// Runs `call` unless the circuit is open (`None`); `failed` tells which outcomes are the
    /// peer's failures (domain outcomes never count).
    pub(crate) async fn call<T, F>(&self, call: F, failed: impl FnOnce(&T) -> bool) -> Option<T>
    where
        F: Future<Output = T>,
    {
        let trial = self.admit()?;
        let mut pending = PendingTrial {
            circuit: self,
            armed: trial,
        };
        let outcome = call.await;
        pending.armed = false;
        self.record(!failed(&outcome));
        Some(outcome)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, state: &mut State, next: State) {
        *state = next;
        self.gauge.set(match next {
            State::Closed { .. } => 0,
            State::HalfOpen => 1,
            State::Open { .. } => 2,
        });
    }

    /// Whether a call may go through now (`Some(true)` for the half-open trial).
    fn admit(&self) -> Option<bool> {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Some(false),
            State::Open { until } if Instant::now() >= until => {
                self.set(&mut state, State::HalfOpen);
                Some(true)
            }
            State::Open { .. } | State::HalfOpen => None,
        }
    }

    fn abandon_trial(&self) {
        let mut state = self.state();
        if *state == State::HalfOpen {
            self.set(
                &mut state,
                State::Open {
                    until: Instant::now(),
                },
            );
        }
    }

    fn record(&self, ok: bool) {
        let mut state = self.state();
        let next = match (*state, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.failures_to_open => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => State::Open {
                until: Instant::now() + self.open_for,
            },
        };
        self.set(&mut state, next);
    }
}

/// Held across the half-open trial's `.await`: dropped with the future, it abandons the trial.
struct PendingTrial<'a> {
    circuit: &'a Circuit,
    armed: bool,
}

impl Drop for PendingTrial<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.circuit.abandon_trial();
        }
    }
}
