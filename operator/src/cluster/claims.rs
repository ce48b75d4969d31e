//! Who claims which slot, and whether the nodes agree on it — what the plan checks before it
//! assigns or moves a slot.
//!
//! A node claims slots on its own `CLUSTER NODES` line; when two claim one slot, the higher
//! config epoch wins. Redis gives a master a new epoch without asking the others when a slot
//! move completes (`SETSLOT … NODE` on the importing node), and resolves two masters sharing an
//! epoch by bumping one of them whenever they next talk. If that happens to the source of a move
//! in the milliseconds between the target's claim and the source's release, the source's gossip
//! outranks the target's claim: Redis 7.0 then gives the slot back to the source in the target's
//! view (and deletes the keys just imported, or makes the target a replica of the source when it
//! had no other slot) while the source has already handed it to the target, and no node claims
//! the slot any more. So slots move only once the epochs are settled among the cluster's
//! members: every master has one of its own and every member has heard of the highest (fresh
//! nodes all start at epoch 0, so a scale-out waits a few seconds of gossip for this). The
//! repair of a slot no node claims recovers what keys are left; this wait is what prevents the
//! loss.

use std::collections::{BTreeMap, BTreeSet};

use super::node::Seen;
use super::plan::Action;
use super::topology::{NodeLine, SLOTS};

/// The owner of every slot: the master claiming it on its own line (the highest config epoch
/// wins a conflicting claim), else `None`.
pub(crate) fn slot_owners(seen: &[Seen]) -> Vec<Option<String>> {
    let mut owner: Vec<Option<(u64, String)>> = vec![None; usize::from(SLOTS)];
    let mut claim = |line: &NodeLine| {
        for &(a, b) in &line.slots {
            for slot in a..=b {
                let entry = &mut owner[usize::from(slot)];
                if entry
                    .as_ref()
                    .is_none_or(|(epoch, _)| line.config_epoch > *epoch)
                {
                    *entry = Some((line.config_epoch, line.id.clone()));
                }
            }
        }
    };
    for s in seen {
        claim(s.me());
    }
    owner.into_iter().map(|o| o.map(|(_, id)| id)).collect()
}

/// The first kept node whose view of a slot's owner differs from the owner's own claim.
pub(crate) fn disagreement<'a>(
    kept: &[&'a Seen],
    owners: &[Option<String>],
) -> Option<(&'a Seen, usize)> {
    for a in kept {
        for (slot, owner) in owners.iter().enumerate() {
            let Some(owner) = owner else { continue };
            let slot16 = u16::try_from(slot).unwrap_or_default();
            let agrees = if owner == a.id() {
                true
            } else {
                a.peer(owner).is_some_and(|v| v.owns(slot16))
            };
            if !agrees {
                return Some((a, slot));
            }
        }
    }
    None
}

/// The moves one pass may make: none whose source is the target of another, or whose target
/// is the source of another. Within a pass only the targets take new epochs (each above every
/// epoch settled before the pass), and two of them may collide and be bumped again by Redis; a
/// node that only gives slots away keeps its epoch, so its release can never be outranked. The
/// moves left out are planned again by the next pass, once the epochs have settled.
pub(crate) fn one_role_each(moves: Vec<Action>) -> Vec<Action> {
    let mut sources = BTreeSet::new();
    let mut targets = BTreeSet::new();
    moves
        .into_iter()
        .filter(|m| {
            let Action::Migrate { from, to, .. } = m else {
                return true;
            };
            if targets.contains(from) || sources.contains(to) {
                return false;
            }
            sources.insert(from.clone());
            targets.insert(to.clone());
            true
        })
        .collect()
}

