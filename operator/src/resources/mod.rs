//! The objects the operator owns, each built by a pure function of the `SessionService` (and
//! the generated secrets, which the reconciler reads back so they are generated only once).

pub(crate) mod autoscaling;
pub(crate) mod monitoring;
pub(crate) mod redis;
pub(crate) mod server;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, PodSecurityContext, SeccompProfile, Secret, SecurityContext, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::capabilities::Capabilities;
use crate::crd::{RedisMode, SessionService};

/// The field manager of every server-side apply, and the `managed-by` label.
pub(crate) const MANAGER: &str = "session-operator";
/// On every pod of a SessionService (Redis, the session service, injected
/// application pods): what the Redis NetworkPolicy admits.
pub(crate) const INSTANCE_LABEL: &str = "sessions.io/session-service";

/// The status condition an object counts towards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Redis,
    Server,
    Autoscaling,
    Alerts,
}

/// `$typed` with `$o` bound to the typed object of any built-in kind, or `$dynamic` with the
/// dynamic object's resource and object: the one place that lists the kinds.
macro_rules! each_object {
    ($object:expr, $o:ident => $typed:expr, $r:ident, $d:ident => $dynamic:expr) => {
        match $object {
            $crate::resources::Object::ConfigMap($o) => $typed,
            $crate::resources::Object::Secret($o) => $typed,
            $crate::resources::Object::Service($o) => $typed,
            $crate::resources::Object::StatefulSet($o) => $typed,
            $crate::resources::Object::Deployment($o) => $typed,
            $crate::resources::Object::NetworkPolicy($o) => $typed,
            $crate::resources::Object::PodDisruptionBudget($o) => $typed,
            $crate::resources::Object::HorizontalPodAutoscaler($o) => $typed,
            $crate::resources::Object::Dynamic {
                resource: $r,
                object: $d,
            } => $dynamic,
        }
    };
}
pub(crate) use each_object;

macro_rules! typed_objects {
    ($($kind:ident),*) => {$(
        impl From<$kind> for Object {
            fn from(object: $kind) -> Self {
                $crate::resources::Object::$kind(object)
            }
        }
    )*};
}
typed_objects!(
    ConfigMap,
    Secret,
    Service,
    StatefulSet,
    Deployment,
    NetworkPolicy,
    PodDisruptionBudget,
    HorizontalPodAutoscaler
);

/// One object to apply.
#[derive(Clone, Debug)]
pub struct Child {
    pub part: Part,
    pub object: Object,
}

impl Child {
    pub(crate) fn name(&self) -> String {
        each_object!(&self.object, o => o.name_any(), _r, d => d.name_any())
    }

    /// The API it is applied through.
    pub(crate) fn resource(&self) -> ApiResource {
        each_object!(&self.object, o => erased(o), r, _d => r.clone())
    }
}

/// An object to apply or as the API server returned it: a built-in kind, typed, or a kind
/// this crate has no type for (prometheus-operator's) or an older version of a built-in kind
/// (`autoscaling/v2beta2`, `policy/v1beta1`), through the dynamic API. Serialized, it is the
/// object's own JSON.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Object {
    ConfigMap(ConfigMap),
    Secret(Secret),
    Service(Service),
    StatefulSet(StatefulSet),
    Deployment(Deployment),
    NetworkPolicy(NetworkPolicy),
    PodDisruptionBudget(PodDisruptionBudget),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    Dynamic {
        #[serde(skip)]
        resource: ApiResource,
        #[serde(flatten)]
        object: DynamicObject,
    },
}

/// The API of a built-in kind.
fn erased<K: Resource<DynamicType = ()>>(_: &K) -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// An object the operator may have created earlier and the spec no longer asks for.
#[derive(Clone, Debug)]
pub struct Unwanted {
    pub part: Part,
    pub resource: ApiResource,
    pub name: String,
}

/// Generated credentials, generated once and then read back from their Secrets.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub redis: RedisPasswords,
    /// The HS256 key token issuers sign with.
    pub jwt_secret: String,
    /// The rotation of the generated JWT key, in progress or the last one.
    pub jwt_rotation: Option<JwtRotation>,
}

/// A rotation of the generated JWT key (see `reconcile::rotation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtRotation {
    /// The annotation value that asked for it.
    pub request: String,
    pub phase: JwtPhase,
    /// The other key the session service accepts meanwhile: the new one while `Adding`, the
    /// old one while `Retiring`.
    pub extra: Option<String>,
    /// When `Retiring` ends (RFC 3339).
    pub retire_at: Option<String>,
}

/// Where a JWT key rotation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtPhase {
    /// The session service learns the new key; issuers still sign with the old one.
    Adding,
    /// Issuers sign with the new key; the old one is accepted until `retire_at`.
    Retiring,
    Done,
}

