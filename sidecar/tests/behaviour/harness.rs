//! Test harness: a real `redis-server` per test on a free loopback port, the app driven
//! in-process, a manual clock, and helpers to read the outbox and the events stream.
//!
//! Every Redis runs with the ACL file the operator renders: the app connects as the sidecar
//! user (as the server user when it authenticates like the session service), and the
//! background work and the raw stream reads run as the server user, as in production.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use session_sidecar::contract::acl::Role;
use session_sidecar::testing::Auth;
use session_sidecar::testing::Breaker;
use session_sidecar::testing::Envelope;
use session_sidecar::testing::MemoryBackend;
use session_sidecar::testing::Metrics;
use session_sidecar::testing::{App, AppState, app};
use session_sidecar::testing::{Backend, Commit, ReadOp, Reply, WriteOp};
use session_sidecar::testing::{CacheConfig, SessionCache};
use session_sidecar::testing::{CapPolicy, Policy, Sessions};
use session_sidecar::testing::{Clock, ManualClock, SystemClock};
use session_sidecar::testing::{TrackedConnections, Tracking};
use tower::ServiceExt;

pub use crate::common::{RedisCluster, RedisServer, TEST_PREFIX};

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Redis,
}

/// Runs each listed `async fn(Kind)` once per backend, as `memory::name` and `redis::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::harness::Kind::Memory).await } )*
        }
        mod redis {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::harness::Kind::Redis).await } )*
        }
    };
}

/// Policies for tests: small numbers, no rate limit unless a test sets one.
pub fn test_policy() -> Policy {
    Policy {
        shard_count: 4,
        default_ttl_ms: 3_600_000,
        max_ttl_ms: 86_400_000,
        ended_retention_ms: 600_000,
        max_active_per_user: None,
        cap_policy: CapPolicy::Reject,
        create_rate_limit: None,
        create_rate_window_ms: 60_000,
        outbox_max_len: 100_000,
        events_max_len: 100_000,
        write_hints_max_bytes: 1 << 20,
    }
}

/// An app on one backend with a manual clock.
pub struct TestApp {
    pub router: App,
    pub sessions: Sessions,
    pub clock: Arc<ManualClock>,
    pub backend: Arc<dyn Backend>,
    pub cache: Arc<SessionCache>,
    pub metrics: Metrics,
    /// The Redis this app runs on (`None` on the embedded store).
    pub target: Option<Target>,
    /// The engine the background work and the raw stream reads use: on Redis as the server
    /// user (the relay, the consumer, dead letters), the app's own on the embedded store.
    pub background: Sessions,
    /// Stops the tracking task when the app is dropped.
    _stop: watch::Sender<bool>,
    /// Kept so the server lives as long as the app.
    pub _redis: Option<RedisServer>,
}

/// Where an app's Redis is, and as which user the app connects.
#[derive(Debug, Clone)]
pub struct Target {
    /// Comma-separated `host:port` of the server or of the cluster's nodes.
    pub addresses: String,
    pub scheme: &'static str,
    pub cluster: bool,
    /// The app's role: the sidecar's unless it authenticates like the session service.
    pub role: Role,
}

impl Target {
    /// The URL as `role`'s user.
    pub fn url_as(&self, role: Role) -> String {
        crate::common::url_as(role.user(), self.scheme, &self.addresses)
    }

    /// The URL the app connects with.
    pub fn url(&self) -> String {
        self.url_as(self.role)
    }

    fn on(server: &RedisServer, role: Role) -> Self {
        let url = server.url_as(role);
        let (scheme, rest) = url.split_once("://").unwrap();
        Self {
            addresses: rest.rsplit_once('@').unwrap().1.to_owned(),
            scheme: if scheme == "rediss" {
                "rediss"
            } else {
                "redis"
            },
            cluster: false,
            role,
        }
    }
}

