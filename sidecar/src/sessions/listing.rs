//! Listing sessions by user and by org: newest first, cursor pagination, stable order.
//!
//! Order is `(created_at, session_id)` descending. The cursor names the last entry returned, so
//! a page never repeats or skips an entry even when sessions are created or removed meanwhile.

use std::collections::BTreeMap;

use data_encoding::BASE64URL_NOPAD;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::ids::shard_of;
use crate::model::input::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, check_id};
use crate::model::{Record, SessionView};
use crate::store::{Bound, Reads, Score, ZRange};

use super::{Caller, Ctx, Sessions, decode_record};

/// One page of a listing.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Index entries read beyond the page size in one go, to step over ties at the cursor.
const SLACK: usize = 16;

/// A page size from the query: default when absent, 400 outside 1..=MAX.
///
/// # Errors
/// `validation_failed`.
pub(crate) fn page_size(limit: Option<usize>) -> Result<usize> {
    match limit {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        Some(_) => Err(Error::Validation(format!(
            "limit must be from 1 to {MAX_PAGE_SIZE}"
        ))),
    }
}

fn encode_cursor(score: Score, member: &str) -> String {
    BASE64URL_NOPAD.encode(format!("{score}:{member}").as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<(Score, String)> {
    let invalid = || Error::Validation("cursor is not one this service issued".into());
    let raw = BASE64URL_NOPAD
        .decode(cursor.as_bytes())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(raw).map_err(|_| invalid())?;
    let (score, member) = text.split_once(':').ok_or_else(invalid)?;
    Ok((score.parse().map_err(|_| invalid())?, member.to_owned()))
}

impl Sessions {
    /// The user's sessions (active and ended), newest first.
    ///
    /// # Errors
    /// 400 bad cursor or limit, 403 another user's token, 503.
    pub(crate) async fn list_user(
        &self,
        ctx: &Ctx,
        user: &str,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page<SessionView>> {
        check_id("user_id", user)?;
        ctx.caller.check_owner(user)?;
        let shard = shard_of(user, self.policy.shard_count);
        self.list_index(self.keys.user_sessions(shard, user), cursor, limit)
            .await
    }

    /// The org's sessions, newest first. The org index is derived from events by the relay, so
    /// a new session appears here shortly after its `session.created.v1` is relayed.
    ///
    /// # Errors
    /// 400 bad cursor or limit, 403 for user tokens (only trusted callers list orgs), 503.
    pub(crate) async fn list_org(
        &self,
        ctx: &Ctx,
        org: &str,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page<SessionView>> {
        check_id("org_id", org)?;
        if ctx.caller != Caller::Trusted {
            return Err(Error::Forbidden("listing an org needs the service scope"));
        }
        self.list_index(self.keys.org_sessions(org), cursor, limit)
            .await
    }

    async fn list_index(
        &self,
        index: String,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page<SessionView>> {
        let limit = page_size(limit)?;
        let after = cursor.map(decode_cursor).transpose()?;
        let entries = self.index_page(&index, after.as_ref(), limit + 1).await?;
        let next_cursor = (entries.len() > limit).then(|| {
            let (member, score) = &entries[limit - 1];
            encode_cursor(*score, member)
        });
        let ids: Vec<String> = entries.into_iter().take(limit).map(|(m, _)| m).collect();
        let docs = self.read_many(&ids).await?;
        let now = self.now();
        let items = ids
            .iter()
            .filter_map(|id| docs.get(id))
            .filter(|d| d.is_live(now))
            .map(Record::view)
            .collect();
        Ok(Page { items, next_cursor })
    }

    /// Up to `want` index entries strictly after the cursor in descending order.
    async fn index_page(
        &self,
        index: &str,
        after: Option<&(Score, String)>,
        want: usize,
    ) -> Result<Vec<(String, Score)>> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let count = want + SLACK;
            let query = ZRange {
                key: index.to_owned(),
                min: Bound::NegInf,
                max: after.map_or(Bound::PosInf, |(s, _)| Bound::Incl(*s)),
                rev: true,
                offset,
                count,
            };
            let batch = self.read_one(|r| r.zrange(query)).await?;
            let fetched = batch.len();
            out.extend(
                batch
                    .into_iter()
                    .filter(|(m, s)| after.is_none_or(|(cs, cm)| *s < *cs || m < cm)),
            );
            if out.len() >= want || fetched < count {
                out.truncate(want);
                return Ok(out);
            }
            offset += fetched;
        }
    }

    /// Reads documents by id, one atomic read per shard.
    pub(crate) async fn read_many(&self, ids: &[String]) -> Result<BTreeMap<String, Record>> {
        let mut by_shard: BTreeMap<u32, Vec<&String>> = BTreeMap::new();
        for id in ids {
            by_shard
                .entry(self.shard_of_session(id)?)
                .or_default()
                .push(id);
        }
        let mut docs = BTreeMap::new();
        for (shard, ids) in by_shard {
            let mut reads = Reads::new();
            let slots: Vec<_> = ids
                .iter()
                .map(|id| reads.hgetall(self.keys.session(shard, id)))
                .collect();
            let mut r = self.read(reads).await?;
            for (id, slot) in ids.into_iter().zip(slots) {
                if let Some(doc) = decode_record(r.take(slot))? {
                    docs.insert(id.clone(), doc);
                }
            }
        }
        Ok(docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor(1_700_000_000_000.0, "sess_1_abc");
        assert_eq!(
            decode_cursor(&c).unwrap(),
            (1_700_000_000_000.0, "sess_1_abc".to_owned())
        );
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor(&BASE64URL_NOPAD.encode(b"nocolon")).is_err());
        assert!(page_size(Some(0)).is_err());
        assert!(page_size(Some(MAX_PAGE_SIZE + 1)).is_err());
        assert_eq!(page_size(None).unwrap(), DEFAULT_PAGE_SIZE);
    }
}
