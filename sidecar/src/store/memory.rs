//! The embedded backend: the same contract as Redis, in process memory.
//!
//! It implements exactly the subset of Redis data types and commands that [`super::Backend`]
//! names, with Redis's ordering rules (sorted sets by score, then member bytes; stream ids
//! `<ms>-<seq>`), so the engine above cannot tell the two apart. One `std::sync::Mutex` guards
//! the whole keyspace: every read batch and commit is one short critical section, never held
//! across an `.await`, which is what makes them atomic.
//!
//! Keys with a time to live (leases, rate-limit counters) expire on the engine's clock, and
//! are freed when they are due even if nobody reads them again — as Redis's active expiry does
//! — so memory stays flat under churn: every critical section first drops the keys that are
//! due, from a queue ordered by deadline.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::clock::{Clock, SystemClock};

use super::{
    Append, Applied, Backend, BackendError, Bound, Commit, CommitOutcome, DocKey, Guard, KeyAt,
    NamedBy, Probe, ReadOp, Refusal, Reply, Score, SessionEvent, StreamEntry, WriteOp, ZRange,
    picked_event_id,
};
use crate::model::Record;

/// The in-process store.
#[derive(Debug)]
pub struct MemoryBackend {
    db: Mutex<Db>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

#[derive(Debug, Default)]
struct Db {
    entries: HashMap<String, Entry>,
    /// `(deadline ms, key)` of every key given a time to live. An entry whose key was since
    /// deleted or given another deadline is skipped when it comes due.
    deadlines: BTreeSet<(i64, String)>,
    /// The engine's clock at the start of the current critical section.
    now_ms: i64,
    /// The sessions the current commit's [`Guard::PickOldestActive`] picked, oldest first.
    pickeds: Vec<String>,
    /// The one of them [`NamedBy::Picked`] names now (the first, or the one a
    /// [`WriteOp::EachPicked`] block runs for).
    picked: Option<String>,
}

#[derive(Debug)]
struct Entry {
    value: Value,
    /// Unix ms on the engine's clock.
    expires: Option<i64>,
}

#[derive(Debug)]
enum Value {
    Str(String),
    Hash(BTreeMap<String, String>),
    ZSet(ZSet),
    List(Vec<String>),
    Stream(Stream),
}

/// Which type a write needs, checked before anything is changed so a commit stays all or nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Hash,
    ZSet,
    List,
    Stream,
}

