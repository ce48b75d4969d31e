//! Coherence across sidecars: Redis server-assisted client-side caching.
//!
//! A dedicated RESP3 connection per Redis master runs `CLIENT TRACKING ON BCAST` with one
//! prefix per shard's session documents (`P:{S}:s:`) — on each master only the prefixes of the
//! shards it serves — so Redis pushes an `invalidate` for every change of any session document
//! (by any process, by a Lua script, by expiry) and we drop that id from the cache. BCAST needs
//! no read on the tracking connection itself.
//!
//! Only the master's own shards, because Redis checks every written key against every BCAST
//! prefix registered on it, one by one: measured with `redis-benchmark` (pipelined `SET`), 16
//! prefixes cost 4 % of a master's write throughput, 64 cost half of it and 1 024 cost 95 %. A
//! master serving ⌈shards / masters⌉ shards pays for those only. When a slot moves, the map
//! changes and tracking restarts (with a flush, below) within [`CHECK_INTERVAL`]; changes made
//! on the new master during the move itself reach this cache by then, and never later than the
//! entries' maximum age.
//!
//! When a tracking connection is lost (the client library reports a disconnection, a ping fails,
//! or the cluster's masters change) the cache stops keeping new fills, reconnects everything and
//! flushes once tracking is back on: nothing cached before can have missed an invalidation
//! after that. In the meantime entries keep being served within their maximum age, so a Redis
//! outage does not take cached sessions down with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion,
    PushInfo, PushKind, Value,
};
use tokio::sync::{mpsc, watch};

use super::SessionCache;
use crate::sessions::WriteHints;
use crate::store::Keys;
use crate::store::redis_url::{self, RedisUrl};

/// How often the connections are pinged and the cluster's masters re-read.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest pause between reconnection attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Time allowed to connect and to answer a command on a tracking connection.
const TIMEOUT: Duration = Duration::from_millis(500);

/// Where to track.
#[derive(Clone)]
pub struct Tracking {
    /// The Redis URL(s) (comma-separated seeds in cluster mode); a new one (new credentials)
    /// restarts tracking with it.
    pub url: RedisUrl,
    pub cluster: bool,
    pub keys: Keys,
    pub shard_count: u32,
    /// The engine's write hints, told of every change too (a hint another process made stale
    /// is dropped before it is used).
    pub hints: Option<WriteHints>,
}

/// The session id in a session-document key `P:{S}:s:<id>`.
fn session_id_of(key: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(key).ok()?;
    let after_tag = &key[key.find('}')? + 1..];
    after_tag.strip_prefix(":s:")
}

/// Applies one push from Redis; returns `false` when the connection is gone.
fn apply_push(cache: &SessionCache, hints: Option<&WriteHints>, push: &PushInfo) -> bool {
    match push.kind {
        PushKind::Invalidate => {
            match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        if let Value::BulkString(k) = key
                            && let Some(id) = session_id_of(k)
                        {
                            cache.invalidate(id);
                            if let Some(hints) = hints {
                                hints.changed_elsewhere(id);
                            }
                        }
                    }
                }
                // A nil list means "everything" (FLUSHALL, or the tracking table overflowed).
                _ => cache.flush(),
            }
            true
        }
        PushKind::Disconnection => false,
        _ => true,
    }
}

fn resp3(info: ConnectionInfo) -> ConnectionInfo {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.set_redis_settings(settings)
}

/// The same connection settings pointed at another node.
fn at(info: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    info.clone().set_addr(addr)
}

/// Each node to track with the shards whose session documents it serves.
type Nodes = Vec<(ConnectionInfo, Vec<u32>)>;

impl Tracking {
    fn prefixes(&self, shards: &[u32]) -> Vec<String> {
        shards.iter().map(|&s| self.keys.session(s, "")).collect()
    }

    fn seeds(url: &str) -> redis::RedisResult<Vec<ConnectionInfo>> {
        url.split(',')
            .map(|u| u.trim().into_connection_info().map(resp3))
            .collect()
    }

