//! What the Lua scripts are called with: the keys each call declares, and its arguments.
//!
//! `read.lua` takes its reads as words (`GET <key index>`, `HGETALL <key index>`, …).
//! `commit.lua` takes a commit as a byte program and its operands: one instruction per guard,
//! append and write — an opcode byte, the key's index (2 bytes, big-endian) and for the
//! variable-length ones a count (2 bytes) — and every value, field, score and limit after it,
//! in order. A create is about a hundred arguments; spelled as separate words (op names, key
//! indexes, counts), each a Lua string walked through a function call and `tonumber`, they
//! were a fifth of the instructions Redis spends on a create (callgrind).

use std::collections::HashMap;

use super::keys::hash_tag;
use super::{
    Append, BackendError, Bound, Commit, DocKey, Guard, KeyAt, NamedBy, ReadOp, WriteOp, ZRange,
};

/// Collects the keys of one call, each once, and hands out their 1-based `KEYS` index.
#[derive(Default)]
pub(super) struct KeyTable {
    pub(super) keys: Vec<String>,
    index: HashMap<String, usize>,
}

impl KeyTable {
    fn index(&mut self, key: &str) -> usize {
        let next = self.keys.len() + 1;
        *self.index.entry(key.to_owned()).or_insert_with(|| {
            self.keys.push(key.to_owned());
            next
        })
    }

    fn word(&mut self, key: &str) -> String {
        self.index(key).to_string()
    }

    /// Every key of one call must share a hash slot (one script in Redis Cluster).
    pub(super) fn check_one_slot(&self) -> Result<(), BackendError> {
        let mut tags = self.keys.iter().map(|k| hash_tag(k));
        if let Some(first) = tags.next()
            && let Some(other) = tags.find(|t| *t != first)
        {
            return Err(BackendError::Protocol(format!(
                "keys of one call span hash tags {first} and {other}"
            )));
        }
        Ok(())
    }
}

fn bound(b: Bound) -> String {
    match b {
        Bound::NegInf => "-inf".to_owned(),
        Bound::PosInf => "+inf".to_owned(),
        Bound::Incl(s) => s.to_string(),
        Bound::Excl(s) => format!("({s}"),
    }
}

/// The arguments of `read.lua`.
///
/// # Errors
/// A read named by [`NamedBy::Picked`], which only a commit picks.
pub(super) fn encode_reads(ops: &[ReadOp]) -> Result<(KeyTable, Vec<String>), BackendError> {
    let mut keys = KeyTable::default();
    let mut argv = Vec::new();
    for op in ops {
        match op {
            ReadOp::Get(k) => argv.extend(["GET".to_owned(), keys.word(k)]),
            ReadOp::HGetAll(k) => argv.extend(["HGETALL".to_owned(), keys.word(k)]),
            ReadOp::HGet(k, f) => argv.extend(["HGET".to_owned(), keys.word(k), f.clone()]),
            ReadOp::ZRange(q) => {
                argv.extend(["ZRANGE".to_owned(), keys.word(&q.key)]);
                encode_range(&mut argv, q);
            }
            ReadOp::HGetAllOf(prefix, q) => {
                let words = [keys.word(prefix), keys.word(&q.key)];
                argv.push("HGETALLOF".to_owned());
                argv.extend(words);
                encode_range(&mut argv, q);
            }
            ReadOp::ZScore(k, m) => argv.extend(["ZSCORE".to_owned(), keys.word(k), m.clone()]),
            ReadOp::LRange(k, a, b) => {
                argv.extend([
                    "LRANGE".to_owned(),
                    keys.word(k),
                    a.to_string(),
                    b.to_string(),
                ]);
            }
            ReadOp::PTtl(k) => argv.extend(["PTTL".to_owned(), keys.word(k)]),
            ReadOp::XRange(k, after, count) => argv.extend([
                "XRANGE".to_owned(),
                keys.word(k),
                after.clone().unwrap_or_default(),
                count.to_string(),
            ]),
            ReadOp::GetAt(prefix, name) => {
                argv.extend(["GETAT".to_owned(), keys.word(prefix)]);
                encode_name(&mut keys, &mut argv, name)?;
            }
            ReadOp::HGetAllAt(prefix, name) => {
                argv.extend(["HGETALLAT".to_owned(), keys.word(prefix)]);
                encode_name(&mut keys, &mut argv, name)?;
            }
            ReadOp::HGetNamed(key, name) => {
                argv.extend(["HGETNAMED".to_owned(), keys.word(key)]);
                encode_name(&mut keys, &mut argv, name)?;
            }
        }
    }
    Ok((keys, argv))
}

