//! Changing one session: update (merge patch), heartbeat, end, delete.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::input::{
    EndSession, Heartbeat, UpdateSession, check_id, check_object_size, check_reason, check_title,
};
use crate::model::{EventType, Record, SessionView};
use crate::store::{NamedBy, Reads, WriteOp};

use super::plan::Plan;
use super::{Changing, Committed, Ctx, Refused, Sessions, Step, decode_record};

impl Sessions {
    /// Applies a merge patch to the mutable fields.
    ///
    /// # Errors
    /// 400 invalid patch, 403 wrong user, 404, 409 ended session or taken title, 503.
    pub(crate) async fn update(&self, ctx: &Ctx, id: &str, patch: UpdateSession) -> Result<Record> {
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
        if let Some(record) = self.update_unread(ctx, id, &patch).await? {
            return Ok(record);
        }
        self.retry(|| self.try_update(ctx, id, &patch)).await
    }

    /// A patch in one script call that the hints do not cover ([`Plan::patch_unread`]). `None`
    /// when the hints cover it, when the caller's token and the patch name two users, or when
    /// the store refused it for another reason than the session (gone, another user's, ended)
    /// or a limit (a title another live session holds, an object merged past the size limit),
    /// which the refusal answers: it is then decided on a snapshot.
    async fn update_unread(
        &self,
        ctx: &Ctx,
        id: &str,
        patch: &UpdateSession,
    ) -> Result<Option<Record>> {
        let (token, claimed) = (ctx.caller.user(), patch.user_id.as_deref());
        if token
            .zip(claimed)
            .is_some_and(|(token, claimed)| token != claimed)
            || self.hinted(ctx, id, patch.user_id.as_ref())?.is_some()
        {
            return Ok(None);
        }
        let shard = self.shard_of_session(id)?;
        let mut plan = Plan::for_unread_session(self, shard, id, [token, claimed]);
        let performer = patch.performer_id.as_deref().or(token);
        let correlation = ctx.correlation_id.as_deref();
        plan.patch_unread(id, patch, performer, correlation);
        match self.commit_read_back(plan, id, "patch").await? {
            Ok(patched) => Ok(Some(patched)),
            Err(refused) => {
                self.explain_refusal(ctx, patch.user_id.as_ref(), refused)?;
                Ok(None)
            }
        }
    }

