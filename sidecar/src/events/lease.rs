//! A short exclusive lease on a key (`SET NX PX` as a guarded commit), so one replica at a time
//! relays a shard's outbox or reads the events stream. If the holder dies the lease lapses.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::store::{Backend, Commit, CommitOutcome, Guard, WriteOp};

/// How long a lease lasts: far longer than one pass, short enough for a quick takeover.
pub(crate) const LEASE: Duration = Duration::from_secs(5);

/// A held lease. Dropped without [`Lease::release`] — the pass failed, or its future was
/// dropped at an `.await` (shutdown, an aborted task) — it is given back in the background, so
/// another replica can take over at once instead of waiting for it to lapse.
pub(crate) struct Lease {
    key: String,
    token: String,
    backend: Arc<dyn Backend>,
    held: bool,
}

impl Lease {
    /// Takes the lease on `key` for `holder`, or `None` when another holder has it.
    pub(crate) async fn acquire(
        backend: &Arc<dyn Backend>,
        key: String,
        holder: &str,
    ) -> Result<Option<Self>> {
        let ms = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
        let mut lease = Self {
            token: format!("{holder}:{}", uuid::Uuid::new_v4()),
            key,
            backend: backend.clone(),
            held: true,
        };
        // Held from here on: the commit may take effect even if its answer never arrives, so a
        // drop at this `.await` gives the lease back too (by token: never another's).
        let take = Commit {
            guards: vec![Guard::Eq(lease.key.clone(), None)],
            writes: vec![WriteOp::SetPx(lease.key.clone(), lease.token.clone(), ms)],
            ..Commit::default()
        };
        if matches!(backend.commit(take).await?, CommitOutcome::Applied(_)) {
            Ok(Some(lease))
        } else {
            lease.held = false;
            Ok(None)
        }
    }

    /// The guard that makes a commit apply only while the lease is still held.
    pub(crate) fn guard(&self) -> Guard {
        Guard::Eq(self.key.clone(), Some(self.token.clone()))
    }

    /// The commit that gives the lease back (if it is still ours).
    fn give_back(&self) -> Commit {
        Commit {
            guards: vec![self.guard()],
            writes: vec![WriteOp::Del(self.key.clone())],
            ..Commit::default()
        }
    }

    /// Gives the lease back now.
    pub(crate) async fn release(mut self) -> Result<()> {
        self.held = false;
        self.backend.commit(self.give_back()).await?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        // Outside a runtime (the process is ending) the lease simply lapses.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (backend, commit) = (self.backend.clone(), self.give_back());
            runtime.spawn(async move {
                let _ = backend.commit(commit).await;
            });
        }
    }
}
