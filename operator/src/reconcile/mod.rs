//! One reconcile of a SessionService, level-triggered and idempotent: read the generated
//! secrets back, build every desired object, server-side apply each with one field manager,
//! delete what the spec turned off, then write the status only when it changed and record an
//! Event for each condition that changed. Before anything is applied, [`rotation`] and
//! [`jwt_rotation`] move a rotation of the credentials one step on.

pub(crate) mod cluster;
pub(crate) mod jwt_rotation;
pub(crate) mod rotation;
pub(crate) mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use crate::capabilities;
use crate::crd::{RedisMode, SessionService};
use crate::resources::{
    self, Child, JwtPhase, JwtRotation, MANAGER, Names, Object, Part, Rotated, Runtime, Secrets,
    each_object, redis, server,
};
use crate::telemetry::Metrics;
use status::{Observed, PartState};

/// Resync period of a healthy SessionService: drift is repaired within it even without a
/// watch event.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Recheck period while something is still starting.
pub const PROGRESS_CHECK: Duration = Duration::from_secs(15);
/// Recheck period while an optional API (the prometheus-operator's) is missing: it may be
/// installed later.
pub const MISSING_API_CHECK: Duration = Duration::from_secs(60);

/// The kubelet's default sync period (1 min) twice over.
pub(crate) const SECRET_VOLUME_SETTLE: Duration = Duration::from_secs(120);

/// What a reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// The operator's own namespace (its pods reach Redis for cluster management).
    pub operator_namespace: String,
    /// What the API server serves, kept current by the controller.
    pub api: capabilities::Shared,
    /// How long the kubelet may take to update a Secret mounted in a pod (its sync period):
    /// a rotation keeps the replication user's old password that long.
    pub secret_volume_settle: Duration,
    /// Consecutive failures per SessionService, for the exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Metrics,
        operator_namespace: String,
        api: capabilities::Shared,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            operator_namespace,
            api,
            secret_volume_settle: SECRET_VOLUME_SETTLE,
            failures: Mutex::default(),
        }
    }

    /// The same with another [`Context::secret_volume_settle`] (tests, which play the kubelet).
    #[must_use]
    pub fn with_secret_volume_settle(mut self, settle: Duration) -> Self {
        self.secret_volume_settle = settle;
        self
    }

    /// Records `event` about `ss`; a failure to record is logged, never fatal.
    async fn publish(&self, ss: &SessionService, event: Event) {
        if let Err(error) = self.recorder.publish(&event, &ss.object_ref(&())).await {
            warn!(session_service = %key(ss), error = %api_message(&error), "could not record an Event");
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the SessionService has no namespace")]
    NoNamespace,
    #[error("could not read Secret {name}: {}; {}", api_message(.source), what_to_do(.source))]
    SecretRead { name: String, source: kube::Error },
    #[error("building the objects: {0}")]
    Build(crate::resources::BuildError),
    #[error("{count} object(s) could not be applied; the first: {first}")]
    Apply { count: usize, first: String },
    #[error("could not write the status: {}; {}", api_message(.0), what_to_do(.0))]
    Status(kube::Error),
}

impl Error {
    /// The condition reason and metric label of this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoNamespace => "NoNamespace",
            Self::SecretRead { .. } => "SecretReadFailed",
            Self::Build(_) => "BuildFailed",
            Self::Apply { .. } => "ApplyFailed",
            Self::Status(_) => "StatusWriteFailed",
        }
    }
}

fn key(ss: &SessionService) -> String {
    format!("{}/{}", ss.namespace().unwrap_or_default(), ss.name_any())
}

/// The controller's reconcile function: times and counts `reconcile_once`.
pub async fn reconcile(ss: Arc<SessionService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_once(&ss, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[] as &[&str])
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(action) => {
            ctx.failures().remove(&key(&ss));
            let label = if *action == Action::requeue(RESYNC) {
                "success"
            } else {
                "requeue"
            };
            ctx.metrics.reconciles.with_label_values(&[label]).inc();
        }
        Err(error) => {
            ctx.metrics.reconciles.with_label_values(&["error"]).inc();
            ctx.metrics
                .errors
                .with_label_values(&[error.reason()])
                .inc();
        }
    }
    result
}