impl JwtPhase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JwtPhase::Adding => "adding",
            JwtPhase::Retiring => "retiring",
            JwtPhase::Done => "done",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        [JwtPhase::Adding, JwtPhase::Retiring, JwtPhase::Done]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

impl Secrets {
    /// The JWT keys the session service accepts now: the signing key, and the other one while a
    /// rotation is in progress.
    pub(crate) fn accepted_jwt_keys(&self) -> Vec<&str> {
        let mut keys = vec![self.jwt_secret.as_str()];
        keys.extend(self.jwt_rotation.as_ref().and_then(|r| r.extra.as_deref()));
        keys
    }
}

/// The password of each Redis user the operator creates (see `redis::RedisUser`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisPasswords {
    pub admin: String,
    pub server: String,
    pub sidecar: String,
    pub replication: String,
    /// While a user's password is rotated: its old password, still accepted.
    pub previous: BTreeMap<redis::RedisUser, String>,
    /// The last rotation of each user's password.
    pub rotated: BTreeMap<redis::RedisUser, Rotated>,
}

/// One rotation of a user's password: the annotation value that asked for it and when the new
/// password was recorded (RFC 3339).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotated {
    pub request: String,
    pub at: String,
}

impl RedisPasswords {
    /// The passwords Redis accepts for `user`: its own, and the old one while it rotates.
    pub(crate) fn accepted(&self, user: redis::RedisUser) -> Vec<&str> {
        let mut accepted = vec![user.password(self)];
        accepted.extend(self.previous.get(&user).map(String::as_str));
        accepted
    }
}

impl Secrets {
    /// Fresh credentials from the thread-local CSPRNG (ChaCha, seeded by the OS): 32
    /// alphanumeric characters, about 190 bits, safe in a URL without escaping.
    pub fn generate() -> Self {
        Self {
            redis: RedisPasswords {
                admin: random_token(),
                server: random_token(),
                sidecar: random_token(),
                replication: random_token(),
                ..RedisPasswords::default()
            },
            jwt_secret: random_jwt_key(),
            jwt_rotation: None,
        }
    }
}

/// A fresh HS256 key: 64 alphanumeric characters.
pub(crate) fn random_jwt_key() -> String {
    random_token() + &random_token()
}

pub(crate) fn random_token() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// What the reconciler knows beyond the spec and the secrets.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// Redis pods to keep when more than the spec asks for: the cluster manager holds pods
    /// that are leaving (scale-in) until their slots are moved and the cluster forgot them.
    pub redis_pods: Option<i32>,
    /// The operator's namespace: its pods may reach Redis.
    pub operator_namespace: String,
    /// What the API server serves: objects use nothing else.
    pub api: Capabilities,
}

impl Default for Runtime {
    /// What `render` assumes: nothing observed, the chart's documented namespace.
    fn default() -> Self {
        Self {
            redis_pods: None,
            operator_namespace: "session-system".to_owned(),
            api: Capabilities::latest(),
        }
    }
}

/// A child object that could not be built (it did not convert to the API's JSON form).
#[derive(Debug, thiserror::Error)]
#[error("could not build the {kind}: {source}")]
pub struct BuildError {
    kind: String,
    source: serde_json::Error,
}

/// Everything one reconcile applies and deletes.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub apply: Vec<Child>,
    pub delete: Vec<Unwanted>,
}

impl Desired {
    fn add(&mut self, part: Part, object: impl Into<Object>) {
        self.apply.push(Child {
            part,
            object: object.into(),
        });
    }

    /// Adds `object` served as `resource`: its own API, or another version of its kind with
    /// the same fields (`autoscaling/v2beta2` for `v2`, `policy/v1beta1` for `v1`) on an older
    /// server, applied through the dynamic API.
    fn add_as<K>(&mut self, part: Part, resource: &ApiResource, object: K) -> Result<(), BuildError>
    where
        K: Resource<DynamicType = ()> + Serialize + Into<Object>,
    {
        if *resource == erased(&object) {
            self.add(part, object);
            return Ok(());
        }
        let failed = |source| BuildError {
            kind: resource.kind.clone(),
            source,
        };
        let value = serde_json::to_value(&object).map_err(failed)?;
        let mut object: DynamicObject = serde_json::from_value(value).map_err(failed)?;
        object.types = Some(kube::api::TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        });
        self.add_dynamic(part, resource.clone(), object);
        Ok(())
    }

    fn add_dynamic(&mut self, part: Part, resource: ApiResource, object: DynamicObject) {
        self.add(part, Object::Dynamic { resource, object });
    }

    fn remove(&mut self, part: Part, resource: ApiResource, name: String) {
        self.delete.push(Unwanted {
            part,
            resource,
            name,
        });
    }
}

