//! The session engine: every domain rule (lifecycle, one current session per user, unique titles,
//! caps and rate limits, messages, memory, events), written once, over any [`Backend`].
//!
//! Each use case follows the same pattern: read a snapshot that includes the user's version
//! counter, decide on it (checking every invariant), and commit guarded by that version. A
//! concurrent change to the same user makes the commit report a conflict; the use case then runs
//! again on a fresh snapshot ([`Sessions::retry`]). Only changes to the *same user* ever retry.
//!
//! Most writes skip the snapshot when this process knows what it would show (`recent`: the
//! documents it wrote or read last, guarded by their versions), and a message append needs no
//! snapshot at all: the store checks the session's own fields and adds the message's counts
//! where they are stored (`messages`). Either way a write is then one call to the store.

mod create;
mod current;
mod expiry;
mod inbound;
mod lifecycle;
mod listing;
mod memory;
mod messages;
mod plan;
mod recent;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::ids::parse_session_id;
use crate::model::input::too_large;
use crate::model::{Record, SessionView, Status};
use crate::store::{
    Backend, CommitOutcome, FromReply, Keys, NamedBy, Reads, Refusal, Replies, Slot,
};

pub(crate) use inbound::InboundOutcome;
pub(crate) use lifecycle::merge;
pub(crate) use listing::{Page, page_size};
pub(crate) use memory::{MemoryView, MemoryWrite};
use recent::Learned;
pub use recent::WriteHints;

/// What to do when a user at `max_active_per_user` starts another session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CapPolicy {
    /// Refuse the new session with 409.
    Reject,
    /// End the user's oldest active session (performer `system`) and start the new one.
    EndOldest,
}

/// The policies of one deployment (TTLs, caps, rate limit, stream lengths); see `config` for the defaults.
#[derive(Debug, Clone)]
pub struct Policy {
    pub shard_count: u32,
    pub default_ttl_ms: i64,
    pub max_ttl_ms: i64,
    /// How long ended sessions stay readable.
    pub ended_retention_ms: i64,
    pub max_active_per_user: Option<u32>,
    pub cap_policy: CapPolicy,
    /// At most this many creations per user per window; `None` disables the limit.
    pub create_rate_limit: Option<u32>,
    pub create_rate_window_ms: u64,
    /// Commits are refused (503) while a shard outbox holds this many undelivered events.
    pub outbox_max_len: u64,
    /// The global events stream is trimmed to about this many entries.
    pub events_max_len: u64,
    /// Bytes of what this process wrote or read last, from which a change may start instead
    /// of a snapshot read (one call instead of two; see `sessions::recent`); 0 turns that off
    /// (the tests' reference).
    pub write_hints_max_bytes: u64,
}

/// Who is calling, as established by the API layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The pod itself (sidecar mode) or a token with the service scope: may act for any user.
    Trusted,
    /// An end user's token (server mode): may act only on their own sessions.
    User(String),
}

impl Caller {
    /// The user behind a user token (the performer of a change that names none); `None` for
    /// a trusted caller, who may act for anyone.
    pub(crate) fn user(&self) -> Option<&str> {
        match self {
            Caller::User(u) => Some(u),
            Caller::Trusted => None,
        }
    }

    /// Refuses a user acting on another user's data.
    ///
    /// # Errors
    /// `forbidden` when a user token names another user.
    pub(crate) fn check_owner(&self, owner: &str) -> Result<()> {
        match self {
            Caller::User(u) if u != owner => {
                Err(Error::Forbidden("the session belongs to another user"))
            }
            _ => Ok(()),
        }
    }
}

/// Who asks and under which correlation id; passed to every use case that changes state.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub caller: Caller,
    /// Propagated from `X-Correlation-ID` into the events.
    pub correlation_id: Option<String>,
}

impl Ctx {
    /// A trusted caller without correlation id (background work, tests).
    #[must_use]
    pub fn system() -> Self {
        Self {
            caller: Caller::Trusted,
            correlation_id: None,
        }
    }
}

/// Told about every session this process changes, right after the commit (the local cache
/// uses it to drop its own stale entries without waiting for Redis to report the change).
pub trait ChangeListener: Send + Sync {
    fn changed(&self, session_id: &str);
}

