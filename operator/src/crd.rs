//! The `SessionService` custom resource (`sessions.io/v1alpha1`).
//!
//! Every field carries a doc comment (it becomes the schema description `kubectl explain`
//! shows), a default where one is sensible, and the API server enforces the cross-field and
//! immutability rules through CEL (`x-kubernetes-validations`). `render` evaluates the same CEL
//! rules offline, so a manifest that renders is one the API server accepts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default container images; pinned tags, so a reconcile never changes what runs by itself.
pub(crate) const DEFAULT_SESSION_IMAGE: &str = concat!(
    "ghcr.io/session-operator/session-sidecar:",
    env!("CARGO_PKG_VERSION")
);
pub(crate) const DEFAULT_REDIS_IMAGE: &str = "docker.io/library/redis:7.4.2-bookworm";

/// A session tier: Redis, the session service, its autoscaler and its SLO alerts.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "sessions.io",
    version = "v1alpha1",
    kind = "SessionService",
    namespaced,
    status = "SessionServiceStatus",
    shortname = "sess",
    category = "sessions",
    doc = "A session tier: Redis, the session service, its autoscaler and its SLO alerts.",
    printcolumn(name = "Redis", type_ = "string", json_path = ".spec.redis.mode", description = "Redis mode"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether every part is ready"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.readyReplicas", description = "Ready session-service replicas"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 40").message("metadata.name must be at most 40 characters: derived object names must fit in 63"),
    validation = Rule::new("self.spec.redis.mode != 'cluster' || self.spec.redis.shards <= (has(self.spec.sessions.shardCount) ? self.spec.sessions.shardCount : 64)").message("redis.shards must not exceed sessions.shardCount: every master needs a slot holding session data; create the SessionService with a larger shardCount to grow further"),
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct SessionServiceSpec {
    /// Where sessions are stored.
    #[serde(default)]
    pub redis: RedisSpec,
    /// Session policies, applied by every session-service replica and sidecar.
    #[serde(default)]
    pub sessions: SessionPolicy,
    /// The session-service Deployment (`session-sidecar --mode server`).
    #[serde(default)]
    pub server: ServerSpec,
    /// The HorizontalPodAutoscaler of the session service.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    /// The sidecar injected into application pods labelled `sessions.io/inject: <name>`.
    #[serde(default)]
    pub sidecar: SidecarSpec,
    /// Service-level objectives; the alerts burn against them.
    #[serde(default)]
    pub slo: SloSpec,
    /// Prometheus-operator objects (ServiceMonitor, PrometheusRule) and Grafana dashboards.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
}

impl SessionServiceSpec {
    /// The shards of the key space: `sessions.shardCount`, or its default for the Redis this
    /// SessionService uses (64 on a Redis Cluster, 16 on a single Redis).
    pub fn shard_count(&self) -> i32 {
        let cluster = match self.redis.mode {
            RedisMode::Cluster => true,
            RedisMode::Standalone => false,
            RedisMode::External => self.redis.external.as_ref().is_some_and(|e| e.cluster),
        };
        self.sessions.shard_count.unwrap_or(if cluster {
            CLUSTER_SHARD_COUNT
        } else {
            SINGLE_SHARD_COUNT
        })
    }
}

/// The default shards on a Redis Cluster: room for 64 masters with balanced data.
pub(crate) const CLUSTER_SHARD_COUNT: i32 = 64;
/// The default shards on a single Redis: as many as the sidecar's own default.
pub(crate) const SINGLE_SHARD_COUNT: i32 = 16;

/// How Redis is provided.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum RedisMode {
    /// One Redis pod managed by the operator.
    #[default]
    Standalone,
    /// A Redis Cluster (shards × (1 + replicas) pods) managed by the operator.
    Cluster,
    /// A Redis the operator does not manage; its URL comes from a Secret.
    External,
}

