//! Storage: one small key-value contract with two backends that behave identically.
//!
//! Every domain rule lives once, in Rust (`crate::sessions`). A backend only has to offer:
//! - [`Backend::read`]: an *atomic* batch of reads on keys of one hash slot, and
//! - [`Backend::commit`]: an *atomic guarded commit* — check every [`Guard`], then append every
//!   event, then apply every [`WriteOp`]; all or nothing.
//!
//! The session engine reads a snapshot (which includes the user's version counter), checks the
//! invariants on it, and commits guarded by that version: if anybody changed the user in between,
//! the commit reports [`CommitOutcome::Conflict`] and the engine retries on a fresh snapshot. So
//! the invariants hold atomically on both backends, and the Redis side needs only two generic Lua
//! scripts instead of one script per use case.
//!
//! The engine builds its reads with [`Reads`], which gives each read a typed [`Slot`] to take
//! its reply from ([`reads`]); the backends see plain [`ReadOp`]s.
//!
//! Events are appended *before* any write: if the append fails, nothing was written (the
//! "atomic recording" rule of the source documents).

pub mod acl;
pub(crate) mod breaker;
pub(crate) mod cluster;
pub(crate) mod connecting;
pub(crate) mod keys;
pub(crate) mod memory;
pub(crate) mod reads;
pub(crate) mod redis;
pub(crate) mod redis_url;
mod script_args;

use async_trait::async_trait;

pub use keys::Keys;
pub(crate) use reads::{FromReply, Reads, Replies, Slot, read_one};

/// A sorted-set score. Scores here are always whole milliseconds, exact in an `f64`.
pub(crate) type Score = f64;

/// One read inside an atomic read batch.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadOp {
    /// `GET key`.
    Get(String),
    /// `HGETALL key`.
    HGetAll(String),
    /// `HGET key field`.
    HGet(String, String),
    /// `ZRANGEBYSCORE` (or `ZREVRANGEBYSCORE` when `rev`) with scores, `LIMIT offset count`.
    ZRange(ZRange),
    /// `ZSCORE key member`.
    ZScore(String, String),
    /// `LRANGE key start stop` (0-based, inclusive, like Redis).
    LRange(String, i64, i64),
    /// `PTTL key` (-2 missing, -1 no expiry).
    PTtl(String),
    /// `XRANGE key (after + COUNT count`; `after` = `None` reads from the start.
    XRange(String, Option<String>, usize),
    /// `GET <prefix><name>`, the name read first in the same snapshot (nil without a name).
    GetAt(String, NamedBy),
    /// `HGETALL <prefix><name>`, the name read first in the same snapshot (no pairs without a
    /// name).
    HGetAllAt(String, NamedBy),
    /// `HGET key <name>`: a field named by another read in the same snapshot (nil without a
    /// name).
    HGetNamed(String, NamedBy),
    /// The members of a sorted set in a range, in its order, each with `HGETALL
    /// <prefix><member>` (no pairs: no document): the documents of a user's active sessions,
    /// read with the rest of a snapshot.
    HGetAllOf(String, ZRange),
}

/// Where a read finds the end of the name of the key it reads: one snapshot can then read a
/// session and its user's version knowing only the session id, or a user's current session
/// knowing only the user. The prefix carries the hash tag, so both keys share one slot.
#[derive(Debug, Clone, PartialEq)]
pub enum NamedBy {
    /// The value of a string key (`GET key`).
    Value(String),
    /// A field of a hash (`HGET key field`).
    Field(String, String),
    /// In a commit only: the session its [`Guard::PickOldestActive`] picked (nothing named
    /// when it picked none).
    Picked,
}

impl NamedBy {
    /// The key, and the hash field (empty: the key's value), as the scripts take them; `None`
    /// for [`NamedBy::Picked`], which no key holds.
    pub(crate) fn key_and_field(&self) -> Option<(&str, &str)> {
        match self {
            NamedBy::Value(key) => Some((key, "")),
            NamedBy::Field(key, field) => Some((key, field)),
            NamedBy::Picked => None,
        }
    }
}