/// Reads of session documents on the cache's invalidation connections: Redis remembers that
/// this process read the document and reports its next change there (per-key tracking), so a
/// document read this way may be cached and its report drops it.
#[async_trait::async_trait]
pub trait TrackedReads: Send + Sync {
    /// The fields of the document at `key` (on shard `shard`), or `None` when no invalidation
    /// connection can read it now: the caller reads it from the store, and the cache then keeps
    /// nothing new until tracking is back on.
    ///
    /// # Errors
    /// Redis did not answer in time (it would not answer the store's connection either).
    async fn document(
        &self,
        shard: u32,
        key: &str,
    ) -> std::result::Result<Option<Vec<(String, String)>>, crate::store::BackendError>;
}

/// Retry bound for optimistic commits. 32 attempts with growing jittered pauses (up to ~64 ms
/// each) ride out heavy contention on one user for about a second before answering 503.
const MAX_ATTEMPTS: u32 = 32;

/// The outcome of one attempt.
pub(crate) enum Step<T> {
    Done(T),
    Retry,
}

impl<T> Step<T> {
    /// A done step's value turned into what the caller answers (`f` may fail); a retry stays.
    pub(crate) fn try_map<U>(self, f: impl FnOnce(T) -> Result<U>) -> Result<Step<U>> {
        Ok(match self {
            Step::Done(value) => Step::Done(f(value)?),
            Step::Retry => Step::Retry,
        })
    }
}

