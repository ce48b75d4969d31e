//! Sidecar injection: one pure function turns a pod (or a workload's pod template) and its
//! SessionService into the JSON patch that adds `session-sidecar`. The admission webhook sends
//! that patch to the API server; `session-operator inject` applies it to manifests offline.

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, PodSpec, SeccompProfile, Volume,
};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::capabilities::Capabilities;
use crate::crd::SessionService;
use crate::resources::container_security;
use crate::resources::redis::RedisUser;
use crate::resources::server::{SESSION_UID, http_probe, session_env, session_volumes};

/// The injected container's name; its presence makes injection a no-op.
pub const CONTAINER: &str = "session-sidecar";
/// Set on injected pods: the SessionService they were injected for.
pub(crate) const INJECTED_ANNOTATION: &str = "sessions.io/injected";
/// Where the sidecar serves the application (loopback) and its probes and metrics.
pub(crate) const LISTEN: &str = "127.0.0.1:7070";
pub(crate) const ADMIN_PORT: i32 = 7071;

/// The sidecar container for `ss`; a native sidecar (`restartPolicy: Always`) when `native`.
pub fn sidecar_container(ss: &SessionService, native: bool) -> Container {
    let sidecar = &ss.spec.sidecar;
    let value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![
        value("SESSION_MODE", "sidecar".to_owned()),
        value("SESSION_LISTEN", LISTEN.to_owned()),
        value("SESSION_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}")),
        value(
            "SESSION_CACHE_MAX_BYTES",
            sidecar.cache_max_bytes.to_string(),
        ),
        value(
            "SESSION_CACHE_MAX_AGE_MS",
            sidecar.cache_max_age_ms.to_string(),
        ),
        // One runtime thread: a sidecar shares the pod's CPU with the application.
        value("SESSION_WORKER_THREADS", "1".to_owned()),
    ];
    env.extend(session_env(ss, RedisUser::Sidecar));
    let mut security = container_security();
    security.run_as_user = Some(SESSION_UID);
    security.run_as_group = Some(SESSION_UID);
    security.seccomp_profile = Some(SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    });
    let admin_probe = |path: &str, period: i32| {
        let mut probe = http_probe(path, period);
        if let Some(get) = probe.http_get.as_mut() {
            get.port = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                "session-admin".to_owned(),
            );
        }
        probe
    };
    let mut startup = admin_probe("/healthz", 1);
    startup.failure_threshold = Some(30);
    Container {
        name: CONTAINER.to_owned(),
        image: Some(sidecar.image.clone()),
        restart_policy: native.then(|| "Always".to_owned()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("session-admin".to_owned()),
            container_port: ADMIN_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: Some(sidecar.resources.clone()),
        startup_probe: Some(startup),
        liveness_probe: Some(admin_probe("/healthz", 10)),
        readiness_probe: Some(admin_probe("/readyz", 5)),
        security_context: Some(security),
        volume_mounts: Some(
            session_volumes(ss, RedisUser::Sidecar)
                .into_iter()
                .map(|(_, mount)| mount)
                .collect(),
        ),
        ..Container::default()
    }
}

