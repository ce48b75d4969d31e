//! Starting a session: title uniqueness, one current session, the active cap, the rate limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::ids::{new_session_id, shard_of};
use crate::model::input::{CreateSession, check_id, check_object_size, check_title};
use crate::model::{EventType, Record, Status};
use crate::store::{Guard, NamedBy, Reads, WriteOp, ZRange};

use super::plan::{Limit, Plan};
use super::{Caller, CapPolicy, Ctx, Sessions, Step, decode_record, retry_after_s};

/// A validated creation request.
struct NewSession {
    id: String,
    shard: u32,
    user_id: String,
    input: CreateSession,
    performer: String,
    ttl_ms: i64,
}

/// The most active sessions read when enforcing the cap (the cap itself is far smaller).
const MAX_ACTIVE_SCAN: usize = 10_000;

impl Sessions {
    /// Creates a session; it becomes the user's current session.
    ///
    /// # Errors
    /// 400 for invalid input, 403 for a user token naming another user, 409 for a taken title or
    /// the active cap, 429 past the creation rate, 503 when the store fails.
    pub async fn create(&self, ctx: &Ctx, input: CreateSession) -> Result<Record> {
        let new = self.validate_create(ctx, input)?;
        let refused = match self.create_unknowing(ctx, &new).await? {
            Some(Step::Done(record)) => return Ok(record),
            Some(Step::Retry) => true,
            None => false,
        };
        let refused = AtomicBool::new(refused);
        self.retry(|| self.try_create(ctx, &new, &refused)).await
    }

    fn validate_create(&self, ctx: &Ctx, input: CreateSession) -> Result<NewSession> {
        let user_id = match (&ctx.caller, &input.user_id) {
            (Caller::User(u), None) => u.clone(),
            (caller, Some(u)) => {
                caller.check_owner(u)?;
                u.clone()
            }
            (Caller::Trusted, None) => return Err(Error::Validation("user_id is required".into())),
        };
        check_id("user_id", &user_id)?;
        for (field, value) in [
            ("org_id", &input.org_id),
            ("case_id", &input.case_id),
            ("performer_id", &input.performer_id),
        ] {
            if let Some(v) = value {
                check_id(field, v)?;
            }
        }
        if let Some(title) = &input.title {
            check_title(title)?;
        }
        for (field, value) in [("metadata", &input.metadata), ("data", &input.data)] {
            if let Some(v) = value {
                check_object_size(field, v)?;
            }
        }
        let ttl_ms = self.ttl_ms(input.ttl_seconds)?;
        let shard = shard_of(&user_id, self.policy.shard_count);
        Ok(NewSession {
            id: new_session_id(shard),
            shard,
            performer: input
                .performer_id
                .clone()
                .unwrap_or_else(|| user_id.clone()),
            user_id,
            input,
            ttl_ms,
        })
    }