/// Where sessions are stored.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'external' || has(self.external)").message("redis.external (the Secret holding the URL) is required when redis.mode is external"))]
#[x_kube(validation = Rule::new("self.mode == 'external' || !has(self.external)").message("redis.external is only used when redis.mode is external"))]
#[x_kube(validation = Rule::new("self.mode == 'cluster' || (self.shards == 3 && self.replicasPerShard == 1)").message("redis.shards and redis.replicasPerShard only apply to redis.mode cluster"))]
pub struct RedisSpec {
    /// `standalone`, `cluster` or `external`. Immutable: moving sessions between topologies
    /// is a migration, not a reconcile.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("redis.mode is immutable"))]
    pub mode: RedisMode,
    /// Cluster mode: number of masters (at least 3, as Redis Cluster requires). May change at
    /// any time: the operator adds nodes and moves slots to them live, or drains the masters
    /// that go before it removes them; the slots holding session data stay balanced.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 3, max = 100))]
    pub shards: i32,
    /// Cluster mode: replicas of each master; a replica takes over when its master fails, and
    /// before a master's pod is restarted on purpose. May change at any time.
    #[serde(default = "default_replicas_per_shard")]
    #[schemars(range(min = 0, max = 5))]
    pub replicas_per_shard: i32,
    /// Redis container image.
    #[serde(default = "default_redis_image")]
    pub image: String,
    /// Redis `maxmemory` (Redis units: `b`, `kb`, `mb`, `gb`). Keep it near 75% of the memory
    /// limit so fork-based persistence has headroom. A tenth of it bounds what Redis remembers
    /// for the sidecars' cache invalidations (`tracking-table-max-keys`).
    #[serde(default = "default_maxmemory")]
    #[schemars(regex(pattern = r"^[0-9]+(b|kb|mb|gb)?$"))]
    pub maxmemory: String,
    /// Redis `maxmemory-policy`. The default `noeviction` makes a full Redis refuse writes
    /// (503) rather than silently drop live sessions; `volatile-ttl` evicts the sessions
    /// closest to expiry instead.
    #[serde(default)]
    pub maxmemory_policy: EvictionPolicy,
    /// Persistence of the operator-managed Redis.
    #[serde(default)]
    pub persistence: PersistenceSpec,
    /// Resources of each Redis container.
    #[serde(default = "default_redis_resources")]
    pub resources: ResourceRequirements,
    /// TLS between the session pods and the operator-managed Redis.
    #[serde(default)]
    pub tls: TlsSpec,
    /// External mode: where the Redis URL is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

/// Redis `maxmemory-policy` values that never evict a session without a TTL-based reason.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum EvictionPolicy {
    /// Refuse writes when full.
    #[default]
    #[serde(rename = "noeviction")]
    NoEviction,
    /// Evict the keys with the nearest expiry first.
    #[serde(rename = "volatile-ttl")]
    VolatileTtl,
    /// Evict the least recently used keys among those with an expiry.
    #[serde(rename = "volatile-lru")]
    VolatileLru,
}

impl EvictionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoEviction => "noeviction",
            Self::VolatileTtl => "volatile-ttl",
            Self::VolatileLru => "volatile-lru",
        }
    }
}

/// Redis persistence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistenceSpec {
    /// Append-only file with `appendfsync everysec`: at most about one second of acknowledged
    /// writes is lost when a Redis node crashes. Off: memory only.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Size of each Redis data volume.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti)?$"))]
    pub size: String,
    /// StorageClass of the data volumes; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Keep the data volumes when the SessionService is deleted (the default), so sessions
    /// survive an uninstall; `false` deletes them with the StatefulSet.
    #[serde(default = "yes")]
    pub retain_on_delete: bool,
}

/// TLS to Redis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || has(self.secretName)").message("redis.tls.secretName is required when TLS is enabled"))]
pub struct TlsSpec {
    /// Serve Redis over TLS only (`rediss://`).
    #[serde(default)]
    pub enabled: bool,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`, `ca.crt`) for Redis, e.g. issued by
    /// cert-manager. Its `ca.crt` is what session pods trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// A Redis the operator does not manage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// Name of a Secret in the SessionService's namespace holding the Redis URL
    /// (`redis://[:password@]host:port`; comma-separated seed URLs for a cluster).
    pub secret_name: String,
    /// Key of the URL in that Secret.
    #[serde(default = "default_url_key")]
    pub url_key: String,
    /// The external Redis is a Redis Cluster.
    #[serde(default)]
    pub cluster: bool,
}

