//! Session ids and shards.
//!
//! The shard of a user is `fnv1a32(utf8(user_id)) % shard_count` — FNV-1a, 32 bits, offset basis
//! 2166136261, prime 16777619 — fixed here and documented in the README so every client and
//! language computes the same shard. A session id carries its shard:
//! `sess_<shard>_<26 lowercase base32 chars>` (128 bits from the operating system's CSPRNG via
//! `rand`'s thread generator), so a lookup by id alone finds the right Redis slot.

use data_encoding::BASE32_NOPAD;

/// The prefix of every session id.
pub(crate) const SESSION_ID_PREFIX: &str = "sess_";
/// Random bytes in a session id: 128 bits.
const RANDOM_BYTES: usize = 16;
/// Length of 128 bits in unpadded base32.
const RANDOM_CHARS: usize = 26;

/// The shard of a user.
#[must_use]
pub fn shard_of(user_id: &str, shard_count: u32) -> u32 {
    let mut hash: u32 = 2_166_136_261;
    for byte in user_id.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(16_777_619);
    }
    hash % shard_count.max(1)
}

/// A new random session id on `shard`.
#[must_use]
pub fn new_session_id(shard: u32) -> String {
    let bytes: [u8; RANDOM_BYTES] = rand::random();
    let random = BASE32_NOPAD.encode(&bytes).to_ascii_lowercase();
    format!("{SESSION_ID_PREFIX}{shard}_{random}")
}

/// The shard of a well-formed session id of a deployment with `shard_count` shards.
#[must_use]
pub fn parse_session_id(id: &str, shard_count: u32) -> Option<u32> {
    let rest = id.strip_prefix(SESSION_ID_PREFIX)?;
    let (shard, random) = rest.split_once('_')?;
    if shard.is_empty() || shard.len() > 5 || !shard.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if (shard.len() > 1 && shard.starts_with('0')) || random.len() != RANDOM_CHARS {
        return None;
    }
    if !random
        .bytes()
        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    {
        return None;
    }
    BASE32_NOPAD
        .decode(random.to_ascii_uppercase().as_bytes())
        .ok()?;
    let shard: u32 = shard.parse().ok()?;
    (shard < shard_count).then_some(shard)
}

/// A new event id (UUIDv4).
#[must_use]
pub(crate) fn new_event_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_hash_is_the_documented_fnv1a() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(shard_of("", u32::MAX), 2_166_136_261);
        assert_eq!(shard_of("a", u32::MAX), 0xe40c_292c);
        assert_eq!(shard_of("foobar", u32::MAX), 0xbf9c_f968);
        assert!(shard_of("user-1", 16) < 16);
    }

    #[test]
    fn ids_round_trip_and_are_distinct() {
        let a = new_session_id(3);
        let b = new_session_id(3);
        assert_ne!(a, b);
        assert_eq!(a.len(), "sess_3_".len() + 26);
        assert_eq!(parse_session_id(&a, 16), Some(3));
        assert_eq!(parse_session_id(&a, 3), None, "shard out of range");
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "sess_",
            "sess_1",
            "sess_01_aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "sess_x_aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "sess_1_AAAAAAAAAAAAAAAAAAAAAAAAAA",
            "sess_1_aaaaaaaaaaaaaaaaaaaaaaaaa1",
            "sess_1_aaaaaaaaaaaaaaaaaaaaaaaaab", // trailing bits set
            "session_1_aaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(parse_session_id(bad, 16), None, "{bad}");
        }
        assert_eq!(
            parse_session_id("sess_1_aaaaaaaaaaaaaaaaaaaaaaaaaa", 16),
            Some(1)
        );
    }
}
