//! The cluster-mode part of a reconcile: find the Redis pods, run one pass of the cluster
//! manager against them, and turn its report into the `RedisReady` state, Events and metrics.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::events::{Event, EventType};
use tracing::{info, warn};

use super::Context;
use super::status::PartState;
use crate::cluster::{self, Access, Member, Phase, Shape, placement};
use crate::crd::{RedisClusterStatus, SessionService};
use crate::resources::{Names, Secrets, redis, selector_query};

/// Recheck period while the cluster manager has work in progress (joining, moving slots).
pub(crate) const CLUSTER_STEP: Duration = Duration::from_secs(2);

/// What the pass found.
pub(crate) struct ClusterPass {
    pub state: PartState,
    /// Pods the StatefulSet must keep beyond the spec's count: while nodes that go are being
    /// drained, and — whenever the manager could not look at the cluster — as many as it has
    /// now, so a StatefulSet is only ever shrunk on the manager's word.
    pub hold_pods: Option<i32>,
    /// When to look again.
    pub recheck: Duration,
    /// The cluster as its nodes reported it (none when the manager could not look).
    pub topology: Option<RedisClusterStatus>,
}

impl ClusterPass {
    fn waiting(reason: &str, message: impl Into<String>, hold_pods: Option<i32>) -> Self {
        Self {
            state: PartState::not_ok(reason, message),
            hold_pods,
            recheck: CLUSTER_STEP,
            topology: None,
        }
    }
}

/// One pass of the cluster manager for `ss`.
pub(crate) async fn pass(
    ctx: &Context,
    ss: &SessionService,
    namespace: &str,
    secrets: &Secrets,
) -> ClusterPass {
    let names = Names::of(ss);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let statefulset = match Api::<StatefulSet>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&names.redis())
        .await
    {
        Ok(sts) => sts,
        Err(error) => {
            let message = format!(
                "could not read the Redis StatefulSet {namespace}/{}: {}",
                names.redis(),
                super::api_message(&error)
            );
            return ClusterPass::waiting("StatefulSetReadFailed", message, None);
        }
    };
    let current = statefulset.as_ref().and_then(|s| s.spec.replicas);
    // The revision pods should run; a pod on another one waits for its turn to roll.
    let update_revision = statefulset
        .and_then(|s| s.status)
        .and_then(|s| s.update_revision);
    let labels = selector_query(ss, "redis");
    let list = match pods.list(&ListParams::default().labels(&labels)).await {
        Ok(list) => list,
        Err(error) => {
            let message = format!(
                "could not list the Redis pods of {}/{}: {}; check the operator's RBAC (pods: list)",
                namespace,
                ss.name_any(),
                super::api_message(&error)
            );
            return ClusterPass::waiting("PodListFailed", message, current);
        }
    };
    let prefix = format!("{}-", names.redis());
    let port = u16::try_from(redis::PORT).unwrap_or(6379);
    let mut members: Vec<Member> = Vec::new();
    for pod in &list.items {
        let Some(ordinal) = pod
            .name_any()
            .strip_prefix(&prefix)
            .and_then(|o| o.parse::<i32>().ok())
        else {
            continue;
        };
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        if let (Some(ip), None) = (ip, pod.metadata.deletion_timestamp.as_ref()) {
            let revision = pod.labels().get("controller-revision-hash");
            members.push(Member {
                ordinal,
                ip,
                port,
                host: Some(names.redis_pod_host(ordinal)),
                outdated: update_revision
                    .as_ref()
                    .is_some_and(|want| revision.is_some_and(|have| have != want)),
            });
        }
    }
    let wanted = redis::pod_count(ss);
    let absent: Vec<(i32, String)> = (0..wanted)
        .filter(|o| !members.iter().any(|m| m.ordinal == *o))
        .map(|o| {
            (
                o,
                "the pod has no IP yet (starting, or not scheduled)".to_owned(),
            )
        })
        .collect();
    if members.is_empty() {
        return ClusterPass::waiting(
            "Progressing",
            format!("waiting for the {wanted} Redis pods to start"),
            current,
        );
    }
    let access = match access(ctx, ss, namespace, secrets).await {
        Ok(access) => access,
        Err(message) => return ClusterPass::waiting("TlsSecretUnreadable", message, current),
    };
    let shape = Shape {
        masters: usize::try_from(ss.spec.redis.shards).unwrap_or(3),
        replicas: usize::try_from(ss.spec.redis.replicas_per_shard).unwrap_or(0),
        data_slots: placement::data_slots(u32::try_from(ss.spec.shard_count()).unwrap_or(1)),
    };
    let report = cluster::converge_once(&members, &absent, &access, &shape).await;
    record(ctx, ss, &report).await;
    if let Some(ordinal) = report.restart {
        let pod = format!("{prefix}{ordinal}");
        info!(session_service = %ss.name_any(), %pod, "restarting a Redis pod onto the new template");
        if let Err(error) = pods.delete(&pod, &DeleteParams::default()).await {
            warn!(%pod, error = %super::api_message(&error), "could not delete the Redis pod; retrying on the next pass");
        }
    }
    let plan = &report.plan;
    let mut message = plan.message.clone();
    if let Some(error) = &report.error {
        message = format!("{message}; a step failed and is retried: {error}");
    }
    let state = if plan.phase == Phase::Ready {
        PartState::ok(plan.phase.reason(), message)
    } else {
        PartState::not_ok(plan.phase.reason(), message)
    };
    let recheck = match plan.phase {
        Phase::Ready => super::RESYNC,
        Phase::Degraded | Phase::ScaleInBlocked => Duration::from_secs(5),
        _ => CLUSTER_STEP,
    };
    ClusterPass {
        state,
        hold_pods: i32::try_from(plan.hold_pods).ok(),
        recheck,
        topology: Some(report.topology),
    }
}

