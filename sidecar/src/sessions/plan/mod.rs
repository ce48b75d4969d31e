//! Building guarded commits for one user: the index bookkeeping every use case shares.

use std::collections::HashMap;

use serde_json::Value;

use crate::clock::rfc3339;
use crate::ids::new_event_id;
use crate::model::event::SOURCE;
use crate::model::{Envelope, EventType, Record, Status};
use crate::store::{Append, Commit, DocKey, Guard, Keys, WriteOp};

use super::next_version;

mod unread;

/// A commit under construction for one user on one shard (kept in its [`Effects`]).
pub(crate) struct Plan {
    keys: Keys,
    now_ms: i64,
    commit: Commit,
    effects: Effects,
    /// Every document written or removed is guarded by its version as read (see
    /// [`Plan::for_user`]).
    guards_documents: bool,
    /// Events are appended in their place among the writes, after the event of an end the
    /// store picks ([`Plan::end_picked`]), rather than before every write.
    events_follow_writes: bool,
}

/// What a plan changes, for this process's own bookkeeping once the commit is decided.
pub(crate) struct Effects {
    /// The shard and the user the plan is for.
    pub shard: u32,
    pub user_id: String,
    /// Sessions whose document this plan writes or removes (for cache invalidation).
    pub touched: Vec<String>,
    /// Documents as the commit writes them, with the bytes of their fields.
    pub written: Vec<(Record, u64)>,
    /// The user's current session as the commit sets it (`Some(None)`: removed).
    pub current: Option<Option<String>>,
    /// The plan rests on the user's current session (it checks or sets it): a conflict makes
    /// that hint doubtful too.
    pub rests_on_current: bool,
    /// Guards that are a limit of the request, by their position among the commit's guards.
    pub limits: Vec<(usize, Limit)>,
}

/// A guard whose failure is the answer to the request, not a sign that the state moved: the
/// limit it checks is reached. Such guards come after those a decision rests on (the current
/// session, a document's version), so that a refusal by a limit proves those held, and in the
/// order a snapshot checks the limits, so that the first one reached answers the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// The user's creation rate (429, with the time the window has left).
    Rate,
    /// The user's active sessions, under a cap that refuses creates (409).
    ActiveCap,
    /// A title another live session holds (409).
    Title,
    /// The object of this name merged past the size limit (400). One refused because the
    /// value held is not an object is decided on a snapshot (which says it is corrupt).
    ObjectSize(&'static str),
}

impl Effects {
    /// The limit the refused guard `index` checks, if it is one.
    pub(crate) fn limit(&self, index: usize) -> Option<Limit> {
        self.limits
            .iter()
            .find_map(|&(at, limit)| (at == index).then_some(limit))
    }
}

impl Plan {
    /// A plan guarded by the user's version as read (`None`: the user has no version yet), which
    /// bumps that version and refuses to grow a full outbox: a change decided on the state of
    /// several of the user's sessions. Each document it writes or removes is guarded by its own
    /// version as read too: a message appended meanwhile changes a document without the user's
    /// version ([`Plan::for_unread_session`]).
    pub(crate) fn for_user(
        sessions: &super::Sessions,
        shard: u32,
        user_id: &str,
        version: Option<&String>,
    ) -> Self {
        let uv = sessions.keys.user_version(shard, user_id);
        let mut plan = Self::new(sessions, shard, user_id);
        plan.guard(Guard::Eq(uv.clone(), version.cloned()));
        plan.write(WriteOp::Set(uv, next_version(version)));
        plan.guards_documents = true;
        plan
    }

    /// A plan guarded by one session's version (`stored`, as read now or known from the write
    /// hints): a change decided on that session alone. It still bumps the user's version, so that
    /// a change decided on several sessions and racing this one is refused.
    pub(crate) fn for_session(sessions: &super::Sessions, shard: u32, stored: &Record) -> Self {
        let mut plan = Self::unversioned(sessions, shard, &stored.user_id);
        plan.assume_unchanged(stored);
        plan
    }

