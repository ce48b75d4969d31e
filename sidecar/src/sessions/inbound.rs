//! Consumed events: `auth.user.deleted.v1` and `case.deleted.v1`, each applied once per
//! `event_id` (the inbox pattern).
//!
//! The inbox is a per-shard sorted set of event ids, written in the same commit as the change it
//! records, so a retried or redelivered event is recognised and skipped. Ids are kept for
//! [`INBOX_RETENTION_MS`], far longer than any redelivery.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::ids::shard_of;
use crate::model::input::check_id;
use crate::model::{Envelope, EventType};
use crate::store::{Commit, Reads, WriteOp};

use super::plan::Plan;
use super::{Sessions, Step};

/// How long consumed event ids are remembered: 7 days.
pub(crate) const INBOX_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// The most sessions of one user or case handled by one event (bounded by the rate limit in
/// practice; the rest would be handled by a redelivery).
const MAX_SESSIONS_PER_EVENT: usize = 10_000;

/// What became of an inbound event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct InboundOutcome {
    pub event_id: String,
    /// `applied`, or `duplicate` when this event id was processed before.
    pub result: String,
    pub sessions_affected: usize,
}

impl Sessions {
    /// Applies an inbound event once.
    ///
    /// # Errors
    /// 400 for an invalid envelope or an event type this service does not consume, 503.
    pub(crate) async fn apply_event(&self, event: &Envelope) -> Result<InboundOutcome> {
        uuid::Uuid::parse_str(&event.event_id)
            .map_err(|_| Error::Validation("event_id must be a UUID".into()))?;
        let field = |name: &str| -> Result<String> {
            let v = event
                .payload
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Validation(format!("payload.{name} is required")))?;
            check_id(&format!("payload.{name}"), v)?;
            Ok(v.to_owned())
        };
        let (duplicate, affected) = match EventType::parse(&event.event_type) {
            Some(EventType::UserDeleted) => self.user_deleted(event, &field("user_id")?).await?,
            Some(EventType::CaseDeleted) => self.case_deleted(event, &field("case_id")?).await?,
            _ => {
                return Err(Error::Validation(format!(
                    "event type `{}` is not consumed by this service",
                    event.event_type
                )));
            }
        };
        Ok(InboundOutcome {
            event_id: event.event_id.clone(),
            result: if duplicate { "duplicate" } else { "applied" }.to_owned(),
            sessions_affected: affected,
        })
    }

    fn inbox_writes(&self, shard: u32, event_id: &str) -> Vec<WriteOp> {
        let now = self.now();
        let inbox = self.keys.inbox(shard);
        #[allow(clippy::cast_precision_loss)]
        let (seen, horizon) = (now as f64, (now - INBOX_RETENTION_MS) as f64);
        vec![
            WriteOp::ZRemBelow(inbox.clone(), horizon),
            WriteOp::ZAdd(inbox, seen, event_id.to_owned()),
        ]
    }

    /// Deletes every session of the user (the current one too) with its messages and memory.
    /// The current session is read by the user's pointer as well, so that it goes even past
    /// [`MAX_SESSIONS_PER_EVENT`]: a session's `current` flag is set exactly while the pointer
    /// names it, and one-call writes answer from the flag.
    async fn user_deleted(&self, event: &Envelope, user: &str) -> Result<(bool, usize)> {
        let shard = shard_of(user, self.policy.shard_count);
        let k = &self.keys;
        let corr = event
            .correlation_id
            .clone()
            .unwrap_or_else(|| event.event_id.clone());
        self.retry(|| async {
            let mut reads = Reads::new();
            let version = reads.get(k.user_version(shard, user));
            let seen = reads.is_member(k.inbox(shard), event.event_id.clone());
            let ids = reads.all_members(k.user_sessions(shard, user), MAX_SESSIONS_PER_EVENT);
            let current = reads.get(k.current(shard, user));
            let mut r = self.read(reads).await?;
            let version = r.take(version);
            if r.take(seen) {
                return Ok(Step::Done((true, 0)));
            }
            let mut ids = r.take(ids).0;
            ids.extend(r.take(current).filter(|c| !ids.contains(c)));
            let Some(docs) = self.read_docs(shard, user, version.as_ref(), &ids).await? else {
                return Ok(Step::Retry);
            };
            let now = self.now();
            let mut plan = Plan::for_user(self, shard, user, version.as_ref());
            for doc in docs.values() {
                if doc.is_live(now) {
                    plan.event(EventType::Deleted, doc, Some("system"), Some(&corr));
                }
                plan.remove(doc, false, false);
            }
            for key in [
                k.titles(shard, user),
                k.current(shard, user),
                k.rate(shard, user),
                k.user_sessions(shard, user),
                k.user_active(shard, user),
            ] {
                plan.write(WriteOp::Del(key));
            }
            for op in self.inbox_writes(shard, &event.event_id) {
                plan.write(op);
            }
            let affected = docs.values().filter(|d| d.is_live(now)).count();
            self.commit_or_retry(plan, (false, affected)).await
        })
        .await
    }

    /// Unlinks the case from every session, shard by shard; each session gets `session.updated.v1`.
    async fn case_deleted(&self, event: &Envelope, case: &str) -> Result<(bool, usize)> {
        let k = &self.keys;
        let (mut affected, mut shards_done_before) = (0, 0);
        for shard in 0..self.policy.shard_count {
            let mut reads = Reads::new();
            let seen = reads.is_member(k.inbox(shard), event.event_id.clone());
            let ids = reads.all_members(k.case_sessions(shard, case), MAX_SESSIONS_PER_EVENT);
            let mut r = self.read(reads).await?;
            if r.take(seen) {
                shards_done_before += 1;
                continue;
            }
            let ids = r.take(ids).0;
            let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (id, doc) in self.read_many(&ids).await? {
                by_user.entry(doc.user_id).or_default().push(id);
            }
            for (user, ids) in &by_user {
                affected += self
                    .retry(|| self.unlink_case(event, shard, user, ids, case))
                    .await?;
            }
            let mut writes = self.inbox_writes(shard, &event.event_id);
            writes.push(WriteOp::Del(k.case_sessions(shard, case)));
            self.backend
                .commit(Commit {
                    writes,
                    ..Commit::default()
                })
                .await?;
        }
        Ok((shards_done_before == self.policy.shard_count, affected))
    }

    async fn unlink_case(
        &self,
        event: &Envelope,
        shard: u32,
        user: &str,
        ids: &[String],
        case: &str,
    ) -> Result<Step<usize>> {
        let version = self
            .read_one(|r| r.get(self.keys.user_version(shard, user)))
            .await?;
        let Some(docs) = self.read_docs(shard, user, version.as_ref(), ids).await? else {
            return Ok(Step::Retry);
        };
        let now = self.now();
        let corr = event
            .correlation_id
            .clone()
            .unwrap_or_else(|| event.event_id.clone());
        let mut plan = Plan::for_user(self, shard, user, version.as_ref());
        let mut live = 0;
        for stored in docs.values().filter(|d| d.case_id.as_deref() == Some(case)) {
            let mut doc = stored.clone();
            doc.case_id = None;
            doc.updated_ms = now;
            doc.version += 1;
            if doc.is_live(now) {
                plan.event(EventType::Updated, &doc, Some("system"), Some(&corr));
                live += 1;
            }
            plan.put(stored, &doc);
        }
        self.commit_or_retry(plan, live).await
    }
}
