//! Background work of server mode (and of the embedded store, which has nobody else to do it):
//! the outbox relay, the expiry sweeper and the consumer of inbound events, with its dead
//! letters.
//!
//! Each is a loop around a `*_once` function that the tests call directly. All three are safe
//! with many replicas: the relay and the consumer take a short lease per shard (or for the
//! stream), and the sweeper relies on guarded commits (a session already expired by
//! another replica fails its guard and is skipped).

mod consumer;
pub(crate) mod dead_letters;
mod lease;
mod relay;

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::store::Probe;

pub use consumer::consume_once;
pub use relay::relay_once;

/// Pause between relay passes when the outbox was empty: bounds event delivery delay.
pub(crate) const RELAY_INTERVAL: Duration = Duration::from_millis(200);
/// Pause between sweeps: expiry events follow `expires_at` by at most about this much.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Pause between reads of the events stream when it had nothing new.
pub(crate) const CONSUME_INTERVAL: Duration = Duration::from_millis(250);
/// Entries handled per shard and pass.
pub(crate) const BATCH: usize = 100;

/// Expires due sessions on every shard that has any; returns how many were expired.
///
/// # Errors
/// When the store fails.
pub async fn sweep_once(sessions: &Sessions) -> crate::error::Result<usize> {
    #[allow(clippy::cast_precision_loss)]
    let now = sessions.now() as f64;
    let keys = sessions.keys();
    let mut expired = 0;
    for shard in shards_where(sessions, |s| Probe::DueBy(keys.expiry(s), now)).await? {
        expired += sessions.expire_due(shard, BATCH).await?;
    }
    Ok(expired)
}

/// The shards for which `probe` finds work. One store call per Redis master, whatever the
/// number of shards: an idle pass costs the same with 16 shards or 1 024.
pub(crate) async fn shards_where(
    sessions: &Sessions,
    probe: impl Fn(u32) -> Probe,
) -> crate::error::Result<Vec<u32>> {
    let shards: Vec<u32> = (0..sessions.policy().shard_count).collect();
    let answers = sessions
        .backend()
        .probe(shards.iter().map(|&s| probe(s)).collect())
        .await?;
    Ok(shards
        .into_iter()
        .zip(answers)
        .filter_map(|(shard, busy)| busy.then_some(shard))
        .collect())
}

/// Starts the three loops; they stop when `shutdown` turns true.
pub(crate) fn spawn(
    sessions: &Sessions,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> JoinSet<()> {
    let worker = uuid::Uuid::new_v4().to_string();
    let mut set = JoinSet::new();
    let (s, w) = (sessions.clone(), worker.clone());
    set.spawn(run_loop(
        "relay",
        RELAY_INTERVAL,
        shutdown.clone(),
        move || {
            let (s, w) = (s.clone(), w.clone());
            async move { relay_once(&s, &w).await }
        },
    ));
    let s = sessions.clone();
    set.spawn(run_loop(
        "sweeper",
        SWEEP_INTERVAL,
        shutdown.clone(),
        move || {
            let s = s.clone();
            async move { sweep_once(&s).await }
        },
    ));
    let (s, m) = (sessions.clone(), metrics.clone());
    set.spawn(run_loop(
        "consumer",
        CONSUME_INTERVAL,
        shutdown.clone(),
        move || {
            let (s, m, w) = (s.clone(), m.clone(), worker.clone());
            async move { consume_once(&s, &m, &w).await }
        },
    ));
    set
}

/// Runs `pass` until shutdown; a pass that did work runs again at once, an idle or failed one
/// waits `interval` (failures are logged, never fatal: the store may come back).
async fn run_loop<F, Fut>(
    name: &'static str,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<usize>>,
{
    while !crate::stopping(&shutdown) {
        let busy = match pass().await {
            Ok(n) => n > 0,
            Err(error) => {
                tracing::warn!(worker = name, %error, "background pass failed");
                false
            }
        };
        if !busy {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