    /// Commits only while the document of session `id` has `field` at `value`.
    pub(crate) fn assume_field(&mut self, id: &str, field: &str, value: &str) {
        self.guard(Guard::HEq(
            self.keys.session(self.shard(), id),
            field.to_owned(),
            Some(value.to_owned()),
        ));
    }

    /// A plan that bumps the user's version without reading it: its caller adds the guards
    /// its decision rests on.
    pub(crate) fn unversioned(sessions: &super::Sessions, shard: u32, user_id: &str) -> Self {
        let mut plan = Self::new(sessions, shard, user_id);
        plan.write(WriteOp::Incr(sessions.keys.user_version(shard, user_id)));
        plan
    }

    /// No guard but the outbox's room, no write yet.
    fn new(sessions: &super::Sessions, shard: u32, user_id: &str) -> Self {
        let keys = sessions.keys.clone();
        let commit = Commit {
            guards: vec![Guard::StreamBelow(
                keys.outbox(shard),
                sessions.policy.outbox_max_len,
            )],
            ..Commit::default()
        };
        Self {
            keys,
            now_ms: sessions.now(),
            commit,
            effects: Effects {
                shard,
                user_id: user_id.to_owned(),
                touched: Vec::new(),
                written: Vec::new(),
                current: None,
                rests_on_current: false,
                limits: Vec::new(),
            },
            guards_documents: false,
            events_follow_writes: false,
        }
    }

    fn shard(&self) -> u32 {
        self.effects.shard
    }

    pub(crate) fn guard(&mut self, guard: Guard) {
        self.commit.guards.push(guard);
    }

    /// Makes `id` the user's current session.
    pub(crate) fn set_current(&mut self, id: &str) {
        self.write(WriteOp::Set(
            self.keys.current(self.shard(), &self.effects.user_id),
            id.to_owned(),
        ));
        self.effects.current = Some(Some(id.to_owned()));
        self.effects.rests_on_current = true;
    }

    /// Commits only while the document of `stored` is at its version (nobody changed it).
    pub(crate) fn assume_unchanged(&mut self, stored: &Record) {
        let version = stored.version.to_string();
        self.assume_field(&stored.session_id, "version", &version);
    }

    /// A guard that is a [`Limit`] of the request.
    pub(crate) fn guard_limit(&mut self, guard: Guard, limit: Limit) {
        self.effects.limits.push((self.commit.guards.len(), limit));
        self.guard(guard);
    }

    /// A `title` for a session (`except`, when it exists already) must be free in the user's
    /// title index ([`Limit::Title`]).
    pub(crate) fn guard_title_free(&mut self, title: &str, except: Option<&str>) {
        let titles = self.keys.titles(self.shard(), &self.effects.user_id);
        self.guard_title_free_in(DocKey::Given(titles), title, except);
    }

    /// [`Plan::guard_title_free`] in the title index `titles` names, where session `except`
    /// may hold it.
    fn guard_title_free_in(&mut self, index: DocKey, title: &str, except: Option<&str>) {
        let guard = Guard::TitleFree {
            index,
            title: title.to_owned(),
            sessions: self.keys.session(self.shard(), ""),
            now_ms: self.now_ms,
            except: except.map(str::to_owned),
        };
        self.guard_limit(guard, Limit::Title);
    }

    /// Commits only while the user's title index gives `title` to `owner` (`None`: to nobody,
    /// the title is free).
    pub(crate) fn assume_title(&mut self, title: &str, owner: Option<&str>) {
        self.guard(Guard::HEq(
            self.keys.titles(self.shard(), &self.effects.user_id),
            title.to_owned(),
            owner.map(str::to_owned),
        ));
    }

    /// Commits only while `id` is the user's current session.
    pub(crate) fn assume_current(&mut self, id: &str) {
        self.guard(Guard::Eq(
            self.keys.current(self.shard(), &self.effects.user_id),
            Some(id.to_owned()),
        ));
        self.effects.rests_on_current = true;
    }

