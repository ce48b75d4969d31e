//! Changing one session: update (merge patch), heartbeat, end, delete.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::input::{
    EndSession, Heartbeat, UpdateSession, check_id, check_object_size, check_title,
};
use crate::model::{EventType, Record};
use crate::store::{Reads, WriteOp};

use super::plan::Plan;
use super::{Caller, Ctx, Sessions, Step};

impl Sessions {
    /// Applies a merge patch to the mutable fields.
    ///
    /// # Errors
    /// 400 invalid patch, 403 wrong user, 404, 409 ended session or taken title, 503.
    pub async fn update(&self, ctx: &Ctx, id: &str, patch: UpdateSession) -> Result<Record> {
        if let Some(Some(title)) = &patch.title {
            check_title(title)?;
        }
        for (field, value) in [
            ("case_id", patch.case_id.clone().flatten()),
            ("performer_id", patch.performer_id.clone()),
        ] {
            if let Some(v) = value {
                check_id(field, &v)?;
            }
        }
        let (shard, first) = self.owned(ctx, id, patch.user_id.as_ref()).await?;
        self.retry(|| self.try_update(ctx, shard, &first.user_id, id, &patch))
            .await
    }

    async fn try_update(
        &self,
        ctx: &Ctx,
        shard: u32,
        user: &str,
        id: &str,
        patch: &UpdateSession,
    ) -> Result<Step<Record>> {
        let new_title = patch.title.clone().flatten();
        let mut reads = Reads::new();
        let title_owner = reads.hget(
            self.keys.titles(shard, user),
            new_title.clone().unwrap_or_default(),
        );
        let (version, record, mut r) = self.snapshot_of(shard, id, user, reads).await?;
        let now = self.now();
        let mut record = self.still_active(record)?;
        let title_owner = r
            .take(title_owner)
            .filter(|o| new_title.is_some() && o != id);
        if let Some(owner) = title_owner {
            let Some(docs) = self
                .read_docs(shard, user, version.as_ref(), std::slice::from_ref(&owner))
                .await?
            else {
                return Ok(Step::Retry);
            };
            if docs.get(&owner).is_some_and(|d| d.is_live(now)) {
                return Err(Error::TitleTaken);
            }
        }
        let mut plan = Plan::for_user(self, shard, user, version.as_ref());
        let (k, old) = (&self.keys, record.clone());
        if let Some(title) = &patch.title {
            if let Some(old_title) = &old.title {
                plan.write(WriteOp::HDel(
                    k.titles(shard, user),
                    vec![old_title.clone()],
                ));
            }
            if let Some(t) = title {
                plan.write(WriteOp::HSet(
                    k.titles(shard, user),
                    vec![(t.clone(), id.to_owned())],
                ));
            }
            record.title.clone_from(title);
        }
        if let Some(case) = &patch.case_id {
            if let Some(old_case) = &old.case_id {
                plan.write(WriteOp::ZRem(
                    k.case_sessions(shard, old_case),
                    id.to_owned(),
                ));
            }
            if let Some(c) = case {
                plan.write(WriteOp::ZAdd(k.case_sessions(shard, c), 0.0, id.to_owned()));
            }
            record.case_id.clone_from(case);
        }
        if let Some(m) = &patch.metadata {
            record.metadata = merge(&record.metadata, m);
            check_object_size("metadata", &record.metadata)?;
        }
        if let Some(d) = &patch.data {
            record.data = merge(&record.data, d);
            check_object_size("data", &record.data)?;
        }
        record.updated_ms = now;
        record.version += 1;
        let performer = patch.performer_id.clone().or_else(|| caller_name(ctx));
        plan.event(
            EventType::Updated,
            &record,
            performer.as_deref(),
            ctx.correlation_id.as_deref(),
        );
        plan.put(&record);
        Ok(if self.commit(plan).await? {
            Step::Done(record)
        } else {
            Step::Retry
        })
    }

