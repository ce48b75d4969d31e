//! Building guarded commits for one user: the index bookkeeping every use case shares.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::clock::rfc3339;
use crate::ids::new_event_id;
use crate::model::event::SOURCE;
use crate::model::input::{MAX_OBJECT_BYTES, UpdateSession};
use crate::model::{Envelope, EventType, Record, Status};
use crate::store::{Append, Commit, Guard, KeyAt, Keys, NamedBy, SessionEvent, WriteOp};

use super::next_version;

/// A commit under construction for one user on one shard (kept in its [`Effects`]).
pub(crate) struct Plan {
    keys: Keys,
    now_ms: i64,
    commit: Commit,
    effects: Effects,
    /// Every document written or removed is guarded by its version as read (see
    /// [`Plan::for_user`]).
    guards_documents: bool,
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

    /// A plan for a change that needs only a few fields of session `id`, which this process
    /// has not read: the store checks in the same step that the session is active and
    /// unexpired (and each given owner's). A failed check is a conflict; the caller then
    /// reads the session to say what is wrong with it. The user is known only to the store,
    /// which names the user's keys by the document's `user_id`. The user's version moves only
    /// for a change of the user's set of active sessions ([`Plan::end_unread`]): any other
    /// change is of the document's own fields, which a plan decided on several sessions guards
    /// by the document's version.
    pub(crate) fn for_unread_session<'a>(
        sessions: &super::Sessions,
        shard: u32,
        id: &str,
        owners: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Self {
        let mut plan = Self::unread(sessions, shard, id, owners);
        plan.assume_field(id, "status", Status::Active.as_str());
        plan.effects.touched.push(id.to_owned());
        plan
    }

    /// [`Plan::for_unread_session`] of a session that may also have ended (and is kept for
    /// its retention): one to delete.
    pub(crate) fn for_unread_live_session<'a>(
        sessions: &super::Sessions,
        shard: u32,
        id: &str,
        owners: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Self {
        let mut plan = Self::unread(sessions, shard, id, owners);
        plan.effects.touched.push(id.to_owned());
        plan
    }

    /// A plan for a write of the memory of the active session `id`, unread (its document
    /// stays as it is). The user's version moves: a merge decided on a snapshot read the
    /// memory under it.
    pub(crate) fn for_unread_memory(
        sessions: &super::Sessions,
        shard: u32,
        id: &str,
        owner: Option<&str>,
    ) -> Self {
        let mut plan = Self::unread(sessions, shard, id, [owner]);
        plan.assume_field(id, "status", Status::Active.as_str());
        let version = plan.user_key_of_unread(id, plan.keys.user_version(shard, ""));
        plan.write(WriteOp::IncrAt(version));
        plan
    }

    /// The guards every plan for an unread session has: unexpired, and each given owner's.
    fn unread<'a>(
        sessions: &super::Sessions,
        shard: u32,
        id: &str,
        owners: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Self {
        // The user is known only to the store: its keys are named by the document's field.
        let mut plan = Self::new(sessions, shard, "");
        let doc = plan.keys.session(shard, id);
        plan.guard(Guard::HIntAbove(doc, "expires_ms".to_owned(), plan.now_ms));
        for owner in owners.into_iter().flatten() {
            plan.assume_field(id, "user_id", owner);
        }
        plan
    }

