//! Create, get, update, heartbeat, expiry, end, delete.

use axum::http::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::harness::{Kind, TestApp, types};

both_backends!(
    create_returns_server_fields,
    get_finds_sessions_and_rejects_bad_ids,
    patch_merges_and_links,
    heartbeat_extends_and_reads_do_not,
    expired_sessions_are_gone_at_once_and_expire_exactly_once,
    ended_sessions_are_readable_then_purged,
    the_reason_given_at_the_end_is_kept_and_carried_in_the_event,
    delete_removes_everything_but_not_the_current_session,
    json_values_round_trip_exactly,
);

fn is_rfc3339_ms_z(s: &str) -> bool {
    s.len() == 24
        && s.ends_with('Z')
        && s.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

async fn create_returns_server_fields(kind: Kind) {
    // Proves: 201 with Location, a well-formed id, server timestamps, current, TTL applied.
    let app = TestApp::new(kind).await;
    let res = app.post("/v1/sessions", json!({"user_id": "u1", "org_id": "o1", "title": "T", "metadata": {"a": [1, {}]}, "ttl_seconds": 120})).await;
    assert_eq!(res.status, StatusCode::CREATED);
    let s = &res.body;
    let id = s["session_id"].as_str().unwrap();
    assert_eq!(
        res.headers["location"],
        format!("/v1/sessions/{id}").as_str()
    );
    assert!(session_sidecar::testing::parse_session_id(id, 4).is_some());
    assert_eq!(
        (
            s["status"].as_str(),
            s["current"].as_bool(),
            s["version"].as_u64()
        ),
        (Some("active"), Some(true), Some(1))
    );
    assert_eq!(s["metadata"], json!({"a": [1, {}]}), "JSON is kept exactly");
    for field in ["created_at", "updated_at", "expires_at"] {
        assert!(
            is_rfc3339_ms_z(s[field].as_str().unwrap()),
            "{field}: {}",
            s[field]
        );
    }
    let created = chrono::DateTime::parse_from_rfc3339(s["created_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(s["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 120);
    assert_eq!(s["performer_id"], "u1");
    assert_eq!(types(&app.outbox().await), ["session.created.v1"]);
}

async fn get_finds_sessions_and_rejects_bad_ids(kind: Kind) {
    // Proves: lookup by id, 404 for a well-formed unknown id, 400 for malformed ids.
    let app = TestApp::new(kind).await;
    let created = app.create("u1", json!({})).await;
    let id = created["session_id"].as_str().unwrap();
    let res = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!((res.status, &res.body), (StatusCode::OK, &created));
    let unknown = session_sidecar::testing::new_session_id(1);
    let res = app.get(&format!("/v1/sessions/{unknown}")).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // Well formed, but on a shard this deployment (4 shards) does not have: not found.
    let res = app
        .get("/v1/sessions/sess_9_aaaaaaaaaaaaaaaaaaaaaaaaaa")
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    for bad in [
        "nope",
        "sess_1_AAAA",
        "sess_1_aaaaaaaaaaaaaaaaaaaaaaaaab",
        "%FF%FE",
    ] {
        let res = app.get(&format!("/v1/sessions/{bad}")).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{bad}: {}", res.body);
        assert_eq!(res.headers["content-type"], "application/problem+json");
    }
}

async fn patch_merges_and_links(kind: Kind) {
    // Proves: PATCH is a JSON merge patch of metadata/data; title and case change; events.
    let app = TestApp::new(kind).await;
    let id = app
        .create_id(
            "u1",
            json!({"title": "a", "metadata": {"keep": 1, "drop": 2}, "data": {"x": {"y": 1}}}),
        )
        .await;
    let res = app.patch(&format!("/v1/sessions/{id}"), json!({"metadata": {"drop": null, "new": true}, "data": {"x": {"z": 2}}, "title": "b", "case_id": "c1"})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["metadata"], json!({"keep": 1, "new": true}));
    assert_eq!(res.body["data"], json!({"x": {"y": 1, "z": 2}}));
    assert_eq!(
        (
            res.body["title"].as_str(),
            res.body["case_id"].as_str(),
            res.body["version"].as_u64()
        ),
        (Some("b"), Some("c1"), Some(2))
    );
    // The old title is free again, the new one is taken.
    app.create("u1", json!({"title": "a"})).await;
    let dup = app
        .post("/v1/sessions", json!({"user_id": "u1", "title": "b"}))
        .await;
    assert_eq!(dup.code(), "title_conflict");
    let res = app
        .patch(
            &format!("/v1/sessions/{id}"),
            json!({"title": null, "case_id": null}),
        )
        .await;
    assert!(
        res.body.get("title").is_none() && res.body.get("case_id").is_none(),
        "{}",
        res.body
    );
    let ev = app.outbox().await;
    assert_eq!(
        types(&ev)
            .iter()
            .filter(|t| **t == "session.updated.v1")
            .count(),
        2
    );
    let res = app
        .patch(
            &format!("/v1/sessions/{id}"),
            json!({"user_id": "someone-else"}),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::FORBIDDEN, "session_user_mismatch")
    );
}

async fn heartbeat_extends_and_reads_do_not(kind: Kind) {
    // Proves: reads never extend the TTL; a heartbeat extends it from now.
    let app = TestApp::new(kind).await;
    let s = app.create("u1", json!({"ttl_seconds": 60})).await;
    let id = s["session_id"].as_str().unwrap();
    app.clock.advance_ms(30_000);
    let read = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(read.body["expires_at"], s["expires_at"]);
    let hb = app
        .put(&format!("/v1/sessions/{id}/heartbeat"), json!({}))
        .await;
    assert_eq!(hb.status, StatusCode::OK);
    let expires =
        chrono::DateTime::parse_from_rfc3339(hb.body["expires_at"].as_str().unwrap()).unwrap();
    let before = chrono::DateTime::parse_from_rfc3339(s["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        (expires - before).num_seconds(),
        30 + 3_600 - 60,
        "default TTL from now"
    );
    let hb = app
        .call(
            axum::http::Method::PUT,
            &format!("/v1/sessions/{id}/heartbeat"),
            None,
        )
        .await;
    assert_eq!(hb.status, StatusCode::OK, "the body is optional");
    let bad = app
        .put(
            &format!("/v1/sessions/{id}/heartbeat"),
            json!({"ttl_seconds": 0}),
        )
        .await;
    assert_eq!(bad.code(), "validation_failed");
    // The heartbeat moved the expiry: the old deadline passes without expiring it.
    app.clock.advance_ms(60_000);
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.sessions
            .expire_due(
                session_sidecar::testing::parse_session_id(id, 4).unwrap(),
                10
            )
            .await
            .unwrap(),
        0
    );
}

async fn expired_sessions_are_gone_at_once_and_expire_exactly_once(kind: Kind) {
    // Proves: expires_at <= now is 404 before any sweep; the sweeper emits one expired event.
    let app = TestApp::new(kind).await;
    let id = app
        .create_id("u1", json!({"ttl_seconds": 10, "title": "t"}))
        .await;
    app.clock.advance_ms(10_000);
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(
        app.get("/v1/users/u1/sessions").await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        app.get("/v1/users/u1/current-session").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        session_sidecar::testing::sweep_once(&app.background)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        session_sidecar::testing::sweep_once(&app.background)
            .await
            .unwrap(),
        0
    );
    let events = app.outbox().await;
    assert_eq!(types(&events), ["session.created.v1", "session.expired.v1"]);
    assert_eq!(events[1].payload["status"], "expired");
    assert_eq!(events[1].performer_id.as_deref(), Some("system"));
    assert!(app.raw_doc(&id).await.is_empty(), "the document is removed");
    app.create("u1", json!({"title": "t"})).await; // the title is free again
}

async fn ended_sessions_are_readable_then_purged(kind: Kind) {
    // Proves: an ended session stays readable for the retention period, then disappears.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    let res = app.end(&id, json!({"performer_id": "u1"})).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["status"], "ended");
    assert!(res.body["ended_at"].is_string());
    app.clock.advance_ms(599_000);
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.body["status"],
        "ended"
    );
    app.clock.advance_ms(1_000);
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        session_sidecar::testing::sweep_once(&app.background)
            .await
            .unwrap(),
        0,
        "a purge is not an expiry"
    );
    assert!(app.raw_doc(&id).await.is_empty());
    assert_eq!(
        types(&app.outbox().await),
        ["session.created.v1", "session.ended.v1"]
    );
}

