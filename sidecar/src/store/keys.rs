//! The Redis key layout, one function per key (the README's "Redis layout" lists them).
//!
//! Every key of a user lives under the hash tag `{<shard>}`, so one commit can change a user's
//! documents, indexes and the shard outbox atomically, in Redis Cluster too. The global events
//! stream lives under `{events}` and each org index under `{o:<org_id>}`; those are only written
//! by the outbox relay, never together with session state.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{S}:s:<session_id>` | hash | the session document |
//! | `P:{S}:uv:<user_id>` | string | the user's version counter (guards every commit) |
//! | `P:{S}:u:<user_id>` | zset | the user's sessions, by `created_at` |
//! | `P:{S}:ua:<user_id>` | zset | the user's *active* sessions, by `expires_at` |
//! | `P:{S}:cur:<user_id>` | string | the user's current session id |
//! | `P:{S}:t:<user_id>` | hash | title → session id |
//! | `P:{S}:rl:<user_id>` | string | session creations in the current rate-limit window |
//! | `P:{S}:m:<session_id>` | list | messages (JSON), append-only |
//! | `P:{S}:mem:<session_id>` | string | session memory (JSON object) |
//! | `P:{S}:c:<case_id>` | zset | sessions linked to a case (this shard's part) |
//! | `P:{S}:exp` | zset | every session of the shard, by `expires_at` (the sweeper's queue) |
//! | `P:{S}:outbox` | stream | events waiting for the relay |
//! | `P:{S}:inbox` | zset | consumed inbound event ids, by time seen |
//! | `P:{S}:relay-lock` | string | lease of the relay working on this shard |
//! | `P:{events}:stream` | stream | the global events stream |
//! | `P:{events}:consumer-offset`, `P:{events}:consumer-lock` | string | inbound consumer position and lease |
//! | `P:{events}:consumer-attempts` | string | `<entry id> <first failure ms> <attempts>` of the event the consumer keeps failing on |
//! | `P:{events}:dead-letters` | stream | inbound events set aside, each with its error, attempts and time |
//! | `P:{o:<org_id>}:sessions` | zset | org index (derived from events), by `created_at` |

/// Builds keys under one configurable prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (for example `sess`).
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix every key starts with.
    #[must_use]
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn shard_key(&self, shard: u32, rest: &str) -> String {
        format!("{}:{{{shard}}}:{rest}", self.prefix)
    }

    pub fn session(&self, shard: u32, session_id: &str) -> String {
        self.shard_key(shard, &format!("s:{session_id}"))
    }
    pub(crate) fn user_version(&self, shard: u32, user_id: &str) -> String {
        self.shard_key(shard, &format!("uv:{user_id}"))
    }
    pub fn user_sessions(&self, shard: u32, user_id: &str) -> String {
        self.shard_key(shard, &format!("u:{user_id}"))
    }
    pub fn user_active(&self, shard: u32, user_id: &str) -> String {
        self.shard_key(shard, &format!("ua:{user_id}"))
    }
    pub fn current(&self, shard: u32, user_id: &str) -> String {
        self.shard_key(shard, &format!("cur:{user_id}"))
    }
    pub fn titles(&self, shard: u32, user_id: &str) -> String {
        self.shard_key(shard, &format!("t:{user_id}"))
    }
    pub(crate) fn rate(&self, shard: u32, user_id: &str) -> String {
        self.shard_key(shard, &format!("rl:{user_id}"))
    }
    pub fn messages(&self, shard: u32, session_id: &str) -> String {
        self.shard_key(shard, &format!("m:{session_id}"))
    }
    pub fn memory(&self, shard: u32, session_id: &str) -> String {
        self.shard_key(shard, &format!("mem:{session_id}"))
    }
    pub(crate) fn case_sessions(&self, shard: u32, case_id: &str) -> String {
        self.shard_key(shard, &format!("c:{case_id}"))
    }
    pub fn expiry(&self, shard: u32) -> String {
        self.shard_key(shard, "exp")
    }
    pub fn outbox(&self, shard: u32) -> String {
        self.shard_key(shard, "outbox")
    }
    pub(crate) fn inbox(&self, shard: u32) -> String {
        self.shard_key(shard, "inbox")
    }
    pub fn relay_lock(&self, shard: u32) -> String {
        self.shard_key(shard, "relay-lock")
    }
    pub fn events(&self) -> String {
        format!("{}:{{events}}:stream", self.prefix)
    }
    pub(crate) fn consumer_offset(&self) -> String {
        format!("{}:{{events}}:consumer-offset", self.prefix)
    }
    pub fn consumer_lock(&self) -> String {
        format!("{}:{{events}}:consumer-lock", self.prefix)
    }
    pub(crate) fn consumer_attempts(&self) -> String {
        format!("{}:{{events}}:consumer-attempts", self.prefix)
    }
    pub fn dead_letters(&self) -> String {
        format!("{}:{{events}}:dead-letters", self.prefix)
    }
    pub(crate) fn org_sessions(&self, org_id: &str) -> String {
        format!("{}:{{o:{org_id}}}:sessions", self.prefix)
    }
}

/// The hash tag of a key: the text between the first `{` and the next `}` when non-empty,
/// else the whole key (Redis Cluster's rule).
#[must_use]
pub(crate) fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of its hash tag, modulo 16384.
#[must_use]
pub(crate) fn slot(key: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key).as_bytes()) % 16_384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_of_a_user_share_the_shard_tag() {
        let k = Keys::new("sess");
        let user = "we{ird}user";
        for key in [
            k.session(7, "sess_7_x"),
            k.user_version(7, user),
            k.user_sessions(7, user),
            k.current(7, user),
            k.titles(7, user),
            k.outbox(7),
            k.memory(7, "sess_7_x"),
        ] {
            assert_eq!(hash_tag(&key), "7", "{key}");
        }
        assert_eq!(k.session(7, "sess_7_x"), "sess:{7}:s:sess_7_x");
        assert_eq!(hash_tag(&k.events()), "events");
        assert_eq!(hash_tag(&k.org_sessions("acme")), "o:acme");
        assert_eq!(hash_tag("plain"), "plain");
        assert_eq!(hash_tag("a{}b"), "a{}b");
        // CLUSTER KEYSLOT of a real redis-server.
        assert_eq!(slot("sess:{0}:outbox"), 13907);
        assert_eq!(slot("foo"), 12182);
    }
}
