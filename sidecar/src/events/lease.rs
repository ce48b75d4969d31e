//! A short exclusive lease on a key (`SET NX PX` as a guarded commit), so one replica at a time
//! relays a shard's outbox or reads the events stream. If the holder dies the lease lapses.

use std::time::Duration;

use crate::error::Result;
use crate::store::{Backend, Commit, CommitOutcome, Guard, WriteOp};

/// How long a lease lasts: far longer than one pass, short enough for a quick takeover.
pub const LEASE: Duration = Duration::from_secs(5);

/// A held lease.
pub struct Lease {
    key: String,
    token: String,
}

impl Lease {
    /// Takes the lease on `key` for `holder`, or `None` when another holder has it.
    pub async fn acquire(backend: &dyn Backend, key: String, holder: &str) -> Result<Option<Self>> {
        let ms = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
        let token = format!("{holder}:{}", uuid::Uuid::new_v4());
        let commit = Commit {
            guards: vec![Guard::Eq(key.clone(), None)],
            writes: vec![WriteOp::SetPx(key.clone(), token.clone(), ms)],
            ..Commit::default()
        };
        Ok(
            (backend.commit(commit).await? == CommitOutcome::Applied)
                .then_some(Self { key, token }),
        )
    }

    /// The guard that makes a commit apply only while the lease is still held.
    pub fn guard(&self) -> Guard {
        Guard::Eq(self.key.clone(), Some(self.token.clone()))
    }

    /// Gives the lease back (if it is still ours).
    pub async fn release(self, backend: &dyn Backend) -> Result<()> {
        let commit = Commit {
            guards: vec![self.guard()],
            writes: vec![WriteOp::Del(self.key)],
            ..Commit::default()
        };
        backend.commit(commit).await?;
        Ok(())
    }
}
