//! The consumer of inbound events on the global events stream (`auth.user.deleted.v1`,
//! `case.deleted.v1`). It keeps its position in Redis under a lease; processing is idempotent
//! (the inbox), so a position that lags after a crash only causes harmless repeats.

use crate::error::{Error, Result};
use crate::model::{Envelope, EventType};
use crate::sessions::Sessions;
use crate::store::{Commit, ReadOp, Reply, WriteOp};

use super::BATCH;
use super::lease::Lease;

/// Reads and applies the next batch of the events stream; returns how many entries it passed.
///
/// # Errors
/// When the store fails (the position is then not advanced past the failed event).
pub async fn consume_once(sessions: &Sessions, holder: &str) -> Result<usize> {
    let (backend, keys) = (sessions.backend().as_ref(), sessions.keys());
    let Some(lease) = Lease::acquire(sessions.backend(), keys.consumer_lock(), holder).await?
    else {
        return Ok(0);
    };
    let r = backend
        .read(vec![ReadOp::Get(keys.consumer_offset())])
        .await?;
    let offset = r.into_iter().next().and_then(Reply::into_opt_string);
    let r = backend
        .read(vec![ReadOp::XRange(keys.events(), offset, BATCH)])
        .await?;
    let entries = r
        .into_iter()
        .next()
        .map(Reply::into_entries)
        .unwrap_or_default();
    let mut last = None;
    for entry in &entries {
        if let Some(event) = Envelope::from_stream_fields(&entry.fields)
            && matches!(
                EventType::parse(&event.event_type),
                Some(EventType::UserDeleted | EventType::CaseDeleted)
            )
        {
            match sessions.apply_event(&event).await {
                Ok(outcome) => {
                    tracing::info!(event_id = %outcome.event_id, result = %outcome.result, affected = outcome.sessions_affected, "inbound event")
                }
                // A malformed event can never succeed: log it and move on rather than block the stream.
                Err(Error::Validation(reason)) => {
                    tracing::warn!(event_id = %event.event_id, %reason, "inbound event skipped")
                }
                Err(other) => {
                    save_offset(sessions, &lease, last).await?;
                    return Err(other);
                }
            }
        }
        last = Some(entry.id.clone());
    }
    save_offset(sessions, &lease, last).await?;
    lease.release().await?;
    Ok(entries.len())
}

async fn save_offset(sessions: &Sessions, lease: &Lease, last: Option<String>) -> Result<()> {
    if let Some(id) = last {
        let commit = Commit {
            guards: vec![lease.guard()],
            writes: vec![WriteOp::Set(sessions.keys().consumer_offset(), id)],
            ..Commit::default()
        };
        sessions.backend().commit(commit).await?;
    }
    Ok(())
}
