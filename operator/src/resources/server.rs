//! The session service: `session-sidecar --mode server` as a Deployment, its Service and
//! PodDisruptionBudget, and the generated JWT key. The environment that connects a pod to this
//! SessionService's Redis is shared with the injected sidecar.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, HTTPGetAction, PodSpec,
    PodTemplateSpec, Probe, Secret, SecretVolumeSource, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::redis::{RedisUser, optional_secret_env, secret_env};
use super::{
    BuildError, Desired, Names, Part, RedisPasswords, Secrets, add_disruption_budget,
    container_security, digest, label_selector, labels, meta, pod_security, selector,
};
use crate::capabilities::Capabilities;
use crate::crd::{RedisMode, SessionService};

const COMPONENT: &str = "server";
pub(crate) const HTTP_PORT: i32 = 7070;
/// An unprivileged uid (distroless `nonroot`).
pub(crate) const SESSION_UID: i64 = 65532;
/// Where the Redis CA is mounted in session pods.
pub(crate) const REDIS_CA_DIR: &str = "/etc/session/redis-ca";
/// Where an injected sidecar's Redis URL Secret is mounted; the sidecar rereads the file, so
/// a rotated password reaches it without a restart of the application's pod.
pub(crate) const REDIS_URL_DIR: &str = "/etc/session/redis-url";
/// The file in [`REDIS_URL_DIR`] holding the URL.
pub(crate) const REDIS_URL_FILE: &str = "url";
/// The variable naming that file; a sidecar injected without it (before this release) reads
/// the URL once, at the start of its pod.
pub(crate) const REDIS_URL_FILE_ENV: &str = "SESSION_REDIS_URL_FILE";
/// Where the identity provider's CA bundle is mounted.
pub(crate) const OIDC_CA_DIR: &str = "/etc/session/oidc-ca";
/// Key of the JWT signing key in its Secret.
pub(crate) const JWT_KEY: &str = "jwt-secret";
/// The other key the session service accepts while the key is rotated (optional; in a
/// Secret of your own too).
pub(crate) const EXTRA_JWT_KEY: &str = "extra-jwt-secret";
/// Keys of the generated JWT Secret that record a rotation.
pub(crate) const JWT_ROTATION_REQUEST_KEY: &str = "rotation-request";
pub(crate) const JWT_ROTATION_PHASE_KEY: &str = "rotation-phase";
pub(crate) const JWT_RETIRE_AT_KEY: &str = "retire-at";

pub(crate) fn build(
    ss: &SessionService,
    secrets: &Secrets,
    api: &Capabilities,
    out: &mut Desired,
) -> Result<(), BuildError> {
    let names = Names::of(ss);
    if ss.spec.server.jwt_secret_name.is_none() {
        out.add(Part::Server, jwt_secret(ss, &names, secrets));
    }
    out.add(Part::Server, deployment(ss, &names, secrets, api));
    out.add(Part::Server, service(ss, &names));
    add_disruption_budget(out, Part::Server, api, ss, names.server(), COMPONENT)
}

fn value_env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

/// Where a pod of this SessionService finds the Redis URL: the Secret of `user` (the session
/// service's or the sidecars'), or the user's Secret in external mode.
pub(crate) fn redis_url_source(ss: &SessionService, user: RedisUser) -> (String, String) {
    match &ss.spec.redis.external {
        Some(external) if ss.spec.redis.mode == RedisMode::External => {
            (external.secret_name.clone(), external.url_key.clone())
        }
        _ => (
            Names::of(ss).redis_user_secret(user.name()),
            "url".to_owned(),
        ),
    }
}