/// Session policies (see the session model in the README).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxTtlSeconds >= self.ttlSeconds").message("sessions.maxTtlSeconds must be at least sessions.ttlSeconds"))]
#[x_kube(validation = Rule::new("has(self.shardCount) == has(oldSelf.shardCount)").message("sessions.shardCount is immutable: it cannot be set or removed after creation"))]
pub struct SessionPolicy {
    /// Lifetime of a session without heartbeat, in seconds.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 1))]
    pub ttl_seconds: i64,
    /// Longest lifetime a client may ask for, in seconds.
    #[serde(default = "default_max_ttl")]
    #[schemars(range(min = 1))]
    pub max_ttl_seconds: i64,
    /// How long ended and expired sessions stay readable, in seconds.
    #[serde(default = "default_retention")]
    #[schemars(range(min = 0))]
    pub ended_retention_seconds: i64,
    /// Cap on active sessions per user; no cap when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_active_per_user: Option<i32>,
    /// At the cap: `reject` the new session (409) or `endOldest`.
    #[serde(default)]
    pub active_cap_policy: CapPolicy,
    /// Session creations allowed per user per window (429 beyond).
    #[serde(default = "default_rate_limit")]
    #[schemars(range(min = 1))]
    pub create_rate_limit: i32,
    /// The rate-limit window, in seconds.
    #[serde(default = "default_rate_window")]
    #[schemars(range(min = 1))]
    pub create_rate_window_seconds: i64,
    /// Shards of the key space; each lives in one Redis Cluster hash slot, so this is also the
    /// most masters a cluster can use. Unset: 64 on a Redis Cluster (it can grow to 64 masters
    /// with its data evenly spread), 16 on a single Redis, where more buy nothing. Immutable,
    /// set or not: session ids carry their shard (objects created with an older default keep
    /// theirs, stored at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("sessions.shardCount is immutable"))]
    pub shard_count: Option<i32>,
}

/// What happens when a user at the active-session cap starts another session.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum CapPolicy {
    /// Refuse the new session with 409.
    #[default]
    Reject,
    /// End the user's oldest active session.
    EndOldest,
}

/// The session-service Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Replicas when autoscaling is off (with autoscaling the HPA owns the count).
    #[serde(default = "default_server_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Image of `session-sidecar`.
    #[serde(default = "default_session_image")]
    pub image: String,
    /// Resources of each session-service container.
    #[serde(default = "default_server_resources")]
    pub resources: ResourceRequirements,
    /// A Secret holding the HS256 key that signs client JWTs (key `jwt-secret`, at least 32
    /// bytes). When absent the operator generates `<name>-jwt` once; give its key to the
    /// service that issues tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_name: Option<String>,
    /// When the generated key is rotated (annotation `sessions.io/rotate-jwt-secret`), how
    /// long tokens signed with the old key are still accepted after issuers got the new one:
    /// at least the lifetime of the tokens they issue, plus the time they take to read the new
    /// key.
    #[serde(default = "default_jwt_rotation_grace")]
    #[schemars(range(min = 0))]
    pub jwt_rotation_grace_seconds: i64,
    /// Also accept tokens from an OIDC identity provider (RS256, ES256 or EdDSA, verified
    /// against its published keys). The HS256 key stays: the operator's command-line tools
    /// sign their service tokens with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcSpec>,
}

/// The identity provider whose tokens the session service accepts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.issuer.startsWith('https://')").message("server.oidc.issuer must be an https:// URL"))]
#[x_kube(validation = Rule::new("!has(self.jwksUrl) || self.jwksUrl.startsWith('https://')").message("server.oidc.jwksUrl must be an https:// URL"))]
pub struct OidcSpec {
    /// The issuer: the `iss` its tokens carry, and the base of its discovery document
    /// (`<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// The `aud` its tokens must carry (this service's client id at the provider).
    pub audience: String,
    /// Its key set's URL, when it is not to be found through discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A ConfigMap whose `ca.crt` holds the CAs the provider's certificate is signed by (a
    /// private provider); the system's roots otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map: Option<String>,
}