/// A score range as `read.lua` takes it: `min max rev offset count`.
fn encode_range(argv: &mut Vec<String>, q: &ZRange) {
    argv.extend([
        bound(q.min),
        bound(q.max),
        if q.rev { "1" } else { "0" }.to_owned(),
        q.offset.to_string(),
        q.count.to_string(),
    ]);
}

/// A [`NamedBy`] as `read.lua` takes it: `V key` or `F key field`.
fn encode_name(
    keys: &mut KeyTable,
    argv: &mut Vec<String>,
    name: &NamedBy,
) -> Result<(), BackendError> {
    match name {
        NamedBy::Value(k) => argv.extend(["V".to_owned(), keys.word(k)]),
        NamedBy::Field(k, f) => argv.extend(["F".to_owned(), keys.word(k), f.clone()]),
        NamedBy::Picked => {
            return Err(BackendError::Protocol(
                "a read cannot name the session a commit picks".to_owned(),
            ));
        }
    }
    Ok(())
}

/// The opcodes of `commit.lua` (the same letters there).
mod opcode {
    pub(super) const EQ: u8 = b'E';
    pub(super) const EQ_NONE: u8 = b'e';
    pub(super) const HEQ: u8 = b'H';
    pub(super) const HEQ_NONE: u8 = b'h';
    pub(super) const INT_BELOW: u8 = b'I';
    pub(super) const ZCOUNT_BELOW: u8 = b'C';
    pub(super) const HINT_ABOVE: u8 = b'G';
    pub(super) const STREAM_BELOW: u8 = b'L';
    pub(super) const XADD: u8 = b'a';
    pub(super) const XADD_TRIM: u8 = b'A';
    pub(super) const SET: u8 = b's';
    pub(super) const SETPX: u8 = b'p';
    pub(super) const DEL: u8 = b'd';
    pub(super) const HSET: u8 = b'w';
    pub(super) const HDEL: u8 = b'x';
    pub(super) const ZADD: u8 = b'z';
    pub(super) const ZREM: u8 = b'r';
    pub(super) const ZREM_BELOW: u8 = b'b';
    pub(super) const RPUSH_NUMBERED: u8 = b'R';
    pub(super) const INCR: u8 = b'+';
    pub(super) const INCR_WINDOW: u8 = b'i';
    pub(super) const HINCRBY: u8 = b'n';
    pub(super) const XDEL: u8 = b'X';
    pub(super) const READ_BACK: u8 = b'B';
    pub(super) const ZADD_AT: u8 = b'Z';
    pub(super) const ZREM_AT: u8 = b'Q';
    pub(super) const XADD_SESSION: u8 = b'V';
    pub(super) const INCR_AT: u8 = b'J';
    pub(super) const HSET_AT: u8 = b'W';
    pub(super) const HINCRBY_AT: u8 = b'N';
    pub(super) const REPORT: u8 = b'P';
    pub(super) const HDEL_IF_AT: u8 = b'T';
    pub(super) const MERGED_WITHIN: u8 = b'M';
    pub(super) const MERGE_JSON: u8 = b'm';
    pub(super) const TITLE_FREE: u8 = b'F';
    pub(super) const TITLE_FREE_AT: u8 = b'f';
    pub(super) const HPUT_AT: u8 = b'O';
    pub(super) const HEQ_AT: u8 = b'K';
    pub(super) const HINT_ABOVE_AT: u8 = b'g';
    pub(super) const READ_BACK_AT: u8 = b'k';
    pub(super) const SET_NAMED: u8 = b'S';
    pub(super) const XADD_SESSION_AT: u8 = b'v';
    pub(super) const PICK_OLDEST: u8 = b'o';
    pub(super) const ZADD_PICKED: u8 = b'y';
    pub(super) const ZREM_PICKED: u8 = b'Y';
    pub(super) const REPORT_PICKED: u8 = b'q';
    pub(super) const EXPLAIN: u8 = b'!';
    pub(super) const EXPLAIN_AT: u8 = b'?';
    pub(super) const EACH_PICKED: u8 = b'*';
}

