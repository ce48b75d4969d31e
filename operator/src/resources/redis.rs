//! Redis owned by the operator: configuration, users, StatefulSet, Services, disruption
//! budget and NetworkPolicy. In cluster mode the operator itself forms and runs the cluster
//! (the `cluster` module); these objects only give it pods with stable names and data.
//!
//! Least privilege: Redis loads an ACL file (from a Secret only the Redis pods mount, holding
//! password hashes) with the `default` user off and one user per role, whose rules the
//! sidecar crate defines next to the commands it sends (`session_sidecar::contract::acl`). Each
//! client user has a Secret of its own: `admin` for the operator, `server` for the session
//! service, `sidecar` for injected sidecars, which so never hold a password with every right.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, Secret, SecretKeySelector,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, TCPSocketAction,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use session_sidecar::config::DEFAULT_KEY_PREFIX;
use session_sidecar::contract::Keys;
use session_sidecar::contract::acl::{self, ADMIN_USER, Passwords, REPLICATION_USER, Role};

use super::{
    BuildError, Desired, INSTANCE_LABEL, Names, Part, RedisPasswords, Runtime, Secrets,
    add_disruption_budget, container_security, digest, label_selector, labels, meta, pod_security,
    selector,
};
use crate::capabilities::Capabilities;
use crate::crd::{RedisMode, SessionService};

const COMPONENT: &str = "redis";
pub(crate) const PORT: i32 = 6379;
const BUS_PORT: i32 = 16379;
/// The `redis` user of the official image.
const REDIS_UID: i64 = 999;
const TLS_DIR: &str = "/tls";
/// Where the Redis pods mount the ACL Secret.
const USERS_DIR: &str = "/etc/redis-users";
/// Keys of the ACL Secret.
const ACL_FILE_KEY: &str = "users.acl";
pub(crate) const REPLICATION_PASSWORD_KEY: &str = "replication-password";
/// Keys of a user Secret while and after its password is rotated (see `reconcile::rotation`).
pub(crate) const PREVIOUS_PASSWORD_KEY: &str = "previous-password";
pub(crate) const ROTATION_REQUEST_KEY: &str = "rotation-request";
pub(crate) const ROTATED_AT_KEY: &str = "rotated-at";

/// A client user of an operator-run Redis, each with a Secret of its own holding `username`,
/// `password` and `url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RedisUser {
    /// The operator's own Redis work: cluster bootstrap, repair, resharding.
    Admin,
    /// The session service (API and background work).
    Server,
    /// Injected sidecars.
    Sidecar,
    /// Replicas syncing from their master, and the pods' probes (its password lives in the
    /// ACL Secret, which only the Redis pods mount).
    Replication,
}

impl RedisUser {
    /// The users with a Secret of their own.
    pub(crate) const ALL: [RedisUser; 3] =
        [RedisUser::Admin, RedisUser::Server, RedisUser::Sidecar];
    /// Every user whose password the operator generates and rotates.
    pub(crate) const ROTATED: [RedisUser; 4] = [
        RedisUser::Admin,
        RedisUser::Server,
        RedisUser::Sidecar,
        RedisUser::Replication,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            RedisUser::Admin => ADMIN_USER,
            RedisUser::Server => Role::Server.user(),
            RedisUser::Sidecar => Role::Sidecar.user(),
            RedisUser::Replication => REPLICATION_USER,
        }
    }

    pub(crate) fn password(self, passwords: &RedisPasswords) -> &str {
        match self {
            RedisUser::Admin => &passwords.admin,
            RedisUser::Server => &passwords.server,
            RedisUser::Sidecar => &passwords.sidecar,
            RedisUser::Replication => &passwords.replication,
        }
    }

    pub(crate) fn password_mut(self, passwords: &mut RedisPasswords) -> &mut String {
        match self {
            RedisUser::Admin => &mut passwords.admin,
            RedisUser::Server => &mut passwords.server,
            RedisUser::Sidecar => &mut passwords.sidecar,
            RedisUser::Replication => &mut passwords.replication,
        }
    }
}

