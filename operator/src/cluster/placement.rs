//! Where slots should live, computed from the slots that hold session data.
//!
//! Every session key carries the hash tag of its shard (`{<shard>}`), so with `shardCount` shards
//! the session data lives in at most `shardCount` hash slots — the *data slots*. Spreading all
//! 16384 slots evenly says nothing about the data: with 16 shards, 6 masters given contiguous
//! ranges hold 4/2/2/4/1/3 data slots. Placement therefore balances the data slots first (every
//! master holds ⌊D/M⌋ or ⌈D/M⌉ of them) and moves as few slots as it can to get there; the other
//! slots (the global events stream, org indexes) stay where they are unless their owner leaves.

use super::topology::SLOTS;

/// The hash slot of a key (CRC16/XMODEM of its hash tag, modulo 16384), as Redis computes it.
pub fn key_slot(key: &str) -> u16 {
    let tag = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
}

/// The data slots of `shard_count` shards, sorted, each once (two shards may share a slot).
pub fn data_slots(shard_count: u32) -> Vec<u16> {
    let mut slots: Vec<u16> = (0..shard_count)
        .map(|s| key_slot(&format!("{{{s}}}")))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots
}

/// The target owner (an index into the target masters) of every slot, given each slot's current
/// owner among those masters (`None`: unowned, or owned by a node that is not a target master).
///
/// Keeps every slot whose owner may keep it; data slots are balanced to ⌊D/M⌋ or ⌈D/M⌉ per master
/// (the masters holding most keep the larger quota, so fewer slots move); orphaned slots that hold
/// no session data go, in contiguous runs, to the masters with fewest of them.
pub(crate) fn target(current: &[Option<usize>], masters: usize, data: &[u16]) -> Vec<usize> {
    assert_eq!(current.len(), usize::from(SLOTS), "one owner per slot");
    assert!(masters > 0, "at least one master");
    let mut is_data = vec![false; current.len()];
    for &s in data {
        is_data[usize::from(s)] = true;
    }
    let mut owner: Vec<Option<usize>> = current.to_vec();

    // Data slots: quotas, then release the excess and fill the deficits.
    let mut held = vec![0usize; masters];
    for &s in data {
        if let Some(m) = owner[usize::from(s)] {
            held[m] += 1;
        }
    }
    let mut by_held: Vec<usize> = (0..masters).collect();
    by_held.sort_by_key(|&m| (std::cmp::Reverse(held[m]), m));
    let (base, extra) = (data.len() / masters, data.len() % masters);
    let mut quota = vec![base; masters];
    for &m in by_held.iter().take(extra) {
        quota[m] += 1;
    }
    let mut kept = vec![0usize; masters];
    let mut pool = Vec::new();
    for &s in data {
        match owner[usize::from(s)] {
            Some(m) if kept[m] < quota[m] => kept[m] += 1,
            _ => pool.push(s),
        }
    }
    let mut pool = pool.into_iter();
    for m in 0..masters {
        while kept[m] < quota[m] {
            let Some(s) = pool.next() else { break };
            owner[usize::from(s)] = Some(m);
            kept[m] += 1;
        }
    }

    // Other slots: orphans in contiguous runs to whoever has fewest.
    let mut others = vec![0usize; masters];
    let mut orphans = Vec::new();
    for (s, o) in owner.iter().enumerate() {
        match (is_data[s], o) {
            (true, _) => {}
            (false, Some(m)) => others[*m] += 1,
            (false, None) => orphans.push(s),
        }
    }
    let share = (others.iter().sum::<usize>() + orphans.len()).div_ceil(masters);
    let mut fill = 0;
    for s in orphans {
        while fill + 1 < masters && others[fill] >= share {
            fill += 1;
        }
        owner[s] = Some(fill);
        others[fill] += 1;
    }
    owner.into_iter().map(|o| o.unwrap_or_default()).collect()
}

/// Data slots per target master.
pub(crate) fn data_per_master(owner: &[usize], masters: usize, data: &[u16]) -> Vec<usize> {
    let mut count = vec![0; masters];
    for &s in data {
        count[owner[usize::from(s)]] += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_balanced(owner: &[usize], masters: usize, data: &[u16]) {
        let counts = data_per_master(owner, masters, data);
        let most = data.len().div_ceil(masters);
        let least = data.len() / masters;
        assert!(
            counts.iter().all(|&c| c >= least && c <= most),
            "data slots per master {counts:?}, want {least}..={most}"
        );
    }

    #[test]
    fn slots_match_redis_for_shard_tags() {
        // CLUSTER KEYSLOT of real redis-server (the integration test checks more).
        assert_eq!(key_slot("{0}"), 13907);
        assert_eq!(key_slot("sess:{0}:s:x"), 13907);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{}foo"), key_slot("{}foo"));
        assert_eq!(data_slots(16).len(), 16);
    }

    #[test]
    fn bootstrap_grow_and_shrink_stay_balanced_and_move_little() {
        for shards in [16u32, 64, 256, 1024] {
            let data = data_slots(shards);
            let empty = vec![None; usize::from(SLOTS)];
            let three = target(&empty, 3, &data);
            assert_balanced(&three, 3, &data);
            // Grow to 6: the first three keep what they may, the rest moves to the new ones.
            let current: Vec<Option<usize>> = three.iter().map(|&m| Some(m)).collect();
            let six = target(&current, 6, &data);
            assert_balanced(&six, 6, &data);
            let moved = (0..usize::from(SLOTS))
                .filter(|&s| six[s] != three[s])
                .count();
            let data_moved = data
                .iter()
                .filter(|&&s| six[usize::from(s)] != three[usize::from(s)])
                .count();
            assert_eq!(moved, data_moved, "only data slots move when growing");
            assert!(data_moved <= data.len().div_ceil(2) + 3, "{data_moved}");
            // Shrink to 4: masters 4 and 5 leave, their slots become orphans.
            let current: Vec<Option<usize>> = six.iter().map(|&m| (m < 4).then_some(m)).collect();
            let four = target(&current, 4, &data);
            assert_balanced(&four, 4, &data);
            assert!(
                (0..usize::from(SLOTS)).all(|s| current[s].is_none()
                    || four[s] == six[s]
                    || data.contains(&u16::try_from(s).unwrap())),
                "slots of staying masters without data stay"
            );
        }
        // 64 masters with 1024 shards: 16 data slots each.
        let data = data_slots(1024);
        let owner = target(&vec![None; usize::from(SLOTS)], 64, &data);
        assert_balanced(&owner, 64, &data);
    }
}