/// The arguments of `commit.lua`: its keys, the program, the operands.
#[derive(Default)]
pub(super) struct CommitArgs {
    pub(super) keys: KeyTable,
    pub(super) program: Vec<u8>,
    pub(super) operands: Vec<String>,
}

impl CommitArgs {
    /// An instruction on `key`, its operands to follow.
    fn op(&mut self, opcode: u8, key: &str) -> Result<&mut Vec<String>, BackendError> {
        self.program.push(opcode);
        self.key(key)?;
        Ok(&mut self.operands)
    }

    /// A key's index in KEYS, in the program.
    fn key(&mut self, key: &str) -> Result<(), BackendError> {
        let index = self.keys.index(key);
        self.number(index, "keys")
    }

    /// A key given (its index) or named (the prefix's index, then as [`CommitArgs::name`]).
    fn doc(&mut self, key: &DocKey) -> Result<(), BackendError> {
        match key {
            DocKey::Given(key) => self.key(key),
            DocKey::At(at) => {
                self.key(&at.prefix)?;
                self.name(&at.name)
            }
        }
    }

    /// An instruction on a key given (`opcodes.0`) or named (`opcodes.1`).
    fn on(&mut self, opcodes: (u8, u8), key: &DocKey) -> Result<&mut Vec<String>, BackendError> {
        self.program.push(match key {
            DocKey::Given(_) => opcodes.0,
            DocKey::At(_) => opcodes.1,
        });
        self.doc(key)?;
        Ok(&mut self.operands)
    }

    /// An instruction on `key` with a count (of fields, or of field-value pairs).
    fn counted(
        &mut self,
        opcode: u8,
        key: &str,
        count: usize,
    ) -> Result<&mut Vec<String>, BackendError> {
        self.op(opcode, key)?;
        self.number(count, "fields in one command")?;
        Ok(&mut self.operands)
    }

    /// An instruction on the key named by `at`: the prefix's index, then the naming key's;
    /// first among the operands the naming field (empty: the naming key's value).
    fn at(&mut self, opcode: u8, at: &KeyAt) -> Result<&mut Vec<String>, BackendError> {
        self.op(opcode, &at.prefix)?;
        self.name(&at.name)?;
        Ok(&mut self.operands)
    }

    /// What names a key or a field: the naming key's index (0: the session picked), and among
    /// the operands the naming field (empty: the naming key's value).
    fn name(&mut self, name: &NamedBy) -> Result<(), BackendError> {
        let (key, field) = match name.key_and_field() {
            Some((key, field)) => (self.keys.index(key), field),
            None => (0, ""),
        };
        self.number(key, "keys")?;
        self.operands.push(field.to_owned());
        Ok(())
    }

    /// An instruction on what a key holds: the key's index; first among the operands the
    /// hash field (empty: the key's value).
    fn held(&mut self, opcode: u8, at: &NamedBy) -> Result<&mut Vec<String>, BackendError> {
        let (key, field) = at.key_and_field().ok_or_else(|| {
            BackendError::Protocol("a session picked holds no JSON to merge".to_owned())
        })?;
        self.op(opcode, key)?.push(field.to_owned());
        Ok(&mut self.operands)
    }

    /// An event: the stream's index, the count of its fields, and the fields' names and values
    /// among the operands.
    fn append(&mut self, append: &Append) -> Result<(), BackendError> {
        let (opcode, trim) = match append.max_len {
            Some(max) => (opcode::XADD_TRIM, Some(max.to_string())),
            None => (opcode::XADD, None),
        };
        let operands = self.counted(opcode, &append.stream, append.fields.len())?;
        operands.extend(trim);
        for (f, v) in &append.fields {
            operands.extend([f.clone(), v.clone()]);
        }
        Ok(())
    }

    fn number(&mut self, n: usize, what: &str) -> Result<(), BackendError> {
        let n = u16::try_from(n).map_err(|_| {
            BackendError::Protocol(format!("a commit may have at most 65 535 {what}, not {n}"))
        })?;
        self.program.extend(n.to_be_bytes());
        Ok(())
    }
}

