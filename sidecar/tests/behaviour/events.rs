//! Events: the outbox relay, consumed events (HTTP and stream, once per event_id), and the
//! sweeper racing itself.

use axum::http::StatusCode;
use serde_json::{Value, json};
use session_sidecar::testing::Envelope;

use crate::both_backends;
use crate::harness::{Kind, TestApp, types};

both_backends!(
    the_relay_moves_the_outbox_to_the_events_stream,
    user_deleted_over_http_is_applied_once,
    case_deleted_unlinks_the_case_once,
    inbound_events_from_the_stream_are_applied_once,
    invalid_inbound_events_are_refused,
    two_sweepers_expire_each_session_exactly_once,
);

pub(crate) fn inbound(event_type: &str, payload: Value) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: event_type.to_owned(),
        timestamp: "2026-01-01T00:00:00.000Z".to_owned(),
        source: "auth-service".to_owned(),
        correlation_id: None,
        performer_id: None,
        payload,
    }
}

async fn the_relay_moves_the_outbox_to_the_events_stream(kind: Kind) {
    // Proves: events reach the global stream in order, the outbox empties, nothing is re-sent.
    let app = TestApp::new(kind).await;
    let keep = app.create_id("u1", json!({})).await;
    let id = app.create_id("u1", json!({})).await;
    app.put("/v1/users/u1/current-session", json!({"session_id": keep}))
        .await;
    app.patch(&format!("/v1/sessions/{id}"), json!({"title": "x"}))
        .await;
    app.end(&id, json!({"performer_id": "u1"})).await;
    app.delete(&format!("/v1/sessions/{id}")).await;
    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 6);
    assert_eq!(app.relay().await, 6);
    assert!(app.outbox().await.is_empty());
    assert_eq!(app.relay().await, 0);
    let events = app.events().await;
    assert_eq!(events, outbox, "same events, same ids, same order");
    assert_eq!(
        types(&events)[3..],
        [
            "session.updated.v1",
            "session.ended.v1",
            "session.deleted.v1"
        ]
    );
}

async fn user_deleted_over_http_is_applied_once(kind: Kind) {
    // Proves: auth.user.deleted.v1 deletes all the user's sessions (current too), once.
    let app = TestApp::new(kind).await;
    let ids = [
        app.create_id("u1", json!({"title": "a"})).await,
        app.create_id("u1", json!({})).await,
    ];
    app.post(
        &format!("/v1/sessions/{}/messages", ids[0]),
        json!({"role": "user", "content": "x"}),
    )
    .await;
    let other = app.create_id("u2", json!({})).await;
    let event = inbound("auth.user.deleted.v1", json!({"user_id": "u1"}));
    let res = app
        .post("/v1/events", serde_json::to_value(&event).unwrap())
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(
        (
            res.body["result"].as_str(),
            res.body["sessions_affected"].as_u64()
        ),
        (Some("applied"), Some(2))
    );
    for id in &ids {
        assert_eq!(
            app.get(&format!("/v1/sessions/{id}")).await.status,
            StatusCode::NOT_FOUND
        );
        assert!(app.raw_doc(id).await.is_empty());
    }
    assert_eq!(
        app.get("/v1/users/u1/current-session").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{other}")).await.status,
        StatusCode::OK
    );
    let again = app
        .post("/v1/events", serde_json::to_value(&event).unwrap())
        .await;
    assert_eq!(again.body["result"], "duplicate");
    let deleted = app.outbox_of("session.deleted.v1").await;
    assert_eq!(deleted.len(), 2);
    assert!(
        deleted
            .iter()
            .all(|e| e.correlation_id.as_deref() == Some(event.event_id.as_str()))
    );
    app.create("u1", json!({"title": "a"})).await; // the user can start afresh
}

