//! Boundary invariants (seed 004): performer policy, ownership, double end, server-owned fields,
//! unique event ids, the active-session cap, and atomic recording.

use std::collections::HashSet;

use axum::http::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::harness::{Kind, TestApp, types};

both_backends!(
    end_requires_a_performer_unless_system,
    ending_twice_conflicts_and_blocks_changes,
    ending_another_users_session_is_forbidden,
    end_with_a_mismatched_session_id_is_refused,
    client_supplied_server_fields_are_refused,
    every_event_has_a_unique_id_and_a_server_timestamp,
    active_cap_rejects,
    active_cap_ends_the_oldest,
    a_full_outbox_changes_nothing,
    a_failed_event_append_changes_nothing,
    creation_is_rate_limited_with_retry_after,
);

async fn end_requires_a_performer_unless_system(kind: Kind) {
    // Proves: end without performer_id is 400; "system" and a human id are both accepted.
    let app = TestApp::new(kind).await;
    let a = app.create_id("u1", json!({})).await;
    for body in [
        json!({}),
        json!({"performer_id": ""}),
        json!({"user_id": "u1"}),
    ] {
        let res = app.end(&a, body).await;
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::BAD_REQUEST, "performer_required")
        );
    }
    assert_eq!(
        app.get(&format!("/v1/sessions/{a}")).await.body["status"],
        "active"
    );
    let res = app.end(&a, json!({"performer_id": "system"})).await;
    assert_eq!(
        (res.status, res.body["performer_id"].as_str()),
        (StatusCode::OK, Some("system"))
    );
    let b = app.create_id("u1", json!({"performer_id": "system"})).await;
    let res = app
        .end(&b, json!({"performer_id": "nurse-7", "user_id": "u1"}))
        .await;
    assert_eq!(res.body["performer_id"], "nurse-7");
    let events = app.outbox().await;
    let ends: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "session.ended.v1")
        .collect();
    assert_eq!(
        ends.iter()
            .map(|e| e.performer_id.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["system", "nurse-7"]
    );
    assert_eq!(
        events[2].performer_id.as_deref(),
        Some("system"),
        "start by the system"
    );
}

async fn ending_twice_conflicts_and_blocks_changes(kind: Kind) {
    // Proves: a second end is 409 with no second event; an ended session accepts no changes.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    assert_eq!(
        app.end(&id, json!({"performer_id": "u1"})).await.status,
        StatusCode::OK
    );
    let again = app.end(&id, json!({"performer_id": "u1"})).await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "session_ended")
    );
    for res in [
        app.patch(&format!("/v1/sessions/{id}"), json!({"metadata": {"a": 1}}))
            .await,
        app.put(&format!("/v1/sessions/{id}/heartbeat"), json!({}))
            .await,
        app.post(
            &format!("/v1/sessions/{id}/messages"),
            json!({"role": "user", "content": "x"}),
        )
        .await,
        app.put(&format!("/v1/sessions/{id}/memory"), json!({"a": 1}))
            .await,
    ] {
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::CONFLICT, "session_ended")
        );
    }
    assert_eq!(
        types(&app.outbox().await),
        ["session.created.v1", "session.ended.v1"]
    );
}

async fn ending_another_users_session_is_forbidden(kind: Kind) {
    // Proves: ending with another user's id is 403 and leaves the session active.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    let res = app
        .end(&id, json!({"performer_id": "u2", "user_id": "u2"}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "session_user_mismatch")
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.body["status"],
        "active"
    );
}

async fn end_with_a_mismatched_session_id_is_refused(kind: Kind) {
    // Proves: the session_id in an end body must be the one issued at start (400 otherwise).
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    let other = app.create_id("u1", json!({})).await;
    let res = app
        .end(&id, json!({"performer_id": "u1", "session_id": other}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::BAD_REQUEST, "session_id_mismatch")
    );
    let res = app
        .end(&id, json!({"performer_id": "u1", "session_id": id}))
        .await;
    assert_eq!(res.status, StatusCode::OK);
}

async fn client_supplied_server_fields_are_refused(kind: Kind) {
    // Proves: timestamp, source, event_id, record_id, created_at… from a client are 400.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    for field in [
        "timestamp",
        "source",
        "event_id",
        "record_id",
        "created_at",
        "status",
        "expires_at",
        "session_id",
    ] {
        let res = app
            .post("/v1/sessions", json!({"user_id": "u1", field: "x"}))
            .await;
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::BAD_REQUEST, "server_field"),
            "{field}"
        );
    }
    for field in ["timestamp", "source", "record_id"] {
        let res = app
            .end(&id, json!({"performer_id": "u1", field: "x"}))
            .await;
        assert_eq!(res.code(), "server_field", "{field}");
        let res = app
            .patch(&format!("/v1/sessions/{id}"), json!({field: "x"}))
            .await;
        assert_eq!(res.code(), "server_field", "{field}");
    }
    let res = app
        .post("/v1/sessions", json!({"user_id": "u1", "colour": "blue"}))
        .await;
    assert_eq!(res.code(), "unknown_field");
    assert_eq!(
        app.get("/v1/users/u1/sessions").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn every_event_has_a_unique_id_and_a_server_timestamp(kind: Kind) {
    // Proves: each event has a fresh UUIDv4 event_id, a server timestamp and our source.
    let app = TestApp::new(kind).await;
    for _ in 0..3 {
        let id = app.create_id("u1", json!({})).await;
        app.patch(&format!("/v1/sessions/{id}"), json!({"data": {"n": 1}}))
            .await;
        app.end(&id, json!({"performer_id": "system"})).await;
    }
    let events = app.outbox().await;
    assert_eq!(events.len(), 9);
    let ids: HashSet<_> = events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), 9);
    for e in &events {
        let id = uuid::Uuid::parse_str(&e.event_id).unwrap();
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(e.source, "session-service");
        assert!(
            e.timestamp.ends_with('Z') && e.timestamp.len() == 24,
            "{}",
            e.timestamp
        );
        assert!(e.payload["session_id"].is_string() && e.payload["user_id"] == "u1");
        assert!(
            e.correlation_id.is_some(),
            "the API always sets a correlation id"
        );
    }
}