/// A response: status, JSON body (or `Null`), headers.
pub struct Res {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Res {
    /// The problem `code`, for error responses.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

impl TestApp {
    pub async fn new(kind: Kind) -> Self {
        Self::with(kind, |_| {}).await
    }

    pub async fn with(kind: Kind, tune: impl FnOnce(&mut Policy)) -> Self {
        Self::build(kind, tune, Auth::TrustPod).await
    }

    pub async fn build(kind: Kind, tune: impl FnOnce(&mut Policy), auth: Auth) -> Self {
        let role = if matches!(auth, Auth::TrustPod) {
            Role::Sidecar
        } else {
            Role::Server
        };
        Self::build_as(kind, tune, auth, role).await
    }

    /// An app as the session service runs it, as the server user (dead letters are the
    /// service's), but trusting every caller like a sidecar so tests need no token.
    pub async fn of_service(kind: Kind) -> Self {
        Self::of_service_with(kind, |_| {}).await
    }

    /// [`Self::of_service`] with tuned policies.
    pub async fn of_service_with(kind: Kind, tune: impl FnOnce(&mut Policy)) -> Self {
        Self::build_as(kind, tune, Auth::TrustPod, Role::Server).await
    }

    async fn build_as(kind: Kind, tune: impl FnOnce(&mut Policy), auth: Auth, role: Role) -> Self {
        let mut policy = test_policy();
        tune(&mut policy);
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        match kind {
            Kind::Memory => {
                let metrics = Metrics::new("test");
                Self::assemble(
                    Arc::new(MemoryBackend::with_clock(clock.clone())),
                    None,
                    None,
                    clock,
                    policy,
                    auth,
                    metrics,
                )
                .await
            }
            Kind::Redis => {
                let server = RedisServer::start();
                let target = Target::on(&server, role);
                Self::on_redis(target, Some(server), clock, policy, auth).await
            }
        }
    }

    /// An app on the embedded store `store`, whose keys expire on `clock`.
    pub async fn on_memory(
        store: Arc<MemoryBackend>,
        clock: Arc<ManualClock>,
        tune: impl FnOnce(&mut Policy),
    ) -> Self {
        let mut policy = test_policy();
        tune(&mut policy);
        let metrics = Metrics::new("test");
        Self::assemble(store, None, None, clock, policy, Auth::TrustPod, metrics).await
    }

    /// An app on a given Redis server (for example a durable one).
    pub async fn on_server(server: RedisServer) -> Self {
        let (target, clock) = (
            Target::on(&server, Role::Sidecar),
            Arc::new(ManualClock::new(SystemClock.now_ms())),
        );
        Self::on_redis(target, Some(server), clock, test_policy(), Auth::TrustPod).await
    }

    /// An app on a Redis Cluster (cluster client, tracking on every master).
    pub async fn on_cluster(cluster: &RedisCluster) -> Self {
        Self::on_cluster_with(cluster, |_| {}).await
    }

    /// An app on a Redis Cluster with tuned policies.
    pub async fn on_cluster_with(cluster: &RedisCluster, tune: impl FnOnce(&mut Policy)) -> Self {
        let mut policy = test_policy();
        tune(&mut policy);
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        let target = Target {
            addresses: cluster.addresses.clone(),
            scheme: "redis",
            cluster: true,
            role: Role::Sidecar,
        };
        Self::on_redis(target, None, clock, policy, Auth::TrustPod).await
    }

    /// An app on Redis at `target`, owning `server` when given.
    async fn on_redis(
        target: Target,
        server: Option<RedisServer>,
        clock: Arc<ManualClock>,
        policy: Policy,
        auth: Auth,
    ) -> Self {
        Self::on_redis_reporting(target, server, clock, policy, auth, true).await
    }