/// Every object for `ss`, and those to delete because the spec turned them off.
pub fn desired(
    ss: &SessionService,
    secrets: &Secrets,
    runtime: &Runtime,
) -> Result<Desired, BuildError> {
    let mut desired = Desired::default();
    if ss.spec.redis.mode != RedisMode::External {
        redis::build(ss, secrets, runtime, &mut desired)?;
    }
    server::build(ss, secrets, &runtime.api, &mut desired)?;
    autoscaling::build(ss, &runtime.api, &mut desired)?;
    monitoring::build(ss, &mut desired)?;
    Ok(desired)
}

/// The names of a SessionService's objects, in one place.
pub(crate) struct Names {
    pub base: String,
    pub namespace: String,
}

impl Names {
    pub(crate) fn of(ss: &SessionService) -> Self {
        Self {
            base: ss.name_any(),
            namespace: ss.namespace().unwrap_or_else(|| "default".to_owned()),
        }
    }
    /// Redis: ConfigMap, StatefulSet, client Service, PodDisruptionBudget, NetworkPolicy.
    pub(crate) fn redis(&self) -> String {
        format!("{}-redis", self.base)
    }
    pub(crate) fn redis_headless(&self) -> String {
        format!("{}-redis-headless", self.base)
    }
    /// The Redis ACL file and the replication password: what only the Redis pods mount.
    pub(crate) fn redis_acl_secret(&self) -> String {
        format!("{}-redis-acl", self.base)
    }
    /// The user name, password and URL of one Redis user (`admin`, `server`, `sidecar`).
    pub(crate) fn redis_user_secret(&self, user: &str) -> String {
        format!("{}-redis-{user}", self.base)
    }
    /// The generated JWT signing key (when the user gives none).
    pub(crate) fn jwt_secret(&self) -> String {
        format!("{}-jwt", self.base)
    }
    /// The session service: Deployment, Service, PodDisruptionBudget, HPA, ServiceMonitor.
    pub(crate) fn server(&self) -> String {
        self.base.clone()
    }
    /// The PodMonitor of the injected sidecars.
    pub(crate) fn sidecars(&self) -> String {
        format!("{}-sidecars", self.base)
    }
    pub(crate) fn prometheus_rule(&self) -> String {
        format!("{}-slo", self.base)
    }
    pub(crate) fn dashboards(&self) -> String {
        format!("{}-dashboards", self.base)
    }
    /// `<pod>.<headless service>.<namespace>.svc` of Redis pod `ordinal`.
    pub(crate) fn redis_pod_host(&self, ordinal: i32) -> String {
        format!(
            "{}-{ordinal}.{}.{}.svc",
            self.redis(),
            self.redis_headless(),
            self.namespace
        )
    }
    /// The client Service's host.
    pub(crate) fn redis_service_host(&self) -> String {
        format!("{}.{}.svc", self.redis(), self.namespace)
    }
}

/// The labels that select one component's pods.
/// [`selector`] as a list request's label selector (`k=v,k=v`).
pub(crate) fn selector_query(ss: &SessionService, component: &str) -> String {
    selector(ss, component)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn selector(ss: &SessionService, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "session-service".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), ss.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
    ])
}

/// The labels of one component's objects and pods.
pub(crate) fn labels(ss: &SessionService, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector(ss, component);
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGER.to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/part-of".to_owned(),
        "session-operator".to_owned(),
    );
    labels.insert(INSTANCE_LABEL.to_owned(), ss.name_any());
    labels
}

/// A selector of one component's pods.
pub(crate) fn label_selector(ss: &SessionService, component: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector(ss, component)),
        match_expressions: None,
    }
}

/// One pod of the component down at a time during voluntary disruptions (drains, upgrades):
/// a drain never takes a Redis master and its replica, or every session-service pod, together.
/// Added in whichever PodDisruptionBudget API the server serves (none: nothing to add).
pub(crate) fn add_disruption_budget(
    out: &mut Desired,
    part: Part,
    api: &Capabilities,
    ss: &SessionService,
    name: String,
    component: &str,
) -> Result<(), BuildError> {
    let Some(resource) = &api.disruption_budgets else {
        return Ok(());
    };
    out.add_as(part, resource, disruption_budget(ss, name, component))
}

fn disruption_budget(ss: &SessionService, name: String, component: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(ss, name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(label_selector(ss, component)),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// Metadata of a child: namespace, labels, and the controller owner reference (when the
/// SessionService has a uid, i.e. it came from the API server rather than a file).
pub(crate) fn meta(ss: &SessionService, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(Names::of(ss).namespace),
        labels: Some(labels(ss, component)),
        owner_references: ss.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Non-root, no privilege escalation, no capabilities, read-only root filesystem.
pub(crate) fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// Non-root pods under the runtime's default seccomp profile.
pub(crate) fn pod_security(user: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(user),
        run_as_group: Some(user),
        fs_group: Some(user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// A short, stable digest of a text (FNV-1a, 64 bits), put on pod templates so a change of a
/// mounted configuration rolls the pods. Stable across Rust versions, unlike `DefaultHasher`.
pub(crate) fn digest(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}