    /// [`Plan::for_unread_session`] of the session `id` of `user`, whose own keys the plan then
    /// names (a change by the user's path, as a switch of the current session).
    pub(crate) fn for_unread_session_of(
        sessions: &super::Sessions,
        shard: u32,
        id: &str,
        user: &str,
    ) -> Self {
        let mut plan = Self::for_unread_session(sessions, shard, id, [Some(user)]);
        plan.effects.user_id = user.to_owned();
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
            appends: Vec::new(),
            writes: Vec::new(),
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
            },
            guards_documents: false,
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
        self.guard(Guard::HEq(
            self.keys.session(self.shard(), &stored.session_id),
            "version".to_owned(),
            Some(stored.version.to_string()),
        ));
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
        self.commit.appends.push(Append {
            stream: self.keys.outbox(self.shard()),
            fields: envelope.to_stream_fields(),
            max_len: None,
        });
    }

    /// Appends an event about session `id`, which this plan has not read: the store fills in
    /// the session as the writes before it leave it. So it comes after the writes that change
    /// the session (before the one that deletes it).
    fn event_of_unread(
        &mut self,
        kind: EventType,
        id: &str,
        performer: Option<&str>,
        correlation: Option<&str>,
    ) {
        let envelope = self.envelope(kind, performer, correlation, Value::Null);
        let (fields, tail) = envelope.into_stream_fields_around_payload();
        self.write(WriteOp::AppendSessionEvent(SessionEvent {
            stream: self.keys.outbox(self.shard()),
            fields,
            session: self.keys.session(self.shard(), id),
            tail,
        }));
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

    /// The user's current session, whichever it is, stops being current: a create by a process
    /// that does not know it. Its document, when there is one, is changed through the pointer,
    /// as [`Plan::put_former_current`] would; the commit reports its id, which this process
    /// then forgets (and drops from its cache). Before [`Plan::set_current`].
    pub(crate) fn put_unknown_former_current(&mut self) {
        let current = self.keys.current(self.shard(), &self.effects.user_id);
        let document = KeyAt {
            prefix: self.keys.session(self.shard(), ""),
            name: NamedBy::Value(current.clone()),
        };
        self.write(WriteOp::HSetAt(
            document.clone(),
            "current".to_owned(),
            "0".to_owned(),
        ));
        self.write(WriteOp::HIncrByAt(document, "version".to_owned(), 1));
        self.write(WriteOp::Report(current));
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

    /// [`Plan::end`] of session `id` in a plan for it unread ([`Plan::for_unread_session`]):
    /// the end's fields are set where the document is stored, and its event carries the
    /// session as the store leaves it (which the commit reports, the end's answer).
    pub(crate) fn end_unread(
        &mut self,
        id: &str,
        (performer, reason): (&str, Option<&str>),
        retention_ms: i64,
        correlation: Option<&str>,
    ) {
        let now = self.now_ms;
        let expires = now + retention_ms;
        let mut fields = vec![
            ("status", Status::Ended.as_str().to_owned()),
            ("ended_ms", now.to_string()),
            ("performer_id", performer.to_owned()),
        ];
        fields.extend(reason.map(|reason| ("end_reason", reason.to_owned())));
        self.change_unread(id, fields, expires);
        let active = self.user_key_of_unread(id, self.keys.user_active(self.shard(), ""));
        self.write(WriteOp::ZRemAt(active, id.to_owned()));
        // A create at the cap decides how many sessions to end on a snapshot of the active
        // ones, under the user's version: an end changes that set, so it moves the version.
        let version = self.user_key_of_unread(id, self.keys.user_version(self.shard(), ""));
        self.write(WriteOp::IncrAt(version));
        self.event_of_unread(EventType::Ended, id, Some(performer), correlation);
    }

    /// A heartbeat of session `id` in a plan for it unread: its expiry moves to `expires_ms`,
    /// and the store reads the session back (a heartbeat answers with it; the hints learn it).
    pub(crate) fn extend_unread(&mut self, id: &str, expires_ms: i64) {
        self.change_unread(id, Vec::new(), expires_ms);
        #[allow(clippy::cast_precision_loss)]
        let expires = expires_ms as f64;
        // An active session stays in the set (it only moves within it): nothing decided on a
        // snapshot of it changes, so the user's version stays.
        let active = self.user_key_of_unread(id, self.keys.user_active(self.shard(), ""));
        self.write(WriteOp::ZAddAt(active, expires, id.to_owned()));
        self.write(WriteOp::ReadBack(self.keys.session(self.shard(), id)));
    }

    /// Sets `fields` of the unread document `id` with its new expiry and the time of the
    /// change, counts the change in its version and moves it in the sweeper's queue.
    fn change_unread(&mut self, id: &str, mut fields: Vec<(&str, String)>, expires_ms: i64) {
        let doc = self.keys.session(self.shard(), id);
        fields.extend([
            ("updated_ms", self.now_ms.to_string()),
            ("expires_ms", expires_ms.to_string()),
        ]);
        let fields = fields.into_iter().map(|(f, v)| (f.to_owned(), v)).collect();
        self.write(WriteOp::HSet(doc.clone(), fields));
        self.write(WriteOp::HIncrBy(doc, "version".to_owned(), 1));
        #[allow(clippy::cast_precision_loss)]
        let expires = expires_ms as f64;
        self.write(WriteOp::ZAdd(
            self.keys.expiry(self.shard()),
            expires,
            id.to_owned(),
        ));
    }

    /// Makes the unread session `id` its user's current one ([`Plan::for_unread_session_of`])
    /// and the current session before it, whichever it is, no longer so (as
    /// [`Plan::put_unknown_former_current`]). The store reads the session back (the switch's
    /// answer) and its event carries it. A session that is current already is refused (then
    /// decided on a snapshot, where it changes nothing).
    pub(crate) fn switch_to_unread(
        &mut self,
        id: &str,
        performer: Option<&str>,
        correlation: Option<&str>,
    ) {
        self.assume_field(id, "current", "0");
        // A create decided on a snapshot rests on the current session: the user's version moves.
        self.write(WriteOp::Incr(
            self.keys.user_version(self.shard(), &self.effects.user_id),
        ));
        self.put_unknown_former_current();
        let doc = self.keys.session(self.shard(), id);
        let fields = [
            ("current", "1".to_owned()),
            ("updated_ms", self.now_ms.to_string()),
        ];
        let fields = fields.map(|(f, v)| (f.to_owned(), v)).to_vec();
        self.write(WriteOp::HSet(doc.clone(), fields));
        self.write(WriteOp::HIncrBy(doc.clone(), "version".to_owned(), 1));
        self.set_current(id);
        self.write(WriteOp::ReadBack(doc));
        self.event_of_unread(EventType::Updated, id, performer, correlation);
    }

    /// Removes the unread session `id` ([`Plan::for_unread_live_session`]) and everything that
    /// hangs off it, as [`Plan::remove`] does: the user's indexes, title entry (where it is
    /// still this session's) and case index are named by the document's fields. Its
    /// `deleted` event carries the session as it was. The user's current session is refused
    /// (it cannot be deleted): the store checks the document's `current` flag, which every
    /// commit sets and clears together with the user's pointer.
    pub(crate) fn remove_unread(
        &mut self,
        id: &str,
        performer: Option<&str>,
        correlation: Option<&str>,
    ) {
        self.assume_field(id, "current", "0");
        self.event_of_unread(EventType::Deleted, id, performer, correlation);
        let (k, s) = (self.keys.clone(), self.shard());
        let doc = k.session(s, id);
        for prefix in [k.user_sessions(s, ""), k.user_active(s, "")] {
            self.write(WriteOp::ZRemAt(
                self.user_key_of_unread(id, prefix),
                id.to_owned(),
            ));
        }
        let version = self.user_key_of_unread(id, k.user_version(s, ""));
        self.write(WriteOp::IncrAt(version));
        let titles = self.user_key_of_unread(id, k.titles(s, ""));
        let title = NamedBy::Field(doc.clone(), "title".to_owned());
        self.write(WriteOp::HDelIfAt(titles, title, id.to_owned()));
        let case = KeyAt {
            prefix: k.case_sessions(s, ""),
            name: NamedBy::Field(doc.clone(), "case_id".to_owned()),
        };
        self.write(WriteOp::ZRemAt(case, id.to_owned()));
        // The document last: the writes above are named by its fields.
        for key in [k.messages(s, id), k.memory(s, id), doc] {
            self.write(WriteOp::Del(key));
        }
        self.write(WriteOp::ZRem(k.expiry(s), id.to_owned()));
    }

    /// Merges `patch` into the JSON object the store holds at `at` (a session's `metadata` or
    /// `data`, its memory) without reading it; refused when the result would be larger than
    /// an object may be. The commit reports the merged object.
    pub(crate) fn merge_unread(&mut self, at: NamedBy, patch: &Map<String, Value>) {
        let patch = Value::Object(patch.clone()).to_string();
        let max = u64::try_from(MAX_OBJECT_BYTES).unwrap_or(u64::MAX);
        self.guard(Guard::MergedWithin(at.clone(), patch.clone(), max));
        self.write(WriteOp::MergeJson(at, patch));
    }

    /// A patch of the unread session `id`: its objects merged in the store, its case moved
    /// between the case indexes (the former one named by the document), its time and version
    /// moved. A new title needs the session's `user` (who else holds it is asked of the user's
    /// title index): the commit requires that nobody does (the session itself neither: a title
    /// it has already is decided on a snapshot, where it changes nothing), and moves the
    /// session's entry. The user's version moves too (an inbound event about a case decides on
    /// a snapshot of the case's sessions under it, a create on one of the title index). The
    /// store reads the session back (the patch's answer) and its event carries it.
    pub(crate) fn patch_unread(
        &mut self,
        id: &str,
        patch: &UpdateSession,
        user: Option<&str>,
        performer: Option<&str>,
        correlation: Option<&str>,
    ) {
        debug_assert!(
            patch.title.is_none() || user.is_some(),
            "a new title needs the user"
        );
        let (k, s) = (self.keys.clone(), self.shard());
        let doc = k.session(s, id);
        if let (Some(title), Some(user)) = (&patch.title, user) {
            let titles = k.titles(s, user);
            if let Some(title) = title {
                self.guard(Guard::HEq(titles.clone(), title.clone(), None));
            }
            let former = self.user_key_of_unread(id, k.titles(s, ""));
            let field = NamedBy::Field(doc.clone(), "title".to_owned());
            self.write(WriteOp::HDelIfAt(former, field, id.to_owned()));
            if let Some(title) = title {
                self.write(WriteOp::HSet(titles, vec![(title.clone(), id.to_owned())]));
                let field = vec![("title".to_owned(), title.clone())];
                self.write(WriteOp::HSet(doc.clone(), field));
            } else {
                self.write(WriteOp::HDel(doc.clone(), vec!["title".to_owned()]));
            }
        }
        for (field, object) in [("metadata", &patch.metadata), ("data", &patch.data)] {
            if let Some(object) = object {
                self.merge_unread(NamedBy::Field(doc.clone(), field.to_owned()), object);
            }
        }
        if let Some(case) = &patch.case_id {
            let former = KeyAt {
                prefix: k.case_sessions(s, ""),
                name: NamedBy::Field(doc.clone(), "case_id".to_owned()),
            };
            self.write(WriteOp::ZRemAt(former, id.to_owned()));
            if let Some(case) = case {
                self.write(WriteOp::ZAdd(k.case_sessions(s, case), 0.0, id.to_owned()));
                let field = vec![("case_id".to_owned(), case.clone())];
                self.write(WriteOp::HSet(doc.clone(), field));
            } else {
                self.write(WriteOp::HDel(doc.clone(), vec!["case_id".to_owned()]));
            }
        }
        let updated = vec![("updated_ms".to_owned(), self.now_ms.to_string())];
        self.write(WriteOp::HSet(doc.clone(), updated));
        self.write(WriteOp::HIncrBy(doc.clone(), "version".to_owned(), 1));
        let version = self.user_key_of_unread(id, k.user_version(s, ""));
        self.write(WriteOp::IncrAt(version));
        self.write(WriteOp::ReadBack(doc));
        self.event_of_unread(EventType::Updated, id, performer, correlation);
    }

    /// The key of the user of the unread document `id` that starts with `prefix`.
    fn user_key_of_unread(&self, id: &str, prefix: String) -> KeyAt {
        KeyAt {
            prefix,
            name: NamedBy::Field(self.keys.session(self.shard(), id), "user_id".to_owned()),
        }
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