/// The environment that connects a `session-sidecar` (server or injected sidecar, as `user`)
/// to this SessionService: Redis, the service name on every metric, and the session policies.
/// The session service reads the URL from its Secret at start (the Deployment rolls when the
/// password changes, which tells a rotation exactly when it moved); an injected sidecar reads
/// it from the mounted Secret ([`session_volumes`]) and rereads it, as nothing rolls the
/// application's pods.
pub(crate) fn session_env(ss: &SessionService, user: RedisUser) -> Vec<EnvVar> {
    let url = match user {
        RedisUser::Sidecar => value_env(
            REDIS_URL_FILE_ENV,
            format!("{REDIS_URL_DIR}/{REDIS_URL_FILE}"),
        ),
        _ => {
            let (secret, key) = redis_url_source(ss, user);
            secret_env("SESSION_REDIS_URL", &secret, &key)
        }
    };
    let cluster = match (&ss.spec.redis.mode, &ss.spec.redis.external) {
        (RedisMode::Cluster, _) => true,
        (RedisMode::External, Some(external)) => external.cluster,
        _ => false,
    };
    let policy = &ss.spec.sessions;
    let mut env = vec![
        url,
        value_env("SESSION_REDIS_CLUSTER", cluster),
        value_env("SESSION_SERVICE_NAME", Names::of(ss).base),
        value_env("SESSION_SHARD_COUNT", ss.spec.shard_count()),
        value_env("SESSION_TTL_SECONDS", policy.ttl_seconds),
        value_env("SESSION_MAX_TTL_SECONDS", policy.max_ttl_seconds),
        value_env(
            "SESSION_ENDED_RETENTION_SECONDS",
            policy.ended_retention_seconds,
        ),
        value_env(
            "SESSION_ACTIVE_CAP_POLICY",
            match policy.active_cap_policy {
                crate::crd::CapPolicy::Reject => "reject",
                crate::crd::CapPolicy::EndOldest => "end-oldest",
            },
        ),
        value_env("SESSION_CREATE_RATE_LIMIT", policy.create_rate_limit),
        value_env(
            "SESSION_CREATE_RATE_WINDOW_SECONDS",
            policy.create_rate_window_seconds,
        ),
        value_env("SESSION_LOG_FORMAT", "json"),
    ];
    if let Some(cap) = policy.max_active_per_user {
        env.push(value_env("SESSION_MAX_ACTIVE_PER_USER", cap));
    }
    if redis_ca_secret(ss).is_some() {
        // rustls loads its trust roots from this file.
        env.push(value_env("SSL_CERT_FILE", format!("{REDIS_CA_DIR}/ca.crt")));
    }
    env
}

/// The volumes a `session-sidecar` of `user` mounts to reach Redis, with their mounts: the
/// CA of the operator-managed Redis's TLS certificate when TLS is on, and an injected
/// sidecar's URL Secret.
pub(crate) fn session_volumes(ss: &SessionService, user: RedisUser) -> Vec<(Volume, VolumeMount)> {
    let mut volumes = Vec::new();
    if let Some(ca) = redis_ca_secret(ss) {
        volumes.push(secret_volume(
            "redis-ca",
            ca,
            "ca.crt",
            "ca.crt",
            REDIS_CA_DIR,
        ));
    }
    if user == RedisUser::Sidecar {
        let (secret, key) = redis_url_source(ss, user);
        volumes.push(secret_volume(
            "redis-url",
            &secret,
            &key,
            REDIS_URL_FILE,
            REDIS_URL_DIR,
        ));
    }
    volumes
}

/// The Secret with the CA of the operator-managed Redis's TLS certificate, when TLS is on.
fn redis_ca_secret(ss: &SessionService) -> Option<&str> {
    let tls = &ss.spec.redis.tls;
    tls.secret_name
        .as_deref()
        .filter(|_| tls.enabled && ss.spec.redis.mode != RedisMode::External)
}