impl ReadOp {
    /// Up to `count` members of a sorted set, lowest score first.
    #[must_use]
    pub fn all_members(key: String, count: usize) -> Self {
        ReadOp::ZRange(ZRange {
            key,
            min: Bound::NegInf,
            max: Bound::PosInf,
            rev: false,
            offset: 0,
            count,
        })
    }
}

/// A score range query on a sorted set.
#[derive(Debug, Clone, PartialEq)]
pub struct ZRange {
    pub key: String,
    pub min: Bound,
    pub max: Bound,
    /// Highest score first.
    pub rev: bool,
    pub offset: usize,
    pub count: usize,
}

impl ZRange {
    /// Up to `count` members scored above `min`, lowest first.
    #[must_use]
    pub(crate) fn above(key: String, min: Score, count: usize) -> Self {
        ZRange {
            key,
            min: Bound::Excl(min),
            max: Bound::PosInf,
            rev: false,
            offset: 0,
            count,
        }
    }
}

/// One end of a score range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    NegInf,
    PosInf,
    Incl(Score),
    Excl(Score),
}

/// The reply to one [`ReadOp`], in the same position.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Nil,
    Str(String),
    Int(i64),
    Pairs(Vec<(String, String)>),
    Scored(Vec<(String, Score)>),
    List(Vec<String>),
    Entries(Vec<StreamEntry>),
    /// Members with the field/value pairs of their documents.
    Documents(Vec<(String, Vec<(String, String)>)>),
}

/// A stream entry: its id and its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

/// A precondition of a commit. A failed guard means the snapshot is stale or a limit is hit.
///
/// `Eq` guards a decision taken on a snapshot (a version read with it). The others let a write
/// skip the snapshot when it knows what it needs (a session's document as this process last
/// wrote it, the user's current session) or needs only a few of its fields (a message appended
/// to an active session): the store checks, in the same atomic step, what the snapshot would
/// have shown. All but `StreamBelow` fail as `Conflict`, saying which one failed
/// ([`Refusal`]): a guard that is itself a limit of the request (the rate, the active cap, a
/// title, an object's size) answers it; otherwise the engine decides on the document the refusal reports
/// ([`Commit::explain`]) or again on a snapshot, so the answer to a request never rests on an
/// unchecked guess.
#[derive(Debug, Clone, PartialEq)]
pub enum Guard {
    /// `GET key` must equal the value (`None`: the key must not exist). Fails as `Conflict`.
    Eq(String, Option<String>),
    /// `HGET key field` must equal the value (`None`: the field must not exist).
    HEq(String, String, Option<String>),
    /// The integer at `key` (0 when missing) must be below `limit`.
    IntBelow(String, u64),
    /// Fewer than `limit` members of the sorted set may score above `above` (`ZCOUNT key
    /// (above +inf`).
    ZCountBelow(String, Score, u64),
    /// `HGET key field` must be an integer above `floor` (a missing field fails).
    HIntAbove(String, String, i64),
    /// The stream must hold fewer than `max` entries. Fails as `OutboxFull`.
    StreamBelow(String, u64),
    /// What [`NamedBy`] points at (a string's value or a hash field) must be a JSON object
    /// or missing (`{}`), and merged with the patch as [`WriteOp::MergeJson`] would, at most
    /// `max` bytes.
    MergedWithin(NamedBy, String, u64),
    /// A title free in a user's title index (given, or named as for [`WriteOp::ZAddAt`]: the
    /// index of the user an unread document names; a missing name fails): no entry holds it,
    /// the entry names the session excepted, or the session it names is gone, expired or past
    /// its expiry at `now_ms`, as a snapshot's `is_live` decides.
    TitleFree {
        index: DocKey,
        title: String,
        /// The prefix of session documents: the holder's is this and its id.
        sessions: String,
        now_ms: i64,
        /// The session that may hold the title: the one a patch renames.
        except: Option<String>,
    },
    /// A user at the active cap: fewer than `cap` members of the user's active set (the first
    /// key) scored above `above` pick nothing; `cap` or more pick the oldest of them, as many as
    /// a create must end to stay within the cap (one at the cap, more past it: a rollout
    /// lowered the cap), by their score in the user's sessions by creation (the second key),
    /// then by id, which [`NamedBy::Picked`] then names in turn ([`WriteOp::EachPicked`]).
    PickOldestActive(String, String, Score, u64),
    /// `HGET <key> field` must equal the value, the key named as for [`WriteOp::ZAddAt`]; a
    /// missing name fails: a session named by its user's title index.
    HEqAt(KeyAt, String, String),
    /// [`Guard::HIntAbove`] of the key named as for [`WriteOp::ZAddAt`]; a missing name fails.
    HIntAboveAt(KeyAt, String, i64),
}