pub(crate) fn build(
    ss: &SessionService,
    secrets: &Secrets,
    runtime: &Runtime,
    out: &mut Desired,
) -> Result<(), BuildError> {
    let names = Names::of(ss);
    let conf = redis_conf(ss);
    let users = acl_file(&secrets.redis);
    let pods = runtime.redis_pods.unwrap_or(0).max(pod_count(ss));
    out.add(Part::Redis, config_map(ss, &names, &conf));
    out.add(Part::Redis, acl_secret(ss, &names, &users, &secrets.redis));
    for user in RedisUser::ALL {
        out.add(Part::Redis, user_secret(ss, &names, user, &secrets.redis));
    }
    // A change of the configuration or of the users' rules changes the template: the pods
    // roll. Not a change of passwords: the operator gives those to the running nodes.
    let rules: Vec<&str> = users
        .split_whitespace()
        .filter(|word| !word.starts_with('#'))
        .collect();
    let config_digest = digest(&(conf + &rules.join(" ")));
    out.add(
        Part::Redis,
        stateful_set(ss, &names, &config_digest, pods, &runtime.api),
    );
    out.add(Part::Redis, headless_service(ss, &names));
    out.add(Part::Redis, client_service(ss, &names));
    add_disruption_budget(out, Part::Redis, &runtime.api, ss, names.redis(), COMPONENT)?;
    out.add(
        Part::Redis,
        network_policy(ss, &names, &runtime.operator_namespace),
    );
    Ok(())
}

/// Pods in the StatefulSet: one standalone, shards × (1 + replicas) in cluster mode.
pub(crate) fn pod_count(ss: &SessionService) -> i32 {
    match ss.spec.redis.mode {
        RedisMode::Cluster => ss.spec.redis.shards * (1 + ss.spec.redis.replicas_per_shard),
        _ => 1,
    }
}

