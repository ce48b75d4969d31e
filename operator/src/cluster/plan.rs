//! The next step towards the wanted cluster, decided from what the nodes report — a pure
//! function, so every decision is tested without Redis and a killed operator decides the same
//! step again from the same state.
//!
//! The steps, in order; the first that has work is the plan:
//! 1. **Repair**: a node that knows a peer at an old address (every pod restart changes pod IPs)
//!    is told the new one with `CLUSTER MEET`; two established nodes that do not know each other
//!    are introduced.
//! 2. **Finish open migrations** (a slot left `MIGRATING`/`IMPORTING` by an interrupted move).
//! 3. **Wait** while a pod is missing or a peer is still marked failing: nothing structural is
//!    changed on a cluster that is not whole.
//! 4. **Join** fresh nodes (a new cluster, or scale-out).
//! 5. **Roles**: the wanted masters are chosen (masters holding data first); a replica chosen to
//!    be a master is promoted with `CLUSTER FAILOVER`.
//! 6. **Slots**: unowned slots are assigned (to the master still holding their keys, if any),
//!    then slots move one at a time to their target owner (data slots balanced, see
//!    `placement`). Slots are repaired or moved only once the config epochs are settled (see
//!    `claims`).
//! 7. **Replicas**: every other kept node replicates a wanted master, `replicas` each.
//! 8. **Remove** nodes beyond the wanted size (scale-in): drained first, then reset, then
//!    forgotten by every kept node.
//! 9. **Roll** pods onto a new template one at a time: replicas first, a master after a
//!    coordinated `CLUSTER FAILOVER` to its replica.

use std::collections::{BTreeMap, BTreeSet};

use super::claims::{disagreement, one_role_each, slot_owners, unsettled_epochs};
use super::node::Seen;
use super::placement;
use super::topology::{SLOTS, ranges};

/// The cluster the SessionService asks for.
#[derive(Clone, Debug)]
pub struct Shape {
    pub masters: usize,
    pub replicas: usize,
    /// The slots holding session data (`placement::data_slots`).
    pub data_slots: Vec<u16>,
}

impl Shape {
    /// Pods of the wanted cluster: ordinals `0..nodes()` are kept, the rest go.
    pub(crate) fn nodes(&self) -> usize {
        self.masters * (1 + self.replicas)
    }
}

/// One command to one node (nodes are named by their cluster id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Meet {
        on: String,
        ip: String,
        port: u16,
    },
    AddSlots {
        on: String,
        slots: Vec<(u16, u16)>,
    },
    /// The whole migration protocol of one slot (resumable).
    Migrate {
        slot: u16,
        from: String,
        to: String,
    },
    Failover {
        on: String,
    },
    Replicate {
        on: String,
        master: String,
    },
    Reset {
        on: String,
    },
    Forget {
        on: String,
        node: String,
    },
    /// Delete the pod so its StatefulSet recreates it from the new template (done by the
    /// caller, which owns pods).
    Restart {
        ordinal: i32,
    },
}

/// Where the cluster stands; the `RedisReady` condition's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Ready,
    /// Pods are starting or gossip is converging; nothing to do but wait.
    Progressing,
    /// A pod is unreachable; Redis fails over by itself, the operator changes nothing.
    Degraded,
    Bootstrapping,
    Repairing,
    Resharding,
    Scaling,
    /// A scale-in that would risk data waits for the cluster to be whole.
    ScaleInBlocked,
    /// Pods are restarted one at a time onto a new template, masters after a failover.
    RollingUpdate,
}

impl Phase {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Ready => "ClusterReady",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
            Self::Bootstrapping => "Bootstrapping",
            Self::Repairing => "Repairing",
            Self::Resharding => "Resharding",
            Self::Scaling => "Scaling",
            Self::ScaleInBlocked => "ScaleInBlocked",
            Self::RollingUpdate => "RollingUpdate",
        }
    }
}

/// The decision of one pass.
#[derive(Clone, Debug)]
pub struct Plan {
    pub phase: Phase,
    /// What is happening, in words, for the condition and the Event.
    pub message: String,
    pub actions: Vec<Action>,
    /// Pods the StatefulSet must keep: more than the wanted size while nodes beyond it still
    /// hold data or are still known to the cluster.
    pub hold_pods: usize,
}

/// A node in words: `pod <ordinal>` when a pod answers with that id, else its short id.
pub(crate) fn node_name<'a>(seen: impl IntoIterator<Item = &'a Seen>, id: &str) -> String {
    seen.into_iter()
        .find(|s| s.id() == id)
        .map_or_else(|| format!("node {}", &id[..id.len().min(8)]), pod)
}