/// An event to append to a stream before any write of the commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    pub stream: String,
    pub fields: Vec<(String, String)>,
    /// Trim the stream to about this many entries (`MAXLEN ~`); `None` keeps everything.
    pub max_len: Option<u64>,
}

/// One write of a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    Set(String, String),
    /// `SET key value PX ms`.
    SetPx(String, String, u64),
    Del(String),
    HSet(String, Vec<(String, String)>),
    HDel(String, Vec<String>),
    ZAdd(String, Score, String),
    ZRem(String, String),
    /// `ZREMRANGEBYSCORE key -inf max`.
    ZRemBelow(String, Score),
    /// `RPUSH key <head><n><tail>`, `n` the list's length after it (the item's position from
    /// 1): an item that carries its own number, as a message its `seq`.
    RPushNumbered(String, String, String),
    /// `INCR key`.
    Incr(String),
    /// `HINCRBY key field by`, saturating at `i64::MAX` (Redis refuses to overflow): a
    /// counter of a document changed without reading it.
    HIncrBy(String, String, i64),
    /// `INCR key`, and `PEXPIRE key ttl_ms` when the counter was just created.
    IncrWindow(String, u64),
    XDel(String, Vec<String>),
    /// Reports the hash's fields as the writes before it left them: a document changed
    /// without reading it, for this process to know it after all.
    ReadBack(String),
    /// [`WriteOp::ReadBack`] of the key named as for [`WriteOp::ZAddAt`] (no report without a
    /// name).
    ReadBackAt(KeyAt),
    /// `SET key` to what [`NamedBy`] points at (nothing without it): the user's current
    /// pointer set to the session its title index names.
    SetNamed(String, NamedBy),
    /// `ZADD <key> score member`, the key named by what another key holds (see [`KeyAt`]);
    /// nothing without a name.
    ZAddAt(KeyAt, Score, String),
    /// `ZREM <key> member`, the key named as for [`WriteOp::ZAddAt`].
    ZRemAt(KeyAt, String),
    /// `INCR <key>`, the key named as for [`WriteOp::ZAddAt`].
    IncrAt(KeyAt),
    /// `HSET <key> field value`, the key named as for [`WriteOp::ZAddAt`], where the hash has
    /// that field already (a document another key points at, when it is there).
    HSetAt(KeyAt, String, String),
    /// `HINCRBY <key> field by`, the key named and the field required as for
    /// [`WriteOp::HSetAt`].
    HIncrByAt(KeyAt, String, i64),
    /// `HSET <key> field value …`, the key named as for [`WriteOp::ZAddAt`], whatever the hash
    /// holds (nothing without a name).
    HPutAt(KeyAt, Vec<(String, String)>),
    /// `HDEL <key> <field>` where that field holds the value: an index entry of a session
    /// removed without reading it, left alone when it is another session's. The key is named
    /// as for [`WriteOp::ZAddAt`], the field by what a third key holds; nothing without
    /// either name.
    HDelIfAt(KeyAt, NamedBy, String),
    /// Reports the string at the key as the writes before it left it: the session a pointer
    /// held, which the commit changed through it ([`WriteOp::HSetAt`]) without this process
    /// knowing which.
    Report(String),
    /// Reports the session [`Guard::PickOldestActive`] picked (nothing when none).
    ReportPicked,
    /// The next this many writes run once for each session [`Guard::PickOldestActive`]
    /// picked, oldest first, [`NamedBy::Picked`] naming it (once, naming nothing, when none).
    /// The event of a session after the first gets an id of its own, derived from the one the
    /// writes give and the session's id ([`picked_event_id`]).
    EachPicked(usize),
    /// `ZADD key score <the session picked>` (nothing when none).
    ZAddPicked(String, Score),
    /// `ZREM key <the session picked>` (nothing when none).
    ZRemPicked(String),
    /// An event appended in its place among the writes: after the event of a session the
    /// commit ends, which comes from a write. It cannot fail there, as
    /// [`SessionEvent`] cannot.
    Append(Append),
    /// Appends an event about a session that carries the session as the writes before it
    /// left it (see [`SessionEvent`]).
    AppendSessionEvent(SessionEvent),
    /// Merges an RFC 7386 merge patch (JSON text of an object) into the JSON object held where
    /// [`NamedBy`] points (`{}` when missing), in the store: a session's `metadata` or `data`
    /// field or its memory changed without reading it. The result is what the engine would
    /// write (`json_patch::merge`, then `serde_json`: compact, members in key order, numbers
    /// as their text); a test holds the two to each other. Reports the merged object. After its
    /// [`Guard::MergedWithin`] (same place, same patch), Redis writes the merge the guard made.
    MergeJson(NamedBy, String),
}