/// Requeue a failed reconcile after 5 s, doubling per consecutive failure up to 5 min.
pub fn error_policy(ss: Arc<SessionService>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut all = ctx.failures();
        let n = all.entry(key(&ss)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(failures);
    warn!(session_service = %key(&ss), %error, failures, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// The delay after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let seconds = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_secs(seconds.min(300))
}

/// What applying the desired objects produced.
struct Outcome {
    parts: Vec<(Part, PartState)>,
    /// `kind/name: error` for every object that failed for another reason than a missing API.
    failures: Vec<String>,
    missing_api: bool,
    ready_replicas: Option<i32>,
}

pub(crate) async fn reconcile_once(ss: &SessionService, ctx: &Context) -> Result<Action, Error> {
    let namespace = ss.namespace().ok_or(Error::NoNamespace)?;
    let mut cluster_pass = None;
    let (rotation, jwt_rotation);
    let api = capabilities::current(&ctx.api);
    let degradations = api.degradations(ss);
    let outcome = match read_secrets(&ctx.client, ss, &namespace).await {
        Ok(mut secrets) => {
            // Before anything connects to Redis: the nodes learn new passwords first.
            rotation = rotation::advance(ctx, ss, &namespace, &mut secrets).await;
            jwt_rotation = jwt_rotation::advance(&ctx.client, ss, &namespace, &mut secrets).await;
            if ss.spec.redis.mode == RedisMode::Cluster {
                cluster_pass = Some(cluster::pass(ctx, ss, &namespace, &secrets).await);
            }
            let runtime = Runtime {
                redis_pods: cluster_pass.as_ref().and_then(|p| p.hold_pods),
                operator_namespace: ctx.operator_namespace.clone(),
                api,
            };
            let desired = resources::desired(ss, &secrets, &runtime).map_err(Error::Build)?;
            let mut outcome = apply_all(ctx, ss, &namespace, desired).await;
            if let Some(pass) = &cluster_pass {
                // What Redis says about the cluster, unless applying its objects failed.
                for (part, state) in &mut outcome.parts {
                    if *part == Part::Redis && state.reason != "ApplyFailed" {
                        *state = pass.state.clone();
                    }
                }
            }
            outcome
        }
        Err(error) => {
            // Nothing can be built without the credentials: every part reports why.
            let state = PartState::not_ok(error.reason(), error.to_string());
            let parts = [Part::Redis, Part::Server, Part::Autoscaling, Part::Alerts]
                .into_iter()
                .map(|p| (p, state.clone()))
                .collect();
            write_status(
                ctx,
                ss,
                &namespace,
                parts,
                &degradations,
                Observed::default(),
            )
            .await?;
            return Err(error);
        }
    };
    let all_ok = outcome.parts.iter().all(|(_, s)| s.ok);
    let observed = Observed {
        ready_replicas: outcome.ready_replicas,
        redis_cluster: cluster_pass.as_ref().and_then(|p| p.topology.clone()),
        redis_password_rotation: rotation.message.clone(),
        jwt_secret_rotation: jwt_rotation.message.clone(),
        ..Observed::default()
    };
    ctx.metrics
        .observe_cluster(&namespace, &ss.name_any(), observed.redis_cluster.as_ref());
    write_status(ctx, ss, &namespace, outcome.parts, &degradations, observed).await?;
    if let Some(first) = outcome.failures.first() {
        return Err(Error::Apply {
            count: outcome.failures.len(),
            first: first.clone(),
        });
    }
    let mut next = if outcome.missing_api {
        MISSING_API_CHECK
    } else if !all_ok {
        PROGRESS_CHECK
    } else {
        RESYNC
    };
    if let Some(pass) = cluster_pass {
        next = next.min(pass.recheck);
    }
    if rotation.in_progress || jwt_rotation.in_progress {
        next = next.min(rotation::ROTATION_CHECK);
    }
    Ok(Action::requeue(next))
}

/// A rotation of `user`'s password recorded in its Secret's `data`.
fn read_rotation(
    passwords: &mut resources::RedisPasswords,
    user: redis::RedisUser,
    data: &mut BTreeMap<String, String>,
) {
    if let Some(previous) = data.remove(redis::PREVIOUS_PASSWORD_KEY) {
        passwords.previous.insert(user, previous);
    }
    if let (Some(request), Some(at)) = (
        data.remove(redis::ROTATION_REQUEST_KEY),
        data.remove(redis::ROTATED_AT_KEY),
    ) {
        passwords.rotated.insert(user, Rotated { request, at });
    }
}

/// The generated credentials, read back from their Secrets so they are generated only once;
/// fresh ones for Secrets that do not exist yet.
async fn read_secrets(
    client: &Client,
    ss: &SessionService,
    namespace: &str,
) -> Result<Secrets, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let names = Names::of(ss);
    let mut secrets = Secrets::generate();
    // The non-empty text values of a Secret (empty when it does not exist).
    let read = |name: String| {
        let api = api.clone();
        async move {
            let secret = api
                .get_opt(&name)
                .await
                .map_err(|source| Error::SecretRead {
                    name: name.clone(),
                    source,
                })?;
            Ok::<_, Error>(
                secret
                    .and_then(|s| s.data)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let text = String::from_utf8(v.0).ok()?;
                        (!text.is_empty()).then_some((k, text))
                    })
                    .collect::<BTreeMap<String, String>>(),
            )
        }
    };
    if ss.spec.redis.mode != RedisMode::External {
        let passwords = &mut secrets.redis;
        for user in redis::RedisUser::ALL {
            let mut data = read(names.redis_user_secret(user.name())).await?;
            if let Some(stored) = data.remove("password") {
                *user.password_mut(passwords) = stored;
            }
            read_rotation(passwords, user, &mut data);
        }
        let mut data = read(names.redis_acl_secret()).await?;
        if let Some(stored) = data.remove(redis::REPLICATION_PASSWORD_KEY) {
            passwords.replication = stored;
        }
        read_rotation(passwords, redis::RedisUser::Replication, &mut data);
    }
    if ss.spec.server.jwt_secret_name.is_none() {
        let mut data = read(names.jwt_secret()).await?;
        if let Some(key) = data.remove(server::JWT_KEY) {
            secrets.jwt_secret = key;
        }
        if let (Some(request), Some(phase)) = (
            data.remove(server::JWT_ROTATION_REQUEST_KEY),
            data.remove(server::JWT_ROTATION_PHASE_KEY)
                .as_deref()
                .and_then(JwtPhase::parse),
        ) {
            secrets.jwt_rotation = Some(JwtRotation {
                request,
                phase,
                extra: data.remove(server::EXTRA_JWT_KEY),
                retire_at: data.remove(server::JWT_RETIRE_AT_KEY),
            });
        }
    }
    Ok(secrets)
}

