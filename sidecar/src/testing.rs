//! What the integration tests drive directly and nothing else outside this crate uses: the
//! engine and its store contract without HTTP, the background work one pass at a time, the
//! router without a socket, a clock that moves only when told to, and the limits the tests
//! check against, and free ports for the test servers (the operator's tests use those too).
//! Every other module is private; the binary needs only [`crate::run`] and [`crate::config`],
//! the operator only [`crate::contract`].

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

pub use crate::api::asyncapi::document;
pub use crate::api::auth::idp::REQUEST_WAIT;
pub use crate::api::auth::{Auth, IdentityProvider, IdpConfig};
pub use crate::api::server::{MAX_IN_FLIGHT, REQUEST_TIMEOUT};
pub use crate::api::{App, AppState, app, router_and_doc};
pub use crate::cache::tracking::{TrackedConnections, Tracking};
pub use crate::cache::{CacheConfig, SessionCache};
pub use crate::clock::{Clock, SystemClock};
pub use crate::events::dead_letters::{FAIL_ATTEMPTS, FAIL_FOR_MS, Reason, Verdict};
pub use crate::events::{consume_once, relay_once, sweep_once};
pub use crate::ids::{new_session_id, parse_session_id, shard_of};
pub use crate::metrics::{Metrics, REQUEST_BUCKETS};
pub use crate::model::event::Envelope;
pub use crate::model::input::CreateSession;
pub use crate::model::session::{Record, Status};
pub use crate::sessions::{CapPolicy, Ctx, Policy, Sessions, WriteHints};
pub use crate::store::breaker::Breaker;
pub use crate::store::cluster::ClusterHandle;
pub use crate::store::memory::MemoryBackend;
pub use crate::store::redis::{ReplicaWait, Topology, connect, connect_with};
pub use crate::store::redis_url::fixed;
pub use crate::store::{
    Append, Backend, BackendError, Commit, CommitOutcome, DocKey, Guard, KeyAt, NamedBy, Probe,
    ReadOp, Reply, SessionEvent, StreamEntry, WriteOp,
};

/// The engine's RFC 7386 merge of `patch` into `target`, as it writes it.
#[must_use]
pub fn merged(
    target: &serde_json::Map<String, serde_json::Value>,
    patch: &serde_json::Map<String, serde_json::Value>,
) -> String {
    serde_json::Value::Object(crate::sessions::merge(target, patch)).to_string()
}

/// The hash fields that store `record`.
#[must_use]
pub fn stored_fields(record: &Record) -> Vec<(String, String)> {
    record.to_fields()
}

/// `record` as the API shows it (and as events carry it).
#[must_use]
pub fn api_form(record: &Record) -> serde_json::Value {
    serde_json::to_value(record.view()).unwrap_or_default()
}

/// A clock that only moves when told to: tests move time without sleeping (against real Redis
/// too, since the engine, not Redis, decides what has expired).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `ms`.
    #[must_use]
    pub fn new(ms: i64) -> Self {
        Self(AtomicI64::new(ms))
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Ports this test process has handed out, cluster bus ports included.
static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Claims every port in `ports` for this test process, or none of them when one is taken.
fn claim(ports: &[u16]) -> bool {
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if ports.iter().any(|port| given.contains(port)) {
        return false;
    }
    given.extend(ports);
    true
}

/// A loopback port the kernel calls free right now (bound and released).
#[allow(clippy::expect_used)] // test support: without a loopback port no test can run
fn unbound_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A free loopback port (bound and released), never one this test process handed out before.
/// Tests run in parallel threads: two of them given the same port would start two servers on
/// it, the second would fail to bind, and its test would talk to the first test's server.
///
/// # Panics
/// When no loopback port can be bound at all.
#[must_use]
pub fn free_port() -> u16 {
    loop {
        let port = unbound_port();
        if claim(&[port]) {
            return port;
        }
    }
}

/// A free loopback port for a Redis Cluster node whose bus port (the port plus 10 000) is free
/// too: a port above 55 535 has no bus port, and Redis refuses to start on it. Both ports are
/// claimed, so no other test is given the bus port (a standalone Redis started there would
/// find it taken, and its test would talk to this node's bus).
///
/// # Panics
/// When no loopback port can be bound at all.
#[must_use]
pub fn free_cluster_port() -> u16 {
    loop {
        let port = unbound_port();
        if port <= 55_535
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
            && claim(&[port, port + 10_000])
        {
            return port;
        }
    }
}