    /// Extends an active session's expiry from now. Reads never do this implicitly.
    ///
    /// # Errors
    /// 400 invalid TTL, 403, 404, 409 ended session, 503.
    pub async fn heartbeat(&self, ctx: &Ctx, id: &str, input: Heartbeat) -> Result<Record> {
        let ttl_ms = self.ttl_ms(input.ttl_seconds)?;
        let (shard, first) = self.owned(ctx, id, input.user_id.as_ref()).await?;
        self.retry(|| async {
            let (version, record, _) = self
                .snapshot_of(shard, id, &first.user_id, Reads::new())
                .await?;
            let now = self.now();
            let mut record = self.still_active(record)?;
            record.expires_ms = now + ttl_ms;
            record.updated_ms = now;
            record.version += 1;
            let mut plan = Plan::for_user(self, shard, &first.user_id, version.as_ref());
            plan.put(&record);
            plan.reschedule(&record);
            Ok(if self.commit(plan).await? {
                Step::Done(record)
            } else {
                Step::Retry
            })
        })
        .await
    }

    /// Ends a session: the end boundary event.
    ///
    /// # Errors
    /// 400 without `performer_id` or with a mismatched `session_id`, 403 another user's session,
    /// 404, 409 already ended, 503.
    pub async fn end(&self, ctx: &Ctx, id: &str, input: EndSession) -> Result<Record> {
        let performer = input
            .performer_id
            .clone()
            .filter(|p| !p.is_empty())
            .ok_or(Error::PerformerRequired)?;
        check_id("performer_id", &performer)?;
        if input.session_id.as_deref().is_some_and(|s| s != id) {
            return Err(Error::SessionIdMismatch);
        }
        let (shard, first) = self.owned(ctx, id, input.user_id.as_ref()).await?;
        self.retry(|| async {
            let (version, record, _) = self
                .snapshot_of(shard, id, &first.user_id, Reads::new())
                .await?;
            let mut record = self.still_active(record)?;
            let mut plan = Plan::for_user(self, shard, &first.user_id, version.as_ref());
            plan.end(
                &mut record,
                &performer,
                self.policy.ended_retention_ms,
                ctx.correlation_id.as_deref(),
            );
            Ok(if self.commit(plan).await? {
                Step::Done(record)
            } else {
                Step::Retry
            })
        })
        .await
    }

    /// Deletes a session with its messages and memory. The current session cannot be deleted.
    ///
    /// # Errors
    /// 400 for the current session, 403, 404, 503.
    pub async fn delete(&self, ctx: &Ctx, id: &str) -> Result<()> {
        let (shard, first) = self.owned(ctx, id, None).await?;
        let user = first.user_id.as_str();
        self.retry(|| async {
            let snapshot = self
                .removal_snapshot(shard, id, user, first.title.as_ref())
                .await?;
            let record = self.still_live(snapshot.record)?;
            if snapshot.is_current {
                return Err(Error::CurrentSessionDelete);
            }
            let mut plan = Plan::for_user(self, shard, user, snapshot.version.as_ref());
            plan.event(
                EventType::Deleted,
                &record,
                caller_name(ctx).as_deref(),
                ctx.correlation_id.as_deref(),
            );
            plan.remove(&record, snapshot.owns_title, false);
            Ok(if self.commit(plan).await? {
                Step::Done(())
            } else {
                Step::Retry
            })
        })
        .await
    }
}

/// The performer recorded for a change that names none: the user behind a user token.
pub(crate) fn caller_name(ctx: &Ctx) -> Option<String> {
    match &ctx.caller {
        Caller::User(u) => Some(u.clone()),
        Caller::Trusted => None,
    }
}

/// RFC 7386 JSON merge patch of one object by another.
pub(crate) fn merge(
    target: &serde_json::Map<String, Value>,
    patch: &serde_json::Map<String, Value>,
) -> serde_json::Map<String, Value> {
    let mut doc = Value::Object(target.clone());
    json_patch::merge(&mut doc, &Value::Object(patch.clone()));
    match doc {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}
