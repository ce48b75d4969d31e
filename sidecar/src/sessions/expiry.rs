//! The expiry sweeper's rule: a due session is expired exactly once.
//!
//! Reads already treat `expires_at <= now` as gone; the sweeper makes it final. It takes due ids
//! from the shard's expiry queue and expires each one with a commit guarded by the user's
//! version, so when several server replicas sweep the same shard, exactly one commit wins and
//! exactly one `session.expired.v1` is published. Ended sessions past their retention are
//! purged without an event (their boundary event was `session.ended.v1`).

use crate::error::Result;
use crate::model::{EventType, Status};
use crate::store::{Bound, Commit, WriteOp, ZRange};

use super::plan::Plan;
use super::{Ctx, Sessions, Step, decode_record};

impl Sessions {
    /// Expires or purges up to `batch` due sessions of `shard`; returns how many were expired
    /// (events published) by this call.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn expire_due(&self, shard: u32, batch: usize) -> Result<usize> {
        let now = self.now();
        #[allow(clippy::cast_precision_loss)]
        let due = self
            .read_one(|r| {
                r.zrange(ZRange {
                    key: self.keys.expiry(shard),
                    min: Bound::NegInf,
                    max: Bound::Incl(now as f64),
                    rev: false,
                    offset: 0,
                    count: batch,
                })
            })
            .await?;
        let mut expired = 0;
        for (id, _) in due {
            if self.expire_one(shard, &id).await? {
                expired += 1;
            }
        }
        Ok(expired)
    }

    async fn expire_one(&self, shard: u32, id: &str) -> Result<bool> {
        let first = self
            .read_one(|r| r.hgetall(self.keys.session(shard, id)))
            .await?;
        let Some(first) = decode_record(first)? else {
            // A queue entry without a document: drop the entry.
            let commit = Commit {
                writes: vec![WriteOp::ZRem(self.keys.expiry(shard), id.to_owned())],
                ..Commit::default()
            };
            self.backend.commit(commit).await?;
            return Ok(false);
        };
        let user = first.user_id.as_str();
        let ctx = Ctx::system();
        self.retry(|| async {
            let snapshot = self.removal_snapshot(shard, id, user).await?;
            let now = self.now();
            let Some(record) = snapshot.record.filter(|r| r.expires_ms <= now) else {
                return Ok(Step::Done(false)); // gone already, or a heartbeat moved it
            };
            let mut plan = Plan::for_user(self, shard, user, snapshot.version.as_ref());
            let expiring = record.status == Status::Active;
            if expiring {
                let mut expired = record.clone();
                expired.status = Status::Expired;
                expired.current = false;
                expired.updated_ms = now;
                expired.version += 1;
                plan.event(
                    EventType::Expired,
                    &expired,
                    Some("system"),
                    ctx.correlation_id.as_deref(),
                );
            }
            plan.remove(&record, snapshot.owns_title, snapshot.is_current);
            self.commit_or_retry(plan, expiring).await
        })
        .await
    }
}