    async fn try_update(&self, ctx: &Ctx, id: &str, patch: &UpdateSession) -> Result<Step<Record>> {
        let claimed = patch.user_id.as_ref();
        // A patch that leaves the title alone is decided on the session alone (from the write
        // hints when this process wrote it last). One that sets a new title also on the user's
        // title index: from the hints, the commit checks that no other live session holds it
        // (a refusal is 409 at once); else under the user's version, with the holder read.
        let hinted = self.hinted(ctx, id, claimed)?;
        let (session, mut plan) = if let Some(session) = hinted {
            let mut plan = Plan::for_session(self, session.shard, &session.record);
            if let Some(Some(title)) = &patch.title
                && session.record.title.as_ref() != Some(title)
            {
                plan.guard_title_free(title, Some(id));
            }
            (session, plan)
        } else if patch.title.is_none() {
            let session = self.read_for_change(ctx, id, claimed).await?;
            let plan = Plan::for_session(self, session.shard, &session.record);
            (session, plan)
        } else {
            let owned = self.owned_snapshot(ctx, id, claimed, Reads::new()).await?;
            let (shard, version) = (owned.shard, owned.version);
            let stored = self.still_active(Some(owned.record))?;
            let user = stored.user_id.clone();
            if let Some(Some(title)) = &patch.title
                && stored.title.as_ref() != Some(title)
            {
                // The title index is the user's: a second snapshot, under the same version.
                let mut reads = Reads::new();
                let now_version = reads.get(self.keys.user_version(shard, &user));
                let holder = reads.hgetall_at(
                    self.keys.session(shard, ""),
                    NamedBy::Field(self.keys.titles(shard, &user), title.clone()),
                );
                let mut r = self.read(reads).await?;
                if r.take(now_version) != version {
                    return Ok(Step::Retry);
                }
                let holder = decode_record(r.take(holder))?;
                if holder.is_some_and(|d| d.session_id != id && d.is_live(self.now())) {
                    return Err(Error::TitleTaken);
                }
            }
            let plan = Plan::for_user(self, shard, &user, version.as_ref());
            let session = Changing {
                shard,
                record: stored,
                hinted: false,
            };
            (session, plan)
        };
        let (shard, stored) = (session.shard, &session.record);
        let now = self.now();
        let mut record = stored.clone();
        let user = record.user_id.clone();
        let (k, old) = (&self.keys, stored);
        if let Some(title) = &patch.title {
            if let Some(old_title) = &old.title {
                plan.write(WriteOp::HDel(
                    k.titles(shard, &user),
                    vec![old_title.clone()],
                ));
            }
            if let Some(t) = title {
                plan.write(WriteOp::HSet(
                    k.titles(shard, &user),
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
        for (field, patched, object) in [
            ("metadata", &patch.metadata, &mut record.metadata),
            ("data", &patch.data, &mut record.data),
        ] {
            if let Some(patched) = patched {
                *object = merge(object, patched);
                if let Err(error) = check_object_size(field, object) {
                    return self.decide_on_snapshot(&session, error);
                }
            }
        }
        record.updated_ms = now;
        record.version += 1;
        let performer = patch
            .performer_id
            .clone()
            .or_else(|| ctx.caller.user().map(str::to_owned));
        plan.event(
            EventType::Updated,
            &record,
            performer.as_deref(),
            ctx.correlation_id.as_deref(),
        );
        plan.put(stored, &record);
        self.commit_or_retry(plan, record).await
    }

    /// Extends an active session's expiry from now. Reads never do this implicitly.
    ///
    /// # Errors
    /// 400 invalid TTL, 403, 404, 409 ended session, 503.
    pub(crate) async fn heartbeat(&self, ctx: &Ctx, id: &str, input: Heartbeat) -> Result<Record> {
        let ttl_ms = self.ttl_ms(input.ttl_seconds)?;
        let claimed = input.user_id.as_ref();
        self.retry(|| async {
            let Some(Changing {
                shard,
                record: stored,
                ..
            }) = self.hinted(ctx, id, claimed)?
            else {
                let expires_ms = self.now() + ttl_ms;
                let extend = |plan: &mut Plan| plan.extend_unread(id, expires_ms);
                return self
                    .change_unread(ctx, id, claimed, extend)
                    .await?
                    .try_map(|committed| committed.read_back_of(id, "heartbeat"));
            };
            let now = self.now();
            let mut record = stored.clone();
            record.expires_ms = now + ttl_ms;
            record.updated_ms = now;
            record.version += 1;
            let mut plan = Plan::for_session(self, shard, &stored);
            plan.put(&stored, &record);
            plan.reschedule(&record);
            self.commit_or_retry(plan, record).await
        })
        .await
    }

    /// Ends a session: the end boundary event.
    ///
    /// # Errors
    /// 400 without `performer_id` or with a mismatched `session_id`, 403 another user's session,
    /// 404, 409 already ended, 503.
    pub(crate) async fn end(&self, ctx: &Ctx, id: &str, input: EndSession) -> Result<SessionView> {
        let performer = input
            .performer_id
            .clone()
            .filter(|p| !p.is_empty())
            .ok_or(Error::PerformerRequired)?;
        check_id("performer_id", &performer)?;
        if let Some(reason) = &input.reason {
            check_reason(reason)?;
        }
        if input.session_id.as_deref().is_some_and(|s| s != id) {
            return Err(Error::SessionIdMismatch);
        }
        let claimed = input.user_id.as_ref();
        let (ending, retention_ms) = (
            (performer.as_str(), input.reason.as_deref()),
            self.policy.ended_retention_ms,
        );
        let correlation = ctx.correlation_id.as_deref();
        self.retry(|| async {
            let Some(Changing {
                shard,
                record: stored,
                ..
            }) = self.hinted(ctx, id, claimed)?
            else {
                let end = |plan: &mut Plan| plan.end_unread(id, ending, retention_ms, correlation);
                return self
                    .change_unread(ctx, id, claimed, end)
                    .await?
                    .try_map(|committed| committed.session_view(id, "ended"));
            };
            let mut plan = Plan::for_session(self, shard, &stored);
            let ended = plan.end(&stored, stored.clone(), ending, retention_ms, correlation);
            self.commit_or_retry(plan, ended.view()).await
        })
        .await
    }

    /// A change of session `id`, which this process does not know (see
    /// [`Plan::for_unread_session`]), in one call to the store: `change` adds its writes,
    /// which report the session as they leave it.
    async fn change_unread(
        &self,
        ctx: &Ctx,
        id: &str,
        claimed: Option<&String>,
        change: impl FnOnce(&mut Plan),
    ) -> Result<Step<Committed>> {
        let shard = self.shard_of_session(id)?;
        let owners = [ctx.caller.user(), claimed.map(String::as_str)];
        let mut plan = Plan::for_unread_session(self, shard, id, owners);
        change(&mut plan);
        self.commit_unread(plan, ctx, claimed).await
    }

    /// Deletes a session with its messages and memory. The current session cannot be deleted.
    ///
    /// # Errors
    /// 400 for the current session, 403, 404, 503.
    pub(crate) async fn delete(&self, ctx: &Ctx, id: &str) -> Result<()> {
        match self.delete_from_hints(ctx, id).await? {
            Some(Step::Done(())) => return Ok(()),
            Some(Step::Retry) => {}
            None => {
                if self.delete_unread(ctx, id).await? {
                    return Ok(());
                }
            }
        }
        let (shard, first) = self.owned(ctx, id, None).await?;
        let user = first.user_id.as_str();
        self.retry(|| async {
            let snapshot = self.removal_snapshot(shard, id, user).await?;
            let record = self.still_live(snapshot.record)?;
            if snapshot.is_current {
                return Err(Error::CurrentSessionDelete);
            }
            let mut plan = Plan::for_user(self, shard, user, snapshot.version.as_ref());
            self.plan_delete(&mut plan, ctx, &record, snapshot.owns_title);
            self.commit_or_retry(plan, ()).await
        })
        .await
    }

    /// A delete in one script call, when this process wrote the session and the user's
    /// current session (another one) last: the commit checks that both are unchanged and that
    /// the title's entry is the session's. `None` when the hints do not cover it or show the
    /// session current (the one-call delete then answers); a retry when the commit found them
    /// stale (they are dropped): the delete is then decided on a snapshot.
    async fn delete_from_hints(&self, ctx: &Ctx, id: &str) -> Result<Option<Step<()>>> {
        let Some(Changing { shard, record, .. }) = self.hinted(ctx, id, None)? else {
            return Ok(None);
        };
        let user = record.user_id.as_str();
        let Some(current) = self.hinted_current(shard, user) else {
            return Ok(None);
        };
        if current.session_id == id {
            return Ok(None); // most likely refused: the one-call delete says so in one call
        }
        let mut plan = Plan::for_session(self, shard, &record);
        plan.assume_current(&current.session_id);
        if let Some(title) = &record.title {
            plan.assume_title(title, Some(id));
        }
        self.plan_delete(&mut plan, ctx, &record, true);
        Ok(Some(self.commit_or_retry(plan, ()).await?))
    }

    /// A delete in one script call that the hints do not cover: the store checks the session
    /// live (an ended one too), the caller's and not the user's current session
    /// ([`Plan::remove_unread`]). A refusal because the session is gone, another user's or the
    /// user's current session answers 404, 403 or 400; `false` for any other: the delete is
    /// then decided on a snapshot, which says why.
    async fn delete_unread(&self, ctx: &Ctx, id: &str) -> Result<bool> {
        let shard = self.shard_of_session(id)?;
        let mut plan = Plan::for_unread_live_session(self, shard, id, [ctx.caller.user()]);
        plan.remove_unread(id, ctx.caller.user(), ctx.correlation_id.as_deref());
        if let Err(Refused(held)) = self.commit_explained(plan).await? {
            // Gone or another user's: 404 or 403; the user's current session: 400, as a
            // snapshot says (the `current` flag is set exactly while the user's pointer names
            // the session); else it decides.
            if self.owned_by(ctx, None, decode_record(held)?)?.current {
                return Err(Error::CurrentSessionDelete);
            }
            return Ok(false);
        }
        Ok(true)
    }

    fn plan_delete(&self, plan: &mut Plan, ctx: &Ctx, record: &Record, owns_title: bool) {
        plan.event(
            EventType::Deleted,
            record,
            ctx.caller.user(),
            ctx.correlation_id.as_deref(),
        );
        plan.remove(record, owns_title, false);
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
