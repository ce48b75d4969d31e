//! Plans for a change of a session this process has not read (nor written): the store checks the
//! session's own fields in the same atomic step (active or live, unexpired, its owner's), and
//! names the keys of its user, title and case by what the document holds ([`KeyAt`]), or the
//! session itself by the user's title index or as the one the store picks at the active cap.
//! Such a change is one call to the store whatever this process knows; a refused one reports
//! the session as the refusal found it, which says what is wrong with it, or the limit it
//! reached ([`Limit`]), or else it is decided on a snapshot.

use serde_json::{Map, Value};

use crate::model::input::{MAX_OBJECT_BYTES, UpdateSession};
use crate::model::{EventType, Status};
use crate::sessions::Sessions;
use crate::store::{DocKey, Guard, KeyAt, NamedBy, SessionEvent, WriteOp};

use super::{Limit, Plan};

impl Plan {
    /// A plan for a change that needs only a few fields of session `id`, which this process
    /// has not read: the store checks in the same step that the session is active and
    /// unexpired (and each given owner's). A failed check is a conflict, which reports the
    /// session ([`crate::store::Commit::explain`]) to say what is wrong with it. The user is
    /// known only to the store, which names the user's keys by the document's `user_id`. The
    /// user's version moves for a change that a decision on a snapshot of the user's sessions
    /// rests on (an end, a switch, a patch, a delete, a memory write), not for a heartbeat or a
    /// message: those change only the document's own fields, which a plan decided on several
    /// sessions guards by the document's version.
    pub(crate) fn for_unread_session<'a>(
        sessions: &Sessions,
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
        sessions: &Sessions,
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
        sessions: &Sessions,
        shard: u32,
        id: &str,
        owner: Option<&str>,
    ) -> Self {
        let mut plan = Self::unread(sessions, shard, id, [owner]);
        plan.assume_field(id, "status", Status::Active.as_str());
        plan.bump_user_version_of_unread(id);
        plan
    }

    /// The guards every plan for an unread session has: unexpired, and each given owner's; a
    /// refusal reports the session.
    fn unread<'a>(
        sessions: &Sessions,
        shard: u32,
        id: &str,
        owners: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Self {
        // The user is known only to the store: its keys are named by the document's field.
        let mut plan = Self::new(sessions, shard, "");
        let doc = plan.keys.session(shard, id);
        plan.guard(Guard::HIntAbove(
            doc.clone(),
            "expires_ms".to_owned(),
            plan.now_ms,
        ));
        plan.commit.explain = Some(DocKey::Given(doc));
        for owner in owners.into_iter().flatten() {
            plan.assume_field(id, "user_id", owner);
        }
        plan
    }

    /// [`Plan::for_unread_session`] of the session `id` of `user`, whose own keys the plan then
    /// names (a change by the user's path, as a switch of the current session).
    pub(crate) fn for_unread_session_of(
        sessions: &Sessions,
        shard: u32,
        id: &str,
        user: &str,
    ) -> Self {
        let mut plan = Self::for_unread_session(sessions, shard, id, [Some(user)]);
        plan.effects.user_id = user.to_owned();
        plan
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
        let session = DocKey::Given(self.keys.session(self.shard(), id));
        self.event_of_document(kind, session, performer, correlation);
    }

    /// [`Plan::event_of_unread`] of the session document `session`.
    fn event_of_document(
        &mut self,
        kind: EventType,
        session: DocKey,
        performer: Option<&str>,
        correlation: Option<&str>,
    ) {
        let envelope = self.envelope(kind, performer, correlation, Value::Null);
        let (fields, tail) = envelope.into_stream_fields_around_payload();
        self.write(WriteOp::AppendSessionEvent(SessionEvent {
            stream: self.keys.outbox(self.shard()),
            fields,
            session,
            tail,
        }));
    }

    /// The user's current session, whichever it is, stops being current: a create or a switch
    /// by a process that does not know it. Its document, when there is one, is changed
    /// through the pointer, as [`Plan::put_former_current`] would; the commit reports its id,
    /// which this process then forgets (and drops from its cache). Before
    /// [`Plan::set_current`].
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
        let expires = self.now_ms + retention_ms;
        let fields = end_fields(self.now_ms, (performer, reason));
        self.change_unread(id, fields, expires);
        let active = self.user_key_of_unread(id, self.keys.user_active(self.shard(), ""));
        self.write(WriteOp::ZRemAt(active, id.to_owned()));
        // A create at the cap decides how many sessions to end on a snapshot of the active
        // ones, under the user's version: an end changes that set, so it moves the version.
        self.bump_user_version_of_unread(id);
        self.event_of_unread(EventType::Ended, id, Some(performer), correlation);
    }

    /// Ends the sessions the store picks as the oldest active ones of this plan's user at the
    /// active cap ([`Guard::PickOldestActive`]: one at the cap, more past it), each as
    /// [`Plan::end_unread`] ends a session: a create ending the oldest, which the store decides;
    /// nothing when it picks none. The commit reports which (this process then forgets them).
    /// The plan's later events follow these ends' events, which come from writes, so that they
    /// keep their order.
    pub(crate) fn end_picked(&mut self, retention_ms: i64, correlation: Option<&str>) {
        let (k, s) = (self.keys.clone(), self.shard());
        let doc = KeyAt {
            prefix: k.session(s, ""),
            name: NamedBy::Picked,
        };
        let block = self.commit.writes.len();
        let expires = self.now_ms + retention_ms;
        let mut fields = end_fields(self.now_ms, ("system", None));
        fields.extend([
            ("expires_ms", expires.to_string()),
            ("updated_ms", self.now_ms.to_string()),
        ]);
        let fields = fields.into_iter().map(|(f, v)| (f.to_owned(), v)).collect();
        self.write(WriteOp::HPutAt(doc.clone(), fields));
        self.write(WriteOp::HIncrByAt(doc.clone(), "version".to_owned(), 1));
        #[allow(clippy::cast_precision_loss)]
        self.write(WriteOp::ZAddPicked(k.expiry(s), expires as f64));
        let active = k.user_active(s, &self.effects.user_id);
        self.write(WriteOp::ZRemPicked(active));
        let (system, ended) = (Some("system"), EventType::Ended);
        self.event_of_document(ended, DocKey::At(doc), system, correlation);
        self.write(WriteOp::ReportPicked);
        // All of it for each session picked (more than one past the cap).
        let writes = self.commit.writes.len() - block;
        self.commit
            .writes
            .insert(block, WriteOp::EachPicked(writes));
        self.events_follow_writes = true;
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

    /// [`Plan::set_unread`] with the document's new expiry, and moves it in the sweeper's
    /// queue.
    fn change_unread(&mut self, id: &str, mut fields: Vec<(&str, String)>, expires_ms: i64) {
        fields.push(("expires_ms", expires_ms.to_string()));
        self.set_unread(id, fields);
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
    /// answer) and its event carries it. A session that is current already is refused (the
    /// refusal's document shows it: nothing changes).
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
        self.set_unread(id, vec![("current", "1".to_owned())]);
        self.set_current(id);
        self.write(WriteOp::ReadBack(self.keys.session(self.shard(), id)));
        self.event_of_unread(EventType::Updated, id, performer, correlation);
    }

    /// A plan that makes the session the user's title index gives `title` the user's current
    /// one, as [`Plan::switch_to_unread`] does, for a process that does not know which session
    /// that is: every guard and write names the document by that index entry, and the user's
    /// pointer is set to what the entry holds. The store requires the session active,
    /// unexpired, the user's, still so titled and not current already; the commit reads it
    /// back (the switch's answer, which tells its id).
    pub(crate) fn switch_to_titled(
        sessions: &Sessions,
        shard: u32,
        user: &str,
        title: &str,
        performer: Option<&str>,
        correlation: Option<&str>,
    ) -> Self {
        let mut plan = Self::new(sessions, shard, user);
        let k = plan.keys.clone();
        let titled = NamedBy::Field(k.titles(shard, user), title.to_owned());
        let doc = KeyAt {
            prefix: k.session(shard, ""),
            name: titled.clone(),
        };
        plan.commit.explain = Some(DocKey::At(doc.clone()));
        let expires = "expires_ms".to_owned();
        plan.guard(Guard::HIntAboveAt(doc.clone(), expires, plan.now_ms));
        let active = Status::Active.as_str();
        for (field, value) in [
            ("status", active),
            ("user_id", user),
            ("title", title),
            ("current", "0"),
        ] {
            plan.guard(Guard::HEqAt(
                doc.clone(),
                field.to_owned(),
                value.to_owned(),
            ));
        }
        plan.write(WriteOp::Incr(k.user_version(shard, user)));
        plan.put_unknown_former_current();
        plan.write(WriteOp::SetNamed(k.current(shard, user), titled));
        plan.effects.rests_on_current = true;
        let now = plan.now_ms.to_string();
        for (field, value) in [("current", "1".to_owned()), ("updated_ms", now)] {
            plan.write(WriteOp::HSetAt(doc.clone(), field.to_owned(), value));
        }
        plan.write(WriteOp::HIncrByAt(doc.clone(), "version".to_owned(), 1));
        plan.write(WriteOp::ReadBackAt(doc.clone()));
        plan.event_of_document(EventType::Updated, DocKey::At(doc), performer, correlation);
        plan
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
        self.bump_user_version_of_unread(id);
        self.drop_title_entry_of_unread(id);
        self.write(WriteOp::ZRemAt(self.case_key_of_unread(id), id.to_owned()));
        // The document last: the writes above are named by its fields.
        for key in [k.messages(s, id), k.memory(s, id), doc] {
            self.write(WriteOp::Del(key));
        }
        self.write(WriteOp::ZRem(k.expiry(s), id.to_owned()));
    }

    /// Merges `patch` into the JSON object the store holds at `at` (a session's `metadata` or
    /// `data`, its memory) without reading it; refused when the result would be larger than
    /// an object may be. The commit reports the merged object.
    pub(crate) fn merge_unread(
        &mut self,
        field: &'static str,
        at: NamedBy,
        patch: &Map<String, Value>,
    ) {
        let patch = Value::Object(patch.clone()).to_string();
        let max = u64::try_from(MAX_OBJECT_BYTES).unwrap_or(u64::MAX);
        let guard = Guard::MergedWithin(at.clone(), patch.clone(), max);
        self.guard_limit(guard, Limit::ObjectSize(field));
        self.write(WriteOp::MergeJson(at, patch));
    }

    /// A patch of the unread session `id`: its objects merged in the store, its case moved
    /// between the case indexes (the former one named by the document), its title and the
    /// title index of its user (named by the document) changed, its time and version moved.
    /// The session's title entry goes where it is still its own; the new one is set where no
    /// other live session holds that title (a title it has already is set again). The user's version moves too (an inbound
    /// event about a case decides on a snapshot of the case's sessions under it, a create on
    /// one of the title index). The store reads the session back (the patch's answer) and its
    /// event carries it.
    pub(crate) fn patch_unread(
        &mut self,
        id: &str,
        patch: &UpdateSession,
        performer: Option<&str>,
        correlation: Option<&str>,
    ) {
        let (k, s) = (self.keys.clone(), self.shard());
        let doc = k.session(s, id);
        // The fields set, with the time of the change, after the writes named by their values.
        let mut fields = Vec::new();
        if let Some(title) = &patch.title {
            self.drop_title_entry_of_unread(id);
            if let Some(title) = title {
                let titles = self.user_key_of_unread(id, k.titles(s, ""));
                self.guard_title_free_in(DocKey::At(titles.clone()), title, Some(id));
                self.write(WriteOp::HPutAt(
                    titles,
                    vec![(title.clone(), id.to_owned())],
                ));
                fields.push(("title", title.clone()));
            } else {
                self.write(WriteOp::HDel(doc.clone(), vec!["title".to_owned()]));
            }
        }
        for (field, object) in [("metadata", &patch.metadata), ("data", &patch.data)] {
            if let Some(object) = object {
                self.merge_unread(field, NamedBy::Field(doc.clone(), field.to_owned()), object);
            }
        }
        if let Some(case) = &patch.case_id {
            self.write(WriteOp::ZRemAt(self.case_key_of_unread(id), id.to_owned()));
            if let Some(case) = case {
                self.write(WriteOp::ZAdd(k.case_sessions(s, case), 0.0, id.to_owned()));
                fields.push(("case_id", case.clone()));
            } else {
                self.write(WriteOp::HDel(doc.clone(), vec!["case_id".to_owned()]));
            }
        }
        self.set_unread(id, fields);
        self.bump_user_version_of_unread(id);
        self.write(WriteOp::ReadBack(doc));
        self.event_of_unread(EventType::Updated, id, performer, correlation);
    }

    /// Sets `fields` of the unread document `id` with the time of the change, and counts the
    /// change in its version.
    fn set_unread(&mut self, id: &str, mut fields: Vec<(&str, String)>) {
        let doc = self.keys.session(self.shard(), id);
        fields.push(("updated_ms", self.now_ms.to_string()));
        let fields = fields.into_iter().map(|(f, v)| (f.to_owned(), v)).collect();
        self.write(WriteOp::HSet(doc.clone(), fields));
        self.write(WriteOp::HIncrBy(doc, "version".to_owned(), 1));
    }

    /// The key of the user of the unread document `id` that starts with `prefix`.
    fn user_key_of_unread(&self, id: &str, prefix: String) -> KeyAt {
        KeyAt {
            prefix,
            name: NamedBy::Field(self.keys.session(self.shard(), id), "user_id".to_owned()),
        }
    }

    /// Adds 1 to the version of the user of the unread document `id`: a change that a
    /// decision on a snapshot of the user's sessions rests on.
    fn bump_user_version_of_unread(&mut self, id: &str) {
        let version = self.user_key_of_unread(id, self.keys.user_version(self.shard(), ""));
        self.write(WriteOp::IncrAt(version));
    }

    /// Removes the entry of the title of the unread document `id` from its user's title index,
    /// where the entry is still the session's own.
    fn drop_title_entry_of_unread(&mut self, id: &str) {
        let titles = self.user_key_of_unread(id, self.keys.titles(self.shard(), ""));
        let title = NamedBy::Field(self.keys.session(self.shard(), id), "title".to_owned());
        self.write(WriteOp::HDelIfAt(titles, title, id.to_owned()));
    }

    /// The index of the case of the unread document `id` (none without a case).
    fn case_key_of_unread(&self, id: &str) -> KeyAt {
        KeyAt {
            prefix: self.keys.case_sessions(self.shard(), ""),
            name: NamedBy::Field(self.keys.session(self.shard(), id), "case_id".to_owned()),
        }
    }
}

/// The fields an end sets besides its times: the status, the end time, the performer, the reason
/// given.
fn end_fields(
    now_ms: i64,
    (performer, reason): (&str, Option<&str>),
) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("status", Status::Ended.as_str().to_owned()),
        ("ended_ms", now_ms.to_string()),
        ("performer_id", performer.to_owned()),
    ];
    fields.extend(reason.map(|reason| ("end_reason", reason.to_owned())));
    fields
}