async fn apply_all(
    ctx: &Context,
    ss: &SessionService,
    namespace: &str,
    desired: resources::Desired,
) -> Outcome {
    let mut applied: Vec<(Part, Object)> = Vec::new();
    let mut problems: HashMap<Part, PartState> = HashMap::new();
    let mut failures = Vec::new();
    let mut missing_api = false;
    for child in &desired.apply {
        match apply(&ctx.client, namespace, child).await {
            Ok(object) => applied.push((child.part, object)),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                missing_api = true;
                problems.entry(child.part).or_insert_with(|| {
                    PartState::not_ok(
                        "ApiUnavailable",
                        format!(
                            "{} {} is not served by this cluster; {}",
                            child.resource().api_version,
                            child.resource().kind,
                            missing_api_hint(child.part)
                        ),
                    )
                });
            }
            Err(error) => {
                let what = format!(
                    "{} {}/{} was refused: {}; {}",
                    child.resource().api_version,
                    child.resource().kind,
                    child.name(),
                    api_message(&error),
                    what_to_do(&error)
                );
                problems
                    .entry(child.part)
                    .or_insert_with(|| PartState::not_ok("ApplyFailed", what.clone()));
                failures.push(what);
            }
        }
    }
    for unwanted in &desired.delete {
        if let Err(error) = delete_if_ours(&ctx.client, namespace, unwanted).await {
            let what = format!(
                "could not delete {}/{}, which the spec turned off: {}; {}",
                unwanted.resource.kind,
                unwanted.name,
                api_message(&error),
                what_to_do(&error)
            );
            problems
                .entry(unwanted.part)
                .or_insert_with(|| PartState::not_ok("DeleteFailed", what.clone()));
            failures.push(what);
        }
    }
    let ready_replicas = ready_replicas(&applied, Part::Server);
    let parts = [Part::Redis, Part::Server, Part::Autoscaling, Part::Alerts]
        .into_iter()
        .map(|part| {
            let state = problems
                .remove(&part)
                .unwrap_or_else(|| observe(ss, part, &applied));
            (part, state)
        })
        .collect();
    Outcome {
        parts,
        failures,
        missing_api,
        ready_replicas,
    }
}

