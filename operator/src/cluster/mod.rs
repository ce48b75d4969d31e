//! Redis Cluster day 2: the operator forms, repairs, grows and shrinks the cluster by talking to
//! the Redis pods themselves.
//!
//! Each reconcile of a cluster-mode SessionService runs [`converge_once`]: connect to every pod
//! (by pod IP), read each node's view (`CLUSTER NODES`), decide the next step with the pure
//! [`plan::plan`], carry it out, and report where the cluster stands. Nothing is remembered
//! between passes — every decision comes from what the nodes say now — so the work is
//! level-triggered, and a killed operator resumes from the nodes' state: an interrupted slot move
//! is visible as `MIGRATING`/`IMPORTING` and is finished first; a half-done removal is finished
//! by the same rule that started it.
//!
//! - [`topology`]: `CLUSTER NODES`, parsed.
//! - [`claims`]: who claims which slot, and when the config epochs allow moving one.
//! - [`placement`]: data slots and their balanced placement.
//! - [`plan`]: the next step.
//! - [`node`]: connections and commands.

pub(crate) mod claims;
pub(crate) mod node;
pub(crate) mod placement;
pub(crate) mod plan;
pub(crate) mod topology;

use std::time::{Duration, Instant};

use futures::future::join_all;

use node::{MIGRATE_BATCH, Node, NodeError};

use crate::crd::{RedisClusterStatus, RedisMasterStatus};
pub(crate) use plan::{Action, Plan};
pub use plan::{Phase, Shape};

/// A Redis pod with an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The StatefulSet ordinal.
    pub ordinal: i32,
    /// The pod IP (what Redis itself uses on the cluster bus).
    pub ip: String,
    pub port: u16,
    /// The pod's DNS name, used instead of the IP when TLS verifies the certificate.
    pub host: Option<String>,
    /// The pod runs an older template than its StatefulSet's (a change waiting to roll).
    pub outdated: bool,
}

/// Credentials for the operator's own connections.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The user and password to authenticate with (the admin user's), if any.
    pub credentials: Option<(String, String)>,
    /// The CA certificate (PEM) when Redis speaks TLS.
    pub tls_ca: Option<Vec<u8>>,
}

/// What one pass found and did.
#[derive(Clone, Debug)]
pub struct Report {
    pub plan: Plan,
    /// Each executed step in words (for Events).
    pub done: Vec<String>,
    pub slots_moved: usize,
    pub keys_moved: usize,
    pub failovers: usize,
    pub meets: usize,
    /// The first command that failed; the next pass decides again.
    pub error: Option<String>,
    /// The pod the caller must delete now (a rolling update).
    pub restart: Option<i32>,
    /// The cluster as the nodes reported it at the start of the pass.
    pub topology: RedisClusterStatus,
}

/// Masters, their slots, data slots and replicas, and what is failing, from the view of the
/// first node that belongs to the cluster (node ids mapped to the pods that answer with them).
pub(crate) fn topology(
    seen: &[node::Seen],
    unreachable: &[(i32, String)],
    data_slots: &[u16],
) -> RedisClusterStatus {
    let ordinal = |id: &str| seen.iter().find(|s| s.id() == id).map(|s| s.member.ordinal);
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let view = seen
        .iter()
        .find(|s| s.established())
        .map(|s| s.nodes.as_slice())
        .unwrap_or_default();
    let mut masters: Vec<RedisMasterStatus> = view
        .iter()
        .filter(|n| n.master && n.slot_count() > 0)
        .map(|m| {
            let mut replicas: Vec<i32> = view
                .iter()
                .filter(|r| r.master_id.as_deref() == Some(m.id.as_str()))
                .filter_map(|r| ordinal(&r.id))
                .collect();
            replicas.sort_unstable();
            RedisMasterStatus {
                pod: ordinal(&m.id),
                node: m.id.chars().take(8).collect(),
                slots: count(m.slot_count()),
                data_slots: count(data_slots.iter().filter(|&&d| m.owns(d)).count()),
                replicas,
            }
        })
        .collect();
    masters.sort_by_key(|m| (m.pod.is_none(), m.pod));
    let failing = view
        .iter()
        .filter(|n| n.failing)
        .map(|n| format!("{} is marked failing", plan::node_name(seen, &n.id)))
        .chain(
            unreachable
                .iter()
                .map(|(o, why)| format!("pod {o} does not answer ({why})")),
        )
        .collect();
    RedisClusterStatus { masters, failing }
}

/// How long one pass may spend moving slots before it reports progress and yields.
pub(crate) const MOVE_BUDGET: Duration = Duration::from_secs(10);
/// How long a coordinated failover may take to complete.
const FAILOVER_WAIT: Duration = Duration::from_secs(15);

