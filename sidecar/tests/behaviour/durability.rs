//! Durability: with AOF and `appendfsync always`, `kill -9` of Redis in the middle of a write
//! load loses no write that was acknowledged with a 2xx.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use session_sidecar::testing::ReadOp;
use session_sidecar::testing::Record;

use crate::harness::{RedisServer, TestApp, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    // Proves: every session whose creation got 201 and every message that got 201 before Redis
    // was killed with SIGKILL is there after Redis restarts from its AOF.
    let mut app = TestApp::on_server(RedisServer::start_durable()).await;
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (router, acked) = (app.router.clone(), acked.clone());
        writers.spawn(async move {
            for i in 0..10_000 {
                let user = format!("writer-{w}-{}", i / 5);
                let (status, body) = send(
                    &router,
                    "POST",
                    "/v1/sessions",
                    Some(json!({"user_id": user})),
                )
                .await;
                if status != StatusCode::CREATED {
                    return;
                }
                let id = body["session_id"].as_str().unwrap().to_owned();
                acked.lock().unwrap().insert(id.clone(), 0);
                for _ in 0..3 {
                    let (status, _) = send(
                        &router,
                        "POST",
                        &format!("/v1/sessions/{id}/messages"),
                        Some(json!({"role": "user", "content": "x"})),
                    )
                    .await;
                    if status != StatusCode::CREATED {
                        return;
                    }
                    *acked.lock().unwrap().get_mut(&id).unwrap() += 1;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    app.kill_redis(); // SIGKILL, mid-load
    while writers.join_next().await.is_some() {}
    app.restart_redis();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the load wrote something before the kill: {}",
        acked.len()
    );
    let k = app.sessions.keys().clone();
    let mut lost = Vec::new();
    for (id, messages) in &acked {
        let shard =
            session_sidecar::testing::parse_session_id(id, app.sessions.policy().shard_count)
                .unwrap();
        let reply = loop {
            match app
                .backend
                .read(vec![ReadOp::HGetAll(k.session(shard, id))])
                .await
            {
                Ok(r) => break r,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await, // Redis is loading
            }
        };
        match Record::from_fields(reply.into_iter().next().unwrap().into_pairs()).unwrap() {
            Some(doc) if doc.message_count() >= *messages => {}
            other => lost.push((id.clone(), *messages, other.map(|d| d.message_count()))),
        }
    }
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    eprintln!(
        "{} acknowledged sessions and {} acknowledged messages all survived kill -9",
        acked.len(),
        acked.values().sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_replica_puts_every_acknowledged_write_on_it() {
    // Proves: with the replica wait on, every session is on the replica the moment its creation
    // is acknowledged; and measures what that costs per write.
    use session_sidecar::testing::CreateSession;
    use session_sidecar::testing::{Ctx, Sessions};
    use session_sidecar::testing::{ReplicaWait, connect_with};
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let mut on_replica = ::redis::Client::open(replica.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let clock = std::sync::Arc::new(session_sidecar::testing::SystemClock);
    let mut report = Vec::new();
    for wait in [
        None,
        Some(ReplicaWait {
            replicas: 1,
            timeout_ms: 1_000,
        }),
    ] {
        let backend = connect_with(&master.url, false, wait, None).await.unwrap();
        let sessions = Sessions::new(
            std::sync::Arc::from(backend),
            crate::harness::TEST_PREFIX,
            clock.clone(),
            crate::harness::test_policy(),
        );
        let (n, mut missing) = (300, 0);
        let started = std::time::Instant::now();
        for i in 0..n {
            let input = CreateSession {
                user_id: Some(format!("u{i}")),
                ..CreateSession::default()
            };
            let record = sessions.create(&Ctx::system(), input).await.unwrap();
            let shard = session_sidecar::testing::parse_session_id(&record.session_id, 4).unwrap();
            let fields: Vec<(String, String)> = ::redis::cmd("HGETALL")
                .arg(sessions.keys().session(shard, &record.session_id))
                .query_async(&mut on_replica)
                .await
                .unwrap();
            missing += usize::from(fields.is_empty());
        }
        let per_write = started.elapsed() / n;
        if wait.is_some() {
            assert_eq!(
                missing, 0,
                "with the wait, every acknowledged write is on the replica"
            );
        }
        report.push(format!("{}: {per_write:?} per create (with the replica read), {missing} of {n} not yet on the replica at the ack", if wait.is_some() { "WAIT 1" } else { "no wait" }));
    }
    eprintln!("{}", report.join("; "));
}
