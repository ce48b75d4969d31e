//! What this process wrote last: each session document as it was committed, and each user's
//! current session. A change then skips its snapshot read and commits at once, guarded by what
//! it assumed (the document's version, the user's current session), in one script call.
//!
//! Only a hint: a guard that fails (another process changed the session, or this one raced
//! itself) reports a conflict, the hint is forgotten, and the change runs again on a snapshot.
//! Reads never answer from here, and an error is never decided on a hint (see
//! [`super::Sessions::changing`]). Bounded by bytes (`--write-hints-max-bytes`): an evicted hint
//! only costs the snapshot read it would have saved.

use std::sync::Arc;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::model::Record;

/// Bytes counted per user whose current session is kept (its key and the id).
const USER_BYTES: u64 = 128;
/// Bytes counted per document beyond its fields: the record's own structs and the map's slot.
const ENTRY_OVERHEAD_BYTES: u64 = 400;

/// A document as committed, with its weight.
#[derive(Clone)]
struct Doc {
    record: Arc<Record>,
    bytes: u64,
}

#[derive(Clone, Copy)]
struct DocWeighter;

impl Weighter<String, Doc> for DocWeighter {
    fn weight(&self, _id: &String, doc: &Doc) -> u64 {
        doc.bytes
    }
}

/// The hints; one per engine.
pub(crate) struct Recent {
    docs: Cache<String, Doc, DocWeighter>,
    /// `<shard>/<user>` → the id of the user's current session.
    current: Cache<String, String>,
}

impl Recent {
    /// Hints within about `max_bytes`: nine tenths for documents (each counted by its field
    /// bytes as written plus [`ENTRY_OVERHEAD_BYTES`]), a tenth for current sessions.
    pub(crate) fn new(max_bytes: u64) -> Self {
        let users = usize::try_from(max_bytes / 10 / USER_BYTES).unwrap_or(usize::MAX);
        let docs_bytes = max_bytes - max_bytes / 10;
        let docs_expected = usize::try_from(docs_bytes / 1_000).unwrap_or(usize::MAX);
        Self {
            docs: Cache::with_weighter(docs_expected.max(1), docs_bytes, DocWeighter),
            current: Cache::new(users.max(1)),
        }
    }

    /// The document of `id` as this process last committed it.
    pub(crate) fn doc(&self, id: &str) -> Option<Arc<Record>> {
        self.docs.get(id).map(|doc| doc.record)
    }

    /// Remembers `record` as committed; `field_bytes` is the size of its fields as written.
    pub(crate) fn remember(&self, record: Record, field_bytes: u64) {
        let id = record.session_id.clone();
        let bytes = field_bytes + ENTRY_OVERHEAD_BYTES;
        self.docs.insert(
            id,
            Doc {
                record: Arc::new(record),
                bytes,
            },
        );
    }

    pub(crate) fn forget(&self, id: &str) {
        self.docs.remove(id);
    }

    /// The user's current session as this process last set it.
    pub(crate) fn current(&self, shard: u32, user: &str) -> Option<String> {
        self.current.get(&user_key(shard, user))
    }

    pub(crate) fn set_current(&self, shard: u32, user: &str, id: Option<String>) {
        match id {
            Some(id) => self.current.insert(user_key(shard, user), id),
            None => {
                self.current.remove(&user_key(shard, user));
            }
        }
    }
}

fn user_key(shard: u32, user: &str) -> String {
    format!("{shard}/{user}")
}