async fn active_cap_rejects(kind: Kind) {
    // Proves: with maxActivePerUser=1 and reject, a second start is 409 until the first ends.
    let app = TestApp::with(kind, |p| p.max_active_per_user = Some(1)).await;
    let a = app.create_id("u1", json!({})).await;
    let res = app.post("/v1/sessions", json!({"user_id": "u1"})).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::CONFLICT, "active_session_limit")
    );
    app.create("u2", json!({})).await;
    app.end(&a, json!({"performer_id": "u1"})).await;
    app.create("u1", json!({})).await;
}

async fn active_cap_ends_the_oldest(kind: Kind) {
    // Proves: with end-oldest, a start at the cap ends the oldest active session as "system".
    let app = TestApp::with(kind, |p| {
        p.max_active_per_user = Some(2);
        p.cap_policy = session_sidecar::testing::CapPolicy::EndOldest;
    })
    .await;
    let first = app.create_id("u1", json!({})).await;
    app.clock.advance_ms(1);
    let second = app.create_id("u1", json!({})).await;
    app.clock.advance_ms(1);
    let third = app.create_id("u1", json!({})).await;
    let ended = app.get(&format!("/v1/sessions/{first}")).await.body;
    assert_eq!(
        (ended["status"].as_str(), ended["performer_id"].as_str()),
        (Some("ended"), Some("system"))
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{second}")).await.body["status"],
        "active"
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{third}")).await.body["current"],
        true
    );
    let events = app.outbox().await;
    assert_eq!(
        types(&events)[2..],
        ["session.ended.v1", "session.created.v1"]
    );
}

async fn a_full_outbox_changes_nothing(kind: Kind) {
    // Proves: when the event cannot be recorded (outbox full), the state does not change (503).
    let app = TestApp::with(kind, |p| {
        p.outbox_max_len = 2;
        p.shard_count = 1;
    })
    .await;
    let a = app.create_id("u1", json!({})).await;
    app.create_id("u1", json!({})).await;
    let res = app.post("/v1/sessions", json!({"user_id": "u1"})).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "outbox_full")
    );
    assert!(res.headers.contains_key("retry-after"));
    let res = app.end(&a, json!({"performer_id": "u1"})).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.get(&format!("/v1/sessions/{a}")).await.body["status"],
        "active"
    );
    assert_eq!(
        app.get("/v1/users/u1/sessions").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(app.relay().await, 2);
    assert_eq!(
        app.end(&a, json!({"performer_id": "u1"})).await.status,
        StatusCode::OK
    );
}

async fn a_failed_event_append_changes_nothing(kind: Kind) {
    // Proves: when appending the event fails, no part of the state change is written.
    let app = TestApp::with(kind, |p| p.shard_count = 1).await;
    let a = app.create_id("u1", json!({"title": "keep"})).await;
    app.clobber(&app.sessions.keys().outbox(0)).await; // the outbox is no longer a stream
    let res = app
        .post("/v1/sessions", json!({"user_id": "u1", "title": "new"}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "event_append_failed")
    );
    let res = app.end(&a, json!({"performer_id": "u1"})).await;
    assert_eq!(res.code(), "event_append_failed");
    let s = app.get(&format!("/v1/sessions/{a}")).await.body;
    assert_eq!(
        (
            s["status"].as_str(),
            s["current"].as_bool(),
            s["version"].as_u64()
        ),
        (Some("active"), Some(true), Some(1))
    );
    let listed = app.get("/v1/users/u1/sessions").await.body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

async fn creation_is_rate_limited_with_retry_after(kind: Kind) {
    // Proves: past the per-user creation rate, 429 with Retry-After; other users unaffected.
    let app = TestApp::with(kind, |p| p.create_rate_limit = Some(3)).await;
    for _ in 0..3 {
        app.create("u1", json!({})).await;
    }
    let res = app.post("/v1/sessions", json!({"user_id": "u1"})).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let retry: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    app.create("u2", json!({})).await;
    assert_eq!(
        app.get("/v1/users/u1/sessions").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}
