//! Per-session memory: one JSON object (summary, preferences, facts, …), replaced or merged.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::model::input::check_object_size;
use crate::store::{Reads, WriteOp};

use super::lifecycle::merge;
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
        self.retry(|| async {
            // A replacement rests on the session alone (from the write hints when this process
            // wrote it last); a merge also on the memory it reads, under the user's version.
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
}