/// The API server's own words for a failed call (its `message`, with the HTTP code), not a
/// debug dump of the client's error.
pub(crate) fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!(
            "the API server said \"{}\" (HTTP {})",
            status.message, status.code
        ),
        other => format!("the API server could not be reached ({other})"),
    }
}

/// A failed call as a readable error: what was being done, the API server's words, and what
/// to do.
pub(crate) fn failed(doing: impl std::fmt::Display, error: &kube::Error) -> anyhow::Error {
    anyhow::anyhow!("{doing}: {}; {}", api_message(error), what_to_do(error))
}

/// What a person can do about a failed call; every failed call is retried with backoff.
pub(crate) fn what_to_do(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            "give the operator's ServiceAccount this permission (the chart's RBAC has it); retrying"
        }
        kube::Error::Api(status) if status.code == 400 || status.code == 422 => {
            "correct the SessionService field it names; retrying"
        }
        kube::Error::Api(status) if status.code == 409 => {
            "another client changed the object at the same time; retrying"
        }
        kube::Error::Api(status)
            if status.code == 500 && status.message.contains("typed patch") =>
        {
            "this API server does not know a field the operator sent; please report it with the server's version; retrying"
        }
        _ => "retrying with backoff",
    }
}

fn missing_api_hint(part: Part) -> &'static str {
    match part {
        Part::Alerts => {
            "install the prometheus-operator CRDs, or turn off spec.monitoring.serviceMonitor and spec.monitoring.prometheusRule"
        }
        Part::Autoscaling => {
            "the API server stopped serving it since the operator last looked; it is retried, or set spec.autoscaling.enabled to false"
        }
        _ => "the other objects are applied; this one is retried",
    }
}

/// Applies `child` (server-side apply, forced: the operator owns these fields) and returns the
/// object as the API server holds it now, typed for the built-in kinds.
async fn apply(client: &Client, namespace: &str, child: &Child) -> Result<Object, kube::Error> {
    Ok(each_object!(
        &child.object,
        object => apply_typed(client, namespace, object).await?.into(),
        resource, object => Object::Dynamic {
            resource: resource.clone(),
            object: apply_to(
                &Api::namespaced_with(client.clone(), namespace, resource),
                object,
            )
            .await?,
        }
    ))
}

async fn apply_typed<K>(client: &Client, namespace: &str, object: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    apply_to(&Api::namespaced(client.clone(), namespace), object).await
}

