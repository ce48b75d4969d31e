//! Coherence across sidecars: Redis server-assisted client-side caching, per key.
//!
//! A dedicated RESP3 connection per Redis master runs `CLIENT TRACKING ON` (Redis's default
//! mode), and this process reads session documents on it ([`TrackedConnections`], the engine's
//! [`TrackedReads`]): Redis remembers each document this process read there and pushes an
//! `invalidate` on the same connection at its next change (by any process, by a Lua script, by
//! expiry), which drops that id from the cache and from the write hints. A push comes after the
//! reply of the read it concerns, on the same connection, so a fill can never miss the report of
//! a change made after its read.
//!
//! Per key rather than `BCAST` prefixes, because of what each write costs Redis: with `BCAST`,
//! Redis compares every written key with every registered prefix (16 shards: 17 % of a create's
//! instructions) and sends every change of any document to every sidecar (16 sidecars tracking
//! made a create cost 72.8 µs of Redis CPU against 43.5 alone). Per key, a write costs a lookup
//! in Redis's tracking table and a push to each sidecar that read the document since its last
//! change. What Redis keeps instead is about 100 bytes per document a sidecar read, until the
//! document changes or `tracking-table-max-keys` makes Redis report (and forget) some at random.
//! Redis forgets a key once it reports it: a document this process wrote is reported once (to
//! this process too, if it had read it) and then no more until it is read again.
//!
//! When a tracking connection is lost (the client library reports a disconnection, a ping or a
//! read fails, or the cluster's masters change) the cache stops keeping new fills, reconnects
//! everything and flushes once tracking is back on: nothing cached before can have missed an
//! invalidation after that. In the meantime documents are read from the store and entries keep
//! being served within their maximum age, so a Redis outage does not take cached sessions down
//! with it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion,
    PushInfo, PushKind, Value,
};
use tokio::sync::{mpsc, watch};

use super::SessionCache;
use crate::metrics::Metrics;
use crate::sessions::{TrackedReads, WriteHints};
use crate::store::redis_url::{self, RedisUrl};
use crate::store::{BackendError, Keys};

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
    /// The engine's write hints, told of the changes Redis reports too (the hint of a document
    /// read here that another process changed is dropped before it is used).
    pub hints: Option<WriteHints>,
    /// Where the engine reads documents on these connections.
    pub reads: Arc<TrackedConnections>,
}

/// The tracking connections while tracking is on, for the engine's reads of documents.
pub struct TrackedConnections {
    live: RwLock<Option<Live>>,
    cache: Arc<SessionCache>,
    metrics: Metrics,
}

/// The connections of one tracking session.
struct Live {
    /// The connection of each shard's master, by shard.
    by_shard: Vec<Option<MultiplexedConnection>>,
    /// Tells the tracking loop that a connection failed.
    lost: mpsc::UnboundedSender<()>,
}

impl TrackedConnections {
    /// Connections to read on once `cache`'s tracking is on.
    #[must_use]
    pub fn new(cache: Arc<SessionCache>, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            live: RwLock::new(None),
            cache,
            metrics,
        })
    }

    fn set(&self, live: Option<Live>) {
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = live;
    }

    /// A read failed: nothing read from now on may be cached until tracking is back on.
    fn lose(&self, error: &dyn std::fmt::Display) {
        self.cache.set_tracked(false);
        let live = self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(live) = live {
            tracing::warn!(
                %error,
                "reading a session on a cache invalidation connection failed; the cache keeps \
                 nothing new until its connections are back (reconnecting now)"
            );
            let _ = live.lost.send(());
        }
    }
}

#[async_trait::async_trait]
impl TrackedReads for TrackedConnections {
    async fn document(
        &self,
        shard: u32,
        key: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        let connection = {
            let live = self
                .live
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(live) = live.as_ref() else {
                return Ok(None);
            };
            let index = usize::try_from(shard).unwrap_or(usize::MAX);
            live.by_shard.get(index).cloned().flatten()
        };
        let Some(mut conn) = connection else {
            // The cluster's map changed under the tracking (a master left): track again.
            self.lose(&format!("no tracked master serves shard {shard}"));
            return Ok(None);
        };
        let started = Instant::now();
        let result = redis::cmd("HGETALL")
            .arg(key)
            .query_async::<std::collections::HashMap<String, String>>(&mut conn)
            .await;
        self.metrics
            .redis_duration
            .with_label_values(&["read"])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(fields) => Ok(Some(fields.into_iter().collect())),
            Err(error) => {
                self.metrics.redis_errors.with_label_values(&["read"]).inc();
                self.lose(&error);
                // A Redis that does not answer here would keep the store's read waiting too;
                // anything else (a lost connection, a slot being moved) is read from the store.
                if error.is_timeout() {
                    Err(BackendError::Unavailable(format!(
                        "Redis did not answer a read of a session in time: {error}"
                    )))
                } else {
                    Ok(None)
                }
            }
        }
    }
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
            self.reads.set(None);
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
        let mut by_shard = vec![None; usize::try_from(self.shard_count).unwrap_or(0)];
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
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .query_async::<()>(&mut conn)
                .await?;
            for &shard in shards {
                if let Some(slot) = usize::try_from(shard)
                    .ok()
                    .and_then(|s| by_shard.get_mut(s))
                {
                    *slot = Some(conn.clone());
                }
            }
            connections.push(conn);
        }
        let topology = self.topology(&nodes);
        self.reads.set(Some(Live {
            by_shard,
            lost: lost_tx.clone(),
        }));
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
