//! The SLO rules under the real `promtool`: they parse, and each alert fires at a high burn
//! rate and stays silent at a low one, for the default objectives and for non-default ones.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{example, run_tool};
use serde_json::{Value, json};
use session_operator::crd::SessionService;
use session_operator::testing::slo::{alert_name, rule_groups};

/// Requests per minute in every scenario.
const RATE: f64 = 10_000.0;

fn write_rules(dir: &std::path::Path, ss: &SessionService) -> std::path::PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({"groups": rule_groups(ss)})).unwrap(),
    )
    .unwrap();
    path
}

/// A scenario: the share of 5xx and of slow requests, as multiples of each error budget.
struct Scenario {
    availability_burn: f64,
    latency_burn: f64,
    minutes: u32,
    /// Alerts expected to fire at the end, as (slo, severity).
    firing: &'static [(&'static str, &'static str)],
}

fn counter(per_minute: f64, minutes: u32) -> String {
    format!("0+{per_minute}x{minutes}")
}

fn test_file(ss: &SessionService, scenario: &Scenario) -> Value {
    let name = ss.metadata.name.clone().unwrap();
    let slo = &ss.spec.slo;
    let errors = RATE * scenario.availability_burn * (1.0 - slo.availability_objective / 100.0);
    let slow = RATE * scenario.latency_burn * (1.0 - slo.latency_objective / 100.0);
    let labels = format!(r#"session_service="{name}",route="/v1/sessions/{{id}}",method="GET""#);
    let le = slo.latency_threshold_seconds;
    let m = scenario.minutes;
    let input_series = json!([
        {"series": format!("session_requests_total{{{labels},code=\"200\"}}"), "values": counter(RATE - errors, m)},
        {"series": format!("session_requests_total{{{labels},code=\"503\"}}"), "values": counter(errors, m)},
        {"series": format!("session_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}"), "values": counter(RATE - slow, m)},
        {"series": format!("session_request_duration_seconds_count{{{labels}}}"), "values": counter(RATE, m)},
        // Failing probes are not user traffic and must not page anyone.
        {"series": format!("session_requests_total{{session_service=\"{name}\",route=\"/readyz\",method=\"GET\",code=\"503\"}}"), "values": counter(RATE, m)},
        // Another SessionService's errors are not ours.
        {"series": "session_requests_total{session_service=\"other\",route=\"/v1/sessions/{id}\",method=\"GET\",code=\"500\"}", "values": counter(RATE, m)},
    ]);
    let groups = rule_groups(ss);
    let rules: Vec<&Value> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r.get("alert").is_some())
        .collect();
    let alert_tests: Vec<Value> = rules
        .iter()
        .map(|rule| {
            let fires = scenario.firing.iter().any(|(slo, severity)| {
                rule["alert"] == alert_name(slo, severity)
            });
            let expected = if fires {
                json!([{"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}])
            } else {
                json!([])
            };
            json!({"eval_time": format!("{m}m"), "alertname": rule["alert"], "exp_alerts": expected})
        })
        .collect();
    json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": alert_tests}],
    })
}

fn check(ss: &SessionService, scenarios: &[Scenario]) {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), ss);
    let (ok, out) = run_tool("promtool", &["check", "rules", rules.to_str().unwrap()]);
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS: 18 rules found"), "{out}");
    for (i, scenario) in scenarios.iter().enumerate() {
        let path = dir.path().join(format!("test-{i}.yaml"));
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&test_file(ss, scenario)).unwrap(),
        )
        .unwrap();
        let (ok, out) = run_tool("promtool", &["test", "rules", path.to_str().unwrap()]);
        assert!(
            ok,
            "scenario {i} (availability burn {}, latency burn {}):\n{out}",
            scenario.availability_burn, scenario.latency_burn
        );
    }
}

/// A fast burn pages (and, being above the slow thresholds too, opens a ticket); a steady
/// moderate burn only opens a ticket; a burn below 1 is silent, probes and other services'
/// errors included.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        availability_burn: 20.0,
        latency_burn: 0.0,
        minutes: 30,
        firing: &[("availability", "page"), ("availability", "ticket")],
    },
    Scenario {
        availability_burn: 0.0,
        latency_burn: 20.0,
        minutes: 30,
        firing: &[("latency", "page"), ("latency", "ticket")],
    },
    Scenario {
        availability_burn: 4.0,
        latency_burn: 4.0,
        minutes: 120,
        firing: &[("availability", "ticket"), ("latency", "ticket")],
    },
    Scenario {
        availability_burn: 0.5,
        latency_burn: 0.5,
        minutes: 360,
        firing: &[],
    },
];

#[test]
fn alerts_fire_and_stay_silent_with_the_default_objectives() {
    check(&example("sessionservice-standalone.yaml"), SCENARIOS);
}

#[test]
fn alerts_follow_non_default_objectives_thresholds_and_windows() {
    // 99.95% availability, 99.5% under 25 ms, over 28 days.
    check(&example("sessionservice-cluster.yaml"), SCENARIOS);
}

#[test]
fn the_prometheus_rule_holds_the_same_groups() {
    let objects = common::rendered("sessionservice-standalone.yaml");
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .unwrap();
    assert_eq!(
        rule["spec"]["groups"],
        rule_groups(&example("sessionservice-standalone.yaml"))
    );
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
}