/// `/` and `~` escaped for a JSON pointer segment.
fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON patch that injects the sidecar into the pod template at `prefix` (`""` for a Pod,
/// `/spec/template` for a workload, `/spec/jobTemplate/spec/template` for a CronJob) of
/// `object`; `None` when it already has one. The sidecar is native where `api` supports it
/// and the SessionService does not say otherwise.
pub(crate) fn patch(
    object: &Value,
    prefix: &str,
    ss: &SessionService,
    api: &Capabilities,
) -> anyhow::Result<Option<json_patch::Patch>> {
    let template = object
        .pointer(prefix)
        .context("the object has no pod template")?;
    let spec: PodSpec =
        serde_json::from_value(template.get("spec").cloned().unwrap_or(Value::Null))
            .context("the pod spec is not valid")?;
    let has_sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == CONTAINER);
    if has_sidecar {
        return Ok(None);
    }
    let native = api.native_sidecar(ss);
    let container = serde_json::to_value(sidecar_container(ss, native))?;
    let mut ops = Vec::new();
    let name = ss.name_any();
    // Annotate the pod as injected, and label it for the Redis NetworkPolicy (the webhook's
    // pods carry the label already: it is what asked for the sidecar).
    let marks = [
        ("annotations", INJECTED_ANNOTATION),
        ("labels", crate::INJECT_LABEL),
    ];
    if template.get("metadata").is_none() {
        let metadata: serde_json::Map<String, Value> = marks
            .iter()
            .map(|(field, key)| (field.to_string(), json!({*key: name})))
            .collect();
        ops.push(json!({"op": "add", "path": format!("{prefix}/metadata"), "value": metadata}));
    } else {
        for (field, key) in marks {
            let map = template.pointer(&format!("/metadata/{field}"));
            if map.and_then(|m| m.get(key)).and_then(Value::as_str) == Some(name.as_str()) {
                continue;
            }
            ops.push(match map {
                Some(_) => json!({"op": "add", "path": format!("{prefix}/metadata/{field}/{}", pointer_segment(key)), "value": name}),
                None => json!({"op": "add", "path": format!("{prefix}/metadata/{field}"), "value": {key: name}}),
            });
        }
    }
    if native {
        // First among the init containers, so it serves before any of them runs.
        match spec.init_containers {
            Some(_) => ops.push(json!({"op": "add", "path": format!("{prefix}/spec/initContainers/0"), "value": container})),
            None => ops.push(json!({"op": "add", "path": format!("{prefix}/spec/initContainers"), "value": [container]})),
        }
    } else {
        ops.push(
            json!({"op": "add", "path": format!("{prefix}/spec/containers/-"), "value": container}),
        );
    }
    let volumes = session_volumes(ss, RedisUser::Sidecar)
        .into_iter()
        .map(|(volume, _)| serde_json::to_value::<Volume>(volume))
        .collect::<Result<Vec<_>, _>>()?;
    match spec.volumes {
        Some(_) => ops.extend(volumes.into_iter().map(
            |volume| json!({"op": "add", "path": format!("{prefix}/spec/volumes/-"), "value": volume}),
        )),
        None => ops.push(
            json!({"op": "add", "path": format!("{prefix}/spec/volumes"), "value": volumes}),
        ),
    }
    Ok(Some(serde_json::from_value(Value::Array(ops))?))
}

/// Where the pod template of a kind lives; `None` for kinds that run no pods.
pub(crate) fn template_prefix(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects the sidecar into every workload of a multi-document manifest, as the webhook
/// would on a server with the capabilities `api`; other documents pass through unchanged.
pub fn inject_documents(
    documents: Vec<Value>,
    ss: &SessionService,
    api: &Capabilities,
) -> anyhow::Result<Vec<Value>> {
    documents
        .into_iter()
        .enumerate()
        .map(|(index, mut document)| {
            let kind = document.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
            let Some(prefix) = template_prefix(&kind) else {
                return Ok(document);
            };
            let namespace = document.pointer("/metadata/namespace").and_then(Value::as_str);
            if let (Some(ns), Some(ss_ns)) = (namespace, ss.namespace())
                && ns != ss_ns
            {
                bail!(
                    "document {} ({kind}) is in namespace {ns}, but SessionService {} is in {ss_ns}: the sidecar reads its Secrets, which must be in the pod's namespace",
                    index + 1,
                    ss.name_any()
                );
            }
            if let Some(patch) = patch(&document, prefix, ss, api).with_context(|| format!("document {} ({kind})", index + 1))? {
                json_patch::patch(&mut document, &patch)
                    .with_context(|| format!("document {} ({kind})", index + 1))?;
            }
            Ok(document)
        })
        .collect()
}
