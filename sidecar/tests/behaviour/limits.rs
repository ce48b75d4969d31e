//! The server's request limits: routed requests beyond the concurrency limit are shed at once
//! (503 `overloaded` with `Retry-After`), a request that cannot finish (here: a client that
//! never sends the body it announced) times out with 503 `request_timeout`, both are counted,
//! cache hits keep being served meanwhile, and capacity comes back once the stalled requests
//! are gone.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use session_sidecar::testing::{MAX_IN_FLIGHT, REQUEST_TIMEOUT};
use tower::ServiceExt;

use crate::harness::{Kind, TestApp};

/// A create whose client announced a body and never sends it; `entered` counts the stalled
/// requests that got past the limits (their handler asked for the body).
fn stalled_create(entered: &Arc<AtomicUsize>) -> Request<Body> {
    let (entered, mut counted) = (entered.clone(), false);
    let never = futures::stream::poll_fn(move |_| {
        if !counted {
            counted = true;
            entered.fetch_add(1, Ordering::SeqCst);
        }
        Poll::<Option<Result<Bytes, Infallible>>>::Pending
    });
    Request::builder()
        .method(Method::POST)
        .uri("/v1/sessions")
        .header("content-type", "application/json")
        .header("content-length", "64")
        .body(Body::from_stream(never))
        .unwrap()
}

fn refused(app: &TestApp, reason: &str) -> u64 {
    app.metrics
        .requests_refused
        .with_label_values(&[reason])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_limit_are_shed_and_stalled_ones_time_out() {
    let app = TestApp::new(Kind::Memory).await;
    let hit = format!("/v1/sessions/{}", app.create_id("u1", json!({})).await);
    assert_eq!(
        app.get(&hit).await.status,
        StatusCode::OK,
        "fills the cache"
    );

    let started = Instant::now();
    let entered = Arc::new(AtomicUsize::new(0));
    let stalled: Vec<_> = (0..MAX_IN_FLIGHT)
        .map(|_| tokio::spawn(app.router.clone().oneshot(stalled_create(&entered))))
        .collect();
    // Once every slot is taken, the next routed request is shed at once.
    while entered.load(Ordering::SeqCst) < MAX_IN_FLIGHT {
        assert!(
            started.elapsed() < REQUEST_TIMEOUT,
            "only {} of {MAX_IN_FLIGHT} stalled requests took a slot before the first could time out",
            entered.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_in = started.elapsed();
    let shed = app.get("/v1/users/u1/sessions").await;
    assert_eq!(
        refused(&app, "timeout"),
        0,
        "a stalled request timed out before the shed one was sent: the check proves nothing"
    );
    assert_eq!(
        shed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        shed.body
    );
    assert_eq!(shed.code(), "overloaded", "{}", shed.body);
    assert_eq!(shed.headers["retry-after"], "1");
    assert!(refused(&app, "overloaded") >= 1);
    let recorded = app
        .metrics
        .requests
        .with_label_values(&["/v1/users/{user_id}/sessions", "GET", "503"])
        .get();
    assert!(
        recorded >= 1,
        "shed requests count against the availability SLI"
    );
    // A cached session is still served: the hot path waits on nothing.
    let res = app
        .raw(Request::get(&hit).body(Body::empty()).unwrap())
        .await;
    assert_eq!(res.status, StatusCode::OK, "cache hits are not shed");

    // Each stalled request ends with 503 `request_timeout` after the request timeout.
    for task in stalled {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
    }
    let took = started.elapsed();
    assert!(
        took >= REQUEST_TIMEOUT && took < all_in + REQUEST_TIMEOUT + Duration::from_secs(3),
        "timed out after {took:?}, every slot taken after {all_in:?}"
    );
    assert_eq!(refused(&app, "timeout"), MAX_IN_FLIGHT as u64);
    // Capacity is back: a new stalled request waits (and times out) instead of being shed,
    // and a normal request succeeds at once.
    let late = app.raw(stalled_create(&entered)).await;
    assert_eq!(late.code(), "request_timeout", "{}", late.body);
    app.create_id("u2", json!({})).await;
}
