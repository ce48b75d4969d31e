//! Per-session memory: one JSON object (summary, preferences, facts, …), replaced or merged.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::model::input::check_object_size;
use crate::store::{NamedBy, Reads, WriteOp};

use super::merge;
use super::plan::Plan;
use super::{Ctx, Sessions};

/// A session's memory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct MemoryView {
    pub session_id: String,
    /// The memory object; `{}` until something is stored.
    pub memory: Map<String, Value>,
}

/// How a memory write combines with what is stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MemoryWrite {
    Replace,
    /// RFC 7386 merge patch.
    Merge,
}

fn decode(stored: Option<String>) -> Result<Map<String, Value>> {
    match stored {
        None => Ok(Map::new()),
        Some(raw) => match serde_json::from_str(&raw) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Error::Corrupt("memory is not a JSON object".into())),
        },
    }
}

impl Sessions {
    /// The session's memory.
    ///
    /// # Errors
    /// 403, 404, 503.
    pub(crate) async fn memory(&self, ctx: &Ctx, id: &str) -> Result<MemoryView> {
        let (shard, _) = self.owned(ctx, id, None).await?;
        let stored = self
            .read_one(|r| r.get(self.keys.memory(shard, id)))
            .await?;
        Ok(MemoryView {
            session_id: id.to_owned(),
            memory: decode(stored)?,
        })
    }

    /// Replaces or merges the memory of an active session.
    ///
    /// # Errors
    /// 400 too large, 403, 404, 409 ended session, 503.
    pub(crate) async fn write_memory(
        &self,
        ctx: &Ctx,
        id: &str,
        how: MemoryWrite,
        body: Map<String, Value>,
    ) -> Result<MemoryView> {
        check_object_size("memory", &body)?;
        let shard = self.shard_of_session(id)?;
        let key = self.keys.memory(shard, id);
        let hinted = self.hinted(ctx, id, None)?.is_some();
        if matches!(how, MemoryWrite::Merge) || !hinted {
            let view = self.write_memory_unread(ctx, shard, id, how, &body).await?;
            if let Some(view) = view {
                return Ok(view);
            }
        }
        self.retry(|| async {
            // Decided on a snapshot (or on the hints, for a replacement of a session this
            // process wrote last). A replacement rests on the session alone; a merge also on
            // the memory it reads, under the user's version.
            let (memory, mut plan) = match how {
                MemoryWrite::Replace => {
                    let session = self.changing(ctx, id, None).await?;
                    (
                        body.clone(),
                        Plan::for_session(self, shard, &session.record),
                    )
                }
                MemoryWrite::Merge => {
                    let mut reads = Reads::new();
                    let stored = reads.get(key.clone());
                    let mut owned = self.owned_snapshot(ctx, id, None, reads).await?;
                    let stored = owned.replies.take(stored);
                    let record = self.still_active(Some(owned.record))?;
                    let memory = merge(&decode(stored)?, &body);
                    check_object_size("memory", &memory)?;
                    let plan = Plan::for_user(self, shard, &record.user_id, owned.version.as_ref());
                    (memory, plan)
                }
            };
            plan.write(WriteOp::Set(
                key.clone(),
                Value::Object(memory.clone()).to_string(),
            ));
            self.commit_or_retry(
                plan,
                MemoryView {
                    session_id: id.to_owned(),
                    memory,
                },
            )
            .await
        })
        .await
    }

    /// A memory write in one script call, the session unread ([`Plan::for_unread_memory`]): a
    /// merge is made in the store, which refuses a result past the size limit (400, in the same
    /// call). `None` when the store refused it for another reason than the session or the
    /// limit: the write is then decided on a snapshot, which says why.
    async fn write_memory_unread(
        &self,
        ctx: &Ctx,
        shard: u32,
        id: &str,
        how: MemoryWrite,
        body: &Map<String, Value>,
    ) -> Result<Option<MemoryView>> {
        let key = self.keys.memory(shard, id);
        let mut plan = Plan::for_unread_memory(self, shard, id, ctx.caller.user());
        match how {
            MemoryWrite::Replace => {
                plan.write(WriteOp::Set(key, Value::Object(body.clone()).to_string()));
            }
            MemoryWrite::Merge => plan.merge_unread("memory", NamedBy::Value(key), body),
        }
        let committed = match self.commit_explained(plan).await? {
            Ok(committed) => committed,
            Err(refused) => {
                self.explain_refusal(ctx, None, refused)?;
                return Ok(None);
            }
        };
        let memory = match how {
            MemoryWrite::Replace => body.clone(),
            MemoryWrite::Merge => decode(committed.merged)?,
        };
        Ok(Some(MemoryView {
            session_id: id.to_owned(),
            memory,
        }))
    }
}