impl MemoryBackend {
    /// An empty store on the system clock.
    #[must_use]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// An empty store whose keys expire on `clock` (the engine's).
    #[must_use]
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            db: Mutex::new(Db::default()),
            clock,
        }
    }

    /// The keys held now, sorted (expired ones are freed first): what the churn test watches.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock().entries.keys().cloned().collect();
        keys.sort_unstable();
        keys
    }

    /// The keyspace, with the keys that are due dropped.
    fn lock(&self) -> MutexGuard<'_, Db> {
        // A panic while holding the lock cannot leave a half-applied commit (commits check
        // everything before changing anything), so a poisoned lock is safe to keep using.
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        db.now_ms = self.clock.now_ms();
        db.free_due();
        db
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn read(&self, ops: Vec<ReadOp>) -> Result<Vec<Reply>, BackendError> {
        let mut db = self.lock();
        Ok(ops.iter().map(|op| db.read(op)).collect())
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, BackendError> {
        let mut db = self.lock();
        db.commit(commit)
    }

    async fn probe(&self, probes: Vec<Probe>) -> Result<Vec<bool>, BackendError> {
        let mut db = self.lock();
        Ok(probes
            .into_iter()
            .map(|probe| {
                let read = match probe {
                    Probe::StreamNonEmpty(key) => ReadOp::XRange(key, None, 1),
                    Probe::DueBy(key, score) => ReadOp::ZRange(ZRange {
                        key,
                        min: Bound::NegInf,
                        max: Bound::Incl(score),
                        rev: false,
                        offset: 0,
                        count: 1,
                    }),
                };
                match db.read(&read) {
                    Reply::Entries(e) => !e.is_empty(),
                    Reply::Scored(s) => !s.is_empty(),
                    _ => false,
                }
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

impl Db {
    /// Drops every key whose deadline has passed.
    fn free_due(&mut self) {
        while let Some((deadline, _)) = self.deadlines.first()
            && *deadline <= self.now_ms
        {
            let Some((deadline, key)) = self.deadlines.pop_first() else {
                break;
            };
            if self.entries.get(&key).and_then(|e| e.expires) == Some(deadline) {
                self.entries.remove(&key);
            }
        }
    }

    /// Gives `key` a time to live of `ms` from now.
    fn expire_in(&mut self, key: &str, ms: u64) {
        let deadline = self
            .now_ms
            .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
        if let Some(e) = self.entries.get_mut(key) {
            e.expires = Some(deadline);
            self.deadlines.insert((deadline, key.to_owned()));
        }
    }

    fn live(&mut self, key: &str) -> Option<&mut Value> {
        // `free_due` ran at the start of this critical section, and the clock does not move
        // within one, so every entry present is live.
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    fn kind_of(&mut self, key: &str) -> Option<Kind> {
        self.live(key).map(|v| match v {
            Value::Str(_) => Kind::Str,
            Value::Hash(_) => Kind::Hash,
            Value::ZSet(_) => Kind::ZSet,
            Value::List(_) => Kind::List,
            Value::Stream(_) => Kind::Stream,
        })
    }

    fn read(&mut self, op: &ReadOp) -> Reply {
        match op {
            ReadOp::Get(k) => match self.live(k) {
                Some(Value::Str(s)) => Reply::Str(s.clone()),
                _ => Reply::Nil,
            },
            ReadOp::HGetAll(k) => match self.live(k) {
                Some(Value::Hash(h)) => {
                    Reply::Pairs(h.iter().map(|(f, v)| (f.clone(), v.clone())).collect())
                }
                _ => Reply::Pairs(Vec::new()),
            },
            ReadOp::HGet(k, f) => match self.live(k) {
                Some(Value::Hash(h)) => h.get(f).map_or(Reply::Nil, |v| Reply::Str(v.clone())),
                _ => Reply::Nil,
            },
            ReadOp::ZRange(q) => match self.live(&q.key) {
                Some(Value::ZSet(z)) => Reply::Scored(z.range(q)),
                _ => Reply::Scored(Vec::new()),
            },
            ReadOp::ZScore(k, m) => match self.live(k) {
                Some(Value::ZSet(z)) => z
                    .scores
                    .get(m)
                    .map_or(Reply::Nil, |s| Reply::Str(s.to_string())),
                _ => Reply::Nil,
            },
            ReadOp::LRange(k, start, stop) => match self.live(k) {
                Some(Value::List(l)) => Reply::List(lrange(l, *start, *stop)),
                _ => Reply::List(Vec::new()),
            },
            ReadOp::PTtl(k) => self.pttl(k),
            ReadOp::XRange(k, after, count) => match self.live(k) {
                Some(Value::Stream(s)) => Reply::Entries(s.range(after.as_deref(), *count)),
                _ => Reply::Entries(Vec::new()),
            },
            ReadOp::GetAt(prefix, name) => match self.name(name) {
                Some(name) => self.read(&ReadOp::Get(format!("{prefix}{name}"))),
                None => Reply::Nil,
            },
            ReadOp::HGetAllAt(prefix, name) => match self.name(name) {
                Some(name) => self.read(&ReadOp::HGetAll(format!("{prefix}{name}"))),
                None => Reply::Pairs(Vec::new()),
            },
            ReadOp::HGetAllOf(prefix, range) => {
                let members = self.read(&ReadOp::ZRange(range.clone())).into_members();
                let mut documents = Vec::new();
                for member in members {
                    let fields = self.read(&ReadOp::HGetAll(format!("{prefix}{member}")));
                    documents.push((member, fields.into_pairs()));
                }
                Reply::Documents(documents)
            }
            ReadOp::HGetNamed(key, name) => match self.name(name) {
                Some(field) => self.read(&ReadOp::HGet(key.clone(), field)),
                None => Reply::Nil,
            },
        }
    }

    /// The name a [`NamedBy`] reads.
    fn name(&mut self, name: &NamedBy) -> Option<String> {
        let read = match name {
            NamedBy::Value(k) => ReadOp::Get(k.clone()),
            NamedBy::Field(k, f) => ReadOp::HGet(k.clone(), f.clone()),
            NamedBy::Picked => return self.picked.clone(),
        };
        self.read(&read).into_opt_string()
    }

    fn pttl(&mut self, key: &str) -> Reply {
        if self.live(key).is_none() {
            return Reply::Int(-2);
        }
        match self.entries.get(key).and_then(|e| e.expires) {
            None => Reply::Int(-1),
            Some(t) => Reply::Int((t - self.now_ms).max(0)),
        }
    }

    fn commit(&mut self, commit: Commit) -> Result<CommitOutcome, BackendError> {
        self.picked = None;
        self.pickeds.clear();
        for (index, guard) in commit.guards.iter().enumerate() {
            match guard {
                Guard::Eq(key, expected) => {
                    let actual = match self.live(key) {
                        Some(Value::Str(s)) => Some(s.clone()),
                        Some(_) => return Err(wrong_type(key)),
                        None => None,
                    };
                    if &actual != expected {
                        return Ok(self.conflict(&commit, index));
                    }
                }
                Guard::HEq(key, field, expected) => {
                    let actual = match self.live(key) {
                        Some(Value::Hash(h)) => h.get(field).cloned(),
                        Some(_) => return Err(wrong_type(key)),
                        None => None,
                    };
                    if &actual != expected {
                        return Ok(self.conflict(&commit, index));
                    }
                }
                Guard::IntBelow(key, limit) => {
                    let count = match self.live(key) {
                        Some(Value::Str(s)) => s.parse::<u64>().unwrap_or(0),
                        Some(_) => return Err(wrong_type(key)),
                        None => 0,
                    };
                    if count >= *limit {
                        return Ok(self.conflict(&commit, index));
                    }
                }
                Guard::ZCountBelow(key, above, limit) => {
                    let count = match self.live(key) {
                        Some(Value::ZSet(z)) => z.count_above(*above),
                        Some(_) => return Err(wrong_type(key)),
                        None => 0,
                    };
                    if count as u64 >= *limit {
                        return Ok(self.conflict(&commit, index));
                    }
                }
                Guard::HIntAbove(key, field, floor) => {
                    let value = match self.live(key) {
                        Some(Value::Hash(h)) => h.get(field).and_then(|v| v.parse::<i64>().ok()),
                        Some(_) => return Err(wrong_type(key)),
                        None => None,
                    };
                    if value.is_none_or(|v| v <= *floor) {
                        return Ok(self.conflict(&commit, index));
                    }
                }
                Guard::TitleFree {
                    index: index_key,
                    title,
                    sessions,
                    now_ms,
                    except,
                } => {
                    if self.title_held(index_key, title, sessions, *now_ms, except.as_deref()) {
                        return Ok(self.conflict(&commit, index));
                    }
                }
                Guard::PickOldestActive(active, sessions, above, cap) => {
                    let active = match self.live(active) {
                        Some(Value::ZSet(z)) => z.members_above(*above),
                        Some(_) => return Err(wrong_type(active)),
                        None => Vec::new(),
                    };
                    let count = active.len() as u64;
                    if count >= *cap && count > 0 {
                        let created = match self.live(sessions) {
                            Some(Value::ZSet(z)) => active
                                .into_iter()
                                .map(|id| z.score(&id).map(|at| (Ordered(at), id)))
                                .collect::<Option<Vec<_>>>(),
                            Some(_) => return Err(wrong_type(sessions)),
                            None => None,
                        };
                        let Some(mut created) = created else {
                            return Ok(self.conflict(&commit, index));
                        };
                        created.sort();
                        let ending = usize::try_from(count + 1 - *cap).unwrap_or(usize::MAX);
                        self.pickeds = created.into_iter().take(ending).map(|(_, id)| id).collect();
                        self.picked = self.pickeds.first().cloned();
                    }
                }
                Guard::HEqAt(at, field, expected) => {
                    if self.field_at(at, field).as_ref() != Some(expected) {
                        return Ok(self.conflict(&commit, index));
                    }
                }
                Guard::HIntAboveAt(at, field, floor) => {
                    let value = self.field_at(at, field).and_then(|v| v.parse::<i64>().ok());
                    if value.is_none_or(|v| v <= *floor) {
                        return Ok(self.conflict(&commit, index));
                    }
                }
                Guard::MergedWithin(at, patch, max) => {
                    let held = self.held_json(at);
                    if !held.is_object() || merged_json(held, patch).len() as u64 > *max {
                        return Ok(self.conflict(&commit, index));
                    }
                }
                Guard::StreamBelow(key, max) => {
                    let len = match self.live(key) {
                        Some(Value::Stream(s)) => s.entries.len() as u64,
                        Some(_) => {
                            return Err(BackendError::AppendFailed(format!(
                                "{key} is not a stream"
                            )));
                        }
                        None => 0,
                    };
                    if len >= *max {
                        return Ok(CommitOutcome::OutboxFull);
                    }
                }
            }
        }
        for append in &commit.appends {
            if !matches!(self.kind_of(&append.stream), None | Some(Kind::Stream)) {
                return Err(BackendError::AppendFailed(format!(
                    "{} is not a stream",
                    append.stream
                )));
            }
        }
        for write in &commit.writes {
            if let Some((key, kind)) = write_kind(write)
                && self.kind_of(key).is_some_and(|k| k != kind)
            {
                return Err(wrong_type(key));
            }
        }
        for append in commit.appends {
            self.append(append);
        }
        let mut applied = Applied::default();
        let mut writes = commit.writes.into_iter();
        while let Some(write) = writes.next() {
            let WriteOp::EachPicked(count) = write else {
                self.write(write, &mut applied);
                continue;
            };
            let block: Vec<WriteOp> = writes.by_ref().take(count).collect();
            let pickeds = std::mem::take(&mut self.pickeds);
            let rounds = pickeds.len().max(1);
            for round in 0..rounds {
                self.picked = pickeds.get(round).cloned();
                for write in block.clone() {
                    let write = match (write, &self.picked) {
                        (WriteOp::AppendSessionEvent(event), Some(id)) if round > 0 => {
                            WriteOp::AppendSessionEvent(with_picked_event_id(event, id))
                        }
                        (write, _) => write,
                    };
                    self.write(write, &mut applied);
                }
            }
        }
        Ok(CommitOutcome::Applied(applied))
    }

    /// A commit refused by its guard `index`, explained as [`Refusal`] says.
    fn conflict(&mut self, commit: &Commit, index: usize) -> CommitOutcome {
        let explained = commit.explain.as_ref().and_then(|key| self.doc_key(key));
        let measured = match &commit.guards[index] {
            Guard::IntBelow(key, _) => match self.pttl(key) {
                Reply::Int(ms) => Some(ms),
                _ => None,
            },
            Guard::MergedWithin(at, patch, _) => {
                let held = self.held_json(at);
                held.is_object()
                    .then(|| i64::try_from(merged_json(held, patch).len()).unwrap_or(i64::MAX))
            }
            _ => None,
        };
        CommitOutcome::Conflict(Refusal {
            explained: explained
                .map(|key| self.read(&ReadOp::HGetAll(key)).into_pairs())
                .unwrap_or_default(),
            failed_guard: index,
            measured,
        })
    }

    fn append(&mut self, append: Append) {
        let entry = self.entries.entry(append.stream).or_insert_with(|| Entry {
            value: Value::Stream(Stream::default()),
            expires: None,
        });
        if let Value::Stream(s) = &mut entry.value {
            s.add(append.fields, append.max_len);
        }
    }

    fn slot(&mut self, key: String, make: fn() -> Value) -> &mut Value {
        self.live(&key);
        &mut self
            .entries
            .entry(key)
            .or_insert_with(|| Entry {
                value: make(),
                expires: None,
            })
            .value
    }

    /// `INCR`: the counter at `k` (0 when missing) plus one.
    fn incr(&mut self, k: String) {
        if let Value::Str(s) = self.slot(k, || Value::Str("0".to_owned())) {
            *s = (s.parse::<i64>().unwrap_or(0) + 1).to_string();
        }
    }

    /// Applies one write, noting in `applied` what it reports.
    fn write(&mut self, op: WriteOp, applied: &mut Applied) {
        match op {
            WriteOp::Set(k, v) => {
                self.entries.insert(
                    k,
                    Entry {
                        value: Value::Str(v),
                        expires: None,
                    },
                );
            }
            WriteOp::SetPx(k, v, ms) => {
                self.entries.insert(
                    k.clone(),
                    Entry {
                        value: Value::Str(v),
                        expires: None,
                    },
                );
                self.expire_in(&k, ms);
            }
            WriteOp::Del(k) => {
                self.entries.remove(&k);
            }
            // No fields change nothing, as the Redis backend sends nothing for them.
            WriteOp::HSet(_, fields) if fields.is_empty() => {}
            WriteOp::HSet(k, fields) => {
                if let Value::Hash(h) = self.slot(k, || Value::Hash(BTreeMap::new())) {
                    h.extend(fields);
                }
            }
            WriteOp::HDel(k, fields) => {
                if let Some(Value::Hash(h)) = self.live(&k) {
                    for f in &fields {
                        h.remove(f);
                    }
                    if h.is_empty() {
                        self.entries.remove(&k);
                    }
                }
            }
            WriteOp::ZAdd(k, score, member) => {
                if let Value::ZSet(z) = self.slot(k, || Value::ZSet(ZSet::default())) {
                    z.add(score, member);
                }
            }
            WriteOp::ZRem(k, member) => {
                if let Some(Value::ZSet(z)) = self.live(&k) {
                    z.remove(&member);
                    if z.scores.is_empty() {
                        self.entries.remove(&k);
                    }
                }
            }
            WriteOp::ZRemBelow(k, max) => {
                if let Some(Value::ZSet(z)) = self.live(&k) {
                    let doomed: Vec<String> = z
                        .by_score
                        .iter()
                        .take_while(|(s, _)| s.0 <= max)
                        .map(|(_, m)| m.clone())
                        .collect();
                    for m in doomed {
                        z.remove(&m);
                    }
                    if z.scores.is_empty() {
                        self.entries.remove(&k);
                    }
                }
            }
            WriteOp::RPushNumbered(k, head, tail) => {
                if let Value::List(l) = self.slot(k, || Value::List(Vec::new())) {
                    let n = l.len() as u64 + 1;
                    l.push(format!("{head}{n}{tail}"));
                    applied.list_len = Some(n);
                }
            }
            WriteOp::Incr(k) => self.incr(k),
            WriteOp::HIncrBy(k, field, by) => {
                if let Value::Hash(h) = self.slot(k, || Value::Hash(BTreeMap::new())) {
                    let value = h.entry(field).or_insert_with(|| "0".to_owned());
                    *value = value
                        .parse::<i64>()
                        .unwrap_or(0)
                        .saturating_add(by)
                        .to_string();
                }
            }
            WriteOp::IncrWindow(k, ttl_ms) => {
                let created = self.live(&k).is_none();
                self.incr(k.clone());
                if created {
                    self.expire_in(&k, ttl_ms);
                }
            }
            WriteOp::XDel(k, ids) => {
                if let Some(Value::Stream(s)) = self.live(&k) {
                    s.entries.retain(|e| !ids.contains(&e.id.to_string()));
                }
            }
            WriteOp::ReadBack(k) => {
                // As Redis answers it: no fields, no report.
                let fields = self.read(&ReadOp::HGetAll(k)).into_pairs();
                applied.read_back = (!fields.is_empty()).then_some(fields);
            }
            WriteOp::ReadBackAt(at) => {
                if let Some(key) = self.key_at(&at) {
                    self.write(WriteOp::ReadBack(key), applied);
                }
            }
            WriteOp::SetNamed(k, name) => {
                if let Some(value) = self.name(&name) {
                    self.write(WriteOp::Set(k, value), applied);
                }
            }
            WriteOp::ZAddAt(at, score, member) => {
                if let Some(key) = self.key_at(&at) {
                    self.write(WriteOp::ZAdd(key, score, member), applied);
                }
            }
            WriteOp::ZRemAt(at, member) => {
                if let Some(key) = self.key_at(&at) {
                    self.write(WriteOp::ZRem(key, member), applied);
                }
            }
            WriteOp::IncrAt(at) => {
                if let Some(key) = self.key_at(&at) {
                    self.write(WriteOp::Incr(key), applied);
                }
            }
            WriteOp::HSetAt(at, field, value) => {
                if let Some(key) = self.hash_at_with(&at, &field) {
                    self.write(WriteOp::HSet(key, vec![(field, value)]), applied);
                }
            }
            WriteOp::HPutAt(at, fields) => {
                if let Some(key) = self.key_at(&at) {
                    self.write(WriteOp::HSet(key, fields), applied);
                }
            }
            WriteOp::HIncrByAt(at, field, by) => {
                if let Some(key) = self.hash_at_with(&at, &field) {
                    self.write(WriteOp::HIncrBy(key, field, by), applied);
                }
            }
            WriteOp::MergeJson(at, patch) => {
                let merged = merged_json(self.held_json(&at), &patch);
                let write = match at {
                    NamedBy::Value(key) => WriteOp::Set(key, merged.clone()),
                    NamedBy::Field(key, field) => WriteOp::HSet(key, vec![(field, merged.clone())]),
                    NamedBy::Picked => return, // holds no JSON (Redis refuses it too)
                };
                self.write(write, applied);
                applied.merged = Some(merged);
            }
            WriteOp::HDelIfAt(at, field, value) => {
                if let (Some(key), Some(field)) = (self.key_at(&at), self.name(&field)) {
                    let read = ReadOp::HGet(key.clone(), field.clone());
                    if self.read(&read).into_opt_string() == Some(value) {
                        self.write(WriteOp::HDel(key, vec![field]), applied);
                    }
                }
            }
            WriteOp::Report(k) => {
                let held = self.read(&ReadOp::Get(k)).into_opt_string();
                applied.reported.extend(held);
            }
            WriteOp::ReportPicked => applied.reported.extend(self.picked.clone()),
            WriteOp::EachPicked(_) => {} // the commit runs its block
            WriteOp::ZAddPicked(k, score) => {
                if let Some(id) = self.picked.clone() {
                    self.write(WriteOp::ZAdd(k, score, id), applied);
                }
            }
            WriteOp::ZRemPicked(k) => {
                if let Some(id) = self.picked.clone() {
                    self.write(WriteOp::ZRem(k, id), applied);
                }
            }
            WriteOp::Append(append) => self.append(append),
            WriteOp::AppendSessionEvent(event) => {
                let Some(session) = self.doc_key(&event.session) else {
                    return;
                };
                let fields = self.read(&ReadOp::HGetAll(session)).into_pairs();
                let payload = Record::from_fields(fields)
                    .ok()
                    .flatten()
                    .and_then(|record| serde_json::to_string(&record.view()).ok())
                    .unwrap_or_else(|| "null".to_owned());
                let mut fields = event.fields;
                if let Some((_, head)) = fields.last_mut() {
                    head.push_str(&payload);
                    head.push_str(&event.tail);
                }
                applied.session = Some(payload);
                self.append(Append {
                    stream: event.stream,
                    fields,
                    max_len: None,
                });
            }
        }
    }

    /// Whether a live session other than `except` holds `title` in the index `index_key` names,
    /// as `commit.lua`'s TITLE_FREE decides (an index without a name counts as held: the guard
    /// fails).
    fn title_held(
        &mut self,
        index_key: &DocKey,
        title: &str,
        sessions: &str,
        now: i64,
        except: Option<&str>,
    ) -> bool {
        let Some(index_key) = self.doc_key(index_key) else {
            return true;
        };
        let Some(holder) = self
            .read(&ReadOp::HGet(index_key, title.to_owned()))
            .into_opt_string()
            .filter(|holder| Some(holder.as_str()) != except)
        else {
            return false;
        };
        let doc = format!("{sessions}{holder}");
        let mut field = |name: &str| {
            self.read(&ReadOp::HGet(doc.clone(), name.to_owned()))
                .into_opt_string()
        };
        let status = field("status");
        let expires = field("expires_ms").and_then(|v| v.parse::<i64>().ok());
        status.is_some_and(|s| s != "expired") && expires.unwrap_or(0) > now
    }

    /// The JSON held at `at`: `{}` when missing, null when it does not parse.
    fn held_json(&mut self, at: &NamedBy) -> serde_json::Value {
        self.name(at).map_or_else(
            || serde_json::Value::Object(serde_json::Map::new()),
            |text| serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The key given, or the one `at` names (`None` without a name).
    fn doc_key(&mut self, key: &DocKey) -> Option<String> {
        match key {
            DocKey::Given(key) => Some(key.clone()),
            DocKey::At(at) => self.key_at(at),
        }
    }

    /// The key `at` names, when what names it is there.
    fn key_at(&mut self, at: &KeyAt) -> Option<String> {
        let name = self.name(&at.name)?;
        Some(format!("{}{name}", at.prefix))
    }

    /// `HGET` of `field` in the hash `at` names (`None` without a name too).
    fn field_at(&mut self, at: &KeyAt, field: &str) -> Option<String> {
        let key = self.key_at(at)?;
        self.read(&ReadOp::HGet(key, field.to_owned()))
            .into_opt_string()
    }

    /// The key `at` names, when it is a hash that has `field` already (as `commit.lua` checks
    /// it, with `HGET`).
    fn hash_at_with(&mut self, at: &KeyAt, field: &str) -> Option<String> {
        let key = self.key_at(at)?;
        let read = ReadOp::HGet(key.clone(), field.to_owned());
        self.read(&read).into_opt_string().map(|_| key)
    }
}

/// `held` merged with `patch`, as the engine merges (a held value that is not an object is
/// replaced, as RFC 7386 says).
fn merged_json(mut held: serde_json::Value, patch: &str) -> String {
    let patch = serde_json::from_str(patch).unwrap_or(serde_json::Value::Null);
    json_patch::merge(&mut held, &patch);
    held.to_string()
}

fn wrong_type(key: &str) -> BackendError {
    BackendError::Protocol(format!("WRONGTYPE: {key} holds the wrong kind of value"))
}

/// The key a write touches and the type it needs there; `None` for `Del` and `SET`, which take
/// a key of any type (as in Redis).
fn write_kind(op: &WriteOp) -> Option<(&str, Kind)> {
    Some(match op {
        // A key named by another key is known only as the writes run (Redis would fail there
        // on a key of another type; no use case names one).
        WriteOp::Set(..)
        | WriteOp::SetPx(..)
        | WriteOp::Del(_)
        | WriteOp::ReadBack(_)
        | WriteOp::ReadBackAt(_)
        | WriteOp::SetNamed(..)
        | WriteOp::ZAddAt(..)
        | WriteOp::ZRemAt(..)
        | WriteOp::IncrAt(_)
        | WriteOp::HSetAt(..)
        | WriteOp::HIncrByAt(..)
        | WriteOp::HPutAt(..)
        | WriteOp::HDelIfAt(..)
        | WriteOp::MergeJson(..)
        | WriteOp::Report(_)
        | WriteOp::ReportPicked
        | WriteOp::EachPicked(_) => {
            return None;
        }
        WriteOp::Incr(k) | WriteOp::IncrWindow(k, _) => (k, Kind::Str),
        WriteOp::HSet(k, _) | WriteOp::HDel(k, _) | WriteOp::HIncrBy(k, _, _) => (k, Kind::Hash),
        WriteOp::ZAdd(k, _, _)
        | WriteOp::ZRem(k, _)
        | WriteOp::ZRemBelow(k, _)
        | WriteOp::ZAddPicked(k, _)
        | WriteOp::ZRemPicked(k) => (k, Kind::ZSet),
        WriteOp::RPushNumbered(k, _, _) => (k, Kind::List),
        WriteOp::XDel(k, _) => (k, Kind::Stream),
        WriteOp::AppendSessionEvent(event) => (&event.stream, Kind::Stream),
        WriteOp::Append(append) => (&append.stream, Kind::Stream),
    })
}

/// The event of the end of a session picked after the first, with an id of its own
/// ([`picked_event_id`]) in its `event_id` field (the first) and in its envelope.
fn with_picked_event_id(mut event: SessionEvent, session_id: &str) -> SessionEvent {
    let Some(given) = event.fields.first().map(|(_, id)| id.clone()) else {
        return event;
    };
    let id = picked_event_id(&given, session_id);
    event.fields[0].1.clone_from(&id);
    if let Some((_, head)) = event.fields.last_mut() {
        *head = head.replacen(&given, &id, 1);
    }
    event
}

/// Redis's `LRANGE` index rules: negative indexes count from the end, `stop` is inclusive.
fn lrange(list: &[String], start: i64, stop: i64) -> Vec<String> {
    let len = i64::try_from(list.len()).unwrap_or(i64::MAX);
    let norm = |i: i64| if i < 0 { len + i } else { i };
    let (start, stop) = (norm(start).max(0), norm(stop).min(len - 1));
    if start > stop {
        return Vec::new();
    }
    let (start, stop) = (
        usize::try_from(start).unwrap_or(0),
        usize::try_from(stop).unwrap_or(0),
    );
    list[start..=stop].to_vec()
}

/// A score with the total order sorted sets need.
#[derive(Debug, Clone, Copy)]
struct Ordered(Score);
impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Debug, Default)]
struct ZSet {
    scores: HashMap<String, Score>,
    by_score: BTreeSet<(Ordered, String)>,
}

impl ZSet {
    fn add(&mut self, score: Score, member: String) {
        if let Some(old) = self.scores.insert(member.clone(), score) {
            self.by_score.remove(&(Ordered(old), member.clone()));
        }
        self.by_score.insert((Ordered(score), member));
    }

    fn remove(&mut self, member: &str) {
        if let Some(old) = self.scores.remove(member) {
            self.by_score.remove(&(Ordered(old), member.to_owned()));
        }
    }

    fn score(&self, member: &str) -> Option<Score> {
        self.scores.get(member).copied()
    }

    /// The members scored above `min`.
    fn members_above(&self, min: Score) -> Vec<String> {
        let above = self.by_score.iter().rev().take_while(|(s, _)| s.0 > min);
        above.map(|(_, member)| member.clone()).collect()
    }

    /// Members scored above `min` (from the highest down, so it stops at the first below).
    fn count_above(&self, min: Score) -> usize {
        self.by_score
            .iter()
            .rev()
            .take_while(|(s, _)| s.0 > min)
            .count()
    }

    fn range(&self, q: &ZRange) -> Vec<(String, Score)> {
        let within = |s: Score| above(s, q.min) && below(s, q.max);
        let items: Box<dyn Iterator<Item = &(Ordered, String)>> = if q.rev {
            Box::new(self.by_score.iter().rev())
        } else {
            Box::new(self.by_score.iter())
        };
        items
            .filter(|(s, _)| within(s.0))
            .skip(q.offset)
            .take(q.count)
            .map(|(s, m)| (m.clone(), s.0))
            .collect()
    }
}

fn above(s: Score, min: Bound) -> bool {
    match min {
        Bound::NegInf => true,
        Bound::PosInf => false,
        Bound::Incl(m) => s >= m,
        Bound::Excl(m) => s > m,
    }
}

fn below(s: Score, max: Bound) -> bool {
    match max {
        Bound::NegInf => false,
        Bound::PosInf => true,
        Bound::Incl(m) => s <= m,
        Bound::Excl(m) => s < m,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct StreamId(u64, u64);

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl StreamId {
    fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

#[derive(Debug, Default)]
struct Stream {
    entries: Vec<StreamStored>,
    last: StreamId,
}

#[derive(Debug)]
struct StreamStored {
    id: StreamId,
    fields: Vec<(String, String)>,
}

impl Stream {
    fn add(&mut self, fields: Vec<(String, String)>, max_len: Option<u64>) {
        let now = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        self.last = if now > self.last.0 {
            StreamId(now, 0)
        } else {
            StreamId(self.last.0, self.last.1 + 1)
        };
        self.entries.push(StreamStored {
            id: self.last,
            fields,
        });
        if let Some(max) = max_len.and_then(|m| usize::try_from(m).ok())
            && self.entries.len() > max
        {
            let excess = self.entries.len() - max;
            self.entries.drain(..excess);
        }
    }

    fn range(&self, after: Option<&str>, count: usize) -> Vec<StreamEntry> {
        let after = after.and_then(StreamId::parse);
        self.entries
            .iter()
            .filter(|e| after.is_none_or(|a| e.id > a))
            .take(count)
            .map(|e| StreamEntry {
                id: e.id.to_string(),
                fields: e.fields.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_cap_the_oldest_sessions_are_picked_and_each_ended_with_an_event_of_its_own() {
        let db = MemoryBackend::new();
        let setup = Commit {
            writes: vec![
                WriteOp::ZAdd("active".into(), 9e15, "c".into()),
                WriteOp::ZAdd("active".into(), 9e15, "a".into()),
                WriteOp::ZAdd("active".into(), 9e15, "b".into()),
                WriteOp::ZAdd("created".into(), 3.0, "c".into()),
                WriteOp::ZAdd("created".into(), 1.0, "b".into()),
                WriteOp::ZAdd("created".into(), 1.0, "a".into()),
            ],
            ..Commit::default()
        };
        db.commit(setup).await.unwrap();
        let given = "3f2b8a52-6a4c-4e3d-9a1b-0c2d4e6f8a9b";
        let head = format!("{{\"event_id\":\"{given}\",\"payload\":");
        let end = SessionEvent {
            stream: "outbox".into(),
            fields: vec![
                ("event_id".into(), given.into()),
                ("envelope".into(), head.clone()),
            ],
            session: DocKey::At(KeyAt {
                prefix: "s:".into(),
                name: NamedBy::Picked,
            }),
            tail: "}".into(),
        };
        let commit = Commit {
            // Three active at a cap of two: the two oldest (by creation, then id) go.
            guards: vec![Guard::PickOldestActive(
                "active".into(),
                "created".into(),
                0.0,
                2,
            )],
            writes: vec![
                WriteOp::EachPicked(3),
                WriteOp::HSet("marks".into(), vec![("x".into(), "1".into())]),
                WriteOp::AppendSessionEvent(end),
                WriteOp::ReportPicked,
            ],
            ..Commit::default()
        };
        let CommitOutcome::Applied(applied) = db.commit(commit).await.unwrap() else {
            panic!("applied");
        };
        assert_eq!(applied.reported, ["a", "b"]);
        let read = db
            .read(vec![ReadOp::XRange("outbox".into(), None, 10)])
            .await
            .unwrap();
        let entries = read.into_iter().next().unwrap().into_entries();
        let ids: Vec<&str> = entries.iter().map(|e| e.fields[0].1.as_str()).collect();
        let derived = picked_event_id(given, "b");
        assert_eq!(ids, [given, derived.as_str()]);
        assert!(
            entries[1].fields[1]
                .1
                .starts_with(&head.replace(given, &derived))
        );
        assert_ne!(derived, given);
    }

    #[test]
    fn lrange_follows_redis_index_rules() {
        let l: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(lrange(&l, 0, -1), l);
        assert_eq!(lrange(&l, 1, 1), vec!["b"]);
        assert_eq!(lrange(&l, 2, 10), vec!["c"]);
        assert!(lrange(&l, 3, 5).is_empty());
        assert!(lrange(&[], 0, -1).is_empty());
    }

    #[test]
    fn zset_orders_by_score_then_member() {
        let mut z = ZSet::default();
        z.add(2.0, "b".into());
        z.add(1.0, "z".into());
        z.add(2.0, "a".into());
        let q = |rev| ZRange {
            key: String::new(),
            min: Bound::NegInf,
            max: Bound::PosInf,
            rev,
            offset: 0,
            count: 10,
        };
        let names = |v: Vec<(String, Score)>| v.into_iter().map(|(m, _)| m).collect::<Vec<_>>();
        assert_eq!(names(z.range(&q(false))), ["z", "a", "b"]);
        assert_eq!(names(z.range(&q(true))), ["b", "a", "z"]);
        assert_eq!(z.count_above(1.0), 2);
    }

    #[tokio::test]
    async fn a_failing_guard_writes_nothing_and_reports_which_and_the_hash_named_to_explain_it() {
        let db = MemoryBackend::new();
        let setup = Commit {
            writes: vec![
                WriteOp::HSet("s:doc".into(), vec![("status".into(), "ended".into())]),
                WriteOp::HSet("titles".into(), vec![("t".into(), "doc".into())]),
                WriteOp::IncrWindow("rate".into(), 60_000),
            ],
            ..Commit::default()
        };
        db.commit(setup).await.unwrap();
        let held = vec![("status".to_owned(), "ended".to_owned())];
        let refused = |guards, explain| Commit {
            guards,
            appends: vec![],
            writes: vec![WriteOp::Set("x".into(), "1".into())],
            explain,
        };
        let commit = refused(
            vec![
                Guard::Eq("v".into(), None),
                Guard::Eq("v".into(), Some("1".into())),
            ],
            Some(DocKey::Given("s:doc".into())),
        );
        let expected = Refusal {
            explained: held.clone(),
            failed_guard: 1,
            measured: None,
        };
        assert_eq!(
            db.commit(commit).await.unwrap(),
            CommitOutcome::Conflict(expected)
        );
        // A rate counter's refusal says how long its window has left; the hash explained is
        // named by a title index.
        let commit = refused(
            vec![Guard::IntBelow("rate".into(), 1)],
            Some(DocKey::At(KeyAt {
                prefix: "s:".into(),
                name: NamedBy::Field("titles".into(), "t".into()),
            })),
        );
        let CommitOutcome::Conflict(refusal) = db.commit(commit).await.unwrap() else {
            panic!("the rate guard refuses");
        };
        assert_eq!((refusal.explained, refusal.failed_guard), (held, 0));
        assert!(
            refusal
                .measured
                .is_some_and(|ms| (59_000..=60_000).contains(&ms))
        );
        let got = db.read(vec![ReadOp::Get("x".into())]).await.unwrap();
        assert_eq!(got, vec![Reply::Nil]);
    }
}