/// The HorizontalPodAutoscaler (`autoscaling/v2`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxReplicas >= self.minReplicas").message("autoscaling.maxReplicas must be at least autoscaling.minReplicas"))]
pub struct AutoscalingSpec {
    /// Create the HPA; off means `server.replicas` fixed replicas.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Fewest replicas (two keep the service up through a node drain).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Most replicas.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Average CPU utilisation to hold, in percent of the CPU request.
    #[serde(default = "default_cpu")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// Also scale on p99 latency: the average per pod of the Pods metric
    /// `session_request_duration_seconds_p99` (served by prometheus-adapter), e.g. `25m` for
    /// 25 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(m|)$"))]
    pub p99_latency_target: Option<String>,
}

/// The sidecar injected into application pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Image of `session-sidecar`.
    #[serde(default = "default_session_image")]
    pub image: String,
    /// Bytes of session documents each sidecar caches.
    #[serde(default = "default_cache_bytes")]
    #[schemars(range(min = 0))]
    pub cache_max_bytes: i64,
    /// Longest a cached session is served without asking Redis, in milliseconds (the bound
    /// on staleness when invalidations are lost).
    #[serde(default = "default_cache_age")]
    #[schemars(range(min = 1))]
    pub cache_max_age_ms: i64,
    /// Resources of the sidecar container.
    #[serde(default = "default_sidecar_resources")]
    pub resources: ResourceRequirements,
    /// Inject as a native sidecar (an init container with `restartPolicy: Always`, Kubernetes
    /// 1.29+), or as a plain container (`false`). Unset (the default) is auto: native where
    /// the API server supports it, a plain container otherwise. `true` on an older server
    /// degrades to a plain container, and the `FeaturesAvailable` condition says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<bool>,
}

/// Service-level objectives.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SloSpec {
    /// Share of requests that must not fail with a 5xx, in percent.
    #[serde(default = "default_availability")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 100.0").message("slo.availabilityObjective must be a percentage strictly between 0 and 100"))]
    pub availability_objective: f64,
    /// Requests slower than this many seconds count against the latency objective. Must be a
    /// bucket bound of `session_request_duration_seconds`: 0.001, 0.0025, 0.005, 0.01, 0.025,
    /// 0.05, 0.1, 0.25, 0.5, 1, 2.5 (and below 1 ms: 0.0001, 0.00025, 0.0005).
    #[serde(default = "default_latency_threshold")]
    #[x_kube(validation = Rule::new("self in [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]").message("slo.latencyThresholdSeconds must be a bucket bound of session_request_duration_seconds"))]
    pub latency_threshold_seconds: f64,
    /// Share of requests that must be faster than the threshold, in percent.
    #[serde(default = "default_latency_objective")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 100.0").message("slo.latencyObjective must be a percentage strictly between 0 and 100"))]
    pub latency_objective: f64,
    /// The SLO window in days; burn rates are relative to it.
    #[serde(default = "default_window")]
    #[schemars(range(min = 1, max = 90))]
    pub window_days: i32,
}

/// Prometheus-operator objects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a ServiceMonitor for the session service and a PodMonitor for the injected
    /// sidecars (their admin port).
    #[serde(default = "yes")]
    pub service_monitor: bool,
    /// Create a PrometheusRule with the SLI recording rules and burn-rate alerts.
    #[serde(default = "yes")]
    pub prometheus_rule: bool,
    /// Extra labels on the ServiceMonitor and PrometheusRule (e.g. the `release` label a
    /// Prometheus selects on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Grafana dashboards (SLO, hot path, Redis) in a ConfigMap `<name>-dashboards`.
    #[serde(default)]
    pub dashboards: DashboardsSpec,
}

/// The dashboards ConfigMap, for Grafana's dashboard sidecar (k8s-sidecar, as the Grafana and
/// kube-prometheus-stack charts run it), which loads every ConfigMap carrying its label.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DashboardsSpec {
    /// Create the ConfigMap.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The labels the sidecar selects on (its `sidecar.dashboards.label` and `labelValue`).
    #[serde(default = "default_dashboard_labels")]
    pub labels: BTreeMap<String, String>,
    /// The Grafana folder, as the `grafana_folder` annotation (the sidecar honours it when
    /// its `folderAnnotation` is set to that name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

fn default_dashboard_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("grafana_dashboard".to_owned(), "1".to_owned())])
}

