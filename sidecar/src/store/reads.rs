//! Typed reads on top of [`Backend::read`]: a batch is built one call per
//! read, and each call gives back a [`Slot`] naming the type of that read's reply, which
//! [`Replies::take`] decodes. What a read returns is written once, beside the read, instead of
//! by position at every caller.

use std::marker::PhantomData;

use super::{Backend, BackendError, NamedBy, ReadOp, Reply, Score, StreamEntry, ZRange};

/// A batch of reads on keys of one hash slot, answered atomically.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    ops: Vec<ReadOp>,
}

/// Where the reply of one read of a [`Reads`] batch is, and what it decodes to.
#[must_use = "a read whose reply is never taken is a wasted round trip"]
#[derive(Debug)]
pub(crate) struct Slot<T> {
    index: usize,
    reply: PhantomData<fn() -> T>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Slot<T> {}

impl Reads {
    #[must_use]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn push<T>(&mut self, op: ReadOp) -> Slot<T> {
        self.ops.push(op);
        Slot {
            index: self.ops.len() - 1,
            reply: PhantomData,
        }
    }

    /// `GET key`: the value, if the key exists.
    pub(crate) fn get(&mut self, key: String) -> Slot<Option<String>> {
        self.push(ReadOp::Get(key))
    }

    /// `GET key` of an integer counter: 0 for a missing key.
    pub(crate) fn counter(&mut self, key: String) -> Slot<i64> {
        self.push(ReadOp::Get(key))
    }

    /// `HGET key field`.
    pub(crate) fn hget(&mut self, key: String, field: String) -> Slot<Option<String>> {
        self.push(ReadOp::HGet(key, field))
    }

    /// `HGETALL key`: field/value pairs (none for a missing key).
    pub(crate) fn hgetall(&mut self, key: String) -> Slot<Vec<(String, String)>> {
        self.push(ReadOp::HGetAll(key))
    }

    /// Members of a sorted set with their scores, in `range`.
    pub(crate) fn zrange(&mut self, range: ZRange) -> Slot<Vec<(String, Score)>> {
        self.push(ReadOp::ZRange(range))
    }

    /// Members of a sorted set scored above `min`, lowest first, up to `count`.
    pub(crate) fn members_above(&mut self, key: String, min: Score, count: usize) -> Slot<Members> {
        self.push(ReadOp::ZRange(ZRange::above(key, min, count)))
    }

    /// Up to `count` members of a sorted set, lowest score first.
    pub(crate) fn all_members(&mut self, key: String, count: usize) -> Slot<Members> {
        self.push(ReadOp::all_members(key, count))
    }

    /// `ZSCORE key member`: whether the member is in the set (its score is never needed).
    pub(crate) fn is_member(&mut self, key: String, member: String) -> Slot<bool> {
        self.push(ReadOp::ZScore(key, member))
    }

    /// `LRANGE key start stop` (0-based, inclusive).
    pub(crate) fn lrange(&mut self, key: String, start: i64, stop: i64) -> Slot<Vec<String>> {
        self.push(ReadOp::LRange(key, start, stop))
    }

    /// `PTTL key`: milliseconds left, -2 for a missing key, -1 without expiry.
    pub(crate) fn pttl(&mut self, key: String) -> Slot<i64> {
        self.push(ReadOp::PTtl(key))
    }

    /// Up to `count` stream entries after `after` (from the start for `None`).
    pub(crate) fn xrange(
        &mut self,
        key: String,
        after: Option<String>,
        count: usize,
    ) -> Slot<Vec<StreamEntry>> {
        self.push(ReadOp::XRange(key, after, count))
    }

    /// `GET` of the key `prefix` + the value `name` reads, in the same snapshot.
    pub(crate) fn get_at(&mut self, prefix: String, name: NamedBy) -> Slot<Option<String>> {
        self.push(ReadOp::GetAt(prefix, name))
    }

    /// `HGETALL` of the key `prefix` + the value `name` reads, in the same snapshot.
    pub(crate) fn hgetall_at(
        &mut self,
        prefix: String,
        name: NamedBy,
    ) -> Slot<Vec<(String, String)>> {
        self.push(ReadOp::HGetAllAt(prefix, name))
    }

    /// The members of a sorted set in `range` with their documents (`prefix` + member; no
    /// pairs: no document), in the same snapshot.
    pub(crate) fn documents_of(&mut self, prefix: String, range: ZRange) -> Slot<Documents> {
        self.push(ReadOp::HGetAllOf(prefix, range))
    }