/// The volume `name` holding `key` of Secret `secret` as the file `file`, mounted read-only
/// at `dir`.
fn secret_volume(
    name: &str,
    secret: &str,
    key: &str,
    file: &str,
    dir: &str,
) -> (Volume, VolumeMount) {
    (
        Volume {
            name: name.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: key.to_owned(),
                    path: file.to_owned(),
                    ..k8s_openapi::api::core::v1::KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: name.to_owned(),
            mount_path: dir.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// An HTTP probe on the session port.
pub(crate) fn http_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The generated JWT key, and the state of its rotation when one was asked for.
fn jwt_secret(ss: &SessionService, names: &Names, secrets: &Secrets) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut data = BTreeMap::from([(JWT_KEY.to_owned(), bytes(&secrets.jwt_secret))]);
    if let Some(rotation) = &secrets.jwt_rotation {
        data.insert(
            JWT_ROTATION_REQUEST_KEY.to_owned(),
            bytes(&rotation.request),
        );
        data.insert(
            JWT_ROTATION_PHASE_KEY.to_owned(),
            bytes(rotation.phase.as_str()),
        );
        if let Some(extra) = &rotation.extra {
            data.insert(EXTRA_JWT_KEY.to_owned(), bytes(extra));
        }
        if let Some(at) = &rotation.retire_at {
            data.insert(JWT_RETIRE_AT_KEY.to_owned(), bytes(at));
        }
    }
    Secret {
        metadata: meta(ss, names.jwt_secret(), COMPONENT),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn deployment(
    ss: &SessionService,
    names: &Names,
    secrets: &Secrets,
    api: &Capabilities,
) -> Deployment {
    let server = &ss.spec.server;
    let jwt = server
        .jwt_secret_name
        .clone()
        .unwrap_or_else(|| names.jwt_secret());
    let mut env = vec![
        value_env("SESSION_MODE", "server"),
        value_env("SESSION_LISTEN", format!("0.0.0.0:{HTTP_PORT}")),
        secret_env("SESSION_JWT_SECRET", &jwt, JWT_KEY),
        optional_secret_env("SESSION_JWT_EXTRA_SECRET", &jwt, EXTRA_JWT_KEY),
    ];
    env.extend(session_env(ss, RedisUser::Server));
    let (mut volumes, mut mounts): (Vec<Volume>, Vec<VolumeMount>) =
        session_volumes(ss, RedisUser::Server).into_iter().unzip();
    if let Some(oidc) = &server.oidc {
        env.push(value_env("SESSION_OIDC_ISSUER", &oidc.issuer));
        env.push(value_env("SESSION_OIDC_AUDIENCE", &oidc.audience));
        if let Some(url) = &oidc.jwks_url {
            env.push(value_env("SESSION_OIDC_JWKS_URL", url));
        }
        if let Some(config_map) = &oidc.ca_config_map {
            env.push(value_env(
                "SESSION_OIDC_CA_FILE",
                format!("{OIDC_CA_DIR}/ca.crt"),
            ));
            volumes.push(Volume {
                name: "oidc-ca".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map.clone(),
                    items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                        key: "ca.crt".to_owned(),
                        path: "ca.crt".to_owned(),
                        ..k8s_openapi::api::core::v1::KeyToPath::default()
                    }]),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "oidc-ca".to_owned(),
                mount_path: OIDC_CA_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
    }
    let spread = |key: &str| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.to_owned(),
        when_unsatisfiable: "ScheduleAnyway".to_owned(),
        label_selector: Some(label_selector(ss, COMPONENT)),
        ..TopologySpreadConstraint::default()
    };
    Deployment {
        metadata: meta(ss, names.server(), COMPONENT),
        spec: DeploymentSpec {
            // With autoscaling the HPA owns the replica count; applying one would fight it.
            // Without an autoscaling API there is no HPA: the minimum replicas run.
            replicas: match (ss.spec.autoscaling.enabled, api.autoscaling.is_some()) {
                (false, _) => Some(server.replicas),
                (true, true) => None,
                (true, false) => Some(ss.spec.autoscaling.min_replicas),
            },
            selector: label_selector(ss, COMPONENT),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".to_owned())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(ss, COMPONENT)),
                    annotations: credentials_digest(ss, secrets),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security(SESSION_UID)),
                    termination_grace_period_seconds: Some(30),
                    topology_spread_constraints: Some(vec![
                        spread("topology.kubernetes.io/zone"),
                        spread("kubernetes.io/hostname"),
                    ]),
                    containers: vec![Container {
                        name: "session-service".to_owned(),
                        image: Some(server.image.clone()),
                        env: Some(env),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".to_owned()),
                            container_port: HTTP_PORT,
                            protocol: Some("TCP".to_owned()),
                            ..ContainerPort::default()
                        }]),
                        resources: Some(server.resources.clone()),
                        liveness_probe: Some(http_probe("/healthz", 10)),
                        readiness_probe: Some(http_probe("/readyz", 5)),
                        security_context: Some(container_security()),
                        volume_mounts: (!mounts.is_empty()).then_some(mounts),
                        ..Container::default()
                    }],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// Digests of the server user's Redis password and of the JWT keys accepted on the pod
/// template: a new password or key (a rotation) rolls the Deployment, whose pods read them from
/// the Secrets when they start.
fn credentials_digest(ss: &SessionService, secrets: &Secrets) -> Option<BTreeMap<String, String>> {
    use crate::reconcile::jwt_rotation::JWT_KEYS_ANNOTATION;
    use crate::reconcile::rotation::CREDENTIALS_ANNOTATION;
    let mut annotations = BTreeMap::new();
    if ss.spec.redis.mode != RedisMode::External {
        annotations.insert(
            CREDENTIALS_ANNOTATION.to_owned(),
            redis_credentials_digest(&secrets.redis),
        );
    }
    if ss.spec.server.jwt_secret_name.is_none() {
        annotations.insert(JWT_KEYS_ANNOTATION.to_owned(), jwt_keys_digest(secrets));
    }
    (!annotations.is_empty()).then_some(annotations)
}

/// A digest of the server user's Redis password: a pod whose template carried the current one
/// started with that password.
pub(crate) fn redis_credentials_digest(passwords: &RedisPasswords) -> String {
    digest(&passwords.server)
}

/// A digest of the set of JWT keys accepted (not of which one signs: swapping them needs no
/// roll).
pub(crate) fn jwt_keys_digest(secrets: &Secrets) -> String {
    let mut keys = secrets.accepted_jwt_keys();
    keys.sort_unstable();
    digest(&keys.join(" "))
}

fn service(ss: &SessionService, names: &Names) -> Service {
    Service {
        metadata: meta(ss, names.server(), COMPONENT),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector(ss, COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