/// How the operator connects to the Redis pods: as the admin user, over TLS with the CA of
/// the Redis certificate when TLS is on.
pub(super) async fn access(
    ctx: &Context,
    ss: &SessionService,
    namespace: &str,
    secrets: &Secrets,
) -> Result<Access, String> {
    let tls = &ss.spec.redis.tls;
    let tls_ca = match (&tls.secret_name, tls.enabled) {
        (Some(name), true) => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            let secret = api.get(name).await.map_err(|e| {
                format!(
                    "could not read the Redis TLS Secret {namespace}/{name}: {}",
                    super::api_message(&e)
                )
            })?;
            let ca = secret
                .data
                .and_then(|mut d| d.remove("ca.crt"))
                .ok_or_else(|| format!("the Redis TLS Secret {namespace}/{name} has no ca.crt"))?;
            Some(ca.0)
        }
        _ => None,
    };
    Ok(Access {
        credentials: Some((
            redis::RedisUser::Admin.name().to_owned(),
            secrets.redis.admin.clone(),
        )),
        tls_ca,
    })
}

/// Metrics, a log line and one Event for what the pass did.
async fn record(ctx: &Context, ss: &SessionService, report: &cluster::Report) {
    let m = &ctx.metrics;
    let (namespace, name) = (ss.namespace().unwrap_or_default(), ss.name_any());
    m.cluster_step(&namespace, &name, "slot_moved", report.slots_moved);
    m.cluster_step(&namespace, &name, "failover", report.failovers);
    m.cluster_step(&namespace, &name, "meet", report.meets);
    m.cluster_keys_moved
        .with_label_values(&[&namespace, &name])
        .inc_by(u64::try_from(report.keys_moved).unwrap_or(0));
    if !report.done.is_empty() {
        let note = summary(report);
        info!(session_service = %ss.name_any(), phase = report.plan.phase.reason(), steps = report.done.len(), "{note}");
        let event = Event {
            type_: EventType::Normal,
            reason: format!("RedisCluster{}", report.plan.phase.reason()),
            note: Some(note),
            action: "ManageRedisCluster".to_owned(),
            secondary: None,
        };
        ctx.publish(ss, event).await;
    }
    if let Some(error) = &report.error {
        let event = Event {
            type_: EventType::Warning,
            reason: "RedisClusterStepFailed".to_owned(),
            note: Some(format!(
                "{}: {error}; the operator retries on its next pass",
                report.plan.message
            )),
            action: "ManageRedisCluster".to_owned(),
            secondary: None,
        };
        ctx.publish(ss, event).await;
    }
}

/// The steps of one pass in one sentence: the first few, then a count.
fn summary(report: &cluster::Report) -> String {
    const SHOWN: usize = 3;
    let mut text = report
        .done
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if report.done.len() > SHOWN {
        text.push_str(&format!("; and {} more step(s)", report.done.len() - SHOWN));
    }
    if report.slots_moved > 0 {
        text.push_str(&format!(
            " ({} slot(s), {} key(s) moved)",
            report.slots_moved, report.keys_moved
        ));
    }
    format!("{}: {text}", report.plan.message)
}
