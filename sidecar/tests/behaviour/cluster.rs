//! The same engine on a real Redis Cluster (3 masters, 3 replicas on loopback): every key of a
//! user in one slot, cluster-wide coherence, and surviving a master failover.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use session_sidecar::testing::Envelope;

use crate::harness::{RedisCluster, TestApp, types};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_api_works_on_a_redis_cluster() {
    // Proves: lifecycle, listing, messages, events (relay, consumer, inbound), the sweeper and
    // cross-sidecar invalidation all work unchanged with users spread over every master.
    let cluster = RedisCluster::start();
    let a = TestApp::on_cluster(&cluster).await;
    let b = a.beside().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let user = format!("user-{i}");
        let first = a
            .create_id(
                &user,
                json!({"title": "one", "org_id": "acme", "case_id": "case-1"}),
            )
            .await;
        let second = b
            .create_id(
                &user,
                json!({"title": "two", "org_id": "acme", "case_id": "case-1"}),
            )
            .await;
        assert_eq!(
            a.post("/v1/sessions", json!({"user_id": user, "title": "two"}))
                .await
                .code(),
            "title_conflict"
        );
        a.post(
            &format!("/v1/sessions/{second}/messages"),
            json!({"role": "user", "content": "hi", "tokens": 2}),
        )
        .await;
        a.put(
            &format!("/v1/sessions/{second}/memory"),
            json!({"facts": [i]}),
        )
        .await;
        assert_eq!(
            b.get(&format!("/v1/users/{user}/sessions")).await.body["items"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            b.get(&format!("/v1/users/{user}/current-session"))
                .await
                .body["session_id"],
            second.as_str()
        );
        ids.push((user, first, second));
    }
    let shards: std::collections::HashSet<u32> = ids
        .iter()
        .map(|(_, s, _)| session_sidecar::testing::parse_session_id(s, 4).unwrap())
        .collect();
    assert_eq!(shards.len(), 4, "the users cover every shard");

    // Another sidecar's change reaches this one's cache. That sidecar knows nothing of the
    // sessions it changes: the script finds the user's index through the session, and writes
    // the end's event with the session in it.
    let (_, first, _) = &ids[0];
    let path = format!("/v1/sessions/{first}");
    let c = a.beside().await;
    c.settle().await;
    assert_eq!(a.get(&path).await.body["status"], "active");
    let beat = c
        .put(
            &format!("/v1/sessions/{}/heartbeat", ids[1].1),
            json!({"ttl_seconds": 60}),
        )
        .await;
    assert_eq!(beat.status, StatusCode::OK, "{}", beat.body);
    let ended = c.end(first, json!({"performer_id": "system"})).await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
    let started = Instant::now();
    while a.get(&path).await.body["status"] != "ended" {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the end did not reach the other cache"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        a.end(first, json!({"performer_id": "system"})).await.code(),
        "session_ended"
    );

    // Events: relayed from every shard outbox, the org index, inbound events.
    assert_eq!(a.relay().await, 12 * 2 + 1);
    let events = a.events().await;
    assert_eq!(events.len(), 25);
    assert_eq!(
        events
            .iter()
            .find(|e| e.event_type == "session.ended.v1")
            .map(|e| &e.payload),
        Some(&ended.body)
    );
    let page = a.get("/v1/orgs/acme/sessions?limit=100").await.body;
    assert_eq!(page["items"].as_array().unwrap().len(), 24);
    let case = json!({"event_id": uuid::Uuid::new_v4().to_string(), "event_type": "case.deleted.v1", "timestamp": "2026-01-01T00:00:00.000Z", "source": "case-service", "payload": {"case_id": "case-1"}});
    let res = a.post("/v1/events", case).await;
    assert_eq!(res.body["sessions_affected"], 24, "{}", res.body);
    let gone = Envelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: "auth.user.deleted.v1".into(),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        source: "auth-service".into(),
        correlation_id: None,
        performer_id: None,
        payload: json!({"user_id": "user-3"}),
    };
    a.publish(&gone).await;
    session_sidecar::testing::consume_once(&a.background, &a.metrics, "w")
        .await
        .unwrap();
    assert_eq!(
        a.get(&format!("/v1/sessions/{}", ids[3].2)).await.status,
        StatusCode::NOT_FOUND
    );

    // Expiry on every shard, exactly once with two sweepers.
    a.clock.advance_ms(3_600_000);
    let (x, y) = (a.background.clone(), b.background.clone());
    let (r1, r2) = tokio::join!(
        session_sidecar::testing::sweep_once(&x),
        session_sidecar::testing::sweep_once(&y)
    );
    assert_eq!(
        r1.unwrap() + r2.unwrap(),
        11 * 2 - 1,
        "every active session of the 11 remaining users"
    );
    let expired = a.outbox().await;
    assert_eq!(
        types(&expired)
            .iter()
            .filter(|t| **t == "session.expired.v1")
            .count(),
        21
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_is_survived_without_a_restart() {
    // Proves: when the master holding a session dies, cached hits keep being served; after the
    // replica is promoted the same sidecar reads and writes again and tracking is back on.
    let mut cluster = RedisCluster::start();
    let app = TestApp::on_cluster(&cluster).await;
    let id = app.create_id("alice", json!({})).await;
    app.settle().await;
    let path = format!("/v1/sessions/{id}");
    assert_eq!(app.get(&path).await.status, StatusCode::OK);
    let shard = session_sidecar::testing::parse_session_id(&id, 4).unwrap();
    let key = app.sessions.keys().session(shard, &id);
    let master = cluster.master_of(&key);
    cluster.wait_replicated(master, &key);
    cluster.kill(master);
    let killed = Instant::now();

    let mut hits_during_failover = 0;
    let recovered = loop {
        if app.get(&path).await.status == StatusCode::OK {
            hits_during_failover += 1;
        }
        let res = app.post("/v1/sessions", json!({"user_id": "alice"})).await;
        if res.status == StatusCode::CREATED {
            break killed.elapsed();
        }
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{}", res.body);
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no recovery after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        hits_during_failover > 0,
        "cached hits were served during the failover"
    );
    cluster.wait_until_ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.cache.is_tracked() {
        assert!(Instant::now() < deadline, "tracking did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = app.get(&path).await;
    assert_eq!(
        (res.status, res.body["user_id"].as_str()),
        (StatusCode::OK, Some("alice")),
        "replicated before the kill"
    );
    assert_eq!(
        app.get("/v1/users/alice/sessions").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    eprintln!(
        "writes recovered {recovered:?} after the master was killed; {hits_during_failover} cached hits served meanwhile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_wait_is_routed_to_the_writes_master() {
    // Proves: on a cluster, WAIT after a write goes to the master of the write's slot and
    // sees its replica acknowledge; writes through a backend that waits succeed.
    use session_sidecar::testing::{ReplicaWait, Topology, connect_with};
    let cluster = RedisCluster::start();
    let wait = ReplicaWait {
        replicas: 1,
        timeout_ms: 1_000,
    };
    let client =
        ::redis::cluster::ClusterClient::new(cluster.url.split(',').collect::<Vec<_>>()).unwrap();
    let mut conn = session_sidecar::testing::ClusterHandle::connect(client)
        .await
        .unwrap();
    for shard in 0..4 {
        let key = format!("t:{{{shard}}}:s:probe");
        let _: () = ::redis::cmd("SET")
            .arg(&key)
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut wait_cmd = ::redis::cmd("WAIT");
        wait_cmd.arg(wait.replicas).arg(wait.timeout_ms);
        let acked: i64 =
            ::redis::from_redis_value(conn.on_master_of(&key, wait_cmd).await.unwrap()).unwrap();
        assert_eq!(acked, 1, "shard {shard}");
    }
    let backend = connect_with(&cluster.url, true, Some(wait), None)
        .await
        .unwrap();
    let clock = std::sync::Arc::new(session_sidecar::testing::SystemClock);
    let sessions = session_sidecar::testing::Sessions::new(
        std::sync::Arc::from(backend),
        "t",
        clock,
        crate::harness::test_policy(),
    );
    for i in 0..20 {
        let input = session_sidecar::testing::CreateSession {
            user_id: Some(format!("u{i}")),
            ..Default::default()
        };
        sessions
            .create(&session_sidecar::testing::Ctx::system(), input)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_background_passes_cost_one_call_per_master_not_per_shard() {
    // Proves: with 64 shards on 3 masters, an idle relay pass and an idle sweep make one script
    // call per master each (not 64), and a shard with work is still found and served.
    let cluster = RedisCluster::start();
    let backend = session_sidecar::testing::connect(
        &cluster.url_as(session_sidecar::contract::acl::Role::Server),
        true,
    )
    .await
    .unwrap();
    let clock = std::sync::Arc::new(session_sidecar::testing::SystemClock);
    let policy = session_sidecar::testing::Policy {
        shard_count: 64,
        ..crate::harness::test_policy()
    };
    let sessions = session_sidecar::testing::Sessions::new(
        std::sync::Arc::from(backend),
        crate::harness::TEST_PREFIX,
        clock,
        policy,
    );
    // Warm the connections and load the script on every master.
    session_sidecar::testing::relay_once(&sessions, "w")
        .await
        .unwrap();
    session_sidecar::testing::sweep_once(&sessions)
        .await
        .unwrap();
    let before = cluster.script_calls();
    assert_eq!(
        session_sidecar::testing::relay_once(&sessions, "w")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        session_sidecar::testing::sweep_once(&sessions)
            .await
            .unwrap(),
        0
    );
    let idle = cluster.script_calls() - before;
    println!("idle relay + sweep over 64 shards on 3 masters: {idle} script calls");
    // One probe per master and pass: 6. A call the client retries (a slow reply on a loaded
    // machine) counts twice, so a few more are tolerated; one call per shard would be 128.
    assert!(
        (6..12).contains(&idle),
        "one probe per master and pass, got {idle}"
    );
    let input = session_sidecar::testing::CreateSession {
        user_id: Some("busy".to_owned()),
        ..Default::default()
    };
    sessions
        .create(&session_sidecar::testing::Ctx::system(), input)
        .await
        .unwrap();
    assert_eq!(
        session_sidecar::testing::relay_once(&sessions, "w")
            .await
            .unwrap(),
        1,
        "the busy shard is found"
    );
}