/// The arguments of `commit.lua` for `commit`.
///
/// # Errors
/// A commit too large for the program's 2-byte numbers (more than 65 535 keys, or fields in
/// one command): no use case comes near it.
pub(super) fn encode_commit(commit: &Commit) -> Result<CommitArgs, BackendError> {
    use opcode::*;
    let mut call = CommitArgs::default();
    if let Some(explain) = &commit.explain {
        call.on((EXPLAIN, EXPLAIN_AT), explain)?;
    }
    for guard in &commit.guards {
        match guard {
            Guard::Eq(k, Some(expected)) => call.op(EQ, k)?.push(expected.clone()),
            Guard::Eq(k, None) => {
                call.op(EQ_NONE, k)?;
            }
            Guard::HEq(k, field, Some(expected)) => {
                call.op(HEQ, k)?.extend([field.clone(), expected.clone()])
            }
            Guard::HEq(k, field, None) => call.op(HEQ_NONE, k)?.push(field.clone()),
            Guard::IntBelow(k, limit) => call.op(INT_BELOW, k)?.push(limit.to_string()),
            Guard::ZCountBelow(k, above, limit) => call
                .op(ZCOUNT_BELOW, k)?
                .extend([above.to_string(), limit.to_string()]),
            Guard::HIntAbove(k, field, floor) => call
                .op(HINT_ABOVE, k)?
                .extend([field.clone(), floor.to_string()]),
            Guard::StreamBelow(k, max) => call.op(STREAM_BELOW, k)?.push(max.to_string()),
            Guard::TitleFree {
                index,
                title,
                sessions,
                now_ms,
                except,
            } => {
                call.on((TITLE_FREE, TITLE_FREE_AT), index)?;
                call.key(sessions)?;
                let except = except.clone().unwrap_or_default();
                call.operands
                    .extend([title.clone(), now_ms.to_string(), except]);
            }
            Guard::PickOldestActive(active, sessions, above, cap) => {
                call.op(PICK_OLDEST, active)?;
                call.key(sessions)?;
                call.operands.extend([above.to_string(), cap.to_string()]);
            }
            Guard::HEqAt(at, field, expected) => {
                call.at(HEQ_AT, at)?
                    .extend([field.clone(), expected.clone()]);
            }
            Guard::HIntAboveAt(at, field, floor) => {
                call.at(HINT_ABOVE_AT, at)?
                    .extend([field.clone(), floor.to_string()]);
            }
            Guard::MergedWithin(at, patch, max) => {
                call.held(MERGED_WITHIN, at)?
                    .extend([patch.clone(), max.to_string()]);
            }
        }
    }
    for append in &commit.appends {
        call.append(append)?;
    }
    for write in &commit.writes {
        match write {
            WriteOp::Set(k, v) => call.op(SET, k)?.push(v.clone()),
            WriteOp::SetPx(k, v, ms) => call.op(SETPX, k)?.extend([v.clone(), ms.to_string()]),
            WriteOp::Del(k) => {
                call.op(DEL, k)?;
            }
            WriteOp::HSet(k, fields) if !fields.is_empty() => {
                let operands = call.counted(HSET, k, fields.len())?;
                for (f, v) in fields {
                    operands.extend([f.clone(), v.clone()]);
                }
            }
            WriteOp::HDel(k, fields) if !fields.is_empty() => {
                call.counted(HDEL, k, fields.len())?
                    .extend(fields.iter().cloned());
            }
            WriteOp::ZAdd(k, score, m) => call.op(ZADD, k)?.extend([score.to_string(), m.clone()]),
            WriteOp::ZRem(k, m) => call.op(ZREM, k)?.push(m.clone()),
            WriteOp::ZRemBelow(k, max) => call.op(ZREM_BELOW, k)?.push(max.to_string()),
            WriteOp::RPushNumbered(k, head, tail) => {
                call.op(RPUSH_NUMBERED, k)?
                    .extend([head.clone(), tail.clone()]);
            }
            WriteOp::Incr(k) => {
                call.op(INCR, k)?;
            }
            WriteOp::IncrWindow(k, ttl) => call.op(INCR_WINDOW, k)?.push(ttl.to_string()),
            WriteOp::HIncrBy(k, field, by) => {
                call.op(HINCRBY, k)?.extend([field.clone(), by.to_string()]);
            }
            WriteOp::XDel(k, ids) if !ids.is_empty() => {
                call.counted(XDEL, k, ids.len())?
                    .extend(ids.iter().cloned());
            }
            WriteOp::ReadBack(k) => {
                call.op(READ_BACK, k)?;
            }
            WriteOp::ReadBackAt(at) => {
                call.at(READ_BACK_AT, at)?;
            }
            WriteOp::SetNamed(k, name) => {
                call.op(SET_NAMED, k)?;
                call.name(name)?;
            }
            WriteOp::ZAddAt(at, score, m) => {
                call.at(ZADD_AT, at)?.extend([score.to_string(), m.clone()]);
            }
            WriteOp::ZRemAt(at, m) => call.at(ZREM_AT, at)?.push(m.clone()),
            WriteOp::IncrAt(at) => {
                call.at(INCR_AT, at)?;
            }
            WriteOp::HSetAt(at, field, value) => {
                call.at(HSET_AT, at)?.extend([field.clone(), value.clone()]);
            }
            WriteOp::HPutAt(at, fields) if !fields.is_empty() => {
                call.at(HPUT_AT, at)?;
                call.number(fields.len(), "fields in one command")?;
                for (f, v) in fields {
                    call.operands.extend([f.clone(), v.clone()]);
                }
            }
            WriteOp::HIncrByAt(at, field, by) => {
                call.at(HINCRBY_AT, at)?
                    .extend([field.clone(), by.to_string()]);
            }
            WriteOp::Report(k) => {
                call.op(REPORT, k)?;
            }
            WriteOp::ReportPicked => {
                call.program.extend([REPORT_PICKED, 0, 0]);
            }
            WriteOp::EachPicked(writes) => {
                call.program.extend([EACH_PICKED, 0, 0]);
                call.number(*writes, "writes in a block")?;
            }
            WriteOp::ZAddPicked(k, score) => call.op(ZADD_PICKED, k)?.push(score.to_string()),
            WriteOp::ZRemPicked(k) => {
                call.op(ZREM_PICKED, k)?;
            }
            WriteOp::Append(append) => call.append(append)?,
            WriteOp::MergeJson(at, patch) => call.held(MERGE_JSON, at)?.push(patch.clone()),
            WriteOp::HDelIfAt(at, field, value) => {
                call.at(HDEL_IF_AT, at)?;
                call.name(field)?;
                call.operands.push(value.clone());
            }
            WriteOp::AppendSessionEvent(event) => {
                let opcode = match &event.session {
                    DocKey::Given(_) => XADD_SESSION,
                    DocKey::At(_) => XADD_SESSION_AT,
                };
                call.counted(opcode, &event.stream, event.fields.len())?;
                call.doc(&event.session)?;
                for (f, v) in &event.fields {
                    call.operands.extend([f.clone(), v.clone()]);
                }
                call.operands.push(event.tail.clone());
            }
            // Empty field lists change nothing; Redis would reject them, so they are not sent.
            WriteOp::HSet(..) | WriteOp::HDel(..) | WriteOp::XDel(..) | WriteOp::HPutAt(..) => {}
        }
    }
    Ok(call)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Append, SessionEvent};

    #[test]
    fn a_commit_is_a_program_of_opcodes_key_indexes_and_counts_with_operands_after_it() {
        let commit = Commit {
            guards: vec![
                Guard::StreamBelow("{1}:outbox".into(), 100),
                Guard::HEq("{1}:t".into(), "title".into(), None),
            ],
            appends: vec![Append {
                stream: "{1}:outbox".into(),
                fields: vec![("event_id".into(), "e1".into())],
                max_len: None,
            }],
            writes: vec![
                WriteOp::HSet("{1}:s:a".into(), vec![("f".into(), "v".into())]),
                WriteOp::HDel("{1}:s:a".into(), vec![]),
                WriteOp::ZAdd("{1}:exp".into(), 5.0, "a".into()),
            ],
            explain: None,
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(
            call.keys.keys,
            ["{1}:outbox", "{1}:t", "{1}:s:a", "{1}:exp"]
        );
        assert_eq!(
            call.program,
            [
                b'L', 0, 1, //
                b'h', 0, 2, //
                b'a', 0, 1, 0, 1, //
                b'w', 0, 3, 0, 1, //
                b'z', 0, 4,
            ]
        );
        assert_eq!(
            call.operands,
            ["100", "title", "event_id", "e1", "f", "v", "5", "a"]
        );
    }

    #[test]
    fn a_block_for_each_session_picked_gives_its_length_in_instructions() {
        let commit = Commit {
            writes: vec![
                WriteOp::EachPicked(2),
                WriteOp::ZRemPicked("{1}:a:u".into()),
                WriteOp::ReportPicked,
            ],
            ..Commit::default()
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(call.keys.keys, ["{1}:a:u"]);
        assert_eq!(call.program, [b'*', 0, 0, 0, 2, b'Y', 0, 1, b'q', 0, 0]);
    }

    #[test]
    fn a_switch_by_title_explains_a_refusal_by_the_session_its_title_names() {
        let commit = Commit {
            guards: vec![Guard::HEq("{1}:t:u".into(), "plan".into(), None)],
            explain: Some(DocKey::At(KeyAt {
                prefix: "{1}:s:".into(),
                name: NamedBy::Field("{1}:t:u".into(), "plan".into()),
            })),
            ..Commit::default()
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(call.keys.keys, ["{1}:s:", "{1}:t:u"]);
        assert_eq!(call.program, [b'?', 0, 1, 0, 2, b'h', 0, 2]);
        assert_eq!(call.operands, ["plan", "plan"]);
    }

    #[test]
    fn a_message_counted_without_reading_its_session_is_four_instructions_after_its_explain() {
        let commit = Commit {
            guards: vec![Guard::HIntAbove("{1}:s:a".into(), "expires_ms".into(), 7)],
            writes: vec![
                WriteOp::HIncrBy("{1}:s:a".into(), "version".into(), 1),
                WriteOp::RPushNumbered("{1}:m:a".into(), "{\"seq\":".into(), "}".into()),
                WriteOp::ReadBack("{1}:s:a".into()),
            ],
            explain: Some(DocKey::Given("{1}:s:a".into())),
            ..Commit::default()
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(call.keys.keys, ["{1}:s:a", "{1}:m:a"]);
        assert_eq!(
            call.program,
            [
                b'!', 0, 1, // a refusal reports the session
                b'G', 0, 1, //
                b'n', 0, 1, //
                b'R', 0, 2, //
                b'B', 0, 1,
            ]
        );
        assert_eq!(
            call.operands,
            ["expires_ms", "7", "version", "1", "{\"seq\":", "}"]
        );
    }

    #[test]
    fn an_end_without_reading_its_session_names_the_users_index_by_a_field_and_appends_last() {
        let at = KeyAt {
            prefix: "{1}:ua:".into(),
            name: NamedBy::Field("{1}:s:a".into(), "user_id".into()),
        };
        let commit = Commit {
            writes: vec![
                WriteOp::ZRemAt(at.clone(), "a".into()),
                WriteOp::ZAddAt(at.clone(), 9.0, "a".into()),
                WriteOp::IncrAt(KeyAt {
                    prefix: "{1}:uv:".into(),
                    ..at
                }),
                WriteOp::AppendSessionEvent(SessionEvent {
                    stream: "{1}:outbox".into(),
                    fields: vec![
                        ("event_id".into(), "e1".into()),
                        ("envelope".into(), "{\"payload\":".into()),
                    ],
                    session: DocKey::Given("{1}:s:a".into()),
                    tail: "}".into(),
                }),
            ],
            ..Commit::default()
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(
            call.keys.keys,
            ["{1}:ua:", "{1}:s:a", "{1}:uv:", "{1}:outbox"]
        );
        assert_eq!(
            call.program,
            [
                b'Q', 0, 1, 0, 2, //
                b'Z', 0, 1, 0, 2, //
                b'J', 0, 3, 0, 2, //
                b'V', 0, 4, 0, 2, 0, 2,
            ]
        );
        assert_eq!(
            call.operands,
            [
                "user_id",
                "a",
                "user_id",
                "9",
                "a",
                "user_id",
                "event_id",
                "e1",
                "envelope",
                "{\"payload\":",
                "}"
            ]
        );
    }

    #[test]
    fn the_documents_of_a_range_name_their_prefix_then_the_set() {
        let active = ZRange {
            key: "{1}:ua:u".into(),
            min: Bound::Excl(5.0),
            max: Bound::PosInf,
            rev: false,
            offset: 0,
            count: 10,
        };
        let (keys, argv) = encode_reads(&[ReadOp::HGetAllOf("{1}:s:".into(), active)]).unwrap();
        assert_eq!(keys.keys, ["{1}:s:", "{1}:ua:u"]);
        assert_eq!(argv, ["HGETALLOF", "1", "2", "(5", "+inf", "0", "0", "10"]);
    }

    #[test]
    fn a_merge_acts_on_a_value_or_a_hash_field() {
        let memory = NamedBy::Value("{1}:mem:a".into());
        let data = NamedBy::Field("{1}:s:a".into(), "data".into());
        let commit = Commit {
            guards: vec![Guard::MergedWithin(memory.clone(), "{}".into(), 9)],
            writes: vec![
                WriteOp::MergeJson(memory, "{}".into()),
                WriteOp::MergeJson(data, "{\"d\":1}".into()),
            ],
            ..Commit::default()
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(call.keys.keys, ["{1}:mem:a", "{1}:s:a"]);
        assert_eq!(call.program, [b'M', 0, 1, b'm', 0, 1, b'm', 0, 2]);
        assert_eq!(
            call.operands,
            ["", "{}", "9", "", "{}", "data", "{\"d\":1}"]
        );
    }

    #[test]
    fn a_title_entry_is_named_by_two_fields_of_the_document() {
        let doc = "{1}:s:a".to_owned();
        let commit = Commit {
            writes: vec![WriteOp::HDelIfAt(
                KeyAt {
                    prefix: "{1}:t:".into(),
                    name: NamedBy::Field(doc.clone(), "user_id".into()),
                },
                NamedBy::Field(doc, "title".into()),
                "a".into(),
            )],
            ..Commit::default()
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(call.keys.keys, ["{1}:t:", "{1}:s:a"]);
        assert_eq!(call.program, [b'T', 0, 1, 0, 2, 0, 2]);
        assert_eq!(call.operands, ["user_id", "title", "a"]);
    }

    #[test]
    fn a_new_title_is_checked_and_set_in_the_index_the_document_names() {
        let titles = KeyAt {
            prefix: "{1}:t:".into(),
            name: NamedBy::Field("{1}:s:a".into(), "user_id".into()),
        };
        let commit = Commit {
            guards: vec![Guard::TitleFree {
                index: DocKey::At(titles.clone()),
                title: "new".into(),
                sessions: "{1}:s:".into(),
                now_ms: 7,
                except: Some("a".into()),
            }],
            writes: vec![WriteOp::HPutAt(titles, vec![("new".into(), "a".into())])],
            ..Commit::default()
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(call.keys.keys, ["{1}:t:", "{1}:s:a", "{1}:s:"]);
        assert_eq!(
            call.program,
            [b'f', 0, 1, 0, 2, 0, 3, b'O', 0, 1, 0, 2, 0, 1]
        );
        assert_eq!(
            call.operands,
            ["user_id", "new", "7", "a", "user_id", "new", "a"]
        );
    }

    #[test]
    fn a_create_without_knowing_the_current_session_names_it_by_the_pointer() {
        let at = KeyAt {
            prefix: "{1}:s:".into(),
            name: NamedBy::Value("{1}:cur:u".into()),
        };
        let commit = Commit {
            writes: vec![
                WriteOp::HSetAt(at.clone(), "current".into(), "0".into()),
                WriteOp::HIncrByAt(at, "version".into(), 1),
                WriteOp::Report("{1}:cur:u".into()),
            ],
            ..Commit::default()
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(call.keys.keys, ["{1}:s:", "{1}:cur:u"]);
        assert_eq!(
            call.program,
            [
                b'W', 0, 1, 0, 2, //
                b'N', 0, 1, 0, 2, //
                b'P', 0, 2,
            ]
        );
        assert_eq!(call.operands, ["", "current", "0", "", "version", "1"]);
    }

    #[test]
    fn a_switch_by_title_names_the_session_by_the_title_index() {
        let titled = NamedBy::Field("{1}:t:u".into(), "one".into());
        let doc = KeyAt {
            prefix: "{1}:s:".into(),
            name: titled.clone(),
        };
        let commit = Commit {
            guards: vec![
                Guard::HEqAt(doc.clone(), "current".into(), "0".into()),
                Guard::HIntAboveAt(doc.clone(), "expires_ms".into(), 7),
            ],
            appends: Vec::new(),
            writes: vec![
                WriteOp::SetNamed("{1}:cur:u".into(), titled),
                WriteOp::ReadBackAt(doc.clone()),
                WriteOp::AppendSessionEvent(SessionEvent {
                    stream: "{1}:outbox".into(),
                    fields: vec![("data".into(), "{\"payload\":".into())],
                    session: DocKey::At(doc),
                    tail: "}".into(),
                }),
            ],
            explain: None,
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(
            call.keys.keys,
            ["{1}:s:", "{1}:t:u", "{1}:cur:u", "{1}:outbox"]
        );
        assert_eq!(
            call.program,
            [
                b'K', 0, 1, 0, 2, //
                b'g', 0, 1, 0, 2, //
                b'S', 0, 3, 0, 2, //
                b'k', 0, 1, 0, 2, //
                b'v', 0, 4, 0, 1, 0, 1, 0, 2,
            ]
        );
        assert_eq!(
            call.operands,
            [
                "one",
                "current",
                "0",
                "one",
                "expires_ms",
                "7",
                "one",
                "one",
                "one",
                "data",
                "{\"payload\":",
                "}",
            ]
        );
    }

    #[test]
    fn a_create_at_the_cap_ends_the_session_the_store_picks_and_appends_its_event_after() {
        let picked = KeyAt {
            prefix: "{1}:s:".into(),
            name: NamedBy::Picked,
        };
        let created = Append {
            stream: "{1}:outbox".into(),
            fields: vec![("event_id".into(), "e1".into())],
            max_len: None,
        };
        let commit = Commit {
            guards: vec![Guard::PickOldestActive(
                "{1}:active:u".into(),
                "{1}:sessions:u".into(),
                7.0,
                3,
            )],
            appends: Vec::new(),
            writes: vec![
                WriteOp::HPutAt(picked, vec![("status".into(), "ended".into())]),
                WriteOp::ZAddPicked("{1}:exp".into(), 9.0),
                WriteOp::ZRemPicked("{1}:active:u".into()),
                WriteOp::ReportPicked,
                WriteOp::Append(created),
            ],
            explain: None,
        };
        let call = encode_commit(&commit).unwrap();
        assert_eq!(
            call.keys.keys,
            [
                "{1}:active:u",
                "{1}:sessions:u",
                "{1}:s:",
                "{1}:exp",
                "{1}:outbox"
            ]
        );
        assert_eq!(
            call.program,
            [
                b'o', 0, 1, 0, 2, //
                b'O', 0, 3, 0, 0, 0, 1, // named by index 0: the session picked; one field
                b'y', 0, 4, //
                b'Y', 0, 1, //
                b'q', 0, 0, //
                b'a', 0, 5, 0, 1,
            ]
        );
        assert_eq!(
            call.operands,
            ["7", "3", "", "status", "ended", "9", "event_id", "e1"]
        );
        let read = ReadOp::HGetAllAt("{1}:s:".into(), NamedBy::Picked);
        let refused = encode_reads(&[read]).err().map(|e| e.to_string());
        assert_eq!(
            refused.as_deref(),
            Some("unexpected reply from store: a read cannot name the session a commit picks")
        );
    }

    #[test]
    fn a_commit_beyond_the_programs_numbers_is_refused_in_words() {
        let commit = Commit {
            writes: (0..70_000)
                .map(|i| WriteOp::Del(format!("{{1}}:k{i}")))
                .collect(),
            ..Commit::default()
        };
        let Err(BackendError::Protocol(message)) = encode_commit(&commit) else {
            panic!("a commit of 70 000 keys was encoded");
        };
        assert_eq!(message, "a commit may have at most 65 535 keys, not 65536");
    }
}