async fn apply_to<K>(api: &Api<K>, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + std::fmt::Debug + Serialize + DeserializeOwned,
{
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

/// Deletes an object the spec no longer asks for, but only one this operator made: a user's
/// own HPA or ServiceMonitor of the same name is left alone.
async fn delete_if_ours(
    client: &Client,
    namespace: &str,
    unwanted: &resources::Unwanted,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &unwanted.resource);
    let existing = match api.get_opt(&unwanted.name).await {
        Ok(existing) => existing,
        // The API itself is missing: there is nothing to delete.
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        Err(error) => return Err(error),
    };
    let ours = existing.is_some_and(|o| {
        o.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some(MANAGER)
    });
    if ours {
        info!(kind = %unwanted.resource.kind, name = %unwanted.name, "deleting an object the spec turned off");
        match api
            .delete(&unwanted.name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The ready replicas the API server reports for the applied StatefulSet of `Part::Redis` or
/// Deployment of `Part::Server`; `None` when it was not applied.
fn ready_replicas(applied: &[(Part, Object)], part: Part) -> Option<i32> {
    applied.iter().find_map(|(_, object)| {
        let ready = match (part, object) {
            (Part::Redis, Object::StatefulSet(s)) => {
                s.status.as_ref().and_then(|s| s.ready_replicas)
            }
            (Part::Server, Object::Deployment(d)) => {
                d.status.as_ref().and_then(|s| s.ready_replicas)
            }
            _ => return None,
        };
        Some(ready.unwrap_or(0))
    })
}

/// A part whose objects all applied: is it ready, judging by what the API server returned?
fn observe(ss: &SessionService, part: Part, applied: &[(Part, Object)]) -> PartState {
    match part {
        Part::Redis if ss.spec.redis.mode == RedisMode::External => PartState::ok(
            "External",
            "Redis is external; its URL is in the referenced Secret",
        ),
        Part::Redis => {
            let want = redis::pod_count(ss);
            let ready = ready_replicas(applied, Part::Redis).unwrap_or(0);
            if ready < want {
                return PartState::not_ok(
                    "Progressing",
                    format!("{ready} of {want} Redis pods ready"),
                );
            }
            PartState::ok("Ready", format!("{ready} of {want} Redis pods ready"))
        }
        Part::Server => {
            let ready = ready_replicas(applied, Part::Server).unwrap_or(0);
            if ready < 1 {
                PartState::not_ok("Progressing", "no session-service replica is ready yet")
            } else {
                PartState::ok(
                    "Available",
                    format!("{ready} session-service replicas ready"),
                )
            }
        }
        Part::Autoscaling if !ss.spec.autoscaling.enabled => PartState::ok(
            "Disabled",
            "autoscaling is off; the Deployment has fixed replicas",
        ),
        Part::Autoscaling => PartState::ok("Applied", "the HorizontalPodAutoscaler is applied"),
        Part::Alerts => {
            let m = &ss.spec.monitoring;
            if m.service_monitor || m.prometheus_rule || m.dashboards.enabled {
                PartState::ok("Applied", "monitoring objects are applied")
            } else {
                PartState::ok("Disabled", "monitoring objects are turned off")
            }
        }
    }
}

/// Writes the status when it differs from the current one, and records an Event for every
/// condition that changed.
async fn write_status(
    ctx: &Context,
    ss: &SessionService,
    namespace: &str,
    parts: Vec<(Part, PartState)>,
    degradations: &[String],
    mut observed: Observed,
) -> Result<(), Error> {
    observed.redis_endpoint = (ss.spec.redis.mode != RedisMode::External).then(|| {
        let names = Names::of(ss);
        match ss.spec.redis.mode {
            RedisMode::Cluster => format!("{}:6379", names.redis_pod_host(0)),
            _ => format!("{}:6379", names.redis_service_host()),
        }
    });
    let old = ss.status.as_ref();
    let new = status::status(
        &parts,
        degradations,
        ss.metadata.generation,
        old,
        observed,
        Timestamp::now(),
    );
    if old == Some(&new) {
        return Ok(());
    }
    let api: Api<SessionService> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({
        "apiVersion": "sessions.io/v1alpha1",
        "kind": "SessionService",
        "status": new,
    });
    api.patch_status(
        &ss.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Status)?;
    for condition in status::transitions(&new, old) {
        let event = Event {
            type_: if condition.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            // One reason per condition and outcome (`RedisReady`, `RedisNotReady`), so the
            // recorder never folds two conditions into one event series.
            reason: if condition.status == "True" {
                condition.type_.clone()
            } else {
                condition.type_.replacen("Ready", "NotReady", 1).replacen(
                    "Available",
                    "Unavailable",
                    1,
                )
            },
            note: Some(format!("{}: {}", condition.reason, condition.message)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        ctx.publish(ss, event).await;
    }
    Ok(())
}