/// One pass: observe every member, plan, act. `absent` lists pods that exist (or should) but
/// have no address yet, with the reason.
pub async fn converge_once(
    members: &[Member],
    absent: &[(i32, String)],
    access: &Access,
    shape: &Shape,
) -> Report {
    let observed = join_all(members.iter().map(|m| Node::observe(m, access))).await;
    let mut nodes = Vec::new();
    let mut unreachable: Vec<(i32, String)> = absent.to_vec();
    for (member, result) in members.iter().zip(observed) {
        match result {
            Ok(node) => nodes.push(node),
            Err(e) => unreachable.push((member.ordinal, e.source.to_string())),
        }
    }
    nodes.sort_by_key(|n| n.seen.member.ordinal);
    count_unowned_keys(&mut nodes, &mut unreachable).await;
    unreachable.sort();
    let seen: Vec<node::Seen> = nodes.iter().map(|n| n.seen.clone()).collect();
    let plan = plan::plan(&seen, &unreachable, shape);
    let mut report = Report {
        topology: topology(&seen, &unreachable, &shape.data_slots),
        plan,
        done: Vec::new(),
        slots_moved: 0,
        keys_moved: 0,
        failovers: 0,
        meets: 0,
        error: None,
        restart: None,
    };
    let started = Instant::now();
    for action in report.plan.actions.clone() {
        if matches!(action, Action::Migrate { .. }) && started.elapsed() > MOVE_BUDGET {
            break;
        }
        if let Action::Restart { ordinal } = action {
            report.restart = Some(ordinal);
            continue;
        }
        match execute(&mut nodes, &action, access).await {
            Ok(keys) => {
                match action {
                    Action::Migrate { .. } => {
                        report.slots_moved += 1;
                        report.keys_moved += keys;
                    }
                    Action::Failover { .. } => report.failovers += 1,
                    Action::Meet { .. } => report.meets += 1,
                    _ => {}
                }
                report.done.push(describe(&nodes, &action));
            }
            Err(e) => {
                report.error = Some(e.to_string());
                break;
            }
        }
    }
    report
}

/// Runs [`converge_once`] until the cluster is ready or `timeout` passes; returns the last
/// report. For tests and tools; the operator runs one pass per reconcile.
pub async fn converge(
    members: &[Member],
    access: &Access,
    shape: &Shape,
    timeout: Duration,
) -> Report {
    let deadline = Instant::now() + timeout;
    loop {
        let report = converge_once(members, &[], access, shape).await;
        let idle = report.plan.actions.is_empty();
        if report.plan.phase == Phase::Ready || Instant::now() > deadline {
            return report;
        }
        if idle || report.error.is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Where the keys of slots that no node claims are, so the plan gives each such slot to the
/// master still holding its keys rather than to an empty one (which would hide them). A slot is
/// left unclaimed by a move cut short, or by Redis itself: a master that loses a race of config
/// epochs gives up a slot it has just imported (see `claims`). Counted on the cluster's masters
/// only, and only when a formed cluster has such slots and every pod answers (the plan waits
/// otherwise: a pod that does not answer may hold them); a master that cannot be asked is
/// reported unreachable, so the plan waits instead of guessing.
async fn count_unowned_keys(nodes: &mut Vec<Node>, unreachable: &mut Vec<(i32, String)>) {
    if !unreachable.is_empty() {
        return;
    }
    let seen: Vec<node::Seen> = nodes.iter().map(|n| n.seen.clone()).collect();
    let unowned: Vec<u16> = (0..topology::SLOTS)
        .zip(claims::slot_owners(&seen))
        .filter_map(|(slot, owner)| owner.is_none().then_some(slot))
        .collect();
    if unowned.is_empty() || unowned.len() == usize::from(topology::SLOTS) {
        return;
    }
    let mut failed = Vec::new();
    let masters = nodes
        .iter_mut()
        .filter(|n| n.seen.established() && n.seen.me().master);
    for node in masters {
        if let Err(e) = node.count_keys(&unowned).await {
            failed.push((
                node.seen.member.ordinal,
                format!("{} failed: {}", e.command, e.source),
            ));
        }
    }
    nodes.retain(|n| !failed.iter().any(|(o, _)| *o == n.seen.member.ordinal));
    unreachable.extend(failed);
}

fn position(nodes: &[Node], id: &str) -> Option<usize> {
    nodes.iter().position(|n| n.seen.id() == id)
}

fn describe(nodes: &[Node], action: &Action) -> String {
    let p = |id: &str| plan::node_name(nodes.iter().map(|n| &n.seen), id);
    match action {
        Action::Meet { on, ip, port } => format!("{} met {ip}:{port}", p(on)),
        Action::AddSlots { on, slots } => {
            let n: usize = slots.iter().map(|(a, b)| usize::from(b - a) + 1).sum();
            format!("{} took {n} unowned slots", p(on))
        }
        Action::Migrate { slot, from, to } => {
            format!("slot {slot} moved from {} to {}", p(from), p(to))
        }
        Action::Failover { on } => format!("{} took over as master (CLUSTER FAILOVER)", p(on)),
        Action::Replicate { on, master } => format!("{} now replicates {}", p(on), p(master)),
        Action::Reset { on } => format!("{} left the cluster (CLUSTER RESET)", p(on)),
        Action::Forget { on, node } => format!("{} forgot {}", p(on), p(node)),
        Action::Restart { ordinal } => format!("pod {ordinal} restarted"),
    }
}

/// An error that means the step is already done (a repeated command after an interruption).
fn already_done(e: &NodeError, phrases: &[&str]) -> bool {
    let text = e.source.to_string();
    phrases.iter().any(|p| text.contains(p))
}

fn node_mut<'a>(nodes: &'a mut [Node], id: &str) -> Result<&'a mut Node, NodeError> {
    let i = position(nodes, id).ok_or_else(|| NodeError {
        pod: -1,
        ip: String::new(),
        port: 0,
        command: format!("finding node {id}"),
        source: redis::RedisError::from((redis::ErrorKind::Client, "node not reachable")),
    })?;
    Ok(&mut nodes[i])
}

