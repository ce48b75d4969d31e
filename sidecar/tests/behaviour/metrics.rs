//! `/metrics`: the series the SLO rules and dashboards rely on.

use serde_json::json;

use crate::both_backends;
use crate::harness::{Kind, TestApp};

both_backends!(metrics_expose_requests_latency_cache_and_store);

async fn metrics_expose_requests_latency_cache_and_store(kind: Kind) {
    // Proves: request counts by route template/method/code, a latency histogram whose buckets
    // include the SLO thresholds, cache and Redis series, all labelled with session_service.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    app.settle().await;
    app.get(&format!("/v1/sessions/{id}")).await;
    app.get(&format!("/v1/sessions/{id}")).await;
    app.get(&format!(
        "/v1/sessions/{}",
        session_sidecar::testing::new_session_id(0)
    ))
    .await;
    let res = app.get("/metrics").await;
    assert!(
        res.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = res.body.as_str().unwrap().to_owned();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(
        series
            .iter()
            .all(|l| l.contains(r#"session_service="test""#)),
        "every series is labelled"
    );
    let find = |name: &str, labels: &[&str]| -> f64 {
        let line = series
            .iter()
            .find(|l| {
                l.starts_with(&format!("{name}{{")) && labels.iter().all(|want| l.contains(want))
            })
            .unwrap_or_else(|| panic!("no {name} with {labels:?} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let route = r#"route="/v1/sessions/{session_id}""#;
    assert_eq!(
        find(
            "session_requests_total",
            &[route, r#"method="GET""#, r#"code="200""#]
        ),
        2.0
    );
    assert_eq!(
        find("session_requests_total", &[route, r#"code="404""#]),
        1.0
    );
    assert_eq!(
        find(
            "session_requests_total",
            &[
                r#"route="/v1/sessions""#,
                r#"method="POST""#,
                r#"code="201""#
            ]
        ),
        1.0
    );
    for le in ["0.001", "0.005", "0.01", "0.025", "0.05", "0.1"] {
        find(
            "session_request_duration_seconds_bucket",
            &[route, &format!(r#"le="{le}""#)],
        );
    }
    assert_eq!(
        find("session_request_duration_seconds_count", &[route]),
        3.0
    );
    assert_eq!(find("session_cache_hits_total", &[]), 1.0);
    assert_eq!(find("session_cache_misses_total", &[]), 2.0);
    assert_eq!(find("session_cache_entries", &[]), 2.0);
    assert!(find("session_cache_bytes", &[]) > 300.0);
    find("session_cache_invalidations_total", &[]);
    find("session_cache_flushes_total", &[]);
    assert_eq!(find("session_cache_tracking_connected", &[]), 1.0);
    if kind == Kind::Redis {
        assert!(
            find(
                "session_redis_command_duration_seconds_count",
                &[r#"op="read""#]
            ) >= 2.0
        );
        assert!(
            find(
                "session_redis_command_duration_seconds_count",
                &[r#"op="commit""#]
            ) >= 1.0
        );
        assert_eq!(find("session_circuit_breaker_state", &[]), 0.0);
    }
    assert!(!text.contains(&id), "session ids never appear in metrics");
}
