//! End to end with a real Prometheus: it scrapes a running sidecar's admin port (as the
//! PodMonitor has it do), loads the operator's generated SLO rules, and evaluates them on the
//! sidecar's real series, selected by the `session_service` label.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::prometheus::{Prometheus, Sidecar, http};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_sidecar_and_evaluates_the_generated_slo_rules() {
    let ss = common::example("sessionservice-standalone.yaml");
    let sidecar = Sidecar::start("sessions", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(
        dir.path(),
        &session_operator::testing::slo::rule_groups(&ss),
        &[sidecar.admin],
    );
    let api = sidecar.api;

    // Traffic while Prometheus scrapes: creates, hits and 404s.
    let traffic = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            let (status, body) = http(
                api,
                "POST",
                "/v1/sessions",
                Some(serde_json::json!({"user_id": "alice"})),
            );
            if status == 201 {
                let id = serde_json::from_str::<Value>(&body).unwrap()["session_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(http(api, "GET", &format!("/v1/sessions/{id}"), None).0, 200);
            }
            let unknown = session_sidecar::testing::new_session_id(0);
            assert_eq!(
                http(api, "GET", &format!("/v1/sessions/{unknown}"), None).0,
                404
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });

    let (requests, errors, slow) = tokio::task::block_in_place(|| {
        let query = |q| prometheus.query_until(q, |r| !r.is_empty());
        (
            query(r#"session_requests_total{session_service="sessions"}"#),
            query(r#"session_service:request_errors:ratio_rate5m{session_service="sessions"}"#),
            query(r#"session_service:request_slow:ratio_rate5m{session_service="sessions"}"#),
        )
    });
    traffic.await.unwrap();
    let routes: Vec<&str> = requests
        .iter()
        .filter_map(|s| s["metric"]["route"].as_str())
        .collect();
    assert!(routes.contains(&"/v1/sessions"), "{routes:?}");
    assert_eq!(errors[0]["value"][1], "0", "no 5xx: {errors:?}");
    let slow: f64 = slow[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!((0.0..=1.0).contains(&slow), "a ratio: {slow}");
    // Every alert rule loaded and evaluated without error.
    let (_, rules) = http(prometheus.port, "GET", "/api/v1/rules?type=alert", None);
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let alerts: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(alerts.len(), 4);
    for alert in alerts {
        assert_eq!(alert["health"], "ok", "{alert}");
        assert_eq!(alert["state"], "inactive", "{alert}");
    }
    // What `session-operator status --prometheus` shows: the SLIs of every window with data,
    // and their burn rates.
    let slis = session_operator::testing::status_report::slis(&prometheus.url(), &ss)
        .await
        .unwrap();
    let short = &slis[0];
    assert_eq!(short.window, "5m");
    assert_eq!(short.availability, Some(1.0), "no 5xx: {short:?}");
    assert_eq!(short.availability_burn, Some(0.0));
    let latency = short.latency.expect("latency SLI over 5m");
    assert!((0.0..=1.0).contains(&latency), "{short:?}");
    assert!(short.latency_burn.is_some_and(|b| b >= 0.0));
    let refused =
        session_operator::testing::status_report::query(&prometheus.url(), "not a query(").await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("refused the query")),
        "a bad query is reported in words"
    );
    sidecar.stop().await;
}
