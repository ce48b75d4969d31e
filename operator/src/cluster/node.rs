//! Talking to one Redis node: what it reports (`CLUSTER NODES`, `CLUSTER INFO`, replication),
//! and the cluster commands the operator sends it.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, RedisError};

use super::topology::{NodeLine, parse_nodes, ranges};
use super::{Access, Member};

/// Connecting to a node; a pod that does not answer within this is reported unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One command; `MIGRATE` of a batch has its own budget on the server side.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Redis may take to copy one batch of keys to the importing node.
pub(crate) const MIGRATE_TIMEOUT_MS: u64 = 5_000;
/// Keys per `MIGRATE`. While a slot moves, every write that creates keys in it is refused
/// with `TRYAGAIN` (clients retry), because the shard's shared keys (outbox, expiry queue) and
/// the new keys are on different sides; so a slot must move in as few calls as possible. One
/// call of this many session keys blocks the two masters for milliseconds, not seconds.
pub(crate) const MIGRATE_BATCH: usize = 10_000;

/// What one node said about the cluster.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub member: Member,
    /// Every node this one knows, itself included (`myself`).
    pub nodes: Vec<NodeLine>,
    /// `cluster_state:ok` from this node's point of view.
    pub state_ok: bool,
    /// A replica's replication link to its master is up.
    pub link_up: bool,
    /// The address a replica replicates from (`master_host`). Redis updates it when its master
    /// talks to it from a new address, but not when it learns the address from gossip, so
    /// after a restart it can point at a master's old IP while the cluster view is current.
    pub replicating_from: Option<String>,
    /// `cluster_current_epoch`: the highest epoch this node has heard of.
    pub current_epoch: u64,
    /// Keys this node holds in slots that no node claims, by slot (counted only when a formed
    /// cluster has such slots: see [`Node::count_keys`]).
    pub unowned_keys: BTreeMap<u16, u64>,
}

impl Seen {
    /// This node's own line (`refresh` refuses a reply without one).
    pub(crate) fn me(&self) -> &NodeLine {
        self.nodes
            .iter()
            .find(|n| n.myself)
            .unwrap_or(&self.nodes[0])
    }

    /// This node's view of node `id`.
    pub(crate) fn peer(&self, id: &str) -> Option<&NodeLine> {
        self.nodes.iter().find(|n| n.id == id && !n.myself)
    }

    pub(crate) fn id(&self) -> &str {
        &self.me().id
    }

    /// Knows other nodes, owns slots or replicates: it belongs to a cluster. A fresh node
    /// (or one the operator reset) knows only itself.
    pub(crate) fn established(&self) -> bool {
        self.nodes.len() > 1 || self.me().slot_count() > 0 || self.me().is_replica()
    }
}

/// A connected node.
pub(crate) struct Node {
    pub seen: Seen,
    conn: MultiplexedConnection,
}

/// A failed command, with the node it went to.
#[derive(Debug, thiserror::Error)]
#[error("Redis pod {pod} ({ip}:{port}): {command} failed: {source}")]
pub(crate) struct NodeError {
    pub pod: i32,
    pub ip: String,
    pub port: u16,
    pub command: String,
    pub source: RedisError,
}

impl Node {
    /// Connects to `member` and reads its view of the cluster.
    pub(crate) async fn observe(member: &Member, access: &Access) -> Result<Self, NodeError> {
        let fail = |command: &str, source| NodeError {
            pod: member.ordinal,
            ip: member.ip.clone(),
            port: member.port,
            command: command.to_owned(),
            source,
        };
        let conn = connect(member, access)
            .await
            .map_err(|e| fail("connect", e))?;
        let mut node = Self {
            seen: Seen {
                member: member.clone(),
                nodes: Vec::new(),
                state_ok: false,
                link_up: false,
                replicating_from: None,
                current_epoch: 0,
                unowned_keys: BTreeMap::new(),
            },
            conn,
        };
        node.refresh().await?;
        Ok(node)
    }

    /// Reads the node's view again.
    pub(crate) async fn refresh(&mut self) -> Result<(), NodeError> {
        let text: String = self.run(redis::cmd("CLUSTER").arg("NODES")).await?;
        let nodes = parse_nodes(&text)
            .ok()
            .filter(|nodes| nodes.iter().any(|n| n.myself))
            .ok_or_else(|| {
                let e = RedisError::from((redis::ErrorKind::Parse, "unreadable reply", text));
                self.error("CLUSTER NODES", e)
            })?;
        let info: String = self.run(redis::cmd("CLUSTER").arg("INFO")).await?;
        let replication: String = self.run(redis::cmd("INFO").arg("replication")).await?;
        self.seen = Seen {
            member: self.seen.member.clone(),
            nodes,
            state_ok: info.lines().any(|l| l.trim() == "cluster_state:ok"),
            link_up: replication
                .lines()
                .any(|l| l.trim() == "master_link_status:up"),
            replicating_from: replication
                .lines()
                .find_map(|l| l.trim().strip_prefix("master_host:"))
                .map(str::to_owned),
            current_epoch: info
                .lines()
                .find_map(|l| l.trim().strip_prefix("cluster_current_epoch:"))
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
            unowned_keys: BTreeMap::new(),
        };
        Ok(())
    }