    /// A requested TTL in ms, or the default; between 1 s and the maximum.
    pub(crate) fn ttl_ms(&self, ttl_seconds: Option<u64>) -> Result<i64> {
        let Some(seconds) = ttl_seconds else {
            return Ok(self.policy.default_ttl_ms);
        };
        let ms = i64::try_from(seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        if seconds == 0 || ms > self.policy.max_ttl_ms {
            return Err(Error::Validation(format!(
                "ttl_seconds must be from 1 to {}",
                self.policy.max_ttl_ms / 1000
            )));
        }
        Ok(ms)
    }

    /// A create decided on the hints or on a snapshot; `refused`: a one-call try was refused
    /// (most likely at the cap: the snapshot then reads the active sessions' documents too).
    async fn try_create(
        &self,
        ctx: &Ctx,
        new: &NewSession,
        refused: &AtomicBool,
    ) -> Result<Step<Record>> {
        if let Some(step) = self.try_create_from_hints(ctx, new).await {
            if matches!(step, Ok(Step::Retry)) {
                refused.store(true, Ordering::Relaxed);
            }
            return step;
        }
        let (k, shard, user) = (&self.keys, new.shard, new.user_id.as_str());
        let now = self.now();
        let mut reads = Reads::new();
        let version = reads.get(k.user_version(shard, user));
        // The documents the decision depends on, found through the current pointer and the
        // title index in the same snapshot.
        let current =
            reads.hgetall_at(k.session(shard, ""), NamedBy::Value(k.current(shard, user)));
        let title_owner = new.input.title.as_ref().map(|title| {
            reads.hgetall_at(
                k.session(shard, ""),
                NamedBy::Field(k.titles(shard, user), title.clone()),
            )
        });
        let created_in_window = reads.counter(k.rate(shard, user));
        let window_left_ms = reads.pttl(k.rate(shard, user));
        // After a refused one-call create under end-oldest (another process changed the user
        // meanwhile): the documents of the active sessions come with the snapshot (a create at
        // the cap ends the oldest of them), instead of in a second read. A cap that refuses
        // ends none.
        let with_documents =
            self.policy.cap_policy == CapPolicy::EndOldest && refused.load(Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        let (ua, now_score) = (k.user_active(shard, user), now as f64);
        let (active, active_docs) = match self.policy.max_active_per_user {
            None => (None, None),
            Some(_) if with_documents => {
                let active = ZRange::above(ua, now_score, MAX_ACTIVE_SCAN);
                (None, Some(reads.documents_of(k.session(shard, ""), active)))
            }
            Some(_) => (
                Some(reads.members_above(ua, now_score, MAX_ACTIVE_SCAN)),
                None,
            ),
        };
        let mut r = self.read(reads).await?;
        let version = r.take(version);
        let current_doc = decode_record(r.take(current))?;
        let title_owner = match title_owner {
            Some(slot) => decode_record(r.take(slot))?,
            None => None,
        };
        let created_in_window = r.take(created_in_window);
        let window_left_ms = r.take(window_left_ms);
        let mut docs = HashMap::new();
        let active: Vec<String> = match (active, active_docs) {
            (Some(slot), _) => r.take(slot).0,
            (None, Some(slot)) => {
                let mut ids = Vec::new();
                for (id, fields) in r.take(slot) {
                    if let Some(doc) = decode_record(fields)? {
                        docs.insert(id.clone(), doc);
                    }
                    ids.push(id);
                }
                ids
            }
            (None, None) => Vec::new(),
        };
        if let Some(limit) = self.policy.create_rate_limit
            && created_in_window >= i64::from(limit)
        {
            return Err(Error::RateLimited {
                retry_after_s: retry_after_s(window_left_ms),
            });
        }
        let evict_count = match self.policy.max_active_per_user {
            Some(cap) if active.len() >= cap as usize => match self.policy.cap_policy {
                CapPolicy::Reject => return Err(Error::ActiveLimit),
                CapPolicy::EndOldest => active.len() + 1 - cap as usize,
            },
            _ => 0,
        };
        if title_owner.as_ref().is_some_and(|d| d.is_live(now)) {
            return Err(Error::TitleTaken);
        }

        // At the cap, without their documents: a second snapshot, of the active sessions, under
        // the same version.
        if evict_count > 0 && active_docs.is_none() {
            let Some(active_docs) = self
                .read_docs(shard, user, version.as_ref(), &active)
                .await?
            else {
                return Ok(Step::Retry);
            };
            docs = active_docs;
        }
        let current = current_doc.as_ref().map(|doc| doc.session_id.clone());
        if let Some(doc) = current_doc {
            docs.insert(doc.session_id.clone(), doc);
        }

        let mut plan = Plan::for_user(self, shard, user, version.as_ref());
        let corr = ctx.correlation_id.as_deref();
        let stored = docs.clone();
        // The current session loses its flag, also when it is a victim ended below.
        if let Some(doc) = current.as_ref().and_then(|id| docs.get_mut(id)) {
            doc.current = false;
            doc.version += 1;
        }
        let mut victims: Vec<Record> = active
            .iter()
            .filter_map(|id| docs.remove(id))
            .filter(|d| d.is_active(now))
            .collect();
        victims.sort_by(|a, b| (a.created_ms, &a.session_id).cmp(&(b.created_ms, &b.session_id)));
        victims.truncate(evict_count);
        for victim in &victims {
            // A victim that was current already lost the flag above (it is the same document).
            let before = &stored[&victim.session_id];
            plan.end(
                before,
                victim.clone(),
                ("system", None),
                self.policy.ended_retention_ms,
                corr,
            );
        }
        if let Some(before) = current
            .and_then(|id| stored.get(&id))
            .filter(|before| !victims.iter().any(|v| v.session_id == before.session_id))
        {
            plan.put_former_current(before);
        }

        let record = self.start(&mut plan, new, now, corr);
        self.commit_or_retry(plan, record).await
    }

    /// A create in one script call for a user whose current session this process does not
    /// know (its first create here, say): the commit checks the limits as
    /// [`Sessions::try_create_from_hints`] does, and turns off the flag of whichever session
    /// the user's pointer names (also without hints: then every create is one), and at the
    /// active cap (end-oldest) ends the oldest active session. `None` when the hints know the
    /// current session (a create from them checks more); an error when a limit refuses it; a
    /// retry when the commit is refused otherwise: the create is then decided on a snapshot.
    async fn create_unknowing(&self, ctx: &Ctx, new: &NewSession) -> Result<Option<Step<Record>>> {
        let (shard, user) = (new.shard, new.user_id.as_str());
        if self.hinted_current(shard, user).is_some() {
            return Ok(None);
        }
        let now = self.now();
        let mut plan = Plan::unversioned(self, shard, user);
        self.guard_limits(&mut plan, new, now);
        plan.put_unknown_former_current();
        self.end_picked(&mut plan, ctx.correlation_id.as_deref());
        let record = self.start(&mut plan, new, now, ctx.correlation_id.as_deref());
        Ok(Some(self.commit_or_retry(plan, record).await?))
    }

    /// What a create checks in its commit when it does not decide on a snapshot, in the order
    /// the snapshot does, each refusal answering the create ([`Limit`]): the rate limit not
    /// reached; the active cap not reached, or (end-oldest) the store picks the oldest active
    /// session to end at it ([`Sessions::end_picked`]); the title free.
    fn guard_limits(&self, plan: &mut Plan, new: &NewSession, now: i64) {
        let (k, shard, user) = (&self.keys, new.shard, new.user_id.as_str());
        if let Some(limit) = self.policy.create_rate_limit {
            plan.guard_limit(
                Guard::IntBelow(k.rate(shard, user), u64::from(limit)),
                Limit::Rate,
            );
        }
        if let Some(cap) = self.policy.max_active_per_user {
            #[allow(clippy::cast_precision_loss)]
            let now_score = now as f64;
            let active = k.user_active(shard, user);
            match self.policy.cap_policy {
                CapPolicy::Reject => plan.guard_limit(
                    Guard::ZCountBelow(active, now_score, u64::from(cap)),
                    Limit::ActiveCap,
                ),
                // At the cap or past it, the store picks the sessions to end.
                CapPolicy::EndOldest => plan.guard(Guard::PickOldestActive(
                    active,
                    k.user_sessions(shard, user),
                    now_score,
                    u64::from(cap),
                )),
            }
        }
        if let Some(title) = &new.input.title {
            plan.guard_title_free(title, None);
        }
    }

    /// At the active cap (end-oldest), ends the sessions the store picked in
    /// [`Sessions::guard_limits`] (one at the cap, more past it): after the current session
    /// loses its flag (it may be one of them), before the new session's event.
    fn end_picked(&self, plan: &mut Plan, corr: Option<&str>) {
        if self.policy.max_active_per_user.is_some()
            && self.policy.cap_policy == CapPolicy::EndOldest
        {
            plan.end_picked(self.policy.ended_retention_ms, corr);
        }
    }

    /// A create in one script call, when this process knows the user's current session from
    /// the hints: the commit itself checks what the snapshot would have — that session
    /// unchanged and still current, the title free, the rate limit not reached, the active cap
    /// not reached or (end-oldest) its oldest session ended ([`Sessions::guard_limits`]). `None`
    /// without hints; an error when a limit refuses it; any other failed check is a conflict
    /// (the hints are dropped and the create runs again on a snapshot).
    async fn try_create_from_hints(
        &self,
        ctx: &Ctx,
        new: &NewSession,
    ) -> Option<Result<Step<Record>>> {
        let (shard, user) = (new.shard, new.user_id.as_str());
        let stored = self.hinted_current(shard, user)?;
        let now = self.now();
        let mut plan = Plan::unversioned(self, shard, user);
        plan.assume_current(&stored.session_id);
        plan.assume_unchanged(&stored);
        self.guard_limits(&mut plan, new, now);
        plan.put_former_current(&stored);
        self.end_picked(&mut plan, ctx.correlation_id.as_deref());
        let record = self.start(&mut plan, new, now, ctx.correlation_id.as_deref());
        Some(self.commit_or_retry(plan, record).await)
    }

    /// Adds the new session to `plan`: its event, its document and indexes, the current
    /// pointer and the rate counter.
    fn start(&self, plan: &mut Plan, new: &NewSession, now: i64, corr: Option<&str>) -> Record {
        let (k, shard, user) = (&self.keys, new.shard, new.user_id.as_str());
        let record = self.new_record(new, now);
        plan.event(EventType::Created, &record, Some(&new.performer), corr);
        plan.insert(&record);
        plan.index_new(&record);
        plan.set_current(&record.session_id);
        if self.policy.create_rate_limit.is_some() {
            plan.write(WriteOp::IncrWindow(
                k.rate(shard, user),
                self.policy.create_rate_window_ms,
            ));
        }
        record
    }

    fn new_record(&self, new: &NewSession, now: i64) -> Record {
        let input = &new.input;
        Record {
            session_id: new.id.clone(),
            user_id: new.user_id.clone(),
            org_id: input.org_id.clone(),
            title: input.title.clone(),
            case_id: input.case_id.clone(),
            status: Status::Active,
            current: true,
            metadata: input.metadata.clone().unwrap_or_default(),
            data: input.data.clone().unwrap_or_default(),
            created_ms: now,
            updated_ms: now,
            expires_ms: now + new.ttl_ms,
            ended_ms: None,
            end_reason: None,
            performer_id: Some(new.performer.clone()),
            version: 1,
            messages_by_role: [0; 4],
            tokens_total: 0,
            cost_micros: 0,
            last_message_ms: None,
        }
    }

    /// Reads documents of one user under the user's version read before: `None` when the
    /// version moved meanwhile (the caller retries). Missing documents are left out.
    pub(crate) async fn read_docs(
        &self,
        shard: u32,
        user: &str,
        version: Option<&String>,
        ids: &[String],
    ) -> Result<Option<HashMap<String, Record>>> {
        if ids.is_empty() {
            return Ok(Some(HashMap::new()));
        }
        let mut reads = Reads::new();
        let now_version = reads.get(self.keys.user_version(shard, user));
        let slots: Vec<_> = ids
            .iter()
            .map(|id| reads.hgetall(self.keys.session(shard, id)))
            .collect();
        let mut r = self.read(reads).await?;
        if r.take(now_version).as_ref() != version {
            return Ok(None);
        }
        let mut docs = HashMap::new();
        for (id, slot) in ids.iter().zip(slots) {
            if let Some(doc) = decode_record(r.take(slot))? {
                docs.insert(id.clone(), doc);
            }
        }
        Ok(Some(docs))
    }
}
