//! Messages: append-only, paginated by sequence number, with a summary of counts and totals.

use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::model::Message;
use crate::model::input::NewMessage;
use crate::model::message::{MessagesByRole, Summary};
use crate::model::session::micros_to_cost;
use crate::store::WriteOp;

use super::listing::{Page, page_size};
use super::plan::Plan;
use super::{Changing, Ctx, Sessions};

impl Sessions {
    /// Appends a message to an active session and adds it to the session's counters.
    ///
    /// # Errors
    /// 400 invalid message, 403, 404, 409 ended session, 503.
    pub(crate) async fn append_message(
        &self,
        ctx: &Ctx,
        id: &str,
        input: NewMessage,
    ) -> Result<Message> {
        let cost_micros = input.validate()?;
        let message_id = uuid::Uuid::new_v4().to_string();
        self.retry(|| async {
            let Changing {
                shard,
                record: stored,
                ..
            } = self.changing(ctx, id, None).await?;
            let now = self.now();
            let mut record = stored.clone();
            let message = Message {
                message_id: message_id.clone(),
                seq: record.message_count() + 1,
                role: input.role,
                content: input.content.clone(),
                tokens: input.tokens,
                cost: micros_to_cost(cost_micros),
                metadata: input.metadata.clone(),
                created_at: rfc3339(now),
            };
            record.messages_by_role[input.role.index()] += 1;
            record.tokens_total = record.tokens_total.saturating_add(input.tokens);
            record.cost_micros = record.cost_micros.saturating_add(cost_micros);
            record.last_message_ms = Some(now);
            record.updated_ms = now;
            record.version += 1;
            let mut plan = Plan::for_session(self, shard, &stored);
            plan.put(&stored, &record);
            let json =
                serde_json::to_string(&message).map_err(|e| Error::Corrupt(e.to_string()))?;
            plan.write(WriteOp::RPush(self.keys.messages(shard, id), json));
            self.commit_or_retry(plan, message).await
        })
        .await
    }

    /// Messages in order, after the sequence number `after` (the cursor).
    ///
    /// # Errors
    /// 400 bad cursor or limit, 403, 404, 503.
    pub(crate) async fn list_messages(
        &self,
        ctx: &Ctx,
        id: &str,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page<Message>> {
        let limit = page_size(limit)?;
        let after: i64 = match cursor {
            None => 0,
            Some(c) => c
                .parse()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| Error::Validation("cursor must be a message seq".into()))?,
        };
        let (shard, _) = self.owned(ctx, id, None).await?;
        let window = i64::try_from(limit).unwrap_or(0);
        let mut items = self
            .read_one(|r| r.lrange(self.keys.messages(shard, id), after, after + window))
            .await?
            .iter()
            .map(|raw| {
                serde_json::from_str::<Message>(raw).map_err(|e| Error::Corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = (items.len() > limit).then(|| {
            items.truncate(limit);
            items.last().map(|m| m.seq.to_string()).unwrap_or_default()
        });
        Ok(Page { items, next_cursor })
    }

    /// Counts and totals of the session's messages.
    ///
    /// # Errors
    /// 403, 404, 503.
    pub(crate) async fn summary(&self, ctx: &Ctx, id: &str) -> Result<Summary> {
        let (_, r) = self.owned(ctx, id, None).await?;
        let until = r.ended_ms.unwrap_or_else(|| self.now());
        #[allow(clippy::cast_precision_loss)]
        let duration_seconds = (until - r.created_ms).max(0) as f64 / 1000.0;
        let [user, assistant, system, tool] = r.messages_by_role;
        Ok(Summary {
            session_id: r.session_id.clone(),
            status: r.status,
            message_count: r.message_count(),
            messages_by_role: MessagesByRole {
                user,
                assistant,
                system,
                tool,
            },
            total_tokens: r.tokens_total,
            total_cost: micros_to_cost(r.cost_micros),
            created_at: rfc3339(r.created_ms),
            last_message_at: r.last_message_ms.map(rfc3339),
            duration_seconds,
        })
    }
}
