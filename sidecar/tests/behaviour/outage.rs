//! Redis outages: cached hits keep serving within their maximum age, everything else fails
//! fast with 503 and Retry-After, and the sidecar recovers by itself.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;

use crate::harness::{Kind, Res, TestApp};

/// The outage budget for a refused request: the API promises "fail fast", well under 100 ms.
const FAST: Duration = Duration::from_millis(100);

async fn timed(f: impl std::future::Future<Output = Res>) -> (Res, Duration) {
    let started = Instant::now();
    let res = f.await;
    (res, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_hits_fails_the_rest_fast_and_recovers() {
    // Proves: with Redis dead, cached sessions are served (within their max age), misses and
    // writes get 503 + Retry-After in well under 100 ms, /readyz says 503, and everything works
    // again once Redis is back, without restarting the sidecar.
    let mut app = TestApp::new(Kind::Redis).await;
    let id = app.create_id("u1", json!({})).await;
    // The create's own invalidation must arrive before the fill, or it would drop the entry.
    app.settle().await;
    let path = format!("/v1/sessions/{id}");
    assert_eq!(app.get(&path).await.status, StatusCode::OK);
    app.kill_redis();

    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let (hit, t) = timed(app.get(&path)).await;
        assert_eq!(
            hit.status,
            StatusCode::OK,
            "cached hit {i} during the outage"
        );
        slowest = slowest.max(t);
        let unknown = format!(
            "/v1/sessions/{}",
            session_sidecar::testing::new_session_id(0)
        );
        let (miss, t) = timed(app.get(&unknown)).await;
        assert_eq!(
            (miss.status, miss.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            "miss {i}"
        );
        assert_eq!(miss.headers["retry-after"], "1");
        slowest = slowest.max(t);
        let (write, t) = timed(app.post("/v1/sessions", json!({"user_id": "u2"}))).await;
        assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE, "write {i}");
        slowest = slowest.max(t);
    }
    assert!(
        slowest < FAST,
        "slowest answer during the outage took {slowest:?}"
    );
    assert_eq!(
        app.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(app.metrics.circuit_state.get(), 2, "the breaker is open");
    app.clock.advance_ms(10_000);
    assert_eq!(
        app.get(&path).await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not past the maximum age"
    );

    app.restart_redis();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = app.post("/v1/sessions", json!({"user_id": "u3"})).await;
        if res.status == StatusCode::CREATED {
            let new = res.body["session_id"].as_str().unwrap().to_owned();
            assert_eq!(
                app.get(&format!("/v1/sessions/{new}")).await.status,
                StatusCode::OK
            );
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", res.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    // The restarted Redis is empty; once tracking is back the old entry is flushed too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.get(&path).await.status != StatusCode::NOT_FOUND {
        assert!(
            Instant::now() < deadline,
            "the cache still serves a session Redis no longer has"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("slowest refused or cached answer during the outage: {slowest:?}");
}
