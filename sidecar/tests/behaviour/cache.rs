//! The hot path's local cache: hits, single-flight, expiry, negative caching, and coherence
//! across sidecars through Redis client tracking.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::harness::{Kind, TestApp};

both_backends!(
    lookups_are_cached_and_local_writes_invalidate,
    concurrent_misses_share_one_store_read,
    cached_entries_never_outlive_the_session_or_the_max_age,
    unknown_ids_are_cached_briefly,
);

#[tokio::test]
async fn a_cached_lookup_with_a_correlation_id_goes_through_the_router() {
    // Proves: the hot path answers a plain cached lookup itself (no correlation id made up for
    // a read), and leaves one that carries `x-correlation-id` (in any letter case) to the
    // router, which echoes it; both bodies are the cached session.
    let app = TestApp::new(Kind::Memory).await;
    let path = format!("/v1/sessions/{}", app.create_id("u1", json!({})).await);
    let filled = app.get(&path).await;
    let plain = app.get(&path).await;
    assert_eq!(plain.body, filled.body);
    assert!(
        !plain.headers.contains_key("x-correlation-id"),
        "{:?}",
        plain.headers
    );
    let traced = app
        .raw(
            Request::get(&path)
                .header("X-Correlation-ID", "lookup-42")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(traced.status, StatusCode::OK);
    assert_eq!(traced.body, filled.body);
    assert_eq!(traced.headers["x-correlation-id"], "lookup-42");
    assert_eq!(
        app.metrics.cache_hits.get(),
        2,
        "both answered from the cache"
    );
}

async fn lookups_are_cached_and_local_writes_invalidate(kind: Kind) {
    // Proves: a second lookup is a hit; this process's own writes are visible at once.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    app.settle().await;
    let path = format!("/v1/sessions/{id}");
    let first = app.get(&path).await;
    let second = app.get(&path).await;
    assert_eq!(first.body, second.body);
    assert_eq!(
        (app.metrics.cache_misses.get(), app.metrics.cache_hits.get()),
        (1, 1)
    );
    assert_eq!(second.headers["content-type"], "application/json");
    app.patch(&path, json!({"data": {"n": 2}})).await;
    assert_eq!(app.get(&path).await.body["data"]["n"], 2);
    app.end(&id, json!({"performer_id": "u1"})).await;
    assert_eq!(app.get(&path).await.body["status"], "ended");
    app.create_id("u1", json!({})).await;
    app.delete(&path).await;
    assert_eq!(app.get(&path).await.status, StatusCode::NOT_FOUND);
}

async fn concurrent_misses_share_one_store_read(kind: Kind) {
    // Proves: 50 concurrent lookups of an uncached id cause one store read.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    app.settle().await;
    let path = format!("/v1/sessions/{id}");
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (router, uri) = (app.router.clone(), path.clone());
        lookups.spawn(async move {
            let req = axum::http::Request::get(uri)
                .body(axum::body::Body::empty())
                .unwrap();
            tower::ServiceExt::oneshot(router, req)
                .await
                .unwrap()
                .status()
        });
    }
    while let Some(status) = lookups.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(app.metrics.cache_misses.get(), 1);
    assert_eq!(app.metrics.cache_hits.get(), 49);
}

