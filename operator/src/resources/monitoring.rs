//! Prometheus-operator objects: the ServiceMonitor of the session service, the PodMonitor of
//! the injected sidecars, and the PrometheusRule with its SLO rules. Built as dynamic objects: their types come from a CRD
//! that may not be installed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::{BuildError, Desired, Names, Part, meta};
use crate::crd::SessionService;

pub(crate) fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

pub(crate) fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor"),
        "podmonitors",
    )
}

pub(crate) fn prometheus_rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule"),
        "prometheusrules",
    )
}

pub(crate) fn build(ss: &SessionService, out: &mut Desired) -> Result<(), BuildError> {
    let names = Names::of(ss);
    let monitoring = &ss.spec.monitoring;
    let object = |resource: &ApiResource, name: String, data: serde_json::Value| {
        let mut metadata = meta(ss, name.clone(), "server");
        if let Some(labels) = metadata.labels.as_mut() {
            labels.extend(monitoring.labels.clone());
        }
        let mut object = DynamicObject::new(&name, resource).data(data);
        object.metadata = metadata;
        object
    };
    let monitor = service_monitor_resource();
    let pods = pod_monitor_resource();
    if monitoring.service_monitor {
        let data = serde_json::json!({"spec": {
            "selector": {"matchLabels": super::selector(ss, "server")},
            "namespaceSelector": {"matchNames": [names.namespace]},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        }});
        out.add_dynamic(
            Part::Alerts,
            monitor.clone(),
            object(&monitor, names.server(), data),
        );
        // The injected sidecars serve their metrics on the admin port of the app pods.
        let data = serde_json::json!({"spec": {
            "selector": {"matchLabels": {crate::INJECT_LABEL: names.base}},
            "namespaceSelector": {"matchNames": [names.namespace]},
            "podMetricsEndpoints": [{"port": "session-admin", "path": "/metrics", "interval": "30s"}],
        }});
        out.add_dynamic(
            Part::Alerts,
            pods.clone(),
            object(&pods, names.sidecars(), data),
        );
    } else {
        out.remove(Part::Alerts, monitor, names.server());
        out.remove(Part::Alerts, pods, names.sidecars());
    }
    let rule = prometheus_rule_resource();
    if monitoring.prometheus_rule {
        let data = serde_json::json!({"spec": {"groups": crate::slo::rule_groups(ss)}});
        out.add_dynamic(
            Part::Alerts,
            rule.clone(),
            object(&rule, names.prometheus_rule(), data),
        );
    } else {
        out.remove(Part::Alerts, rule, names.prometheus_rule());
    }
    let dashboards = &monitoring.dashboards;
    if dashboards.enabled {
        out.add(Part::Alerts, dashboards_config_map(ss, &names)?);
    } else {
        out.remove(
            Part::Alerts,
            ApiResource::erase::<ConfigMap>(&()),
            names.dashboards(),
        );
    }
    Ok(())
}

/// The dashboards, one JSON file each, under the labels Grafana's sidecar discovers.
fn dashboards_config_map(ss: &SessionService, names: &Names) -> Result<ConfigMap, BuildError> {
    let settings = &ss.spec.monitoring.dashboards;
    let mut metadata = meta(ss, names.dashboards(), "server");
    if let Some(labels) = metadata.labels.as_mut() {
        labels.extend(settings.labels.clone());
    }
    metadata.annotations = settings
        .folder
        .as_ref()
        .map(|folder| BTreeMap::from([("grafana_folder".to_owned(), folder.clone())]));
    let mut data = BTreeMap::new();
    for (file, dashboard) in crate::dashboards::for_service(ss) {
        let text = serde_json::to_string(&dashboard).map_err(|source| BuildError {
            kind: "dashboards ConfigMap".to_owned(),
            source,
        })?;
        data.insert(file, text);
    }
    Ok(ConfigMap {
        metadata,
        data: Some(data),
        ..ConfigMap::default()
    })
}