/// The engine: a cheap handle (clone it freely).
#[derive(Clone)]
pub struct Sessions {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) keys: Keys,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: Arc<Policy>,
    listener: Option<Arc<dyn ChangeListener>>,
    /// Where documents are read so that Redis reports their changes (the cache's tracking).
    tracked: Option<Arc<dyn TrackedReads>>,
    /// What this process wrote or read last (`None`: every change reads a snapshot first).
    recent: Option<Arc<recent::Recent>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("backend", &self.backend.kind())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// An engine over `backend` with keys under `prefix`.
    #[must_use]
    pub fn new(
        backend: Arc<dyn Backend>,
        prefix: &str,
        clock: Arc<dyn Clock>,
        policy: Policy,
    ) -> Self {
        Self {
            backend,
            keys: Keys::new(prefix),
            clock,
            recent: (policy.write_hints_max_bytes > 0)
                .then(|| Arc::new(recent::Recent::new(policy.write_hints_max_bytes))),
            policy: Arc::new(policy),
            listener: None,
            tracked: None,
        }
    }

    /// Its write hints (none when they are off), for the invalidation connection to report the
    /// changes Redis pushes to.
    #[must_use]
    pub fn write_hints(&self) -> Option<WriteHints> {
        self.recent.clone().map(WriteHints)
    }

    /// The same engine, reporting every change it commits to `listener`.
    #[must_use]
    pub fn with_listener(mut self, listener: Arc<dyn ChangeListener>) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The same engine, reading session documents through `tracked` when it can.
    #[must_use]
    pub fn with_tracked_reads(mut self, tracked: Arc<dyn TrackedReads>) -> Self {
        self.tracked = Some(tracked);
        self
    }

    /// The store behind the engine.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The key layout.
    #[must_use]
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The policies.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The engine's current time (Unix milliseconds).
    #[must_use]
    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The shard of a session id, or 400 for a malformed one.
    ///
    /// # Errors
    /// `invalid_session_id`.
    pub(crate) fn shard_of_session(&self, id: &str) -> Result<u32> {
        match parse_session_id(id, self.policy.shard_count) {
            Some(shard) => Ok(shard),
            // Well formed, but for a shard this deployment does not have: no such session.
            None if parse_session_id(id, u32::MAX).is_some() => {
                Err(Error::NotFound("no such session"))
            }
            None => Err(Error::InvalidSessionId(id.chars().take(64).collect())),
        }
    }

    /// Runs `attempt` until it is done, retrying on conflicts with jittered backoff.
    pub(crate) async fn retry<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Step<T>>>,
    {
        for n in 0..MAX_ATTEMPTS {
            if let Step::Done(value) = attempt().await? {
                return Ok(value);
            }
            let ceiling_ms = 1u64 << n.min(6);
            tokio::time::sleep(Duration::from_micros(rand::random_range(
                0..ceiling_ms * 1000,
            )))
            .await;
        }
        Err(Error::Contention)
    }

    /// Reads `reads` atomically.
    pub(crate) async fn read(&self, reads: Reads) -> Result<Replies> {
        Ok(reads.run(self.backend.as_ref()).await?)
    }

    /// One read, decoded: `read` adds it to a batch, e.g. `|r| r.get(key)`.
    pub(crate) async fn read_one<T: FromReply>(
        &self,
        read: impl FnOnce(&mut Reads) -> Slot<T>,
    ) -> Result<T> {
        Ok(crate::store::read_one(self.backend.as_ref(), read).await?)
    }

    /// Commits `plan`: done with `value` when it applied, [`Step::Retry`] on a conflict (the
    /// use case runs again on a fresh snapshot), an error for a full outbox or a failed store.
    /// The hints learn what an applied commit wrote and forget what a conflicting one assumed
    /// (the sessions it wrote, and the current session when it rested on it).
    pub(crate) async fn commit_or_retry<T>(&self, plan: plan::Plan, value: T) -> Result<Step<T>> {
        self.commit_plan(plan).await?.try_map(|_| Ok(value))
    }

    /// [`Sessions::commit_or_retry`], done with what the commit's writes report (a message's
    /// sequence number, the document read back). The hints learn a document read back like
    /// one the commit wrote.
    pub(crate) async fn commit_plan(&self, plan: plan::Plan) -> Result<Step<Committed>> {
        Ok(match self.commit_explained(plan).await? {
            Ok(committed) => Step::Done(committed),
            Err(Refused(_)) => Step::Retry,
        })
    }

    /// The error a refusal by a guard that checks `limit` answers, if the limit is reached.
    fn limit_reached(limit: plan::Limit, refusal: &Refusal) -> Option<Error> {
        match limit {
            plan::Limit::Rate => Some(Error::RateLimited {
                retry_after_s: retry_after_s(refusal.measured.unwrap_or_default()),
            }),
            plan::Limit::ActiveCap => Some(Error::ActiveLimit),
            plan::Limit::Title => Some(Error::TitleTaken),
            plan::Limit::ObjectSize(field) => refusal.measured.map(|_| too_large(field)),
        }
    }

    /// [`Sessions::commit_plan`], refused with the session the plan was about as the refusal
    /// found it (a plan for an unread session asks for it).
    pub(crate) async fn commit_explained(
        &self,
        plan: plan::Plan,
    ) -> Result<std::result::Result<Committed, Refused>> {
        let (commit, effects) = plan.into_parts();
        let outcome = self.backend.commit(commit).await?;
        // A limit reached is the answer; the guards before it held, and so do the hints.
        if let CommitOutcome::Conflict(refusal) = &outcome
            && let Some(limit) = effects.limit(refusal.failed_guard)
            && let Some(reached) = Self::limit_reached(limit, refusal)
        {
            return Err(reached);
        }
        if let Some(recent) = &self.recent {
            effects.touched.iter().for_each(|id| recent.forget(id));
            if matches!(outcome, CommitOutcome::Conflict(_)) && effects.rests_on_current {
                recent.set_current(effects.shard, &effects.user_id, None);
            }
        }
        let applied = match outcome {
            CommitOutcome::Applied(applied) => applied,
            CommitOutcome::Conflict(refusal) => return Ok(Err(Refused(refusal.explained))),
            CommitOutcome::OutboxFull => return Err(Error::OutboxFull),
        };
        // A document that does not decode is not learned (a read will say why).
        let read_back = applied.read_back.and_then(|fields| {
            let bytes = fields_bytes(&fields);
            Some((Record::from_fields(fields).ok()??, bytes))
        });
        if let Some(recent) = &self.recent {
            // A session changed through a pointer
            // ([`plan::Plan::put_unknown_former_current`]) is known only now.
            applied.reported.iter().for_each(|id| recent.forget(id));
            let learned = read_back
                .iter()
                .map(|(record, bytes)| (record.clone(), *bytes));
            for (record, bytes) in effects.written.into_iter().chain(learned) {
                recent.remember(record, bytes, Learned::Committed);
            }
            if let Some(current) = effects.current {
                recent.set_current(effects.shard, &effects.user_id, current);
            }
        }
        if let Some(listener) = &self.listener {
            // A document read back changed too (one named by an index is known only now).
            let read_back_id = read_back
                .as_ref()
                .map(|(record, _)| &record.session_id)
                .filter(|id| !effects.touched.contains(id));
            let touched = effects.touched.iter().chain(&applied.reported);
            touched
                .chain(read_back_id)
                .for_each(|id| listener.changed(id));
        }
        Ok(Ok(Committed {
            list_len: applied.list_len,
            read_back: read_back.map(|(record, _)| record),
            session: applied.session,
            merged: applied.merged,
        }))
    }

    /// Commits a plan for session `id` unread that reads the session back: the session as the
    /// `change` left it, or the session as the refusal found it.
    pub(crate) async fn commit_read_back(
        &self,
        plan: plan::Plan,
        id: &str,
        change: &str,
    ) -> Result<std::result::Result<Record, Refused>> {
        match self.commit_explained(plan).await? {
            Ok(committed) => committed.read_back_of(id, change).map(Ok),
            Err(refused) => Ok(Err(refused)),
        }
    }

    /// Commits a plan for session `id` unread ([`plan::Plan::for_unread_session`]). A refused
    /// one says what is wrong with the session ([`Sessions::explain_refusal`]), or else lets
    /// the change run again.
    pub(crate) async fn commit_unread(
        &self,
        plan: plan::Plan,
        ctx: &Ctx,
        claimed_user: Option<&String>,
    ) -> Result<Step<Committed>> {
        match self.commit_explained(plan).await? {
            Ok(committed) => Ok(Step::Done(committed)),
            Err(refused) => {
                self.explain_refusal(ctx, claimed_user, refused)?;
                Ok(Step::Retry)
            }
        }
    }

    /// What is wrong with the unread session whose change was refused, from the session as
    /// the refusal found it, as [`Sessions::read_for_change`] says it from a read: 404, 409
    /// `session_ended`, 403. `Ok` when nothing is: something else refused the change, which is
    /// then decided on a snapshot.
    pub(crate) fn explain_refusal(
        &self,
        ctx: &Ctx,
        claimed_user: Option<&String>,
        Refused(held): Refused,
    ) -> Result<()> {
        let found = self.owned_by(ctx, claimed_user, decode_record(held)?)?;
        self.still_active(Some(found)).map(drop)
    }

    /// An active session about to change, with the caller's right to change it checked: as
    /// this process last wrote or read it when it knows that (`hinted`; the plan's guard on its
    /// version then checks nobody changed it since: [`plan::Plan::for_session`]), else as read.
    /// Anything but an active session the caller owns is read, so that those errors are decided
    /// on a snapshot; a caller that finds another error on a hinted session asks for a snapshot
    /// with [`Sessions::decide_on_snapshot`].
    pub(crate) async fn changing(
        &self,
        ctx: &Ctx,
        id: &str,
        claimed_user: Option<&String>,
    ) -> Result<Changing> {
        match self.hinted(ctx, id, claimed_user)? {
            Some(session) => Ok(session),
            None => self.read_for_change(ctx, id, claimed_user).await,
        }
    }

    /// [`Sessions::changing`] without the hints: the session as read.
    pub(crate) async fn read_for_change(
        &self,
        ctx: &Ctx,
        id: &str,
        claimed_user: Option<&String>,
    ) -> Result<Changing> {
        let (shard, record) = self.owned(ctx, id, claimed_user).await?;
        Ok(Changing {
            shard,
            record: self.still_active(Some(record))?,
            hinted: false,
        })
    }

    /// The session as this process last wrote or read it, when it knows it and that is an
    /// active session the caller owns (see [`Sessions::changing`]); the id must be well formed.
    pub(crate) fn hinted(
        &self,
        ctx: &Ctx,
        id: &str,
        claimed_user: Option<&String>,
    ) -> Result<Option<Changing>> {
        let shard = self.shard_of_session(id)?;
        let hint = self.recent.as_ref().and_then(|recent| recent.doc(id));
        Ok(hint
            .filter(|r| {
                r.is_active(self.now())
                    && ctx.caller.check_owner(&r.user_id).is_ok()
                    && claimed_user.is_none_or(|u| *u == r.user_id)
            })
            .map(|record| Changing {
                shard,
                record: Record::clone(&record),
                hinted: true,
            }))
    }

    /// The id of the user's active session titled `title`, from the hints.
    pub(crate) fn hinted_titled(&self, user: &str, title: &str) -> Option<String> {
        let recent = self.recent.as_ref()?;
        recent.titled(user, title).map(|doc| doc.session_id.clone())
    }

    /// The user's current session as this process last set it, with its document as written.
    pub(crate) fn hinted_current(&self, shard: u32, user: &str) -> Option<Arc<Record>> {
        let recent = self.recent.as_ref()?;
        recent.doc(&recent.current(shard, user)?)
    }

    /// An error found on `session`: final when it was read, else the hint is dropped and the
    /// change runs again on a snapshot (a hint may be stale; an answer never rests on one).
    pub(crate) fn decide_on_snapshot<T>(
        &self,
        session: &Changing,
        error: Error,
    ) -> Result<Step<T>> {
        match &self.recent {
            Some(recent) if session.hinted => {
                recent.forget(&session.record.session_id);
                Ok(Step::Retry)
            }
            _ => Err(error),
        }
    }

    /// Looks a session up by id: the hot path. Expired sessions are gone at once.
    ///
    /// # Errors
    /// `invalid_session_id` for a malformed id, `not_found`, or a store failure.
    pub(crate) async fn get(&self, id: &str) -> Result<Record> {
        let shard = self.shard_of_session(id)?;
        self.still_live(self.read_doc(shard, id).await?)
    }

    /// The document of `id` as stored, read where Redis reports its next change when it can.
    /// The write hints learn an active one: a write that follows a lookup commits in one call.
    async fn read_doc(&self, shard: u32, id: &str) -> Result<Option<Record>> {
        let key = self.keys.session(shard, id);
        let tracked = match &self.tracked {
            Some(tracked) => tracked.document(shard, &key).await?,
            None => None,
        };
        let fields = match tracked {
            Some(fields) => fields,
            None => self.read_one(|r| r.hgetall(key)).await?,
        };
        let bytes = fields_bytes(&fields);
        let record = decode_record(fields)?;
        if let (Some(recent), Some(record)) = (&self.recent, &record)
            && record.is_active(self.now())
        {
            recent.remember(record.clone(), bytes, Learned::Read);
        }
        Ok(record)
    }

    /// Finds a live session and checks that the caller may act on it (and, when the request
    /// names a user, that it is theirs); returns its shard too. One read of the document alone
    /// (what a change of that one session decides on: its plan is guarded by its version).
    pub(crate) async fn owned(
        &self,
        ctx: &Ctx,
        id: &str,
        claimed_user: Option<&String>,
    ) -> Result<(u32, Record)> {
        let shard = self.shard_of_session(id)?;
        let record = self.owned_by(ctx, claimed_user, self.read_doc(shard, id).await?)?;
        Ok((shard, record))
    }

    /// [`Self::owned`], read in one snapshot with the user's version (found through the
    /// document's `user_id`) and the caller's `extra` reads, whose slots take their replies
    /// from the replies returned: what a change decided on the user's state too rests on.
    pub(crate) async fn owned_snapshot(
        &self,
        ctx: &Ctx,
        id: &str,
        claimed_user: Option<&String>,
        mut extra: Reads,
    ) -> Result<Owned> {
        let shard = self.shard_of_session(id)?;
        let doc_key = self.keys.session(shard, id);
        let version = extra.get_at(
            self.keys.user_version(shard, ""),
            NamedBy::Field(doc_key.clone(), "user_id".to_owned()),
        );
        let doc = extra.hgetall(doc_key);
        let mut replies = self.read(extra).await?;
        let record = self.owned_by(ctx, claimed_user, decode_record(replies.take(doc))?)?;
        Ok(Owned {
            shard,
            version: replies.take(version),
            record,
            replies,
        })
    }

    /// The live session read, when the caller may act on it and it is the claimed user's.
    fn owned_by(
        &self,
        ctx: &Ctx,
        claimed_user: Option<&String>,
        record: Option<Record>,
    ) -> Result<Record> {
        let record = self.still_live(record)?;
        ctx.caller.check_owner(&record.user_id)?;
        if claimed_user.is_some_and(|u| *u != record.user_id) {
            return Err(Error::UserMismatch);
        }
        Ok(record)
    }

    /// The session of a snapshot, if it is still there (404 otherwise).
    pub(crate) fn still_live(&self, record: Option<Record>) -> Result<Record> {
        record
            .filter(|r| r.is_live(self.now()))
            .ok_or(Error::NotFound("no such session"))
    }

    /// The session of a snapshot, if it is still there and active (404, or 409 `session_ended`).
    pub(crate) fn still_active(&self, record: Option<Record>) -> Result<Record> {
        let record = self.still_live(record)?;
        if record.status != Status::Active {
            return Err(Error::SessionEnded);
        }
        Ok(record)
    }

    /// Reads a session and its user's version in one snapshot with the caller's `extra`
    /// reads (whose slots take their replies from the replies returned); the record may be
    /// gone.
    pub(crate) async fn snapshot_of(
        &self,
        shard: u32,
        id: &str,
        user_id: &str,
        mut extra: Reads,
    ) -> Result<(Option<String>, Option<Record>, Replies)> {
        let version = extra.get(self.keys.user_version(shard, user_id));
        let doc = extra.hgetall(self.keys.session(shard, id));
        let mut replies = self.read(extra).await?;
        let version = replies.take(version);
        let record = decode_record(replies.take(doc))?;
        Ok((version, record, replies))
    }
}

