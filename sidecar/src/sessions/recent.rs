//! What this process wrote or read last: each session document as it committed or read it,
//! and each user's current session as it set it. A change then skips its snapshot read and
//! commits at once, guarded by what it assumed (the document's version, the user's current
//! session), in one script call: an application that looks a session up and then writes to it
//! (a message after a lookup) makes one call for the write.
//!
//! Only a hint: a guard that fails (another process changed the session, or this one raced
//! itself) reports a conflict, the hint is forgotten, and the change runs again on a snapshot.
//! So that another process's write to a document this process read costs one read and not a
//! refused commit as well, the cache's invalidation connection reports the changes Redis pushes
//! ([`WriteHints::changed_elsewhere`]): the hint of a document read here and changed since is
//! dropped before it is used. Redis reports a document once per read (it forgets the key when
//! it reports it), so a document this process committed is not reported again: a report of it
//! is the echo of that commit, and another process's later change is caught by the guard.
//! Reads never answer from here, and an error is never decided on a hint (see
//! [`super::Sessions::changing`]). Bounded by bytes (`--write-hints-max-bytes`): an evicted hint
//! only costs the snapshot read it would have saved.

use std::sync::Arc;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::model::{Record, Status};

/// Bytes counted per user whose current session is kept (its key and the id), and per title.
const USER_BYTES: u64 = 128;
/// Bytes counted per document beyond its fields: the record's own structs and the map's slot.
const ENTRY_OVERHEAD_BYTES: u64 = 400;

/// A document as committed or read, with its weight.
#[derive(Clone)]
struct Doc {
    record: Arc<Record>,
    bytes: u64,
    learned: Learned,
}

/// How a document came to be known.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Learned {
    Committed,
    Read,
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
    /// `<user>/<title>` → the id of the user's active session of that title, among the
    /// documents kept (checked against the document when used).
    titles: Cache<String, String>,
}

impl Recent {
    /// Hints within about `max_bytes`: eight tenths for documents (each counted by its field
    /// bytes as written plus [`ENTRY_OVERHEAD_BYTES`]), a tenth each for current sessions and
    /// titles (each counted as [`USER_BYTES`]).
    pub(crate) fn new(max_bytes: u64) -> Self {
        let users = usize::try_from(max_bytes / 10 / USER_BYTES).unwrap_or(usize::MAX);
        let docs_bytes = max_bytes - max_bytes / 5;
        let docs_expected = usize::try_from(docs_bytes / 1_000).unwrap_or(usize::MAX);
        Self {
            docs: Cache::with_weighter(docs_expected.max(1), docs_bytes, DocWeighter),
            current: Cache::new(users.max(1)),
            titles: Cache::new(users.max(1)),
        }
    }

    /// The document of `id` as this process last committed or read it.
    pub(crate) fn doc(&self, id: &str) -> Option<Arc<Record>> {
        self.docs.get(id).map(|doc| doc.record)
    }

    /// The kept document of the user's active session titled `title`.
    pub(crate) fn titled(&self, user: &str, title: &str) -> Option<Arc<Record>> {
        let id = self.titles.get(&title_key(user, title))?;
        self.doc(&id)
            .filter(|doc| doc.user_id == user && doc.title.as_deref() == Some(title))
    }

    /// Remembers `record` as committed or read; `field_bytes` is the size of its fields.
    pub(crate) fn remember(&self, record: Record, field_bytes: u64, how: Learned) {
        let id = record.session_id.clone();
        let bytes = field_bytes + ENTRY_OVERHEAD_BYTES;
        if let (Some(title), Status::Active) = (&record.title, record.status) {
            self.titles
                .insert(title_key(&record.user_id, title), id.clone());
        }
        self.docs.insert(
            id,
            Doc {
                record: Arc::new(record),
                bytes,
                learned: how,
            },
        );
    }

    pub(crate) fn forget(&self, id: &str) {
        self.docs.remove(id);
    }

    /// Redis reported a change of the document of `id`: a document read here is stale and
    /// dropped; for one this process committed last, the report is that commit's echo.
    fn changed_elsewhere(&self, id: &str) {
        self.docs.remove_if(id, |doc| doc.learned == Learned::Read);
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

/// The write hints of an engine, for the invalidation connection to report changes to.
#[derive(Clone)]
pub struct WriteHints(pub(super) Arc<Recent>);

impl WriteHints {
    /// Redis reported that the document of `session_id` changed (written by this process or
    /// by another one).
    pub fn changed_elsewhere(&self, session_id: &str) {
        self.0.changed_elsewhere(session_id);
    }
}

fn title_key(user: &str, title: &str) -> String {
    format!("{user}/{title}")
}

fn user_key(shard: u32, user: &str) -> String {
    format!("{shard}/{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_drops_a_document_read_and_is_the_echo_of_one_committed() {
        let hints = WriteHints(Arc::new(Recent::new(1 << 20)));
        hints
            .0
            .remember(Record::for_test("a"), 100, Learned::Committed);
        hints.changed_elsewhere("a");
        assert!(
            hints.0.doc("a").is_some(),
            "the echo of this process's own commit"
        );
        hints.changed_elsewhere("never-written");

        hints.0.remember(Record::for_test("b"), 100, Learned::Read);
        hints.changed_elsewhere("b");
        assert!(
            hints.0.doc("b").is_none(),
            "a document read has no echo to wait for"
        );
    }

    #[test]
    fn the_default_size_keeps_the_current_sessions_of_ten_thousand_users() {
        // The write benchmark's 10 000 users: a create from the hints needs the user's current
        // session kept (a smaller share for them once cost a third of the creates a read).
        let recent = Recent::new(crate::config::DEFAULT_WRITE_HINTS_MAX_BYTES);
        for user in 0..10_000 {
            recent.set_current(1, &format!("user-{user}"), Some(format!("s{user}")));
        }
        let kept = (0..10_000)
            .filter(|user| recent.current(1, &format!("user-{user}")).is_some())
            .count();
        assert!(kept >= 9_900, "{kept} of 10 000 kept");
    }
}
