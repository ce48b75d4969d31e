//! The outbox relay: moves events from each shard outbox to the global events stream
//! (at-least-once: a crash between the append and the delete re-sends, with the same
//! `event_id`), and keeps the org index, a view derived from the events.

use crate::error::Result;
use crate::model::{Envelope, EventType};
use crate::sessions::Sessions;
use crate::store::{Append, Backend, Commit, Probe, StreamEntry, WriteOp, read_one};

use super::BATCH;
use super::lease::Lease;

/// One pass over every shard whose outbox holds events; returns how many were relayed.
///
/// # Errors
/// When the store fails.
pub async fn relay_once(sessions: &Sessions, holder: &str) -> Result<usize> {
    let keys = sessions.keys();
    let mut moved = 0;
    for shard in super::shards_where(sessions, |s| Probe::StreamNonEmpty(keys.outbox(s))).await? {
        moved += relay_shard(sessions, shard, holder).await?;
    }
    Ok(moved)
}

async fn relay_shard(sessions: &Sessions, shard: u32, holder: &str) -> Result<usize> {
    let (backend, keys) = (sessions.backend().as_ref(), sessions.keys());
    let outbox = keys.outbox(shard);
    if pending(backend, &outbox).await?.is_empty() {
        return Ok(0);
    }
    let Some(lease) = Lease::acquire(sessions.backend(), keys.relay_lock(shard), holder).await?
    else {
        return Ok(0);
    };
    // Re-read under the lease: another relay may have moved these entries meanwhile.
    let entries = pending(backend, &outbox).await?;
    let appends = entries
        .iter()
        .map(|e| Append {
            stream: keys.events(),
            fields: e.fields.clone(),
            max_len: Some(sessions.policy().events_max_len),
        })
        .collect();
    backend
        .commit(Commit {
            appends,
            ..Commit::default()
        })
        .await?;
    for entry in &entries {
        if let Some(event) = Envelope::from_stream_fields(&entry.fields) {
            update_org_index(sessions, &event).await?;
        }
    }
    let ids = entries.iter().map(|e| e.id.clone()).collect();
    let commit = Commit {
        guards: vec![lease.guard()],
        writes: vec![WriteOp::XDel(outbox, ids)],
        ..Commit::default()
    };
    backend.commit(commit).await?;
    lease.release().await?;
    Ok(entries.len())
}

/// The next batch of an outbox.
async fn pending(backend: &dyn Backend, outbox: &str) -> Result<Vec<StreamEntry>> {
    Ok(read_one(backend, |r| r.xrange(outbox.to_owned(), None, BATCH)).await?)
}

/// Applies one session event to the org index.
async fn update_org_index(sessions: &Sessions, event: &Envelope) -> Result<()> {
    let payload = &event.payload;
    let (Some(org), Some(id)) = (
        payload.get("org_id").and_then(|v| v.as_str()),
        payload.get("session_id").and_then(|v| v.as_str()),
    ) else {
        return Ok(());
    };
    let key = sessions.keys().org_sessions(org);
    let write = match EventType::parse(&event.event_type) {
        Some(EventType::Created) => {
            let created = payload
                .get("created_at")
                .and_then(|v| v.as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(0, |t| t.timestamp_millis());
            #[allow(clippy::cast_precision_loss)]
            WriteOp::ZAdd(key, created as f64, id.to_owned())
        }
        Some(EventType::Deleted | EventType::Expired) => WriteOp::ZRem(key, id.to_owned()),
        _ => return Ok(()),
    };
    sessions
        .backend()
        .commit(Commit {
            writes: vec![write],
            ..Commit::default()
        })
        .await?;
    Ok(())
}