/// The `Retry-After` of a rate window with `window_left_ms` to run: whole seconds, at least 1.
pub(crate) fn retry_after_s(window_left_ms: i64) -> u64 {
    u64::try_from(window_left_ms.max(1))
        .unwrap_or(1)
        .div_ceil(1000)
}

/// What a refused commit found of the session it was about ([`crate::store::Commit::explain`]):
/// its fields, none when it is gone.
pub(crate) struct Refused(pub Vec<(String, String)>);

/// What an applied commit reports (see [`Sessions::commit_plan`]).
pub(crate) struct Committed {
    /// The number of the item its `RPushNumbered` added (a message's `seq`).
    pub list_len: Option<u64>,
    /// The document its `ReadBack` found, decoded.
    pub read_back: Option<Record>,
    /// The session its `AppendSessionEvent` carried, in its API form (JSON).
    pub session: Option<String>,
    /// The object its `MergeJson` wrote.
    pub merged: Option<String>,
}

impl Committed {
    /// The document read back: the answer to a `change` of session `id` made without reading
    /// it.
    pub(crate) fn read_back_of(self, id: &str, change: &str) -> Result<Record> {
        self.read_back.ok_or_else(|| {
            Error::Corrupt(format!("session {id} does not decode after its {change}"))
        })
    }