/// A key whose name ends with what another key holds, read in the same atomic step: one
/// commit can then change the index of a session's user knowing only the session id
/// ([`NamedBy::Field`]), or the user's current session knowing only the user
/// ([`NamedBy::Value`]). The prefix carries the hash tag, so the key shares the slot.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyAt {
    pub prefix: String,
    pub name: NamedBy,
}

/// An event whose payload is a session document in its API form, as the writes of the same
/// commit left it: the event of a change made without reading the session first (its state
/// after the change is known only to the store).
///
/// Unlike an [`Append`], it comes after the writes. That is still all or nothing: the commit's
/// `StreamBelow` guard on the same stream has already proven that the stream can take it, and a
/// script that has written may go on writing even at Redis's memory limit.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvent {
    pub stream: String,
    /// The entry's fields; the last value is the start of the envelope, which goes on with the
    /// payload and then `tail`.
    pub fields: Vec<(String, String)>,
    /// The session document's key.
    pub session: DocKey,
    pub tail: String,
}

/// A key (a document's, a title index's): given, or named by what another key holds (no event
/// without a name).
#[derive(Debug, Clone, PartialEq)]
pub enum DocKey {
    Given(String),
    At(KeyAt),
}

/// A guarded, atomic change. All keys of one commit share one hash slot (checked by the Redis
/// backend), so it is one Lua script in Redis Cluster too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    pub guards: Vec<Guard>,
    pub appends: Vec<Append>,
    pub writes: Vec<WriteOp>,
    /// A hash whose fields a refused commit reports ([`Refusal::explained`]): the session a
    /// change of one session is about (for a switch by title, the session the title names), so
    /// that the engine can say what is wrong without reading it.
    pub explain: Option<DocKey>,
}

/// Why a commit was refused, found in the same call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusal {
    /// The fields of the hash [`Commit::explain`] names, as the refusal found them (none
    /// without one, or when it is gone).
    pub explained: Vec<(String, String)>,
    /// The position in [`Commit::guards`] of the guard that failed.
    pub failed_guard: usize,
    /// What that guard measured: an [`Guard::IntBelow`] its counter's `PTTL` (the time left of
    /// a rate window); a [`Guard::MergedWithin`] the size of the merged object (none when the
    /// held value is not an object).
    pub measured: Option<i64>,
}

/// What became of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Done, with what its writes report.
    Applied(Applied),
    /// A guard other than `StreamBelow` failed: a limit is reached, or somebody changed the
    /// state (re-read and retry). The refusal says which guard, and what it explains.
    Conflict(Refusal),
    /// A `StreamBelow` guard failed: the outbox is full (the relay is not draining it).
    OutboxFull,
}

/// What an applied commit's writes report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The length of the list the last `RPushNumbered` left (the item's number).
    pub list_len: Option<u64>,
    /// The fields the last `ReadBack` found.
    pub read_back: Option<Vec<(String, String)>>,
    /// The session the last `AppendSessionEvent` carried, in its API form (JSON).
    pub session: Option<String>,
    /// What each `Report` and `ReportPicked` found, in order.
    pub reported: Vec<String>,
    /// The object the last `MergeJson` wrote.
    pub merged: Option<String>,
}