async fn case_deleted_unlinks_the_case_once(kind: Kind) {
    // Proves: case.deleted.v1 unlinks the case from every session of every user, once.
    let app = TestApp::new(kind).await;
    let a = app.create_id("u1", json!({"case_id": "case-9"})).await;
    let b = app.create_id("u2", json!({"case_id": "case-9"})).await;
    let c = app.create_id("u3", json!({"case_id": "case-1"})).await;
    let event = inbound("case.deleted.v1", json!({"case_id": "case-9"}));
    let res = app
        .post("/v1/events", serde_json::to_value(&event).unwrap())
        .await;
    assert_eq!(
        (
            res.body["result"].as_str(),
            res.body["sessions_affected"].as_u64()
        ),
        (Some("applied"), Some(2))
    );
    for id in [&a, &b] {
        let s = app.get(&format!("/v1/sessions/{id}")).await.body;
        assert!(s.get("case_id").is_none(), "{s}");
    }
    assert_eq!(
        app.get(&format!("/v1/sessions/{c}")).await.body["case_id"],
        "case-1"
    );
    let res = app
        .post("/v1/events", serde_json::to_value(&event).unwrap())
        .await;
    assert_eq!(
        (
            res.body["result"].as_str(),
            res.body["sessions_affected"].as_u64()
        ),
        (Some("duplicate"), Some(0))
    );
    let updated = app.outbox_of("session.updated.v1").await.len();
    assert_eq!(updated, 2);
}

async fn inbound_events_from_the_stream_are_applied_once(kind: Kind) {
    // Proves: the consumer applies events published on the stream, skips our own, and a
    // redelivery (the same event twice on the stream) is applied only once.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    app.relay().await; // our own session.created.v1 is on the stream too
    let event = inbound("auth.user.deleted.v1", json!({"user_id": "u1"}));
    app.publish(&event).await;
    app.publish(&event).await;
    app.publish(&inbound("auth.user.deleted.v1", json!({})))
        .await; // malformed: skipped, not blocking
    let passed = session_sidecar::testing::consume_once(&app.background, &app.metrics, "w1")
        .await
        .unwrap();
    assert_eq!(passed, 4);
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        session_sidecar::testing::consume_once(&app.background, &app.metrics, "w1")
            .await
            .unwrap(),
        0
    );
    let deleted = app.outbox_of("session.deleted.v1").await.len();
    assert_eq!(deleted, 1);
}

async fn invalid_inbound_events_are_refused(kind: Kind) {
    // Proves: unknown types, bad ids, missing payload fields and extra fields are 400.
    let app = TestApp::new(kind).await;
    let mut bad_id = inbound("auth.user.deleted.v1", json!({"user_id": "u1"}));
    bad_id.event_id = "not-a-uuid".into();
    for event in [
        serde_json::to_value(inbound("session.created.v1", json!({}))).unwrap(),
        serde_json::to_value(inbound("billing.paid.v1", json!({}))).unwrap(),
        serde_json::to_value(bad_id).unwrap(),
        serde_json::to_value(inbound("case.deleted.v1", json!({"case": "x"}))).unwrap(),
        json!({"event_type": "case.deleted.v1", "payload": {"case_id": "c"}}),
        json!({"event_id": uuid::Uuid::new_v4().to_string(), "event_type": "case.deleted.v1", "timestamp": "t", "source": "s", "payload": {"case_id": "c"}, "extra": 1}),
    ] {
        let res = app.post("/v1/events", event.clone()).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{event}: {}", res.body);
    }
}

async fn two_sweepers_expire_each_session_exactly_once(kind: Kind) {
    // Proves: two replicas sweeping the same store at once publish one expired event each.
    let app = TestApp::with(kind, |p| p.shard_count = 2).await;
    for i in 0..30 {
        app.create(&format!("user-{}", i % 7), json!({"ttl_seconds": 5}))
            .await;
    }
    app.clock.advance_ms(5_000);
    let (a, b) = (app.background.clone(), app.replica().await);
    let (ra, rb) = tokio::join!(
        tokio::spawn(async move { session_sidecar::testing::sweep_once(&a).await.unwrap() }),
        tokio::spawn(async move { session_sidecar::testing::sweep_once(&b).await.unwrap() }),
    );
    assert_eq!(ra.unwrap() + rb.unwrap(), 30);
    let expired = app.outbox_of("session.expired.v1").await;
    assert_eq!(expired.len(), 30);
    let distinct: std::collections::HashSet<_> = expired
        .iter()
        .map(|e| e.payload["session_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(distinct.len(), 30);
}