    /// The session its event carried: the answer to a `change` of session `id` made without
    /// reading it, in its API form.
    pub(crate) fn session_view(&self, id: &str, change: &str) -> Result<SessionView> {
        let json = self.session.as_deref().unwrap_or_default();
        serde_json::from_str(json)
            .map_err(|e| Error::Corrupt(format!("session {id} as {change} does not decode: {e}")))
    }
}

/// An active session about to change (see [`Sessions::changing`]).
pub(crate) struct Changing {
    pub shard: u32,
    pub record: Record,
    /// Taken from the write hints, not read.
    pub hinted: bool,
}

/// A live session the caller may act on, with its user's version as read in the same snapshot.
pub(crate) struct Owned {
    pub shard: u32,
    pub version: Option<String>,
    pub record: Record,
    /// The replies of the caller's extra reads.
    pub replies: Replies,
}

/// What removing a session (delete, expiry) decides on, from one snapshot.
pub(crate) struct Removal {
    pub version: Option<String>,
    pub record: Option<Record>,
    /// The session is its user's current one.
    pub is_current: bool,
    /// The session holds its title in the user's title index.
    pub owns_title: bool,
}

impl Sessions {
    /// Reads a session with its user's version, current session and the holder of its title in
    /// one snapshot. The title index is looked up by the title the document has in that same
    /// snapshot: one renamed since an earlier read still has its new title's entry removed.
    pub(crate) async fn removal_snapshot(
        &self,
        shard: u32,
        id: &str,
        user: &str,
    ) -> Result<Removal> {
        let mut reads = Reads::new();
        let current = reads.get(self.keys.current(shard, user));
        let title_holder = reads.hget_named(
            self.keys.titles(shard, user),
            NamedBy::Field(self.keys.session(shard, id), "title".to_owned()),
        );
        let (version, record, mut r) = self.snapshot_of(shard, id, user, reads).await?;
        let owns_title = r.take(title_holder).as_deref() == Some(id);
        Ok(Removal {
            version,
            record,
            is_current: r.take(current).as_deref() == Some(id),
            owns_title,
        })
    }
}

/// Decodes a session document's fields (an `HGETALL`) into a record.
pub(crate) fn decode_record(fields: Vec<(String, String)>) -> Result<Option<Record>> {
    Record::from_fields(fields).map_err(Error::Corrupt)
}

/// The bytes of a document's fields and values: its weight in the write hints.
pub(crate) fn fields_bytes(fields: &[(String, String)]) -> u64 {
    let bytes = fields.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>();
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// The next value of a version counter.
pub(crate) fn next_version(current: Option<&String>) -> String {
    (current.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1).to_string()
}