async fn the_reason_given_at_the_end_is_kept_and_carried_in_the_event(kind: Kind) {
    // Proves: `reason` is kept on the ended session and in its `session.ended.v1` event; one
    // longer than 1 024 characters is refused and changes nothing; without one there is none.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    let too_long = "x".repeat(1025);
    let res = app
        .end(&id, json!({"performer_id": "u1", "reason": too_long}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::BAD_REQUEST, "validation_failed")
    );
    let res = app
        .end(
            &id,
            json!({"performer_id": "u1", "reason": "customer resolved"}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["end_reason"], "customer resolved");
    let read = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(read.body["end_reason"], "customer resolved");
    let ended = app.outbox_of("session.ended.v1").await;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].payload["end_reason"], "customer resolved");
    let other = app.create_id("u2", json!({})).await;
    let res = app.end(&other, json!({"performer_id": "u2"})).await;
    assert!(res.body.get("end_reason").is_none(), "{}", res.body);
}

async fn delete_removes_everything_but_not_the_current_session(kind: Kind) {
    // Proves: DELETE is 204 and removes messages and memory; the current session gives 400.
    let app = TestApp::new(kind).await;
    let old = app.create_id("u1", json!({"title": "old"})).await;
    let current = app.create_id("u1", json!({})).await;
    app.post(
        &format!("/v1/sessions/{old}/messages"),
        json!({"role": "user", "content": "hi"}),
    )
    .await;
    app.put(
        &format!("/v1/sessions/{old}/memory"),
        json!({"facts": ["x"]}),
    )
    .await;
    let res = app.delete(&format!("/v1/sessions/{current}")).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::BAD_REQUEST, "current_session_delete")
    );
    let res = app.delete(&format!("/v1/sessions/{old}")).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get(&format!("/v1/sessions/{old}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/v1/sessions/{old}")).await.status,
        StatusCode::NOT_FOUND
    );
    let shard = session_sidecar::testing::parse_session_id(&old, 4).unwrap();
    let k = app.sessions.keys();
    let r = app
        .backend
        .read(vec![
            session_sidecar::testing::ReadOp::LRange(k.messages(shard, &old), 0, -1),
            session_sidecar::testing::ReadOp::Get(k.memory(shard, &old)),
        ])
        .await
        .unwrap();
    assert_eq!(
        r,
        vec![
            session_sidecar::testing::Reply::List(vec![]),
            session_sidecar::testing::Reply::Nil
        ]
    );
    assert_eq!(
        types(&app.outbox().await).last(),
        Some(&"session.deleted.v1")
    );
    app.create("u1", json!({"title": "old"})).await;
}