    fn error(&self, command: &str, source: RedisError) -> NodeError {
        NodeError {
            pod: self.seen.member.ordinal,
            ip: self.seen.member.ip.clone(),
            port: self.seen.member.port,
            command: command.to_owned(),
            source,
        }
    }

    /// Runs one command on this node.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
    ) -> Result<T, NodeError> {
        cmd.query_async(&mut self.conn).await.map_err(|e| {
            let name = cmd
                .args_iter()
                .take(2)
                .filter_map(|a| match a {
                    redis::Arg::Simple(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(" ");
            self.error(&name, e)
        })
    }

    /// `CLUSTER <args…>`, expecting OK.
    pub(crate) async fn cluster(&mut self, args: &[&str]) -> Result<(), NodeError> {
        let mut cmd = redis::cmd("CLUSTER");
        for a in args {
            cmd.arg(*a);
        }
        self.run::<redis::Value>(&cmd).await.map(|_| ())
    }

    /// Counts this node's keys in each of `slots` into `seen.unowned_keys` (`DBSIZE` first: an
    /// empty node needs no count per slot).
    pub(crate) async fn count_keys(&mut self, slots: &[u16]) -> Result<(), NodeError> {
        let size: u64 = self.run(&redis::cmd("DBSIZE")).await?;
        let mut counts = BTreeMap::new();
        if size > 0 {
            let mut pipe = redis::pipe();
            for &slot in slots {
                pipe.cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot);
            }
            let replies: Vec<u64> = pipe
                .query_async(&mut self.conn)
                .await
                .map_err(|e| self.error("CLUSTER COUNTKEYSINSLOT", e))?;
            counts = slots
                .iter()
                .copied()
                .zip(replies)
                .filter(|&(_, keys)| keys > 0)
                .collect();
        }
        self.seen.unowned_keys = counts;
        Ok(())
    }

    /// Makes this node the owner of `slots` in one `MULTI`: it first forgets the owner it
    /// believes some of them have (`DELSLOTSRANGE`, as `redis-cli --cluster fix` does), then
    /// claims them all and takes a new config epoch (`BUMPEPOCH`), so that its claim outranks
    /// whatever owner other nodes still remember; otherwise they would answer with an `UPDATE`
    /// that takes the slots back and deletes their keys here.
    pub(crate) async fn claim_slots(&mut self, slots: &[(u16, u16)]) -> Result<(), NodeError> {
        let me = self.seen.id().to_owned();
        let believed_elsewhere: Vec<u16> = slots
            .iter()
            .flat_map(|&(a, b)| a..=b)
            .filter(|&slot| self.seen.nodes.iter().any(|n| n.id != me && n.owns(slot)))
            .collect();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (a, b) in ranges(&believed_elsewhere) {
            pipe.cmd("CLUSTER")
                .arg("DELSLOTSRANGE")
                .arg(a)
                .arg(b)
                .ignore();
        }
        let add = pipe.cmd("CLUSTER").arg("ADDSLOTSRANGE");
        for &(a, b) in slots {
            add.arg(a).arg(b);
        }
        add.ignore();
        pipe.cmd("CLUSTER").arg("BUMPEPOCH").ignore();
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| self.error("CLUSTER ADDSLOTSRANGE", e))
    }

    /// Keys of `slot`, at most `count`.
    pub(crate) async fn keys_in_slot(
        &mut self,
        slot: u16,
        count: usize,
    ) -> Result<Vec<Vec<u8>>, NodeError> {
        self.run(
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(count),
        )
        .await
    }

    /// Moves `keys` to `to` atomically per batch (`REPLACE`: a copy left on the target by an
    /// interrupted earlier `MIGRATE` is older than the source's).
    pub(crate) async fn migrate(
        &mut self,
        to: &Member,
        access: &Access,
        keys: &[Vec<u8>],
    ) -> Result<(), NodeError> {
        let mut cmd = redis::cmd("MIGRATE");
        cmd.arg(&to.ip)
            .arg(to.port)
            .arg("")
            .arg(0)
            .arg(MIGRATE_TIMEOUT_MS)
            .arg("REPLACE");
        if let Some((user, password)) = &access.credentials {
            cmd.arg("AUTH2").arg(user).arg(password);
        }
        cmd.arg("KEYS");
        for k in keys {
            cmd.arg(k.as_slice());
        }
        self.run::<redis::Value>(&cmd).await.map(|_| ())
    }
}

/// A connection to `member` with `access`'s credentials.
pub(crate) async fn connect(
    member: &Member,
    access: &Access,
) -> Result<MultiplexedConnection, RedisError> {
    // TLS verifies the certificate against the pod's DNS name; plain TCP needs no DNS.
    let host = match (&access.tls_ca, &member.host) {
        (Some(_), Some(host)) => host.clone(),
        _ if member.ip.contains(':') => format!("[{}]", member.ip),
        _ => member.ip.clone(),
    };
    let scheme = if access.tls_ca.is_some() {
        "rediss"
    } else {
        "redis"
    };
    let auth = access
        .credentials
        .as_ref()
        .map(|(user, password)| format!("{user}:{password}@"))
        .unwrap_or_default();
    let url = format!("{scheme}://{auth}{host}:{}", member.port);
    let client = match &access.tls_ca {
        Some(ca) => Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        )?,
        None => Client::open(url.as_str())?,
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
