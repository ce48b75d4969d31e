//! Grafana dashboards: SLO, hot path and Redis for each SessionService (rendered into a
//! ConfigMap the Grafana sidecar discovers by label), and the operator's own (shipped by the
//! chart).
//!
//! Dashboards are built here, in code, from the same definitions the SLO rules use (the
//! recording rules' names, the burn-rate thresholds, the latency threshold), so a dashboard
//! cannot draw a line the alerts do not use. Every panel queries the data source chosen in the
//! dashboard's `datasource` variable; `$__rate_interval` is Grafana's rate window (four scrape
//! intervals at least).

mod hot_path;
mod operator;
mod panel;
mod redis;
mod slo;

use serde_json::{Value, json};

use kube::ResourceExt;

pub(crate) use panel::{Panel, Unit};

use crate::crd::SessionService;

/// The `session_service` label every sidecar and session-service series carries.
fn service_selector(ss: &SessionService) -> String {
    format!(r#"session_service="{}""#, ss.name_any())
}

/// The dashboards of one SessionService, by file name (`<name>-slo.json`, …).
pub fn for_service(ss: &SessionService) -> Vec<(String, Value)> {
    let name = ss.name_any();
    let namespace = ss.namespace().unwrap_or_else(|| "default".to_owned());
    [
        ("slo", "SLO", slo::panels(ss)),
        ("hot-path", "hot path", hot_path::panels(ss)),
        ("redis", "Redis", redis::panels(ss)),
    ]
    .into_iter()
    .map(|(key, title, panels)| {
        let uid = uid(&format!("sessions-{namespace}-{name}-{key}"));
        let title = format!("Sessions / {namespace}/{name} / {title}");
        (
            format!("{name}-{key}.json"),
            dashboard(&uid, &title, panels),
        )
    })
    .collect()
}

/// The operator's own dashboard: reconciles, errors by reason, leader, webhook admissions and
/// Redis Cluster actions, for every SessionService it manages.
pub fn for_operator() -> Value {
    dashboard(
        "session-operator",
        "Sessions / operator",
        operator::panels(),
    )
}

/// A dashboard uid: Grafana keeps at most 40 characters, so a longer name is shortened and
/// made unique with a digest of the whole.
fn uid(name: &str) -> String {
    if name.len() <= 40 {
        return name.to_owned();
    }
    let digest = crate::resources::digest(name);
    format!("{}-{}", &name[..40 - 13], &digest[..12])
}

/// The dashboard around `panels`, laid out left to right in rows of 24 columns.
fn dashboard(uid: &str, title: &str, panels: Vec<Panel>) -> Value {
    let panels: Vec<Value> = panel::lay_out(panels);
    json!({
        "uid": uid,
        "title": title,
        "tags": ["session-operator"],
        "editable": false,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "timezone": "browser",
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "annotations": {"list": []},
        "templating": {"list": [{
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "options": [],
        }]},
        "panels": panels,
    })
}

/// Every query of a dashboard, with its panel's title: what the tests run against Prometheus.
pub fn queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_owned())))
        })
        .collect()
}
