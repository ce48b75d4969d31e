//! The consumer of inbound events on the global events stream (`auth.user.deleted.v1`,
//! `case.deleted.v1`). It keeps its position in Redis under a lease; processing is idempotent
//! (the inbox), so a position that lags after a crash only causes harmless repeats. An event
//! that can never succeed, or keeps failing, is set aside as a dead letter and the consumer
//! moves on (see [`super::dead_letters`]).

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{Envelope, EventType};
use crate::sessions::Sessions;
use crate::store::{Commit, Reads, StreamEntry, WriteOp, read_one};

use super::BATCH;
use super::dead_letters::{FAIL_ATTEMPTS, FAIL_FOR_MS, Reason, Verdict};
use super::lease::Lease;

/// Reads and applies the next batch of the events stream; returns how many entries it passed.
///
/// # Errors
/// When the store fails, or an event failed and is retried on the next pass (the position is
/// then not advanced past it).
pub async fn consume_once(sessions: &Sessions, metrics: &Metrics, holder: &str) -> Result<usize> {
    let (backend, keys) = (sessions.backend().as_ref(), sessions.keys());
    let Some(lease) = Lease::acquire(sessions.backend(), keys.consumer_lock(), holder).await?
    else {
        return Ok(0);
    };
    let mut reads = Reads::new();
    let offset = reads.get(keys.consumer_offset());
    let failing = reads.get(keys.consumer_attempts());
    let mut r = reads.run(backend).await?;
    let (offset, failing) = (r.take(offset), r.take(failing));
    let entries = read_one(backend, |r| r.xrange(keys.events(), offset, BATCH)).await?;
    let mut last = None;
    for entry in &entries {
        let verdict = match classify(entry) {
            Inbound::NotForUs => None,
            Inbound::Poison(reason, error) => Some(Verdict {
                entry,
                reason,
                error,
                attempts: 1,
            }),
            Inbound::Consumed(event) => match sessions.apply_event(&event).await {
                Ok(outcome) => {
                    tracing::info!(event_id = %outcome.event_id, result = %outcome.result, affected = outcome.sessions_affected, "inbound event");
                    None
                }
                Err(Error::Validation(error)) => Some(Verdict {
                    entry,
                    reason: Reason::Invalid,
                    error,
                    attempts: 1,
                }),
                Err(error) => {
                    let attempt = Attempts::after(failing.as_deref(), &entry.id, sessions.now());
                    if attempt.count < FAIL_ATTEMPTS
                        || sessions.now() - attempt.first_ms < FAIL_FOR_MS
                    {
                        tracing::warn!(event_id = %event.event_id, attempt = attempt.count, %error, "inbound event failed; it is retried");
                        save(sessions, &lease, last, Some(attempt.encode(&entry.id))).await?;
                        lease.release().await?;
                        return Err(error);
                    }
                    Some(Verdict {
                        entry,
                        reason: Reason::Failed,
                        error: error.to_string(),
                        attempts: attempt.count,
                    })
                }
            },
        };
        if let Some(verdict) = verdict {
            set_aside(sessions, &lease, &verdict).await?;
            metrics
                .dead_letters
                .with_label_values(&[verdict.reason.as_str()])
                .inc();
        }
        last = Some(entry.id.clone());
    }
    if last.is_some() || failing.is_some() {
        save(sessions, &lease, last, None).await?;
    }
    lease.release().await?;
    Ok(entries.len())
}

/// What an entry of the events stream is to this consumer.
enum Inbound {
    /// Ours (published by the relay): nothing to do.
    NotForUs,
    Consumed(Envelope),
    /// Can never be applied as it is.
    Poison(Reason, String),
}

fn classify(entry: &StreamEntry) -> Inbound {
    let Some(event) = Envelope::from_stream_fields(&entry.fields) else {
        return Inbound::Poison(
            Reason::Malformed,
            "the stream entry holds no readable `envelope` field".into(),
        );
    };
    match EventType::parse(&event.event_type) {
        Some(EventType::UserDeleted | EventType::CaseDeleted) => Inbound::Consumed(event),
        Some(_) => Inbound::NotForUs,
        None => Inbound::Poison(
            Reason::UnknownType,
            format!(
                "`{}` is not an event type of the event contract",
                event.event_type
            ),
        ),
    }
}

/// Failed attempts at the event the consumer is stuck on.
struct Attempts {
    count: u32,
    first_ms: i64,
}

impl Attempts {
    /// The attempts at `id` including this one, given the recorded `<id> <first ms> <count>`.
    fn after(recorded: Option<&str>, id: &str, now_ms: i64) -> Self {
        let mut parts = recorded.unwrap_or_default().split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(seen), Some(first), Some(count)) if seen == id => Self {
                count: count.parse::<u32>().unwrap_or(0).saturating_add(1),
                first_ms: first.parse().unwrap_or(now_ms),
            },
            _ => Self {
                count: 1,
                first_ms: now_ms,
            },
        }
    }

    fn encode(&self, id: &str) -> String {
        format!("{id} {} {}", self.first_ms, self.count)
    }
}

/// Records the dead letter and moves the position past it, in one commit.
async fn set_aside(sessions: &Sessions, lease: &Lease, verdict: &Verdict<'_>) -> Result<()> {
    let keys = sessions.keys();
    tracing::warn!(stream_id = %verdict.entry.id, reason = verdict.reason.as_str(), error = %verdict.error, attempts = verdict.attempts, "inbound event set aside as a dead letter; list, replay or discard it with /v1/dead-letters");
    let commit = Commit {
        guards: vec![lease.guard()],
        appends: vec![verdict.append(sessions)],
        writes: vec![
            WriteOp::Set(keys.consumer_offset(), verdict.entry.id.clone()),
            WriteOp::Del(keys.consumer_attempts()),
        ],
        ..Commit::default()
    };
    sessions.backend().commit(commit).await?;
    Ok(())
}

/// Saves the position (when it moved) and the attempts at the event being retried (none:
/// forget them).
async fn save(
    sessions: &Sessions,
    lease: &Lease,
    last: Option<String>,
    attempts: Option<String>,
) -> Result<()> {
    let keys = sessions.keys();
    let mut writes: Vec<WriteOp> = last
        .map(|id| WriteOp::Set(keys.consumer_offset(), id))
        .into_iter()
        .collect();
    writes.push(match attempts {
        Some(a) => WriteOp::Set(keys.consumer_attempts(), a),
        None => WriteOp::Del(keys.consumer_attempts()),
    });
    let commit = Commit {
        guards: vec![lease.guard()],
        writes,
        ..Commit::default()
    };
    sessions.backend().commit(commit).await?;
    Ok(())
}