/// Why slots may not move yet, in words, or `None` once the config epochs are settled. Only
/// the cluster's members count: a fresh node (not joined yet) or one that left keeps epoch 0 and
/// hears nothing.
pub(crate) fn unsettled_epochs(seen: &[Seen]) -> Option<String> {
    let members: Vec<&Seen> = seen.iter().filter(|s| s.established()).collect();
    let mut by_epoch: BTreeMap<u64, &Seen> = BTreeMap::new();
    for &s in members.iter().filter(|s| s.me().master) {
        if let Some(other) = by_epoch.insert(s.me().config_epoch, s) {
            return Some(format!(
                "waiting for Redis to give pod {} or pod {} a config epoch of its own (both have {}; cluster gossip resolves this by itself) before moving slots",
                other.member.ordinal,
                s.member.ordinal,
                s.me().config_epoch
            ));
        }
    }
    let highest = by_epoch.keys().next_back().copied().unwrap_or_default();
    members.iter().find(|s| s.current_epoch < highest).map(|s| {
        format!(
            "waiting for pod {} to hear of config epoch {highest} (cluster gossip) before moving slots",
            s.member.ordinal
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::Member;
    use super::super::placement::data_slots;
    use super::super::plan::{Phase, Shape, plan};
    use super::super::topology::parse_nodes;
    use super::*;

    /// Masters `n0…` with `epochs[i]`, each owning `slots[i]`, every view alike and healthy.
    fn masters(epochs: &[u64], slots: &[&str], current: u64) -> Vec<Seen> {
        let id = |i: usize| format!("{i:0>40}");
        (0..epochs.len())
            .map(|me| {
                let text: String = (0..epochs.len())
                    .map(|i| {
                        let flags = if i == me { "myself,master" } else { "master" };
                        format!(
                            "{} 10.0.0.{i}:6379@16379 {flags} - 0 0 {} connected {}\n",
                            id(i),
                            epochs[i],
                            slots[i]
                        )
                    })
                    .collect();
                Seen {
                    member: Member {
                        ordinal: i32::try_from(me).unwrap_or_default(),
                        ip: format!("10.0.0.{me}"),
                        port: 6379,
                        host: None,
                        outdated: false,
                    },
                    nodes: parse_nodes(&text).unwrap_or_default(),
                    state_ok: true,
                    link_up: false,
                    replicating_from: None,
                    current_epoch: current,
                    unowned_keys: BTreeMap::new(),
                }
            })
            .collect()
    }

    fn shape(masters: usize) -> Shape {
        Shape {
            masters,
            replicas: 0,
            data_slots: data_slots(16),
        }
    }

    const THREE: [&str; 4] = ["0-5460", "5461-10922", "10923-16383", ""];

    #[test]
    fn slots_move_only_once_every_master_has_an_epoch_of_its_own() {
        // A fresh master (epoch 0) shares its epoch with an old one: nothing moves yet.
        let seen = masters(&[0, 1, 2, 0], &THREE, 2);
        let wait = plan(&seen, &[], &shape(4));
        assert_eq!(wait.phase, Phase::Progressing, "{}", wait.message);
        assert!(wait.actions.is_empty());
        assert!(
            wait.message.contains("pod 0 or pod 3") && wait.message.contains("epoch"),
            "{}",
            wait.message
        );
        // Every epoch its own, but pod 1 has not heard of the highest.
        let mut seen = masters(&[3, 1, 2, 4], &THREE, 4);
        seen[1].current_epoch = 3;
        let wait = plan(&seen, &[], &shape(4));
        assert_eq!(wait.phase, Phase::Progressing);
        assert!(wait.message.contains("pod 1 to hear of config epoch 4"));
        // Settled: the slots move.
        let seen = masters(&[3, 1, 2, 4], &THREE, 4);
        let go = plan(&seen, &[], &shape(4));
        assert_eq!(go.phase, Phase::Resharding, "{}", go.message);
        assert!(
            go.actions
                .iter()
                .all(|a| matches!(a, Action::Migrate { to, .. } if to == &format!("{:0>40}", 3)))
        );
    }

    #[test]
    fn only_the_clusters_members_count_for_settled_epochs() {
        // A fresh pod, not joined yet, keeps epoch 0 and hears nothing: it holds nothing up.
        let mut seen = masters(&[3, 1, 2], &THREE, 3);
        let mut fresh = masters(&[0], &[""], 0).remove(0);
        fresh.member.ordinal = 3;
        assert!(!fresh.established());
        seen.push(fresh.clone());
        assert_eq!(unsettled_epochs(&seen), None);
        // A second fresh pod at epoch 0 neither.
        fresh.member.ordinal = 4;
        seen.push(fresh);
        assert_eq!(unsettled_epochs(&seen), None);
    }

    #[test]
    fn a_slot_nobody_claims_waits_for_a_pod_that_does_not_answer() {
        let slots = ["0-99 101-5460", "5461-10922", "10923-16383"];
        let seen = masters(&[1, 2, 3], &slots, 3);
        // Pod 3 is beyond the wanted size (a scale-in): it may hold the slot's keys.
        let gone = [(3, "pod not running".to_owned())];
        let wait = plan(&seen, &gone, &shape(3));
        assert_eq!(wait.phase, Phase::Degraded, "{}", wait.message);
        assert!(wait.actions.is_empty());
        assert!(wait.message.contains("Redis pod 3"), "{}", wait.message);
    }

    #[test]
    fn a_pass_moves_no_slot_out_of_a_node_that_receives_one() {
        let m = |slot, from: &str, to: &str| Action::Migrate {
            slot,
            from: from.to_owned(),
            to: to.to_owned(),
        };
        let moves = vec![
            m(1, "a", "b"),
            m(2, "b", "c"),
            m(3, "c", "d"),
            m(4, "a", "d"),
        ];
        assert_eq!(
            one_role_each(moves),
            vec![m(1, "a", "b"), m(3, "c", "d"), m(4, "a", "d")]
        );
    }

    #[test]
    fn a_slot_nobody_claims_goes_to_the_master_holding_its_keys() {
        let slots = ["0-99 101-5460", "5461-10922", "10923-16383"];
        let mut seen = masters(&[1, 2, 3], &slots, 3);
        let owners = slot_owners(&seen);
        assert_eq!(owners[100], None);
        assert!(owners[101].is_some());
        seen[2].unowned_keys.insert(100, 7);
        let repair = plan(&seen, &[], &shape(3));
        assert_eq!(repair.phase, Phase::Repairing, "{}", repair.message);
        assert_eq!(
            repair.actions,
            vec![Action::AddSlots {
                on: format!("{:0>40}", 2),
                slots: vec![(100, 100)],
            }]
        );
        assert!(
            repair
                .message
                .contains("1 to the master still holding their keys")
        );
        // Not while two masters share an epoch.
        let mut seen = masters(&[1, 1, 3], &slots, 3);
        seen[2].unowned_keys.insert(100, 7);
        assert_eq!(plan(&seen, &[], &shape(3)).phase, Phase::Progressing);
    }
}