/// Why a backend could not answer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Redis is unreachable, timed out or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The event append failed, so nothing of the commit was written.
    #[error("event append failed: {0}")]
    AppendFailed(String),
    /// Redis refused the command to this process's user (`NOPERM`: an ACL rule is missing).
    /// Not a failure of Redis: the circuit breaker ignores it.
    #[error("Redis refused the command to this user: {0}")]
    NoPermission(String),
    /// Redis answered with something this code does not understand (a bug or a foreign key).
    #[error("unexpected reply from store: {0}")]
    Protocol(String),
}

/// A "is there work?" question of the background work, about one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// The stream holds entries (an outbox waiting for the relay).
    StreamNonEmpty(String),
    /// The sorted set holds a member scored at or below this (expiry queue entries due).
    DueBy(String, Score),
}

impl Probe {
    pub(crate) fn key(&self) -> &str {
        match self {
            Probe::StreamNonEmpty(k) | Probe::DueBy(k, _) => k,
        }
    }
}

/// The storage contract; see the module documentation.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Reads all `ops` atomically (one snapshot). All keys must share one hash slot.
    async fn read(&self, ops: Vec<ReadOp>) -> Result<Vec<Reply>, BackendError>;
    /// Answers every probe, `true` where there is work. The keys may span hash slots: this is
    /// how the background work finds the few shards with something to do in one call per Redis
    /// master, instead of one call per shard. Not atomic; a probe that cannot be answered
    /// reports work (the caller then looks at that shard itself).
    async fn probe(&self, probes: Vec<Probe>) -> Result<Vec<bool>, BackendError>;
    /// Applies `commit` atomically: guards, then appends, then writes.
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, BackendError>;
    /// Whether the store answers now (for `/readyz`).
    async fn ping(&self) -> Result<(), BackendError>;
    /// A short name for logs and `/readyz`: `embedded` or `redis`.
    fn kind(&self) -> &'static str;
}

impl Reply {
    /// The string value of a `Get`/`HGet` reply.
    #[must_use]
    pub fn into_opt_string(self) -> Option<String> {
        match self {
            Reply::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer value of a counting reply, 0 for nil.
    #[must_use]
    pub(crate) fn as_int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            Reply::Str(s) => s.parse().unwrap_or(0),
            _ => 0,
        }
    }

    /// Field/value pairs of an `HGetAll` reply (empty for anything else).
    #[must_use]
    pub fn into_pairs(self) -> Vec<(String, String)> {
        match self {
            Reply::Pairs(p) => p,
            _ => Vec::new(),
        }
    }

    /// Members with scores of a `ZRange` reply.
    #[must_use]
    pub fn into_scored(self) -> Vec<(String, Score)> {
        match self {
            Reply::Scored(s) => s,
            _ => Vec::new(),
        }
    }

    /// Members of a `ZRange` reply, without their scores.
    #[must_use]
    pub(crate) fn into_members(self) -> Vec<String> {
        self.into_scored().into_iter().map(|(m, _)| m).collect()
    }

    /// Items of an `LRange` reply.
    #[must_use]
    pub(crate) fn into_list(self) -> Vec<String> {
        match self {
            Reply::List(l) => l,
            _ => Vec::new(),
        }
    }

    /// Members and their documents of an `HGetAllOf` reply.
    #[must_use]
    pub(crate) fn into_documents(self) -> Vec<(String, Vec<(String, String)>)> {
        match self {
            Reply::Documents(d) => d,
            _ => Vec::new(),
        }
    }

    /// Entries of an `XRange` reply.
    #[must_use]
    pub fn into_entries(self) -> Vec<StreamEntry> {
        match self {
            Reply::Entries(e) => e,
            _ => Vec::new(),
        }
    }
}

/// The event id of the end of a session picked after the first, where a commit's writes give one
/// id for them all: the name-based UUID (version 5) of the session id in the namespace of that
/// id. `commit.lua` derives the same (`redis.sha1hex`).
#[must_use]
pub(crate) fn picked_event_id(given: &str, session_id: &str) -> String {
    uuid::Uuid::parse_str(given).map_or_else(
        |_| given.to_owned(),
        |namespace| uuid::Uuid::new_v5(&namespace, session_id.as_bytes()).to_string(),
    )
}