/// The URL a user connects with: the client Service standalone, a few stable pod names as
/// seeds in cluster mode (the client learns the rest of the topology from them).
pub(crate) fn url(ss: &SessionService, user: &str, password: &str) -> String {
    let names = Names::of(ss);
    let scheme = if ss.spec.redis.tls.enabled {
        "rediss"
    } else {
        "redis"
    };
    let hosts: Vec<String> = match ss.spec.redis.mode {
        RedisMode::Cluster => (0..pod_count(ss).min(3))
            .map(|i| names.redis_pod_host(i))
            .collect(),
        _ => vec![names.redis_service_host()],
    };
    hosts
        .iter()
        .map(|host| format!("{scheme}://{user}:{password}@{host}:{PORT}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `redis.conf`. The users come from the ACL file, the replication password and the
/// announced hostname from the environment on the command line, so this file holds no secret
/// and is the same for every pod.
pub(crate) fn redis_conf(ss: &SessionService) -> String {
    let redis = &ss.spec.redis;
    let mut lines = vec![
        format!(
            "# Managed by session-operator for SessionService {}; edits are overwritten.",
            Names::of(ss).base
        ),
        "bind * -::*".to_owned(),
        // Authentication is required and the NetworkPolicy limits who connects.
        "protected-mode no".to_owned(),
        format!("aclfile {USERS_DIR}/{ACL_FILE_KEY}"),
        "dir /data".to_owned(),
        format!("maxmemory {}", redis.maxmemory),
        format!("maxmemory-policy {}", redis.maxmemory_policy.as_str()),
        format!(
            "tracking-table-max-keys {}",
            tracking_table_max_keys(&redis.maxmemory)
        ),
        "tcp-keepalive 60".to_owned(),
        "timeout 0".to_owned(),
        // RDB snapshots off: the AOF (when enabled) is the durable copy.
        "save \"\"".to_owned(),
    ];
    if redis.persistence.enabled {
        lines.extend([
            "appendonly yes".to_owned(),
            "appendfsync everysec".to_owned(),
            "aof-use-rdb-preamble yes".to_owned(),
        ]);
    } else {
        lines.push("appendonly no".to_owned());
    }
    if redis.tls.enabled {
        lines.extend([
            "port 0".to_owned(),
            format!("tls-port {PORT}"),
            format!("tls-cert-file {TLS_DIR}/tls.crt"),
            format!("tls-key-file {TLS_DIR}/tls.key"),
            format!("tls-ca-cert-file {TLS_DIR}/ca.crt"),
            "tls-auth-clients no".to_owned(),
            "tls-replication yes".to_owned(),
        ]);
    } else {
        lines.push(format!("port {PORT}"));
    }
    if redis.mode == RedisMode::Cluster {
        lines.extend([
            "cluster-enabled yes".to_owned(),
            // Relative to `dir`: on the data volume, so a node keeps its identity across restarts.
            "cluster-config-file nodes.conf".to_owned(),
            "cluster-node-timeout 5000".to_owned(),
            // Clients are told stable DNS names, not pod IPs that change on every restart.
            "cluster-preferred-endpoint-type hostname".to_owned(),
            // A failed shard affects only its users' sessions, not everyone's.
            "cluster-require-full-coverage no".to_owned(),
            "cluster-allow-reads-when-down no".to_owned(),
            "cluster-migration-barrier 1".to_owned(),
        ]);
        if redis.tls.enabled {
            lines.push("tls-cluster yes".to_owned());
        }
    }
    lines.join("\n") + "\n"
}

/// About what Redis spends per session document a sidecar read (its tracking table: the key, and
/// the sidecars that read it), measured on Redis 7.0 at 100 bytes for one sidecar and 50 more
/// per other one.
const TRACKED_KEY_BYTES: u64 = 150;

/// The documents Redis remembers for the sidecars' cache invalidations: a tenth of `maxmemory`
/// (which the table counts toward, so that it never pushes a `noeviction` Redis into refusing
/// writes); beyond it Redis reports documents picked at random to their sidecars and forgets
/// them.
/// Redis's own default (a million) when `maxmemory` is 0 (no limit).
fn tracking_table_max_keys(maxmemory: &str) -> u64 {
    let digits = maxmemory.find(|c: char| !c.is_ascii_digit());
    let (number, unit) = maxmemory.split_at(digits.unwrap_or(maxmemory.len()));
    let scale: u64 = match unit {
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        _ => 1,
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 => (n.saturating_mul(scale) / 10 / TRACKED_KEY_BYTES).max(1_000),
        _ => 1_000_000,
    }
}

fn config_map(ss: &SessionService, names: &Names, conf: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(ss, names.redis(), COMPONENT),
        data: Some(BTreeMap::from([("redis.conf".to_owned(), conf.to_owned())])),
        ..ConfigMap::default()
    }
}

/// The ACL file: `default` off, the client users limited to their role's commands and to the
/// session keys, `admin` with every right, `replication` for replicas syncing and the probes.
pub(crate) fn acl_file(passwords: &RedisPasswords) -> String {
    acl::acl_file(
        &Keys::new(DEFAULT_KEY_PREFIX),
        &Passwords {
            admin: &passwords.accepted(RedisUser::Admin),
            server: &passwords.accepted(RedisUser::Server),
            sidecar: &passwords.accepted(RedisUser::Sidecar),
            replication: &passwords.accepted(RedisUser::Replication),
        },
    )
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// What only the Redis pods mount: the ACL file (password hashes) and the replication user's
/// password (`masterauth`, and the probes').
fn acl_secret(
    ss: &SessionService,
    names: &Names,
    users: &str,
    passwords: &RedisPasswords,
) -> Secret {
    let mut data = BTreeMap::from([
        (ACL_FILE_KEY.to_owned(), bytes(users)),
        (
            REPLICATION_PASSWORD_KEY.to_owned(),
            bytes(&passwords.replication),
        ),
    ]);
    rotation_keys(&mut data, RedisUser::Replication, passwords);
    Secret {
        metadata: meta(ss, names.redis_acl_secret(), COMPONENT),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn user_secret(
    ss: &SessionService,
    names: &Names,
    user: RedisUser,
    passwords: &RedisPasswords,
) -> Secret {
    let password = user.password(passwords);
    let mut data = BTreeMap::from([
        ("username".to_owned(), bytes(user.name())),
        ("password".to_owned(), bytes(password)),
        ("url".to_owned(), bytes(&url(ss, user.name(), password))),
    ]);
    rotation_keys(&mut data, user, passwords);
    Secret {
        metadata: meta(ss, names.redis_user_secret(user.name()), COMPONENT),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The keys a Secret holds while and after `user`'s password is rotated: the old password
/// still accepted, and the request and instant of the last rotation.
fn rotation_keys(
    data: &mut BTreeMap<String, ByteString>,
    user: RedisUser,
    passwords: &RedisPasswords,
) {
    if let Some(previous) = passwords.previous.get(&user) {
        data.insert(PREVIOUS_PASSWORD_KEY.to_owned(), bytes(previous));
    }
    if let Some(rotated) = passwords.rotated.get(&user) {
        data.insert(ROTATION_REQUEST_KEY.to_owned(), bytes(&rotated.request));
        data.insert(ROTATED_AT_KEY.to_owned(), bytes(&rotated.at));
    }
}

pub(crate) fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    secret_key_env(name, secret, key, false)
}

/// An environment variable from a Secret's key that may be absent.
pub(crate) fn optional_secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    secret_key_env(name, secret, key, true)
}

fn secret_key_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(optional),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// `redis-cli` arguments for the local server as the replication user (TLS when enabled); the
/// password comes from `REDISCLI_AUTH`.
fn cli_args(ss: &SessionService) -> Vec<String> {
    let mut args = vec![
        "redis-cli".to_owned(),
        "--user".to_owned(),
        REPLICATION_USER.to_owned(),
    ];
    if ss.spec.redis.tls.enabled {
        args.extend([
            "--tls".to_owned(),
            "--cacert".to_owned(),
            format!("{TLS_DIR}/ca.crt"),
        ]);
    }
    args
}

/// The replication user's password for the server's `masterauth` at start (the operator sets
/// it on the running server when it rotates). The probes read it from the mounted Secret
/// instead, which the kubelet keeps current without a restart.
fn auth_env(names: &Names) -> Vec<EnvVar> {
    vec![secret_env(
        "REDIS_REPLICATION_PASSWORD",
        &names.redis_acl_secret(),
        REPLICATION_PASSWORD_KEY,
    )]
}

/// Sets `REDISCLI_AUTH` for the probes from the mounted Secret.
fn probe_auth() -> String {
    format!("export REDISCLI_AUTH=\"$(cat {USERS_DIR}/{REPLICATION_PASSWORD_KEY})\"")
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

fn tls_volume(ss: &SessionService) -> Option<Volume> {
    let secret_name = ss.spec.redis.tls.secret_name.clone()?;
    ss.spec.redis.tls.enabled.then(|| Volume {
        name: "tls".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    })
}

/// The Redis StatefulSet: one pod standalone, `pods` cluster nodes in cluster mode.
fn stateful_set(
    ss: &SessionService,
    names: &Names,
    config_digest: &str,
    pods: i32,
    api: &Capabilities,
) -> StatefulSet {
    let storage = Storage::of(ss, names);
    let template_meta = ObjectMeta {
        labels: Some(labels(ss, COMPONENT)),
        annotations: Some(BTreeMap::from([(
            "sessions.io/config-digest".to_owned(),
            config_digest.to_owned(),
        )])),
        ..ObjectMeta::default()
    };
    StatefulSet {
        metadata: meta(ss, names.redis(), COMPONENT),
        spec: StatefulSetSpec {
            service_name: Some(names.redis_headless()),
            replicas: Some(pods),
            update_strategy: Some(update_strategy(ss)),
            // Cluster nodes must all start for the bootstrap; order buys nothing.
            pod_management_policy: Some("Parallel".to_owned()),
            selector: label_selector(ss, COMPONENT),
            persistent_volume_claim_retention_policy: retention_policy(ss, api),
            template: PodTemplateSpec {
                metadata: Some(template_meta),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security(REDIS_UID)),
                    termination_grace_period_seconds: Some(30),
                    topology_spread_constraints: Some(spread(ss)),
                    containers: vec![redis_container(ss, names, storage.mounts)],
                    volumes: Some(storage.volumes),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: storage.claims,
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// `redis-server`'s command line and environment: the rendered `redis.conf`, the replication
/// user and its password from the Secret (never in a file) and, in cluster mode, the pod's
/// stable DNS name to announce, so clients and peers find it again after it comes back on a
/// new IP.
fn server_command(ss: &SessionService, names: &Names) -> (Vec<String>, Vec<EnvVar>) {
    let mut args = vec![
        "/etc/redis/redis.conf".to_owned(),
        "--masteruser".to_owned(),
        REPLICATION_USER.to_owned(),
        "--masterauth".to_owned(),
        "$(REDIS_REPLICATION_PASSWORD)".to_owned(),
    ];
    let mut env = auth_env(names);
    if ss.spec.redis.mode == RedisMode::Cluster {
        env.push(EnvVar {
            name: "POD_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
        args.extend([
            "--cluster-announce-hostname".to_owned(),
            format!(
                "$(POD_NAME).{}.{}.svc",
                names.redis_headless(),
                names.namespace
            ),
        ]);
    }
    (args, env)
}

/// The Redis port, and the cluster bus in cluster mode.
fn container_ports(ss: &SessionService) -> Vec<ContainerPort> {
    let port = |name: &str, container_port| ContainerPort {
        name: Some(name.to_owned()),
        container_port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let mut ports = vec![port("redis", PORT)];
    if ss.spec.redis.mode == RedisMode::Cluster {
        ports.push(port("cluster-bus", BUS_PORT));
    }
    ports
}

/// The `redis` container: probes that let a long AOF load finish (startup), restart a hung
/// server (liveness) and report only a node that can serve its part (readiness).
fn redis_container(ss: &SessionService, names: &Names, mounts: Vec<VolumeMount>) -> Container {
    let redis = &ss.spec.redis;
    let (args, env) = server_command(ss, names);
    let tcp = |period_seconds, failure_threshold| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("redis".to_owned()),
            host: None,
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    };
    Container {
        name: "redis".to_owned(),
        image: Some(redis.image.clone()),
        command: Some(vec!["redis-server".to_owned()]),
        args: Some(args),
        env: Some(env),
        ports: Some(container_ports(ss)),
        resources: Some(redis.resources.clone()),
        volume_mounts: Some(mounts),
        security_context: Some(container_security()),
        // Loading a large AOF can take minutes: liveness waits for the startup probe.
        startup_probe: Some(tcp(5, 120)),
        liveness_probe: Some(tcp(10, 3)),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(readiness(ss)),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            failure_threshold: Some(2),
            ..Probe::default()
        }),
        ..Container::default()
    }
}

/// The pod's volumes, their mounts, and the data volume's claim template when persistence is
/// on (an `emptyDir` otherwise). The root filesystem is read-only: Redis writes only `/data`
/// and `/tmp`.
struct Storage {
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    claims: Option<Vec<PersistentVolumeClaim>>,
}

impl Storage {
    fn of(ss: &SessionService, names: &Names) -> Self {
        let persistence = &ss.spec.redis.persistence;
        let mut mounts = vec![
            mount("data", "/data"),
            mount("config", "/etc/redis"),
            mount("users", USERS_DIR),
            mount("tmp", "/tmp"),
        ];
        let mut volumes = vec![
            Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names.redis(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "users".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(names.redis_acl_secret()),
                    items: Some(
                        [ACL_FILE_KEY, REPLICATION_PASSWORD_KEY]
                            .into_iter()
                            .map(|key| KeyToPath {
                                key: key.to_owned(),
                                path: key.to_owned(),
                                ..KeyToPath::default()
                            })
                            .collect(),
                    ),
                    // Readable by the pod's group (fsGroup, the redis user), nobody else.
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ];
        if let Some(tls) = tls_volume(ss) {
            volumes.push(tls);
            mounts.push(mount("tls", TLS_DIR));
        }
        let claims = if persistence.enabled {
            Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".to_owned()),
                    labels: Some(labels(ss, COMPONENT)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: persistence.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            Quantity(persistence.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }])
        } else {
            volumes.push(Volume {
                name: "data".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            None
        };
        Self {
            volumes,
            mounts,
            claims,
        }
    }
}

/// Retain/Retain is the server's default: the policy is sent only to delete the volumes with
/// the StatefulSet, and only to a server that knows the field.
fn retention_policy(
    ss: &SessionService,
    api: &Capabilities,
) -> Option<StatefulSetPersistentVolumeClaimRetentionPolicy> {
    (!ss.spec.redis.persistence.retain_on_delete && api.pvc_retention_policy).then(|| {
        StatefulSetPersistentVolumeClaimRetentionPolicy {
            when_deleted: Some("Delete".to_owned()),
            when_scaled: Some("Retain".to_owned()),
        }
    })
}

/// The readiness check. Standalone: Redis answers. Cluster: the node can serve its part — the
/// cluster is `ok` from its point of view, and it is a master owning slots or a replica whose
/// replication link is up — so a fully restarted cluster whose nodes cannot find each other is
/// not reported Ready. Readiness never gates what the repair needs: the headless Service
/// publishes unready pods, and the operator reaches pods by IP.
fn readiness(ss: &SessionService) -> Vec<String> {
    let cli = cli_args(ss).join(" ");
    let auth = probe_auth();
    if ss.spec.redis.mode != RedisMode::Cluster {
        return vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("{auth}; exec {cli} ping"),
        ];
    }
    let script = format!(
        r#"{auth}
{cli} cluster info | grep -q '^cluster_state:ok' || {{ echo 'cluster_state is not ok'; exit 1; }}
me=$({cli} cluster nodes | grep myself)
case "$me" in
  *slave*) {cli} info replication | grep -q '^master_link_status:up' || {{ echo 'replica not in sync'; exit 1; }} ;;
  *) [ "$(echo "$me" | wc -w)" -gt 8 ] || {{ echo 'master without slots'; exit 1; }} ;;
esac"#
    );
    vec!["sh".to_owned(), "-c".to_owned(), script]
}

/// Cluster mode: `OnDelete` — the operator restarts pods itself, one at a time, replicas
/// first and each master only after a coordinated failover to its replica. Standalone: the
/// StatefulSet rolls its one pod (sessions are unavailable until it has reloaded its AOF).
fn update_strategy(ss: &SessionService) -> StatefulSetUpdateStrategy {
    let type_ = if ss.spec.redis.mode == RedisMode::Cluster {
        "OnDelete"
    } else {
        "RollingUpdate"
    };
    StatefulSetUpdateStrategy {
        type_: Some(type_.to_owned()),
        rolling_update: None,
    }
}

/// Spread Redis pods over nodes, preferably (a small cluster may have fewer nodes than pods).
fn spread(ss: &SessionService) -> Vec<TopologySpreadConstraint> {
    vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".to_owned(),
        when_unsatisfiable: "ScheduleAnyway".to_owned(),
        label_selector: Some(label_selector(ss, COMPONENT)),
        ..TopologySpreadConstraint::default()
    }]
}

fn service_ports(ss: &SessionService) -> Vec<ServicePort> {
    let mut ports = vec![ServicePort {
        name: Some("redis".to_owned()),
        port: PORT,
        target_port: Some(IntOrString::String("redis".to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }];
    if ss.spec.redis.mode == RedisMode::Cluster {
        ports.push(ServicePort {
            name: Some("cluster-bus".to_owned()),
            port: BUS_PORT,
            target_port: Some(IntOrString::String("cluster-bus".to_owned())),
            protocol: Some("TCP".to_owned()),
            ..ServicePort::default()
        });
    }
    ports
}

/// Stable per-pod DNS names; not-ready pods are published so the bootstrap can find nodes
/// before they serve.
fn headless_service(ss: &SessionService, names: &Names) -> Service {
    Service {
        metadata: meta(ss, names.redis_headless(), COMPONENT),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector(ss, COMPONENT)),
            ports: Some(service_ports(ss)),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn client_service(ss: &SessionService, names: &Names) -> Service {
    Service {
        metadata: meta(ss, names.redis(), COMPONENT),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector(ss, COMPONENT)),
            ports: Some(service_ports(ss).into_iter().take(1).collect()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Only this SessionService's pods reach Redis: its own pods (replication, cluster bus), the
/// session service, application pods that carry the injection label, and the operator's pods
/// (cluster management), matched by namespace and name.
fn network_policy(ss: &SessionService, names: &Names, operator_namespace: &str) -> NetworkPolicy {
    let peer = |key: &str| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(key.to_owned(), names.base.clone())])),
            match_expressions: None,
        }),
        ..NetworkPolicyPeer::default()
    };
    let ports = service_ports(ss)
        .into_iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(p.port)),
            protocol: Some("TCP".to_owned()),
            end_port: None,
        })
        .collect();
    NetworkPolicy {
        metadata: meta(ss, names.redis(), COMPONENT),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(label_selector(ss, COMPONENT)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    peer(INSTANCE_LABEL),
                    peer(crate::INJECT_LABEL),
                    operator_peer(operator_namespace),
                ]),
                ports: Some(ports),
            }]),
            egress: None,
        }),
    }
}

/// The operator's pods: `app.kubernetes.io/name: session-operator` in its own namespace.
fn operator_peer(namespace: &str) -> NetworkPolicyPeer {
    let labels = |k: &str, v: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(k.to_owned(), v.to_owned())])),
        match_expressions: None,
    };
    NetworkPolicyPeer {
        namespace_selector: Some(labels("kubernetes.io/metadata.name", namespace)),
        pod_selector: Some(labels("app.kubernetes.io/name", "session-operator")),
        ..NetworkPolicyPeer::default()
    }
}

#[cfg(test)]
mod tests {
    use super::tracking_table_max_keys;

    #[test]
    fn the_tracking_table_takes_at_most_a_tenth_of_maxmemory() {
        assert_eq!(tracking_table_max_keys("768mb"), 536_870);
        assert_eq!(tracking_table_max_keys("1gb"), 715_827);
        assert_eq!(tracking_table_max_keys("2000000"), 1_333);
        assert_eq!(
            tracking_table_max_keys("100kb"),
            1_000,
            "never fewer than a thousand"
        );
        assert_eq!(
            tracking_table_max_keys("0"),
            1_000_000,
            "no maxmemory: Redis's default"
        );
    }
}