fn pod(s: &Seen) -> String {
    format!("pod {}", s.member.ordinal)
}

/// Decides the next step. `seen` holds every pod that answered; `unreachable` every pod (by
/// ordinal) that did not, with the reason.
pub(crate) fn plan(seen: &[Seen], unreachable: &[(i32, String)], shape: &Shape) -> Plan {
    let kept = shape.nodes();
    let is_kept = |s: &Seen| usize::try_from(s.member.ordinal).is_ok_and(|o| o < kept);
    let hold_pods = hold(seen, unreachable, kept);
    let done = |phase, message: String, actions| Plan {
        phase,
        message,
        actions,
        hold_pods,
    };
    // Slot moves, each pass's: only once the config epochs are settled, and no node both giving
    // and taking (see `claims`).
    let reshard = |message: String, moves: Vec<Action>| match unsettled_epochs(seen) {
        Some(wait) => done(Phase::Progressing, wait, Vec::new()),
        None => done(Phase::Resharding, message, one_role_each(moves)),
    };

    // 1. Repair addresses and partitions.
    let mut meets = Vec::new();
    for a in seen.iter().filter(|s| s.established()) {
        for b in seen.iter().filter(|s| s.established() && s.id() != a.id()) {
            let (ip, port) = (&b.member.ip, b.member.port);
            let meeting = a
                .nodes
                .iter()
                .any(|n| n.handshake && &n.ip == ip && n.port == port);
            let stale = match a.peer(b.id()) {
                Some(v) => !v.handshake && (&v.ip != ip || v.port != port),
                None => is_kept(a) && is_kept(b),
            };
            if stale && !meeting {
                meets.push(Action::Meet {
                    on: a.id().to_owned(),
                    ip: ip.clone(),
                    port,
                });
            }
        }
    }
    if !meets.is_empty() {
        let nodes: BTreeSet<&str> = meets
            .iter()
            .filter_map(|m| match m {
                Action::Meet { on, .. } => Some(on.as_str()),
                _ => None,
            })
            .collect();
        let message = format!(
            "telling {} node(s) the current addresses of their peers ({} CLUSTER MEET)",
            nodes.len(),
            meets.len()
        );
        // Before any slot is assigned this is the bootstrap's introductions, not a repair.
        let formed = seen.iter().any(|s| s.me().slot_count() > 0);
        let phase = if formed {
            Phase::Repairing
        } else {
            Phase::Bootstrapping
        };
        return done(phase, message, meets);
    }
    // A replica that learned its master's new address from gossip still replicates from the
    // old one (Redis re-targets replication only when the master itself talks to it from the
    // new address); `CLUSTER REPLICATE` re-points it. Its data and role stay as they are.
    let stale_targets: Vec<Action> = seen
        .iter()
        .filter_map(|s| {
            let master = seen
                .iter()
                .find(|m| Some(m.id()) == s.me().master_id.as_deref())?;
            let from = s.replicating_from.as_deref()?;
            (from != master.member.ip).then(|| Action::Replicate {
                on: s.id().to_owned(),
                master: master.id().to_owned(),
            })
        })
        .collect();
    if !stale_targets.is_empty() {
        let message = format!(
            "pointing {} replica(s) at their master's current address (they still replicated from an old one)",
            stale_targets.len()
        );
        return done(Phase::Repairing, message, stale_targets);
    }

    // 2. Finish what an earlier pass started.
    let mut open = BTreeMap::new();
    for s in seen {
        for (slot, to) in &s.me().migrating {
            open.entry(*slot)
                .or_insert_with(|| (s.id().to_owned(), to.clone()));
        }
        for (slot, from) in &s.me().importing {
            open.entry(*slot)
                .or_insert_with(|| (from.clone(), s.id().to_owned()));
        }
    }
    if let Some((&slot, (from, to))) = open.iter().next() {
        let known = |id: &str| seen.iter().any(|s| s.id() == id);
        if known(from) && known(to) {
            let message = format!(
                "finishing the move of slot {slot} from {} to {} ({} open)",
                node_name(seen, from),
                node_name(seen, to),
                open.len()
            );
            let actions = open
                .iter()
                .filter(|(_, (f, t))| known(f) && known(t))
                .map(|(&slot, (from, to))| Action::Migrate {
                    slot,
                    from: from.clone(),
                    to: to.clone(),
                })
                .collect();
            return reshard(message, actions);
        }
    }

    // 3. Only a whole cluster is changed.
    let scale_in = seen.iter().any(|s| !is_kept(s) && s.established())
        || unreachable
            .iter()
            .any(|(o, _)| usize::try_from(*o).is_ok_and(|o| o >= kept));
    let missing: Vec<&(i32, String)> = unreachable
        .iter()
        .filter(|(o, _)| usize::try_from(*o).is_ok_and(|o| o < kept))
        .collect();
    // Waiting on an incomplete cluster blocks a scale-in, and says so.
    let wait = |phase, message: String| {
        if scale_in {
            let message = format!(
                "{message}; removing nodes now could lose the only copy of a shard, so the scale-in waits until every node is up and healthy"
            );
            done(Phase::ScaleInBlocked, message, Vec::new())
        } else {
            done(phase, message, Vec::new())
        }
    };
    let established = seen.iter().any(Seen::established);
    if let Some((ordinal, reason)) = missing.first() {
        let phase = if established {
            Phase::Degraded
        } else {
            Phase::Progressing
        };
        let message = format!(
            "Redis pod {ordinal} is not reachable ({reason}); {} of {kept} pods answer",
            seen.iter().filter(|s| is_kept(s)).count(),
        );
        return wait(phase, message);
    }
    for s in seen {
        for slot_owner in s.nodes.iter().filter(|n| n.slot_count() > 0 && !n.myself) {
            if !seen.iter().any(|o| o.id() == slot_owner.id) {
                let message = format!(
                    "{} knows node {} owning {} slots, which no reachable pod is; waiting for it to come back",
                    pod(s),
                    &slot_owner.id[..slot_owner.id.len().min(8)],
                    slot_owner.slot_count()
                );
                return done(Phase::Degraded, message, Vec::new());
            }
        }
    }

    // 4. Join fresh nodes.
    let kept_nodes: Vec<&Seen> = seen.iter().filter(|s| is_kept(s)).collect();
    let fresh: Vec<&Seen> = kept_nodes
        .iter()
        .copied()
        .filter(|s| !s.established())
        .collect();
    if !fresh.is_empty() {
        let anchor = kept_nodes
            .iter()
            .copied()
            .find(|s| s.established())
            .unwrap_or(kept_nodes[0]);
        let actions: Vec<Action> = fresh
            .iter()
            .filter(|s| s.id() != anchor.id())
            .map(|s| Action::Meet {
                on: anchor.id().to_owned(),
                ip: s.member.ip.clone(),
                port: s.member.port,
            })
            .collect();
        let phase = if established {
            Phase::Scaling
        } else {
            Phase::Bootstrapping
        };
        let message = format!(
            "joining {} new node(s) to the cluster through {}",
            actions.len(),
            pod(anchor)
        );
        return done(phase, message, actions);
    }

    // Every kept node must see every other one, connected and not failing.
    for a in &kept_nodes {
        for b in &kept_nodes {
            if a.id() == b.id() {
                continue;
            }
            let healthy = a
                .peer(b.id())
                .is_some_and(|v| !v.handshake && !v.failing && v.connected);
            if !healthy {
                let message = format!(
                    "waiting for {} to see {} as healthy (cluster gossip)",
                    pod(a),
                    pod(b)
                );
                return wait(Phase::Progressing, message);
            }
        }
    }

    // ...and agree on who owns which slot: a node that sets a slot IMPORTING before it learns
    // the slot's owner never learns it (Redis skips importing slots in gossip updates).
    let owners = slot_owners(seen);
    if let Some((a, slot)) = disagreement(&kept_nodes, &owners) {
        let message = format!(
            "waiting for {} to learn the owner of slot {slot} (cluster gossip)",
            pod(a)
        );
        return done(Phase::Progressing, message, Vec::new());
    }

    // 5. Roles: the wanted masters.
    let is_doomed_id = |id: &str| seen.iter().any(|s| s.id() == id && !is_kept(s));
    let data_held = |s: &Seen| {
        shape
            .data_slots
            .iter()
            .filter(|&&slot| s.me().owns(slot))
            .count()
    };
    let mut candidates: Vec<&Seen> = kept_nodes.clone();
    candidates.sort_by_key(|s| {
        let me = s.me();
        let rank = if me.master && me.slot_count() > 0 {
            0
        } else if me.master {
            1
        } else if me.master_id.as_deref().is_some_and(is_doomed_id) {
            2
        } else {
            3
        };
        (
            rank,
            std::cmp::Reverse(data_held(s)),
            std::cmp::Reverse(me.slot_count()),
            s.member.ordinal,
        )
    });
    let masters: Vec<&Seen> = candidates.into_iter().take(shape.masters).collect();
    let promote: Vec<Action> = masters
        .iter()
        .filter(|s| s.me().is_replica())
        .map(|s| Action::Failover {
            on: s.id().to_owned(),
        })
        .collect();
    if let Some(Action::Failover { on }) = promote.first() {
        let message = format!(
            "promoting {} to master with a coordinated CLUSTER FAILOVER",
            node_name(seen, on)
        );
        return done(Phase::Scaling, message, promote);
    }

    // 6. Slots.
    let index: BTreeMap<&str, usize> = masters
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id(), i))
        .collect();
    let current: Vec<Option<usize>> = owners
        .iter()
        .map(|o| o.as_deref().and_then(|id| index.get(id).copied()))
        .collect();
    let target = placement::target(&current, masters.len(), &shape.data_slots);
    // A slot nobody claims goes to the master still holding its keys, else to its target.
    let holder = |slot: u16| {
        seen.iter()
            .filter(|s| s.established() && s.me().master)
            .filter_map(|s| Some((*s.unowned_keys.get(&slot)?, s)))
            .max_by_key(|(keys, s)| (*keys, std::cmp::Reverse(s.member.ordinal)))
            .map(|(_, s)| s.id())
    };
    let mut unowned: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    let mut held = 0;
    for (slot, owner) in owners.iter().enumerate() {
        if owner.is_none() {
            let slot = u16::try_from(slot).unwrap_or_default();
            let on = holder(slot).inspect(|_| held += 1);
            let on = on.unwrap_or_else(|| masters[target[usize::from(slot)]].id());
            unowned.entry(on).or_default().push(slot);
        }
    }
    if !unowned.is_empty() {
        let count: usize = unowned.values().map(Vec::len).sum();
        let actions = unowned
            .into_iter()
            .map(|(on, slots)| Action::AddSlots {
                on: on.to_owned(),
                slots: ranges(&slots),
            })
            .collect();
        if count == usize::from(SLOTS) {
            let message = format!(
                "assigning the {SLOTS} slots to {} masters ({} data slots balanced)",
                masters.len(),
                shape.data_slots.len()
            );
            return done(Phase::Bootstrapping, message, actions);
        }
        if let Some((ordinal, why)) = unreachable.first() {
            let message = format!(
                "{count} slot(s) no master claims; waiting for Redis pod {ordinal}, which may hold their keys ({why})"
            );
            return done(Phase::Degraded, message, Vec::new());
        }
        if let Some(message) = unsettled_epochs(seen) {
            return done(Phase::Progressing, message, Vec::new());
        }
        let message = format!(
            "assigning {count} slot(s) that no master claimed ({held} to the master still holding their keys, the rest to their target master)"
        );
        return done(Phase::Repairing, message, actions);
    }
    let is_data: BTreeSet<u16> = shape.data_slots.iter().copied().collect();
    let mut moves: Vec<(u16, String, String)> = Vec::new();
    for (slot, owner) in owners.iter().enumerate() {
        let to = masters[target[slot]].id();
        if let Some(from) = owner
            && from != to
        {
            moves.push((
                u16::try_from(slot).unwrap_or_default(),
                from.clone(),
                to.to_owned(),
            ));
        }
    }
    if !moves.is_empty() {
        let data = moves.iter().filter(|(s, _, _)| is_data.contains(s)).count();
        let message = format!(
            "moving {} slot(s) ({data} holding session data) to balance {} masters",
            moves.len(),
            masters.len()
        );
        let actions = moves
            .into_iter()
            .map(|(slot, from, to)| Action::Migrate { slot, from, to })
            .collect();
        return reshard(message, actions);
    }

    // 7. Replicas.
    let master_ids: Vec<&str> = masters.iter().map(|s| s.id()).collect();
    let mut count: BTreeMap<&str, usize> = master_ids.iter().map(|&m| (m, 0)).collect();
    let mut repoint = Vec::new();
    let mut others: Vec<&Seen> = kept_nodes
        .iter()
        .copied()
        .filter(|s| !master_ids.contains(&s.id()))
        .collect();
    others.sort_by_key(|s| s.member.ordinal);
    let mut unplaced = Vec::new();
    for s in others {
        match s.me().master_id.as_deref() {
            Some(m) if count.get(m).is_some_and(|c| *c < shape.replicas) => {
                *count.entry(m).or_default() += 1;
            }
            _ => unplaced.push(s),
        }
    }
    for s in unplaced {
        let Some((&m, c)) = count
            .iter_mut()
            .min_by_key(|(id, c)| (**c, master_ids.iter().position(|x| x == *id)))
        else {
            break;
        };
        *c += 1;
        repoint.push(Action::Replicate {
            on: s.id().to_owned(),
            master: m.to_owned(),
        });
    }
    if !repoint.is_empty() {
        let message = format!(
            "pointing {} node(s) at their masters ({} replica(s) per master)",
            repoint.len(),
            shape.replicas
        );
        return done(Phase::Scaling, message, repoint);
    }

    // 8. Remove nodes beyond the wanted size.
    let mut removal = Vec::new();
    for d in seen.iter().filter(|s| !is_kept(s)) {
        if d.established() {
            removal.push(Action::Reset {
                on: d.id().to_owned(),
            });
        }
    }
    if removal.is_empty() {
        // Forget nodes that left (reset, or their pod is gone) and no kept pod is.
        let kept_ids: BTreeSet<&str> = kept_nodes.iter().map(|s| s.id()).collect();
        for k in &kept_nodes {
            for n in k.nodes.iter().filter(|n| !n.myself && !n.handshake) {
                if !kept_ids.contains(n.id.as_str()) {
                    removal.push(Action::Forget {
                        on: k.id().to_owned(),
                        node: n.id.clone(),
                    });
                }
            }
        }
    }
    if !removal.is_empty() {
        let message = format!(
            "removing nodes beyond the {kept} wanted ({} step(s): reset, then forget)",
            removal.len()
        );
        return done(Phase::Scaling, message, removal);
    }

    // Ready once every node agrees and every replica is in sync.
    if let Some(s) = kept_nodes.iter().find(|s| !s.state_ok) {
        return done(
            Phase::Progressing,
            format!("{} does not report cluster_state:ok yet", pod(s)),
            Vec::new(),
        );
    }
    if let Some(s) = kept_nodes
        .iter()
        .find(|s| s.me().is_replica() && !s.link_up)
    {
        return done(
            Phase::Progressing,
            format!("{} is still syncing from its master", pod(s)),
            Vec::new(),
        );
    }
    // 9. Roll pods onto a new template, one at a time, on a healthy cluster: replicas first;
    // a master only after its replica took over with a coordinated failover, so no
    // acknowledged write is lost and writes pause only for the failover.
    let outdated: Vec<&Seen> = kept_nodes
        .iter()
        .copied()
        .filter(|s| s.member.outdated)
        .collect();
    if !outdated.is_empty() {
        let serving = |s: &Seen| s.me().master && s.me().slot_count() > 0;
        let left = outdated.len();
        if let Some(r) = outdated.iter().find(|s| !serving(s)) {
            let message = format!(
                "restarting {} onto the new pod template ({left} pod(s) left)",
                pod(r)
            );
            let actions = vec![Action::Restart {
                ordinal: r.member.ordinal,
            }];
            return done(Phase::RollingUpdate, message, actions);
        }
        let m = outdated[0];
        let replica = kept_nodes
            .iter()
            .find(|s| s.me().master_id.as_deref() == Some(m.id()) && s.link_up);
        let (message, action) = match replica {
            Some(r) => (
                format!(
                    "failing {} over to its replica {} before restarting it ({left} pod(s) left)",
                    pod(m),
                    pod(r)
                ),
                Action::Failover {
                    on: r.id().to_owned(),
                },
            ),
            None => (
                format!(
                    "restarting master {}, which has no replica: its slots are unavailable until it has reloaded its data ({left} pod(s) left)",
                    pod(m)
                ),
                Action::Restart {
                    ordinal: m.member.ordinal,
                },
            ),
        };
        return done(Phase::RollingUpdate, message, vec![action]);
    }

    let per_master = placement::data_per_master(&target, masters.len(), &shape.data_slots);
    let message = format!(
        "{} masters with {} replica(s) each; data slots per master {}",
        masters.len(),
        shape.replicas,
        per_master
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("/")
    );
    done(Phase::Ready, message, Vec::new())
}

/// Pods the StatefulSet must keep: the wanted size, or more while a pod beyond it is still part
/// of the cluster (established, known by a kept node, or unreachable so nobody knows yet).
fn hold(seen: &[Seen], unreachable: &[(i32, String)], kept: usize) -> usize {
    let ordinal = |o: i32| usize::try_from(o).unwrap_or_default();
    let known_by_kept = |id: &str| {
        seen.iter()
            .filter(|s| ordinal(s.member.ordinal) < kept)
            .any(|s| s.peer(id).is_some())
    };
    let busy = seen
        .iter()
        .filter(|s| ordinal(s.member.ordinal) >= kept)
        .filter(|s| s.established() || known_by_kept(s.id()))
        .map(|s| ordinal(s.member.ordinal) + 1);
    let unknown = unreachable
        .iter()
        .map(|(o, _)| ordinal(*o) + 1)
        .filter(|&o| o > kept);
    busy.chain(unknown).max().unwrap_or(kept).max(kept)
}
