//! Dead letters: inbound events the consumer set aside so that it never blocks the events
//! stream or loops on one event for ever.
//!
//! An event goes to the dead-letter stream, with its error, its attempts and the time, when it
//! can never succeed as it is — its entry is not an envelope (`malformed`), its type is not in
//! the event contract (`unknown_type`), its payload is invalid (`invalid`) — or when applying
//! it kept failing for [`FAIL_ATTEMPTS`] attempts over at least [`FAIL_FOR_MS`] (`failed`; a
//! store outage never gets that far, as the attempts cannot be recorded either). Setting it
//! aside and moving the consumer's position past it is one commit, under the consumer's lease.
//!
//! A person then lists, inspects, replays (once the cause is fixed) or discards them through
//! the service-scope API. A replay applies the event as the consumer would; events are applied
//! once per `event_id`, so replaying one that was applied meanwhile changes nothing.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::model::Envelope;
use crate::model::input::MAX_PAGE_SIZE;
use crate::sessions::{InboundOutcome, Page, Sessions, page_size};
use crate::store::{Append, Commit, StreamEntry, WriteOp};

/// Attempts before an event that keeps failing is set aside...
pub const FAIL_ATTEMPTS: u32 = 10;
/// ...and the time since its first failure, so that a passing condition (the outbox of the
/// user's shard full for a moment, contention) is waited out rather than dead-lettered.
pub const FAIL_FOR_MS: i64 = 60_000;
/// Dead letters kept (oldest trimmed first): enough for a long incident, bounded memory.
pub(crate) const MAX_DEAD_LETTERS: u64 = 10_000;

/// Why an event was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The stream entry is not an event envelope.
    Malformed,
    /// The event type is not part of the event contract.
    UnknownType,
    /// The payload is invalid (for example a missing `user_id`).
    Invalid,
    /// Applying it kept failing.
    Failed,
}

impl Reason {
    #[must_use]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownType => "unknown_type",
            Reason::Invalid => "invalid",
            Reason::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Reason::Malformed,
            Reason::UnknownType,
            Reason::Invalid,
            Reason::Failed,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// An event the consumer set aside.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct DeadLetter {
    /// The dead letter's id (`<ms>-<seq>`, its entry in the dead-letter stream).
    pub id: String,
    /// The event's entry id on the events stream.
    pub stream_id: String,
    pub reason: Reason,
    /// What went wrong, in words.
    pub error: String,
    pub attempts: u32,
    /// When it was set aside (RFC 3339, UTC).
    pub dead_lettered_at: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// The event: its envelope when the entry holds one, otherwise the entry's raw fields.
    pub event: Value,
}

/// Why one event is being set aside: what the consumer knows at that point.
pub struct Verdict<'a> {
    pub entry: &'a StreamEntry,
    pub reason: Reason,
    pub error: String,
    pub attempts: u32,
}

impl Verdict<'_> {
    /// The append that records the dead letter (the consumer commits it with its new position).
    pub fn append(&self, sessions: &Sessions) -> Append {
        let fields: BTreeMap<&str, &str> = self
            .entry
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let at = chrono::DateTime::from_timestamp_millis(sessions.now())
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Append {
            stream: sessions.keys().dead_letters(),
            fields: vec![
                ("stream_id".into(), self.entry.id.clone()),
                ("reason".into(), self.reason.as_str().into()),
                ("error".into(), self.error.clone()),
                ("attempts".into(), self.attempts.to_string()),
                ("dead_lettered_at".into(), at),
                (
                    "fields".into(),
                    serde_json::to_string(&fields).unwrap_or_default(),
                ),
            ],
            max_len: Some(MAX_DEAD_LETTERS),
        }
    }
}

fn decode(entry: StreamEntry) -> Result<DeadLetter> {
    let field = |name: &str| {
        entry
            .fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::Corrupt(format!("dead letter {} has no {name}", entry.id)))
    };
    let raw: BTreeMap<String, String> = serde_json::from_str(&field("fields")?)
        .map_err(|e| Error::Corrupt(format!("dead letter {}: {e}", entry.id)))?;
    let pairs: Vec<(String, String)> = raw.clone().into_iter().collect();
    let envelope = Envelope::from_stream_fields(&pairs);
    let event = match &envelope {
        Some(e) => serde_json::to_value(e).unwrap_or_default(),
        None => serde_json::to_value(&raw).unwrap_or_default(),
    };
    Ok(DeadLetter {
        stream_id: field("stream_id")?,
        reason: Reason::parse(&field("reason")?).unwrap_or(Reason::Failed),
        error: field("error")?,
        attempts: field("attempts")?.parse().unwrap_or(0),
        dead_lettered_at: field("dead_lettered_at")?,
        event_id: raw.get("event_id").cloned(),
        event_type: raw.get("event_type").cloned(),
        event,
        id: entry.id,
    })
}