    /// [`Self::on_redis`]; `report_to_hints`: whether the changes Redis reports reach the
    /// engine's write hints too (else a hint another process made stale is used, and its
    /// guard refuses the commit).
    async fn on_redis_reporting(
        target: Target,
        server: Option<RedisServer>,
        clock: Arc<ManualClock>,
        policy: Policy,
        auth: Auth,
        report_to_hints: bool,
    ) -> Self {
        let metrics = Metrics::new("test");
        let backend = connect(&target, target.role).await;
        let backend = Arc::new(Breaker::new(backend, metrics.clone()));
        let target = Some((target, report_to_hints));
        Self::assemble(backend, target, server, clock, policy, auth, metrics).await
    }

    /// Waits until Redis has pushed the invalidations of the writes made so far (on loopback
    /// they take about a millisecond); a late one would drop a fill made after the write.
    pub async fn settle(&self) {
        if self.target.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills this app's Redis server.
    pub fn kill_redis(&mut self) {
        self._redis.as_mut().expect("a Redis app").kill();
    }

    /// Starts this app's Redis server again, on the same port.
    pub fn restart_redis(&mut self) {
        self._redis.as_mut().expect("a Redis app").restart();
    }

    /// The URL of this app's Redis server as the admin user (for what only tests do).
    pub fn admin_url(&self) -> String {
        self._redis.as_ref().expect("a Redis app").admin_url()
    }

    /// The `host:port` of this app's Redis server.
    pub fn redis_address(&self) -> String {
        self.target.as_ref().expect("a Redis app").addresses.clone()
    }

    /// A second sidecar on this app's Redis, reaching it through `address` (for example a
    /// proxy's `host:port`).
    pub async fn via(&self, address: &str) -> TestApp {
        let policy = self.sessions.policy().clone();
        let target = Target {
            addresses: address.to_owned(),
            ..self.target.clone().expect("a Redis app")
        };
        Self::on_redis(target, None, self.clock.clone(), policy, Auth::TrustPod).await
    }

    /// An app on an existing store: a second sidecar beside the first, with its own cache.
    pub async fn beside(&self) -> TestApp {
        let target = self.target.clone().expect("a Redis app");
        let policy = self.sessions.policy().clone();
        Self::on_redis(target, None, self.clock.clone(), policy, Auth::TrustPod).await
    }

    /// [`Self::beside`] with its policy tuned: a sidecar of a rollout that changes it.
    pub async fn beside_with(&self, tune: impl FnOnce(&mut Policy)) -> TestApp {
        let target = self.target.clone().expect("a Redis app");
        let mut policy = self.sessions.policy().clone();
        tune(&mut policy);
        Self::on_redis(target, None, self.clock.clone(), policy, Auth::TrustPod).await
    }

    /// [`Self::beside`], whose write hints are not told of the changes Redis reports: a hint
    /// another sidecar made stale is used, and refused by its guard.
    pub async fn beside_with_unreported_hints(&self) -> TestApp {
        let target = self.target.clone().expect("a Redis app");
        let policy = self.sessions.policy().clone();
        Self::on_redis_reporting(
            target,
            None,
            self.clock.clone(),
            policy,
            Auth::TrustPod,
            false,
        )
        .await
    }

    /// A second app on this app's store seen through `wrap` (for example a backend that
    /// stalls), with the same clock and policy and a cache of its own.
    pub async fn through(
        &self,
        wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
    ) -> TestApp {
        self.through_with(wrap, |_| {}).await
    }

    /// [`Self::through`] with its policy tuned: a sidecar of a rollout that changes it.
    pub async fn through_with(
        &self,
        wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
        tune: impl FnOnce(&mut Policy),
    ) -> TestApp {
        let mut policy = self.sessions.policy().clone();
        tune(&mut policy);
        Self::assemble(
            wrap(self.backend.clone()),
            None,
            None,
            self.clock.clone(),
            policy,
            Auth::TrustPod,
            Metrics::new("test"),
        )
        .await
    }

    /// An app on `backend`; on Redis (`target`) with tracking, whose reports reach the write
    /// hints too when the flag says so.
    #[allow(clippy::too_many_arguments)]
    async fn assemble(
        backend: Arc<dyn Backend>,
        target: Option<(Target, bool)>,
        redis: Option<RedisServer>,
        clock: Arc<ManualClock>,
        policy: Policy,
        auth: Auth,
        metrics: Metrics,
    ) -> Self {
        let (target, report_to_hints) = match target {
            Some((target, report)) => (Some(target), report),
            None => (None, false),
        };
        let embedded = target.is_none();
        let config = CacheConfig {
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(1),
        };
        let cache = Arc::new(SessionCache::new(
            config,
            metrics.clone(),
            clock.clone(),
            embedded,
        ));
        let background = match &target {
            Some(target) => Sessions::new(
                Arc::from(connect(target, Role::Server).await),
                TEST_PREFIX,
                clock.clone(),
                policy.clone(),
            )
            .with_listener(cache.clone()),
            None => Sessions::new(backend.clone(), TEST_PREFIX, clock.clone(), policy.clone())
                .with_listener(cache.clone()),
        };
        let mut sessions = Sessions::new(backend.clone(), TEST_PREFIX, clock.clone(), policy)
            .with_listener(cache.clone());
        let (stop, stopped) = watch::channel(false);
        if let Some(target) = target.clone() {
            let reads = TrackedConnections::new(cache.clone(), metrics.clone());
            sessions = sessions.with_tracked_reads(reads.clone());
            let keys = sessions.keys().clone();
            let tracking = Tracking {
                url: session_sidecar::testing::fixed(target.url()),
                cluster: target.cluster,
                keys,
                shard_count: sessions.policy().shard_count,
                hints: sessions.write_hints().filter(|_| report_to_hints),
                reads,
            };
            tokio::spawn(tracking.run(cache.clone(), stopped));
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cache.is_tracked() {
                assert!(Instant::now() < deadline, "tracking did not start");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let state = AppState {
            sessions: sessions.clone(),
            auth,
            max_body_bytes: 64 * 1024,
            cache: Some(cache.clone()),
            metrics: metrics.clone(),
        };
        Self {
            router: app(state),
            sessions,
            clock,
            backend,
            cache,
            metrics,
            target,
            background,
            _stop: stop,
            _redis: redis,
        }
    }

    /// Another engine on the same store, as a second replica would have: on Redis with a
    /// connection of its own.
    pub async fn replica(&self) -> Sessions {
        let backend: Arc<dyn Backend> = match &self.target {
            Some(target) => Arc::from(connect(target, Role::Server).await),
            None => self.backend.clone(),
        };
        Sessions::new(
            backend,
            TEST_PREFIX,
            self.clock.clone(),
            self.sessions.policy().clone(),
        )
    }

    pub async fn raw(&self, req: Request<Body>) -> Res {
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Res {
            status,
            body,
            headers,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Res {
        self.call_as(None, method, path, body).await
    }

    /// A call with `Authorization: Bearer <token>` when a token is given (server mode).
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Res {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.raw(req.body(body).unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Res {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Res {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Res {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Res {
        self.call(Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Res {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates a session for `user` with extra fields; panics unless 201. Returns the body.
    pub async fn create(&self, user: &str, extra: Value) -> Value {
        let mut body = json!({ "user_id": user });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let res = self.post("/v1/sessions", body).await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
        res.body
    }

    /// Creates a session and returns its id.
    pub async fn create_id(&self, user: &str, extra: Value) -> String {
        self.create(user, extra).await["session_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn end(&self, id: &str, body: Value) -> Res {
        self.post(&format!("/v1/sessions/{id}/end"), body).await
    }

    /// Every event waiting in the shard outboxes, shard by shard.
    pub async fn outbox(&self) -> Vec<Envelope> {
        let mut out = Vec::new();
        for shard in 0..self.sessions.policy().shard_count {
            out.extend(self.stream(&self.sessions.keys().outbox(shard)).await);
        }
        out
    }

    /// The outbox's events of one type.
    pub async fn outbox_of(&self, event_type: &str) -> Vec<Envelope> {
        let mut events = self.outbox().await;
        events.retain(|e| e.event_type == event_type);
        events
    }

    /// Every event in the global events stream.
    pub async fn events(&self) -> Vec<Envelope> {
        self.stream(&self.sessions.keys().events()).await
    }

    async fn stream(&self, key: &str) -> Vec<Envelope> {
        let r = self
            .background
            .backend()
            .read(vec![ReadOp::XRange(key.to_owned(), None, 100_000)])
            .await
            .unwrap();
        r.into_iter()
            .next()
            .unwrap()
            .into_entries()
            .iter()
            .map(|e| Envelope::from_stream_fields(&e.fields).unwrap())
            .collect()
    }

    /// Publishes an event on the global stream, as another service would.
    pub async fn publish(&self, event: &Envelope) {
        let append = session_sidecar::testing::Append {
            stream: self.sessions.keys().events(),
            fields: event.to_stream_fields(),
            max_len: None,
        };
        self.background
            .backend()
            .commit(Commit {
                appends: vec![append],
                ..Commit::default()
            })
            .await
            .unwrap();
    }

    /// Overwrites a key with a string (to break something on purpose).
    pub async fn clobber(&self, key: &str) {
        self.background
            .backend()
            .commit(Commit {
                writes: vec![WriteOp::Set(key.to_owned(), "not a stream".into())],
                ..Commit::default()
            })
            .await
            .unwrap();
    }

    /// The raw hash of a session document (empty when absent).
    pub async fn raw_doc(&self, id: &str) -> Vec<(String, String)> {
        let shard =
            session_sidecar::testing::parse_session_id(id, self.sessions.policy().shard_count)
                .unwrap();
        let r = self
            .backend
            .read(vec![ReadOp::HGetAll(
                self.sessions.keys().session(shard, id),
            )])
            .await
            .unwrap();
        r.into_iter().next().map(Reply::into_pairs).unwrap()
    }

    /// Sets `event` aside as a dead letter, as the consumer does after it kept failing.
    pub async fn set_aside(&self, event: &Envelope) {
        let entry = session_sidecar::testing::StreamEntry {
            id: "1-0".into(),
            fields: event.to_stream_fields(),
        };
        let verdict = session_sidecar::testing::Verdict {
            entry: &entry,
            reason: session_sidecar::testing::Reason::Failed,
            error: "the event outbox is full; the relay is not keeping up".into(),
            attempts: 10,
        };
        self.background
            .backend()
            .commit(Commit {
                appends: vec![verdict.append(&self.background)],
                ..Commit::default()
            })
            .await
            .unwrap();
    }

    /// Runs the inbound consumer until it has nothing left to do.
    pub async fn consume(&self) -> usize {
        let mut passed = 0;
        loop {
            match session_sidecar::testing::consume_once(&self.background, &self.metrics, "test")
                .await
            {
                Ok(0) => return passed,
                Ok(n) => passed += n,
                Err(e) => panic!("the consumer failed: {e}"),
            }
        }
    }

    pub async fn relay(&self) -> usize {
        session_sidecar::testing::relay_once(&self.background, "test")
            .await
            .unwrap()
    }
}

/// One request to an app from anywhere (no borrow of a `TestApp`, so spawned tasks can use it).
pub async fn send(
    router: &App,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let res = router
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Event types of a list of events, in order.
pub fn types(events: &[Envelope]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

/// A connection to `target` as `role`'s user, checked to hold the role's rules (as the
/// service checks at start).
async fn connect(target: &Target, role: Role) -> Box<dyn Backend> {
    let keys = session_sidecar::contract::Keys::new(TEST_PREFIX);
    session_sidecar::testing::connect_with(
        &target.url_as(role),
        target.cluster,
        None,
        Some((role, &keys)),
    )
    .await
    .unwrap()
}
