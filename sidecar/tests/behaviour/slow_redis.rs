//! A slow Redis: a delaying TCP proxy (this kernel has no `netem`) between the sidecar and a real
//! Redis. What the sidecar does, and how long it takes, as Redis slows down and recovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Kind, TestApp};

/// Forwards loopback TCP to `target`, holding every chunk for the current delay.
async fn delaying_proxy(target: String, delay_ms: Arc<AtomicU64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&target).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pipe(cr, sw, delay_ms.clone()));
            tokio::spawn(pipe(sr, cw, delay_ms.clone()));
        }
    });
    port
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(delay_ms.load(Ordering::Relaxed))).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

async fn timed_get(app: &TestApp, path: &str) -> (StatusCode, Duration) {
    let started = Instant::now();
    let status = app.get(path).await.status;
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_slows_misses_only_and_a_stuck_one_fails_fast() {
    // Proves: with Redis 20 ms away, misses take that long and still succeed while hits stay
    // instant; with Redis stuck past the response timeout, misses fail with 503 after the
    // timeout, then at once once the breaker opens, and hits keep being served; when Redis is
    // fast again everything recovers.
    let direct = TestApp::new(Kind::Redis).await;
    let delay = Arc::new(AtomicU64::new(0));
    let port = delaying_proxy(direct.redis_address(), delay.clone()).await;
    let app = direct.via(&format!("127.0.0.1:{port}")).await;
    let cached = app.create_id("u1", json!({})).await;
    app.settle().await;
    let hit = format!("/v1/sessions/{cached}");
    assert_eq!(app.get(&hit).await.status, StatusCode::OK);
    let miss = || {
        format!(
            "/v1/sessions/{}",
            session_sidecar::testing::new_session_id(0)
        )
    };

    delay.store(20, Ordering::Relaxed);
    let (status, slow_miss) = timed_get(&app, &miss()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        slow_miss >= Duration::from_millis(40),
        "a miss waits for Redis: {slow_miss:?}"
    );
    let (status, fast_hit) = timed_get(&app, &hit).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        fast_hit < Duration::from_millis(15),
        "a hit does not: {fast_hit:?}"
    );

    delay.store(3_000, Ordering::Relaxed);
    let mut refusals = Vec::new();
    for _ in 0..6 {
        let (status, took) = timed_get(&app, &miss()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        refusals.push(took);
    }
    assert!(
        refusals[0] <= Duration::from_millis(1_500),
        "the first waits for the 1 s timeout: {refusals:?}"
    );
    assert!(
        refusals.last().unwrap() < &Duration::from_millis(100),
        "then the breaker answers at once: {refusals:?}"
    );
    let (status, hit_while_stuck) = timed_get(&app, &hit).await;
    assert_eq!(status, StatusCode::OK);

    delay.store(0, Ordering::Relaxed);
    let started = Instant::now();
    loop {
        if app
            .post("/v1/sessions", json!({"user_id": "u2"}))
            .await
            .status
            == StatusCode::CREATED
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "slow Redis (+20 ms each way): miss {slow_miss:?}, hit {fast_hit:?}; stuck Redis: refusals {refusals:?}, hit {hit_while_stuck:?}; recovered {:?} after Redis was fast again",
        started.elapsed()
    );
}
