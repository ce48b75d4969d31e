//! Messages: append-only, paginated by sequence number, with a summary of counts and totals.

use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::model::input::NewMessage;
use crate::model::message::{MessagesByRole, Summary};
use crate::model::session::micros_to_cost;
use crate::model::{Message, Record};
use crate::store::WriteOp;

use super::listing::{Page, page_size};
use super::plan::Plan;
use super::{Ctx, Sessions};

impl Sessions {
    /// Appends a message to an active session and adds it to the session's counters, in one
    /// call to the store; the message's number is the length of the list it ends (taken in
    /// the same step). When this process knows the session, the plan writes the counters as
    /// they follow from that version, guarded by it. Otherwise the store checks the session
    /// itself and adds the counters where they are stored (appends racing there all land),
    /// then answers with the document, which the hints learn; a refused append is answered
    /// from the session as the refusal found it.
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
        let shard = self.shard_of_session(id)?;
        let template = Message {
            message_id: uuid::Uuid::new_v4().to_string(),
            seq: 0,
            role: input.role,
            content: input.content,
            tokens: input.tokens,
            cost: micros_to_cost(cost_micros),
            metadata: input.metadata,
            created_at: String::new(),
        };
        self.retry(|| async {
            let hinted = self.hinted(ctx, id, None)?;
            let now = self.now();
            let message = Message {
                created_at: rfc3339(now),
                ..template.clone()
            };
            let counted = Counted {
                message: &message,
                cost_micros,
                now,
            };
            let doc = self.keys.session(shard, id);
            let mut plan = match &hinted {
                Some(session) => {
                    let mut plan = Plan::for_session(self, shard, &session.record);
                    plan.put(&session.record, &counted.applied_to(&session.record));
                    plan
                }
                None => {
                    let mut plan = Plan::for_unread_session(self, shard, id, [ctx.caller.user()]);
                    for write in counted.store_writes(&doc) {
                        plan.write(write);
                    }
                    plan
                }
            };
            let (head, tail) = numbered(&message)?;
            plan.write(WriteOp::RPushNumbered(
                self.keys.messages(shard, id),
                head,
                tail,
            ));
            if hinted.is_none() && self.recent.is_some() {
                plan.write(WriteOp::ReadBack(doc));
            }
            let step = match hinted {
                Some(_) => self.commit_plan(plan).await?,
                None => self.commit_unread(plan, ctx, None).await?,
            };
            step.try_map(|committed| {
                Ok(Message {
                    seq: committed.list_len.unwrap_or_default(),
                    ..message
                })
            })
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

/// What a message changes in its session's document, written two ways that must agree: as
/// the document after it (from a known version) and as the store's additions (to a document
/// not read). The model test compares both against a reference.
struct Counted<'a> {
    message: &'a Message,
    cost_micros: u64,
    now: i64,
}

impl Counted<'_> {
    /// The document `stored` with the message counted.
    fn applied_to(&self, stored: &Record) -> Record {
        let mut record = stored.clone();
        record.messages_by_role[self.message.role.index()] += 1;
        record.tokens_total = added(record.tokens_total, self.message.tokens);
        record.cost_micros = added(record.cost_micros, self.cost_micros);
        record.last_message_ms = Some(self.now);
        record.updated_ms = self.now;
        record.version += 1;
        record
    }

    /// The writes that count the message in the document at `doc`, whatever it holds.
    fn store_writes(&self, doc: &str) -> Vec<WriteOp> {
        let add = |field: &str, by: u64| {
            WriteOp::HIncrBy(doc.to_owned(), field.to_owned(), added(0, by).cast_signed())
        };
        let mut writes = vec![add(self.message.role.count_field(), 1), add("version", 1)];
        for (field, by) in [
            ("tokens_total", self.message.tokens),
            ("cost_micros", self.cost_micros),
        ] {
            if by > 0 {
                writes.push(add(field, by));
            }
        }
        let now = self.now.to_string();
        writes.push(WriteOp::HSet(
            doc.to_owned(),
            vec![
                ("updated_ms".to_owned(), now.clone()),
                ("last_message_ms".to_owned(), now),
            ],
        ));
        writes
    }
}

/// `total + by` as the store adds it: at most `i64::MAX`, the largest integer Redis keeps.
fn added(total: u64, by: u64) -> u64 {
    total.saturating_add(by).min(i64::MAX.cast_unsigned())
}

/// The message's JSON around its `seq`, which the store writes in between: the message's
/// position in the list, known only when it is pushed there.
fn numbered(message: &Message) -> Result<(String, String)> {
    let json = serde_json::to_string(message).map_err(|e| Error::Corrupt(e.to_string()))?;
    // `seq` follows `message_id`, a UUID: the first match is the field.
    let seq = format!(r#","seq":{},"#, message.seq);
    let (head, tail) = json
        .split_once(&seq)
        .ok_or_else(|| Error::Corrupt("a message serialized without seq".into()))?;
    Ok((format!(r#"{head},"seq":"#), format!(",{tail}")))
}