    /// `HGET` of the field of `key` that the value `name` reads names, in the same snapshot.
    pub(crate) fn hget_named(&mut self, key: String, name: NamedBy) -> Slot<Option<String>> {
        self.push(ReadOp::HGetNamed(key, name))
    }

    /// Reads the batch from `backend`, atomically.
    ///
    /// # Errors
    /// When the backend fails.
    pub(crate) async fn run(self, backend: &dyn Backend) -> Result<Replies, BackendError> {
        Ok(Replies::new(backend.read(self.ops).await?))
    }
}

/// One read from `backend`, decoded: `read` adds it to a batch, e.g. `|r| r.get(key)`.
///
/// # Errors
/// When the backend fails.
pub(crate) async fn read_one<T: FromReply>(
    backend: &dyn Backend,
    read: impl FnOnce(&mut Reads) -> Slot<T>,
) -> Result<T, BackendError> {
    let mut reads = Reads::new();
    let slot = read(&mut reads);
    Ok(reads.run(backend).await?.take(slot))
}

/// Members of a sorted set, each with the field/value pairs of its document.
pub(crate) type Documents = Vec<(String, Vec<(String, String)>)>;

/// Members of a sorted set without their scores.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Members(pub Vec<String>);

/// The replies of a [`Reads`] batch, taken out by their slots.
#[derive(Debug)]
pub(crate) struct Replies(Vec<Option<Reply>>);

impl Replies {
    /// The backend's replies, in the order of the reads.
    #[must_use]
    pub(crate) fn new(replies: Vec<Reply>) -> Self {
        Self(replies.into_iter().map(Some).collect())
    }

    /// The decoded reply at `slot`; taken once (a second take reads as a missing key).
    pub(crate) fn take<T: FromReply>(&mut self, slot: Slot<T>) -> T {
        T::from_reply(self.0.get_mut(slot.index).and_then(Option::take))
    }
}

/// A read's reply decoded; a missing reply reads as a missing key.
pub(crate) trait FromReply {
    fn from_reply(reply: Option<Reply>) -> Self;
}

impl FromReply for Option<String> {
    fn from_reply(reply: Option<Reply>) -> Self {
        reply.and_then(Reply::into_opt_string)
    }
}

impl FromReply for i64 {
    fn from_reply(reply: Option<Reply>) -> Self {
        reply.map_or(0, |r| r.as_int())
    }
}

impl FromReply for bool {
    fn from_reply(reply: Option<Reply>) -> Self {
        reply.and_then(Reply::into_opt_string).is_some()
    }
}

impl FromReply for Vec<(String, String)> {
    fn from_reply(reply: Option<Reply>) -> Self {
        reply.map(Reply::into_pairs).unwrap_or_default()
    }
}

impl FromReply for Vec<(String, Score)> {
    fn from_reply(reply: Option<Reply>) -> Self {
        reply.map(Reply::into_scored).unwrap_or_default()
    }
}

impl FromReply for Members {
    fn from_reply(reply: Option<Reply>) -> Self {
        Members(reply.map(Reply::into_members).unwrap_or_default())
    }
}

impl FromReply for Vec<String> {
    fn from_reply(reply: Option<Reply>) -> Self {
        reply.map(Reply::into_list).unwrap_or_default()
    }
}

impl FromReply for Documents {
    fn from_reply(reply: Option<Reply>) -> Self {
        reply.map(Reply::into_documents).unwrap_or_default()
    }
}

impl FromReply for Vec<StreamEntry> {
    fn from_reply(reply: Option<Reply>) -> Self {
        reply.map(Reply::into_entries).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryBackend;

    #[tokio::test]
    async fn each_reply_comes_back_as_its_reads_type_whatever_the_order() {
        let store = MemoryBackend::new();
        let mut reads = Reads::new();
        let missing = reads.get("k:missing".to_owned());
        let ttl = reads.pttl("k:missing".to_owned());
        let pairs = reads.hgetall("k:missing".to_owned());
        let member = reads.is_member("k:z".to_owned(), "m".to_owned());
        let mut replies = reads.run(&store).await.unwrap();
        // Taken out of order, and one twice.
        assert!(!replies.take(member));
        assert!(replies.take(pairs).is_empty());
        assert_eq!(replies.take(ttl), -2);
        assert_eq!(replies.take(missing), None);
        assert_eq!(replies.take(missing), None);
    }
}
