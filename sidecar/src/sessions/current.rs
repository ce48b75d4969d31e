//! One current session per user: read it, switch it by id or by title.

use crate::error::{Error, Result};
use crate::ids::shard_of;
use crate::model::input::{SwitchCurrent, check_id};
use crate::model::{EventType, Record, Status};
use crate::store::Reads;

use super::plan::Plan;
use super::{Changing, Ctx, Refused, Sessions, Step, decode_record};

impl Sessions {
    /// The user's current session.
    ///
    /// # Errors
    /// 403 for another user's token, 404 when the user has no live current session, 503.
    pub(crate) async fn current(&self, ctx: &Ctx, user: &str) -> Result<Record> {
        check_id("user_id", user)?;
        ctx.caller.check_owner(user)?;
        let shard = shard_of(user, self.policy.shard_count);
        let id = self
            .read_one(|r| r.get(self.keys.current(shard, user)))
            .await?
            .ok_or(Error::NotFound("the user has no current session"))?;
        self.get(&id).await.map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound("the user has no current session"),
            other => other,
        })
    }

    /// Makes another active session of the user current.
    ///
    /// # Errors
    /// 400 unless exactly one of `session_id` and `title` is given, 403, 404 no such session of
    /// this user, 409 the session has ended, 503.
    pub(crate) async fn switch_current(
        &self,
        ctx: &Ctx,
        user: &str,
        target: SwitchCurrent,
    ) -> Result<Record> {
        check_id("user_id", user)?;
        ctx.caller.check_owner(user)?;
        if target.session_id.is_some() == target.title.is_some() {
            return Err(Error::Validation(
                "give exactly one of session_id and title".into(),
            ));
        }
        let shard = shard_of(user, self.policy.shard_count);
        if let Some(id) = &target.session_id
            && self.shard_of_session(id)? != shard
        {
            return Err(Error::NotFound("the user has no such session"));
        }
        if let Some(record) = self.switch_unread(ctx, shard, user, &target).await? {
            return Ok(record);
        }
        self.retry(|| self.try_switch(ctx, shard, user, &target))
            .await
    }

    /// A switch in one script call that the hints do not cover (see
    /// [`Sessions::switch_from_hints`]), to a session named by id or by title: the store checks
    /// the session active, unexpired, the user's, still so titled and not current already, and
    /// changes the current session before it through the user's pointer
    /// ([`Plan::switch_to_unread`]; by a title the hints do not know, the session is named by
    /// the user's title index: [`Plan::switch_to_titled`]). `None` when the hints cover the
    /// switch, or when the store refused it for another reason than the session being missing,
    /// gone, another user's, ended or current already (which the refusal answers): it is then
    /// decided on a snapshot.
    async fn switch_unread(
        &self,
        ctx: &Ctx,
        shard: u32,
        user: &str,
        target: &SwitchCurrent,
    ) -> Result<Option<Record>> {
        let (performer, correlation) = (ctx.caller.user(), ctx.correlation_id.as_deref());
        let Some(id) = self.target_known(user, target) else {
            let title = target.title.as_deref().unwrap_or_default();
            let plan = Plan::switch_to_titled(self, shard, user, title, performer, correlation);
            let committed = match self.commit_explained(plan).await? {
                Ok(committed) => committed,
                // No session has the title (404), or the one that has it is gone, ended or
                // current already, as a snapshot says; else it decides.
                Err(Refused(held)) => {
                    let found = decode_record(held)?
                        .ok_or(Error::NotFound("the user has no session with this title"))?;
                    if found.title.as_deref() != Some(title) {
                        return Ok(None);
                    }
                    return self.switch_target_refused(user, Some(found));
                }
            };
            let record = committed.read_back_of(&format!("titled {title:?}"), "switch")?;
            if let Some(recent) = &self.recent {
                recent.set_current(shard, user, Some(record.session_id.clone()));
            }
            return Ok(Some(record));
        };
        // The hints cover a switch to a session they know by the id or title given, when they
        // know the current session too, as another one (to the current one, the refusal says so
        // in one call).
        let claimed = user.to_owned();
        if self
            .hinted_current(shard, user)
            .is_some_and(|current| current.session_id != id)
            && self.hinted(ctx, &id, Some(&claimed))?.is_some()
        {
            return Ok(None);
        }
        let mut plan = Plan::for_unread_session_of(self, shard, &id, user);
        if let Some(title) = &target.title {
            plan.assume_field(&id, "title", title);
        }
        plan.switch_to_unread(&id, performer, correlation);
        match self.commit_read_back(plan, &id, "switch").await? {
            Ok(switched) => Ok(Some(switched)),
            Err(Refused(held)) => {
                // Gone, another user's or ended: as a snapshot says; else it decides. A title the
                // hints gave may have moved to another session meanwhile: the snapshot looks it
                // up again.
                let found = decode_record(held)?;
                let retitled = target.title.is_some()
                    && found.as_ref().map(|d| &d.title) != Some(&target.title);
                if retitled {
                    return Ok(None);
                }
                self.switch_target_refused(user, found)
            }
        }
    }

    /// A one-call switch refused with the target as `found`: gone, another user's or ended
    /// ([`Sessions::switch_target`]); current already: the switch is done and changes nothing,
    /// as on a snapshot (a session's `current` flag is set exactly while the user's pointer
    /// names it). `None` for any other refusal: it is decided on a snapshot.
    fn switch_target_refused(&self, user: &str, found: Option<Record>) -> Result<Option<Record>> {
        let target = self.switch_target(user, found)?;
        Ok(target.current.then_some(target))
    }

    /// The session to switch to, from the document found: live and the user's (404), active
    /// (409 `session_ended`).
    fn switch_target(&self, user: &str, found: Option<Record>) -> Result<Record> {
        let now = self.now();
        let target = found
            .filter(|d| d.user_id == user && d.is_live(now))
            .ok_or(Error::NotFound("the user has no such session"))?;
        if target.status != Status::Active {
            return Err(Error::SessionEnded);
        }
        Ok(target)
    }

    async fn try_switch(
        &self,
        ctx: &Ctx,
        shard: u32,
        user: &str,
        target: &SwitchCurrent,
    ) -> Result<Step<Record>> {
        if let Some(step) = self.switch_from_hints(ctx, shard, user, target).await? {
            return Ok(step);
        }
        let k = &self.keys;
        let mut reads = Reads::new();
        let version = reads.get(k.user_version(shard, user));
        let current = reads.get(k.current(shard, user));
        let by_title = reads.hget(
            k.titles(shard, user),
            target.title.clone().unwrap_or_default(),
        );
        let mut r = self.read(reads).await?;
        let (version, current, by_title) = (r.take(version), r.take(current), r.take(by_title));
        let id = target
            .session_id
            .clone()
            .or(by_title)
            .ok_or(Error::NotFound("the user has no session with this title"))?;
        let ids: Vec<String> = std::iter::once(id.clone())
            .chain(current.clone().filter(|c| *c != id))
            .collect();
        let Some(mut docs) = self.read_docs(shard, user, version.as_ref(), &ids).await? else {
            return Ok(Step::Retry);
        };
        let stored = self.switch_target(user, docs.remove(&id))?;
        if current.as_deref() == Some(id.as_str()) {
            return Ok(Step::Done(stored));
        }
        let mut plan = Plan::for_user(self, shard, user, version.as_ref());
        let before = current.and_then(|c| docs.remove(&c));
        let record = self.plan_switch(&mut plan, ctx, before.as_ref(), &stored);
        self.commit_or_retry(plan, record).await
    }

    /// A switch in one script call, when this process knows the target (by id, or by title
    /// among the sessions it knows) and the user's current session (another one) from the
    /// hints: the commit checks both unchanged (the target's title with it: titles are unique
    /// among live sessions) and the current pointer still on the latter. `None` when the hints
    /// do not cover it.
    async fn switch_from_hints(
        &self,
        ctx: &Ctx,
        shard: u32,
        user: &str,
        target: &SwitchCurrent,
    ) -> Result<Option<Step<Record>>> {
        let Some(id) = self.target_known(user, target) else {
            return Ok(None);
        };
        let claimed = user.to_owned();
        let Some(Changing { record: stored, .. }) = self.hinted(ctx, &id, Some(&claimed))? else {
            return Ok(None);
        };
        let Some(before) = self
            .hinted_current(shard, user)
            .filter(|c| c.session_id != id)
        else {
            return Ok(None);
        };
        let mut plan = Plan::for_session(self, shard, &stored);
        plan.assume_current(&before.session_id);
        plan.assume_unchanged(&before);
        let record = self.plan_switch(&mut plan, ctx, Some(&before), &stored);
        Ok(Some(self.commit_or_retry(plan, record).await?))
    }

    /// The id of the switch's target: the one given, or the session the hints know by the
    /// title given (`None`: they do not).
    fn target_known(&self, user: &str, target: &SwitchCurrent) -> Option<String> {
        match (&target.session_id, &target.title) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(title)) => self.hinted_titled(user, title),
            (None, None) => None,
        }
    }

    /// `stored` becomes current, `before` (the current session as read) stops being so.
    fn plan_switch(
        &self,
        plan: &mut Plan,
        ctx: &Ctx,
        before: Option<&Record>,
        stored: &Record,
    ) -> Record {
        if let Some(before) = before {
            plan.put_former_current(before);
        }
        let mut record = stored.clone();
        record.current = true;
        record.updated_ms = self.now();
        record.version += 1;
        plan.event(
            EventType::Updated,
            &record,
            ctx.caller.user(),
            ctx.correlation_id.as_deref(),
        );
        plan.put(stored, &record);
        plan.set_current(&record.session_id);
        record
    }
}