/// What the operator observed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `RedisReady`, `ServerReady`, `AutoscalingReady`, `AlertsReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `host:port` session pods connect to (the first seed in cluster mode); absent in
    /// external mode, where it is in the user's Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_endpoint: Option<String>,
    /// Ready session-service replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Cluster mode: the cluster as its nodes reported it on the operator's last pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_cluster: Option<RedisClusterStatus>,
    /// The Redis passwords' rotation (asked for with the annotation
    /// `sessions.io/rotate-redis-passwords`), in words: its progress, what it waits for, or
    /// when it was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_password_rotation: Option<String>,
    /// The generated JWT key's rotation (annotation `sessions.io/rotate-jwt-secret`), in
    /// words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_rotation: Option<String>,
}

/// Redis Cluster as its nodes report it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisClusterStatus {
    /// Masters owning slots, in pod order.
    #[serde(default)]
    pub masters: Vec<RedisMasterStatus>,
    /// Nodes the cluster marks as failing and pods that do not answer, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<String>,
}

/// One master of a Redis Cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisMasterStatus {
    /// The StatefulSet ordinal of its pod; absent when no pod answers with its node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<i32>,
    /// The first 8 characters of its node id.
    pub node: String,
    /// Hash slots it owns.
    pub slots: i32,
    /// Of those, the slots that hold sessions (the shards' hash tags).
    pub data_slots: i32,
    /// Ordinals of the pods replicating it.
    #[serde(default)]
    pub replicas: Vec<i32>,
}

fn yes() -> bool {
    true
}
fn default_shards() -> i32 {
    3
}
fn default_replicas_per_shard() -> i32 {
    1
}
fn default_redis_image() -> String {
    DEFAULT_REDIS_IMAGE.to_owned()
}
fn default_session_image() -> String {
    DEFAULT_SESSION_IMAGE.to_owned()
}
fn default_maxmemory() -> String {
    "768mb".to_owned()
}
fn default_storage_size() -> String {
    "2Gi".to_owned()
}
fn default_url_key() -> String {
    "url".to_owned()
}
fn default_ttl() -> i64 {
    24 * 3600
}
fn default_max_ttl() -> i64 {
    7 * 24 * 3600
}
fn default_retention() -> i64 {
    7 * 24 * 3600
}
fn default_rate_limit() -> i32 {
    60
}
fn default_rate_window() -> i64 {
    60
}
fn default_jwt_rotation_grace() -> i64 {
    3600
}

fn default_server_replicas() -> i32 {
    2
}
fn default_min_replicas() -> i32 {
    2
}
fn default_max_replicas() -> i32 {
    10
}
fn default_cpu() -> i32 {
    70
}
fn default_cache_bytes() -> i64 {
    64 * 1024 * 1024
}
fn default_cache_age() -> i64 {
    10_000
}
fn default_availability() -> f64 {
    99.9
}
fn default_latency_threshold() -> f64 {
    0.05
}
fn default_latency_objective() -> f64 {
    99.0
}
fn default_window() -> i32 {
    30
}

/// Requests and limits; memory is limited, CPU is not (a CPU limit only adds throttling
/// latency to a latency-sensitive service).
fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q(cpu)),
            ("memory".to_owned(), q(memory)),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), q(memory_limit))])),
        ..ResourceRequirements::default()
    }
}
fn default_redis_resources() -> ResourceRequirements {
    resources("250m", "1Gi", "1Gi")
}
fn default_server_resources() -> ResourceRequirements {
    resources("200m", "128Mi", "512Mi")
}
fn default_sidecar_resources() -> ResourceRequirements {
    resources("50m", "96Mi", "192Mi")
}

/// `Default` for each section is what an empty section deserializes to, so one definition of
/// each default serves serde, the schema and the code.
macro_rules! default_from_empty_object {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                serde_json::from_value(serde_json::json!({}))
                    .unwrap_or_else(|e| unreachable!("every field of {} has a default: {e}", stringify!($t)))
            }
        }
    )*};
}
default_from_empty_object!(
    RedisSpec,
    PersistenceSpec,
    SessionPolicy,
    ServerSpec,
    AutoscalingSpec,
    SidecarSpec,
    SloSpec,
    MonitoringSpec,
    DashboardsSpec
);