    /// The nodes to track: the one server with every shard, or every master of the cluster with
    /// the shards it serves (a master serving none is not tracked).
    async fn nodes(&self, url: &str) -> redis::RedisResult<Nodes> {
        let seeds = Self::seeds(url)?;
        let all: Vec<u32> = (0..self.shard_count).collect();
        if !self.cluster {
            return Ok(seeds.into_iter().map(|s| (s, all.clone())).collect());
        }
        let mut last_error = None;
        for seed in &seeds {
            match masters(seed).await {
                Ok(found) => {
                    let mut nodes = Nodes::new();
                    for ((host, port), ranges) in found {
                        let shards: Vec<u32> = all
                            .iter()
                            .copied()
                            .filter(|&s| {
                                let slot = crate::store::keys::slot(&self.keys.session(s, ""));
                                ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot))
                            })
                            .collect();
                        if !shards.is_empty() {
                            nodes.push((at(seed, &host, port), shards));
                        }
                    }
                    return Ok(nodes);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "no cluster seed"))
        }))
    }

    /// Runs until shutdown, keeping `cache` coherent.
    pub async fn run(self, cache: Arc<SessionCache>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        let mut url = self.url.clone();
        while !crate::stopping(&shutdown) {
            match self.track(&cache, &mut shutdown, &mut url).await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(error) => tracing::warn!(%error, "cache invalidation connection failed"),
            }
            cache.set_tracked(false);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects and enables tracking on every node, then watches until something is lost.
    async fn track(
        &self,
        cache: &Arc<SessionCache>,
        shutdown: &mut watch::Receiver<bool>,
        url: &mut RedisUrl,
    ) -> redis::RedisResult<()> {
        let current = url.borrow_and_update().clone();
        let nodes = self.nodes(&current).await?;
        let (lost_tx, mut lost_rx) = mpsc::unbounded_channel::<()>();
        let mut connections: Vec<MultiplexedConnection> = Vec::new();
        for (node, shards) in &nodes {
            let (cache, hints, lost) = (Arc::clone(cache), self.hints.clone(), lost_tx.clone());
            let sender = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                if !apply_push(&cache, hints.as_ref(), &push) {
                    let _ = lost.send(());
                }
                Ok(())
            };
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT))
                .set_push_sender(sender);
            let mut conn = redis::Client::open(node.clone())?
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("TRACKING").arg("ON").arg("BCAST");
            for prefix in self.prefixes(shards) {
                cmd.arg("PREFIX").arg(prefix);
            }
            cmd.query_async::<()>(&mut conn).await?;
            connections.push(conn);
        }
        let topology = self.topology(&nodes);
        cache.set_tracked(true);
        tracing::info!(nodes = nodes.len(), "cache invalidation tracking on");
        loop {
            tokio::select! {
                _ = lost_rx.recv() => return Err(redis::RedisError::from((redis::ErrorKind::Io, "tracking connection lost"))),
                _ = shutdown.changed() => return Ok(()),
                _ = redis_url::next(url) => return Err(redis::RedisError::from((redis::ErrorKind::Io, "the Redis URL changed: tracking again with the new credentials"))),
                () = tokio::time::sleep(CHECK_INTERVAL) => {
                    for conn in &mut connections {
                        redis::cmd("PING").query_async::<()>(conn).await?;
                    }
                    if self.cluster && self.topology(&self.nodes(&current).await?) != topology {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "cluster slots moved between masters")));
                    }
                }
            }
        }
    }

    fn topology(&self, nodes: &Nodes) -> BTreeMap<String, Vec<u32>> {
        nodes
            .iter()
            .map(|(n, shards)| (n.addr().to_string(), shards.clone()))
            .collect()
    }
}

/// The masters of a cluster with the slot ranges each serves, from `CLUSTER SLOTS` on one node.
async fn masters(
    seed: &ConnectionInfo,
) -> redis::RedisResult<BTreeMap<(String, u16), Vec<(u16, u16)>>> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let mut conn = redis::Client::open(seed.clone())?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    let mut out: BTreeMap<(String, u16), Vec<(u16, u16)>> = BTreeMap::new();
    for (first, last, host, port) in crate::store::redis::slot_masters(slots) {
        // An empty host means "the address you used to reach me".
        let host = if host.is_empty() {
            seed.addr()
                .to_string()
                .rsplit_once(':')
                .map_or(host, |(h, _)| h.to_owned())
        } else {
            host
        };
        out.entry((host, port)).or_default().push((first, last));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::session_id_of;

    #[test]
    fn session_ids_come_out_of_document_keys_only() {
        assert_eq!(session_id_of(b"sess:{3}:s:sess_3_abc"), Some("sess_3_abc"));
        assert_eq!(session_id_of(b"sess:{3}:u:alice"), None);
        assert_eq!(session_id_of(b"no-tag"), None);
    }
}