async fn cached_entries_never_outlive_the_session_or_the_max_age(kind: Kind) {
    // Proves: a cached session is not served past its expires_at nor past the maximum age.
    let app = TestApp::new(kind).await;
    let short = app.create_id("u1", json!({"ttl_seconds": 5})).await;
    let long = app.create_id("u1", json!({})).await;
    app.settle().await;
    assert_eq!(
        app.get(&format!("/v1/sessions/{short}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{long}")).await.status,
        StatusCode::OK
    );
    app.clock.advance_ms(5_000);
    assert_eq!(
        app.get(&format!("/v1/sessions/{short}")).await.status,
        StatusCode::NOT_FOUND
    );
    let misses = app.metrics.cache_misses.get();
    assert_eq!(
        app.get(&format!("/v1/sessions/{long}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.metrics.cache_misses.get(),
        misses,
        "still within the maximum age"
    );
    app.clock.advance_ms(5_000);
    assert_eq!(
        app.get(&format!("/v1/sessions/{long}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.metrics.cache_misses.get(),
        misses + 1,
        "re-read after the maximum age"
    );
}

async fn unknown_ids_are_cached_briefly(kind: Kind) {
    // Proves: a 404 is remembered for the negative TTL, as a proper problem response.
    let app = TestApp::new(kind).await;
    let path = format!(
        "/v1/sessions/{}",
        session_sidecar::testing::new_session_id(1)
    );
    for _ in 0..3 {
        let res = app.get(&path).await;
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::NOT_FOUND, "not_found")
        );
        assert_eq!(res.headers["content-type"], "application/problem+json");
    }
    assert_eq!(
        (app.metrics.cache_misses.get(), app.metrics.cache_hits.get()),
        (1, 2)
    );
    app.clock.advance_ms(1_000);
    app.get(&path).await;
    assert_eq!(app.metrics.cache_misses.get(), 2);
}

/// Polls `check` until it holds; returns how long that took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_by_another_sidecar_reach_this_cache() {
    // Proves: when another process updates, ends or deletes a session, this sidecar stops
    // serving the old version within milliseconds (Redis pushes the invalidation).
    let a = TestApp::new(Kind::Redis).await;
    let b = a.beside().await;
    let id = a.create_id("u1", json!({})).await;
    a.create_id("u1", json!({})).await; // so that `id` is not current and may be deleted
    let path = format!("/v1/sessions/{id}");
    // Until this sidecar serves `id` from its cache: the second create rewrote `id` (no longer
    // current), and that write's invalidation, arriving after a fill, drops the fill.
    within(Duration::from_secs(2), async || {
        assert_eq!(a.get(&path).await.body["version"], 2);
        a.metrics.cache_hits.get() >= 1
    })
    .await;
    b.patch(&path, json!({"data": {"by": "b"}})).await;
    let t_update = within(Duration::from_secs(2), async || {
        a.get(&path).await.body["data"]["by"] == "b"
    })
    .await;
    b.end(&id, json!({"performer_id": "b"})).await;
    let t_end = within(Duration::from_secs(2), async || {
        a.get(&path).await.body["status"] == "ended"
    })
    .await;
    assert_eq!(b.delete(&path).await.status, StatusCode::NO_CONTENT);
    let t_delete = within(Duration::from_secs(2), async || {
        a.get(&path).await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert!(a.metrics.cache_invalidations.get() >= 3);
    eprintln!("invalidation seen after: update {t_update:?}, end {t_end:?}, delete {t_delete:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reports_a_change_only_to_the_sidecars_that_read_the_session() {
    // Proves: tracking is per key. Sidecar `b` is told of no change of a session it never read,
    // so a write does not cost Redis a report to every sidecar of the fleet. Once `b` has read
    // the session, `a`'s next change reaches `b` and drops its entry; Redis then forgets that
    // `b` read it, so `a`'s change after that is not reported until `b` reads it again.
    let a = TestApp::new(Kind::Redis).await;
    let b = a.beside().await;
    let id = a.create_id("u1", json!({})).await;
    let (path, messages) = (
        format!("/v1/sessions/{id}"),
        format!("/v1/sessions/{id}/messages"),
    );
    let hello = json!({"role": "user", "content": "hello"});
    assert_eq!(
        a.post(&messages, hello.clone()).await.status,
        StatusCode::CREATED
    );
    b.settle().await;
    assert_eq!(b.metrics.cache_invalidations.get(), 0, "b never read it");

    assert_eq!(b.get(&path).await.body["message_count"], 1);
    assert_eq!(
        a.post(&messages, hello.clone()).await.status,
        StatusCode::CREATED
    );
    within(Duration::from_secs(2), async || {
        b.metrics.cache_invalidations.get() == 1
    })
    .await;
    assert_eq!(
        a.post(&messages, hello.clone()).await.status,
        StatusCode::CREATED
    );
    b.settle().await;
    assert_eq!(
        b.metrics.cache_invalidations.get(),
        1,
        "reported once per read"
    );

    assert_eq!(b.get(&path).await.body["message_count"], 3);
    assert_eq!(a.post(&messages, hello).await.status, StatusCode::CREATED);
    within(Duration::from_secs(2), async || {
        b.metrics.cache_invalidations.get() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_invalidation_connection_flushes_the_cache() {
    // Proves: when the tracking connection is killed, the sidecar reconnects, re-enables
    // tracking and flushes, so nothing cached before the loss survives it.
    let app = TestApp::new(Kind::Redis).await;
    let id = app.create_id("u1", json!({})).await;
    let path = format!("/v1/sessions/{id}");
    app.get(&path).await;
    let flushes = app.metrics.cache_flushes.get();
    let tracking = tracking_clients(&app.admin_url()).await;
    assert_eq!(tracking.len(), 1, "one tracking connection");
    kill_clients(&app.admin_url(), &tracking).await;
    within(Duration::from_secs(5), async || {
        app.metrics.cache_flushes.get() > flushes && app.cache.is_tracked()
    })
    .await;
    let misses = app.metrics.cache_misses.get();
    assert_eq!(app.get(&path).await.status, StatusCode::OK);
    assert_eq!(
        app.metrics.cache_misses.get(),
        misses + 1,
        "the cache was flushed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_tracking_outage_are_not_served_stale_beyond_the_max_age() {
    // Proves: when A's invalidation connection is cut and B keeps writing meanwhile, A stops
    // serving the old version once tracking is back (flush), well within the maximum age.
    let a = TestApp::new(Kind::Redis).await;
    let b = a.beside().await;
    let id = a.create_id("u1", json!({})).await;
    a.settle().await;
    let path = format!("/v1/sessions/{id}");
    assert_eq!(a.get(&path).await.body["version"], 1);
    let trackers = tracking_clients(&a.admin_url()).await;
    assert_eq!(trackers.len(), 2, "one tracking connection per sidecar");
    let flushes = a.metrics.cache_flushes.get();
    kill_clients(&a.admin_url(), &trackers).await;
    let started = Instant::now();
    for n in 2..=6 {
        b.patch(&path, json!({"data": {"n": n}})).await; // writes continue during the outage
    }
    let stale_for = within(Duration::from_secs(10), async || {
        a.get(&path).await.body["data"]["n"] == 6
    })
    .await;
    assert!(
        a.metrics.cache_flushes.get() > flushes,
        "the cache was flushed on reconnect"
    );
    assert!(
        stale_for < Duration::from_secs(10),
        "within the maximum age"
    );
    eprintln!(
        "stale reads possible for {stale_for:?} after the tracking connections were cut ({:?} since the cut)",
        started.elapsed()
    );
}

/// Ids of the Redis clients that have tracking on (`t` in their flags).
async fn tracking_clients(url: &str) -> Vec<String> {
    let mut conn = ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let clients: String = ::redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    clients
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

/// Kills Redis clients by id, as a network cut would.
async fn kill_clients(url: &str, ids: &[String]) {
    let mut conn = ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for id in ids {
        let _: () = ::redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