async fn json_values_round_trip_exactly(kind: Kind) {
    // Proves: client JSON is stored without loss: huge integers, long decimals, unicode,
    // empty arrays and objects, nesting.
    let app = TestApp::new(kind).await;
    let raw = r#"{"big": 123456789012345678901234567890, "pi": 3.14159265358979323846264338327950288,
        "neg": -0.0000000000000000001, "text": "ünï 🚀 \u0000 \"q\"", "empty": {"a": [], "o": {}}, "deep": [[[[1]]]]}"#;
    let metadata: serde_json::Value = serde_json::from_str(raw).unwrap();
    let id = app
        .create_id("u1", json!({"metadata": metadata, "data": metadata}))
        .await;
    let s = app.get(&format!("/v1/sessions/{id}")).await.body;
    for field in ["metadata", "data"] {
        for key in ["big", "pi", "text", "empty", "deep"] {
            assert_eq!(s[field][key], metadata[key], "{field}.{key}");
        }
        // The same number, possibly written another way (JSON has no canonical number form).
        assert_eq!(s[field]["neg"].as_f64(), Some(-1e-19));
    }
    assert_eq!(
        s["metadata"]["big"].to_string(),
        "123456789012345678901234567890"
    );
    assert_eq!(
        s["metadata"]["pi"].to_string(),
        "3.14159265358979323846264338327950288"
    );
}