/// Carries out one action; returns the keys moved (for a migration).
async fn execute(nodes: &mut [Node], action: &Action, access: &Access) -> Result<usize, NodeError> {
    match action {
        Action::Meet { on, ip, port } => {
            let port = port.to_string();
            node_mut(nodes, on)?.cluster(&["MEET", ip, &port]).await?;
        }
        Action::AddSlots { on, slots } => node_mut(nodes, on)?.claim_slots(slots).await?,
        Action::Migrate { slot, from, to } => return migrate(nodes, *slot, from, to, access).await,
        Action::Failover { on } => {
            let node = node_mut(nodes, on)?;
            node.cluster(&["FAILOVER"]).await?;
            let deadline = Instant::now() + FAILOVER_WAIT;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                node.refresh().await?;
                if node.seen.me().master {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(NodeError {
                        pod: node.seen.member.ordinal,
                        ip: node.seen.member.ip.clone(),
                        port: node.seen.member.port,
                        command: "CLUSTER FAILOVER".to_owned(),
                        source: redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "the replica did not take over within 15 s",
                        )),
                    });
                }
            }
        }
        Action::Replicate { on, master } => {
            node_mut(nodes, on)?.cluster(&["REPLICATE", master]).await?;
        }
        Action::Reset { on } => node_mut(nodes, on)?.cluster(&["RESET", "SOFT"]).await?,
        Action::Restart { .. } => {}
        Action::Forget { on, node } => {
            let result = node_mut(nodes, on)?.cluster(&["FORGET", node]).await;
            if let Err(e) = result
                && !already_done(&e, &["Unknown node"])
            {
                return Err(e);
            }
        }
    }
    Ok(0)
}

/// Moves one slot with the live-migration protocol: the target imports, the source migrates
/// (clients get `ASK` for keys already moved), keys go over in atomic batches, then both sides
/// and every other master learn the new owner. Each step is safe to repeat.
async fn migrate(
    nodes: &mut [Node],
    slot: u16,
    from: &str,
    to: &str,
    access: &Access,
) -> Result<usize, NodeError> {
    let slot_arg = slot.to_string();
    let target = node_mut(nodes, to)?;
    let target_member = target.seen.member.clone();
    let mut moved = 0;
    // An importing node ignores gossip about that slot: one that set IMPORTING before it knew
    // the owner (an earlier, interrupted pass) is told the owner first.
    let unaware =
        !target.seen.me().owns(slot) && !target.seen.peer(from).is_some_and(|v| v.owns(slot));
    if unaware && position(nodes, from).is_some_and(|i| nodes[i].seen.me().owns(slot)) {
        node_mut(nodes, to)?
            .cluster(&["SETSLOT", &slot_arg, "NODE", from])
            .await?;
    }
    let target = node_mut(nodes, to)?;
    let importing = target
        .cluster(&["SETSLOT", &slot_arg, "IMPORTING", from])
        .await;
    let target_owns = match importing {
        Ok(()) => false,
        Err(e) if already_done(&e, &["already the owner"]) => true,
        Err(e) => return Err(e),
    };
    if !target_owns {
        let source = node_mut(nodes, from)?;
        match source
            .cluster(&["SETSLOT", &slot_arg, "MIGRATING", to])
            .await
        {
            Ok(()) => {}
            Err(e) if already_done(&e, &["not the owner"]) => {}
            Err(e) => return Err(e),
        }
        loop {
            let keys = source.keys_in_slot(slot, MIGRATE_BATCH).await?;
            if keys.is_empty() {
                break;
            }
            source.migrate(&target_member, access, &keys).await?;
            moved += keys.len();
        }
    }
    node_mut(nodes, to)?
        .cluster(&["SETSLOT", &slot_arg, "NODE", to])
        .await?;
    node_mut(nodes, from)?
        .cluster(&["SETSLOT", &slot_arg, "NODE", to])
        .await?;
    // The other masters learn it by gossip too; telling them spares clients a redirect.
    for other in nodes.iter_mut() {
        let me = other.seen.me();
        if me.master && me.id != from && me.id != to {
            let _ = other.cluster(&["SETSLOT", &slot_arg, "NODE", to]).await;
        }
    }
    Ok(moved)
}