    /// In a plan decided on several sessions, the document of `stored` must be at that version.
    fn guard_document(&mut self, stored: &Record) {
        if self.guards_documents {
            self.assume_unchanged(stored);
        }
    }

    pub(crate) fn write(&mut self, op: WriteOp) {
        self.commit.writes.push(op);
    }

    /// Appends an event about `record` (its state after the change) to the shard outbox.
    pub(crate) fn event(
        &mut self,
        kind: EventType,
        record: &Record,
        performer: Option<&str>,
        correlation: Option<&str>,
    ) {
        let payload = serde_json::to_value(record.view()).unwrap_or_default();
        let envelope = self.envelope(kind, performer, correlation, payload);
        let append = Append {
            stream: self.keys.outbox(self.shard()),
            fields: envelope.to_stream_fields(),
            max_len: None,
        };
        if self.events_follow_writes {
            self.write(WriteOp::Append(append));
        } else {
            self.commit.appends.push(append);
        }
    }

    fn envelope(
        &self,
        kind: EventType,
        performer: Option<&str>,
        correlation: Option<&str>,
        payload: Value,
    ) -> Envelope {
        Envelope {
            event_id: new_event_id(),
            event_type: kind.as_str().to_owned(),
            timestamp: rfc3339(self.now_ms),
            source: SOURCE.to_owned(),
            correlation_id: correlation.map(str::to_owned),
            performer_id: performer.map(str::to_owned),
            payload,
        }
    }

    /// Writes a new document, every field.
    pub(crate) fn insert(&mut self, record: &Record) {
        let fields = record.to_fields();
        self.wrote(record, &fields);
        let key = self.keys.session(self.shard(), &record.session_id);
        self.write(WriteOp::HSet(key, fields));
    }

    fn wrote(&mut self, record: &Record, fields: &[(String, String)]) {
        self.effects.touched.push(record.session_id.clone());
        self.effects
            .written
            .push((record.clone(), super::fields_bytes(fields)));
    }

    /// Writes what changed in a document since `stored`, its state as read (or known from the
    /// write hints) under this plan's guards (so nobody changed it since): the fields whose
    /// value changed, and the removal of optional fields it no longer has. A message append
    /// then rewrites a few counters, not the session's data.
    pub(crate) fn put(&mut self, stored: &Record, record: &Record) {
        let fields = self.put_fields(stored, record);
        self.wrote(record, &fields);
    }

    /// The session of `stored` (as read) stops being current. Kept out of the write hints,
    /// whose room goes to the sessions written next (the new current one).
    pub(crate) fn put_former_current(&mut self, stored: &Record) {
        let mut record = stored.clone();
        record.current = false;
        record.version += 1;
        self.put_fields(stored, &record);
        self.effects.touched.push(record.session_id);
    }

    /// Writes the changes; returns every field of `record`.
    fn put_fields(&mut self, stored: &Record, record: &Record) -> Vec<(String, String)> {
        self.guard_document(stored);
        let key = self.keys.session(self.shard(), &record.session_id);
        let before: HashMap<String, String> = stored.to_fields().into_iter().collect();
        let fields = record.to_fields();
        let changed: Vec<(String, String)> = fields
            .iter()
            .filter(|(field, value)| before.get(field) != Some(value))
            .cloned()
            .collect();
        let gone: Vec<String> = record
            .absent_optional_fields()
            .into_iter()
            .filter(|field| before.contains_key(field))
            .collect();
        self.write(WriteOp::HSet(key.clone(), changed));
        self.write(WriteOp::HDel(key, gone));
        fields
    }

