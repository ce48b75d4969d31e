//! The Redis Cluster connection of the store: the client library's cluster connection, rebuilt
//! from the seed nodes when it has lost every node.
//!
//! After a full restart of the cluster on new addresses, the library's connection can end up
//! with an empty node map: every call then fails with "no connections found" and the library
//! never goes back to its seed nodes (seen in the day-2 load test: one of two sidecars answered
//! 503 for good while the other recovered). Rebuilding the connection from the client — which
//! resolves the seeds' DNS names again — heals it on the next call.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisFuture, RedisResult, Value};

use super::redis::Topology;

/// A cluster connection that replaces itself when it has lost every node. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    client: ClusterClient,
    conn: Arc<RwLock<ClusterConnection>>,
    /// One rebuild at a time; the others keep failing fast meanwhile.
    rebuilding: Arc<tokio::sync::Mutex<()>>,
}

impl ClusterHandle {
    /// Connects through `client`'s seed nodes.
    ///
    /// # Errors
    /// When no seed node answers.
    pub async fn connect(client: ClusterClient) -> RedisResult<Self> {
        let conn = client.get_async_connection().await?;
        Ok(Self {
            client,
            conn: Arc::new(RwLock::new(conn)),
            rebuilding: Arc::default(),
        })
    }

    /// The current connection (a handle; the lock is never held across an await).
    pub(crate) fn current(&self) -> ClusterConnection {
        self.conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the connection after `error`, when it says the connection knows no node.
    async fn heal(&self, error: &redis::RedisError) {
        if error.kind() != ErrorKind::ClusterConnectionNotFound {
            return;
        }
        let Ok(_only_one) = self.rebuilding.try_lock() else {
            return;
        };
        match self.client.get_async_connection().await {
            Ok(fresh) => {
                *self
                    .conn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                tracing::warn!(
                    "rebuilt the Redis Cluster connection from the seed nodes: it had lost every node"
                );
            }
            Err(e) => tracing::debug!(error = %e, "rebuilding the Redis Cluster connection failed"),
        }
    }
}

impl ConnectionLike for ClusterHandle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.current().req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.heal(e).await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .current()
                .req_packed_commands(pipeline, offset, count)
                .await;
            if let Err(e) = &result {
                self.heal(e).await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[async_trait]
impl Topology for ClusterHandle {
    async fn on_master_of(&mut self, key: &str, cmd: redis::Cmd) -> redis::RedisResult<Value> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
        let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
        // A routed command hands server errors back as values; make them errors again.
        self.current()
            .route_command(
                cmd,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
            )
            .await?
            .extract_error()
    }

    async fn group_by_master(&mut self, keys: &[&str]) -> redis::RedisResult<Vec<Vec<usize>>> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let slots = self
            .current()
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let masters = super::redis::slot_masters(slots);
        let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = super::keys::slot(key);
            let master = masters
                .iter()
                .find(|(a, b, _, _)| (*a..=*b).contains(&slot))
                .map_or_else(|| format!("slot {slot}"), |(_, _, h, p)| format!("{h}:{p}"));
            groups.entry(master).or_default().push(i);
        }
        Ok(groups.into_values().collect())
    }
}