/// The stream position just before `id`, so that an exclusive range read starts at `id`
/// (`None`: from the start).
fn before(id: &str) -> Result<Option<String>> {
    let invalid = || Error::Validation("a dead letter id looks like `<ms>-<seq>`".into());
    let (ms, seq) = id.split_once('-').ok_or_else(invalid)?;
    let (ms, seq): (u64, u64) = (
        ms.parse().map_err(|_| invalid())?,
        seq.parse().map_err(|_| invalid())?,
    );
    Ok(match (ms, seq) {
        (0, 0) => None,
        (ms, 0) => Some(format!("{}-{}", ms - 1, u64::MAX)),
        (ms, seq) => Some(format!("{ms}-{}", seq - 1)),
    })
}

/// A page of dead letters, oldest first: up to `limit` (1–100, default 20) after `cursor`
/// (the previous page's `next_cursor`, which is the last id it held).
///
/// # Errors
/// 400 for a malformed cursor or limit, 503 when the store fails.
pub(crate) async fn list(
    sessions: &Sessions,
    cursor: Option<&str>,
    limit: Option<usize>,
) -> Result<Page<DeadLetter>> {
    let limit = page_size(limit)?;
    if let Some(cursor) = cursor {
        before(cursor)?;
    }
    let items = sessions
        .read_one(|r| {
            r.xrange(
                sessions.keys().dead_letters(),
                cursor.map(str::to_owned),
                limit,
            )
        })
        .await?
        .into_iter()
        .map(decode)
        .collect::<Result<Vec<_>>>()?;
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(|l| l.id.clone()))
        .flatten();
    Ok(Page { items, next_cursor })
}

/// One dead letter.
///
/// # Errors
/// 400 for a malformed id, 404 when there is none with this id, 503.
pub(crate) async fn get(sessions: &Sessions, id: &str) -> Result<DeadLetter> {
    let after = before(id)?;
    let entry = sessions
        .read_one(|r| r.xrange(sessions.keys().dead_letters(), after, 1))
        .await?
        .into_iter()
        .find(|e| e.id == id)
        .ok_or(Error::NotFound("no such dead letter"))?;
    decode(entry)
}

/// Removes a dead letter.
///
/// # Errors
/// 400, 404, 503 as [`get`].
pub(crate) async fn discard(sessions: &Sessions, id: &str) -> Result<()> {
    get(sessions, id).await?;
    let commit = Commit {
        writes: vec![WriteOp::XDel(
            sessions.keys().dead_letters(),
            vec![id.to_owned()],
        )],
        ..Commit::default()
    };
    sessions.backend().commit(commit).await?;
    Ok(())
}

/// Applies a dead letter's event as the consumer would and, when that succeeds (or it had
/// been applied meanwhile), removes the dead letter.
///
/// # Errors
/// 400 when the event still cannot be applied (it stays), 404, 503.
pub(crate) async fn replay(sessions: &Sessions, id: &str) -> Result<InboundOutcome> {
    let letter = get(sessions, id).await?;
    let event: Envelope = serde_json::from_value(letter.event).map_err(|_| {
        Error::Validation(format!(
            "dead letter {id} holds no event envelope ({}); discard it",
            letter.error
        ))
    })?;
    let outcome = sessions.apply_event(&event).await?;
    discard(sessions, id).await?;
    Ok(outcome)
}

/// What a replay of every dead letter did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub(crate) struct ReplayReport {
    /// Applied (or found applied already) and removed.
    pub replayed: usize,
    /// Still failing; they stay.
    pub failed: Vec<ReplayFailure>,
}

/// A dead letter whose replay failed.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct ReplayFailure {
    pub id: String,
    /// The problem code the replay of this one answered.
    pub code: String,
    pub error: String,
}

/// Replays every dead letter, oldest first; stops early only when the store fails.
///
/// # Errors
/// 503 when the store fails (what was replayed until then stays replayed).
pub(crate) async fn replay_all(sessions: &Sessions) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let mut cursor = None;
    loop {
        let page = list(sessions, cursor.as_deref(), Some(MAX_PAGE_SIZE)).await?;
        for letter in &page.items {
            match replay(sessions, &letter.id).await {
                Ok(_) => report.replayed += 1,
                Err(e) if e.status_and_code().0.is_client_error() => {
                    report.failed.push(ReplayFailure {
                        id: letter.id.clone(),
                        code: e.status_and_code().1.to_owned(),
                        error: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(report),
        }
    }
}