    /// Indexes a new session: per user, active set, expiry queue, title, case.
    pub(crate) fn index_new(&mut self, record: &Record) {
        let (k, s, u, id) = (
            &self.keys,
            self.shard(),
            &self.effects.user_id,
            &record.session_id,
        );
        #[allow(clippy::cast_precision_loss)] // whole milliseconds are exact in f64
        let (created, expires) = (record.created_ms as f64, record.expires_ms as f64);
        let mut ops = vec![
            WriteOp::ZAdd(k.user_sessions(s, u), created, id.clone()),
            WriteOp::ZAdd(k.user_active(s, u), expires, id.clone()),
            WriteOp::ZAdd(k.expiry(s), expires, id.clone()),
        ];
        if let Some(title) = &record.title {
            ops.push(WriteOp::HSet(
                k.titles(s, u),
                vec![(title.clone(), id.clone())],
            ));
        }
        if let Some(case) = &record.case_id {
            ops.push(WriteOp::ZAdd(k.case_sessions(s, case), 0.0, id.clone()));
        }
        self.commit.writes.extend(ops);
    }

    /// Moves a session's expiry (heartbeat, end): the active set and the sweeper's queue.
    pub(crate) fn reschedule(&mut self, record: &Record) {
        let (k, s, u, id) = (
            &self.keys,
            self.shard(),
            &self.effects.user_id,
            record.session_id.clone(),
        );
        #[allow(clippy::cast_precision_loss)]
        let expires = record.expires_ms as f64;
        let mut ops = vec![WriteOp::ZAdd(k.expiry(s), expires, id.clone())];
        ops.push(if record.status == Status::Active {
            WriteOp::ZAdd(k.user_active(s, u), expires, id)
        } else {
            WriteOp::ZRem(k.user_active(s, u), id)
        });
        self.commit.writes.extend(ops);
    }

    /// Ends `record` (status, times, performer, the reason given), records it with its event
    /// and returns it; `stored` is the document as read (see [`Plan::put`]).
    pub(crate) fn end(
        &mut self,
        stored: &Record,
        mut record: Record,
        (performer, reason): (&str, Option<&str>),
        retention_ms: i64,
        correlation: Option<&str>,
    ) -> Record {
        let now = self.now_ms;
        record.status = Status::Ended;
        record.ended_ms = Some(now);
        record.end_reason = reason.map(str::to_owned);
        record.updated_ms = now;
        record.expires_ms = now + retention_ms;
        record.performer_id = Some(performer.to_owned());
        record.version += 1;
        self.event(EventType::Ended, &record, Some(performer), correlation);
        self.put(stored, &record);
        self.reschedule(&record);
        record
    }

    /// Removes a session and everything that hangs off it. `title_owned` and `is_current` say
    /// whether the title index and the current pointer still point at it (read in the snapshot),
    /// so that a newer session's entries are never removed.
    pub(crate) fn remove(&mut self, record: &Record, title_owned: bool, is_current: bool) {
        self.guard_document(record);
        self.effects.touched.push(record.session_id.clone());
        if is_current {
            self.effects.current = Some(None);
            self.effects.rests_on_current = true;
        }
        let (k, s, u, id) = (
            &self.keys,
            self.shard(),
            &self.effects.user_id,
            record.session_id.clone(),
        );
        let mut ops = vec![
            WriteOp::Del(k.session(s, &id)),
            WriteOp::Del(k.messages(s, &id)),
            WriteOp::Del(k.memory(s, &id)),
            WriteOp::ZRem(k.user_sessions(s, u), id.clone()),
            WriteOp::ZRem(k.user_active(s, u), id.clone()),
            WriteOp::ZRem(k.expiry(s), id.clone()),
        ];
        if let (Some(title), true) = (&record.title, title_owned) {
            ops.push(WriteOp::HDel(k.titles(s, u), vec![title.clone()]));
        }
        if let Some(case) = &record.case_id {
            ops.push(WriteOp::ZRem(k.case_sessions(s, case), id.clone()));
        }
        if is_current {
            ops.push(WriteOp::Del(k.current(s, u)));
        }
        self.commit.writes.extend(ops);
    }

    /// The commit, and what it changes.
    pub(crate) fn into_parts(self) -> (Commit, Effects) {
        (self.commit, self.effects)
    }
}
