//! Messages, summary and memory (seed 002).

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Kind, TestApp};

both_backends!(
    messages_append_and_paginate,
    summary_counts_and_totals,
    invalid_messages_are_refused,
    messages_to_a_session_that_is_gone_are_refused,
    token_totals_stop_at_the_largest_integer_redis_keeps,
    memory_is_replaced_and_merged
);

async fn messages_append_and_paginate(kind: Kind) {
    // Proves: messages are stored in order with seq numbers and paginate by cursor.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    for i in 1..=5 {
        let role = if i % 2 == 1 { "user" } else { "assistant" };
        let res = app.post(&format!("/v1/sessions/{id}/messages"), json!({"role": role, "content": format!("m{i}"), "tokens": i, "metadata": {"model": "x"}})).await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
        assert_eq!(res.body["seq"], i);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sessions/{id}/messages?limit=2&cursor={c}"),
            None => format!("/v1/sessions/{id}/messages?limit=2"),
        };
        let page = app.get(&path).await.body;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["m1", "m2", "m3", "m4", "m5"]);
    let s = app.get(&format!("/v1/sessions/{id}")).await.body;
    assert_eq!(
        (s["message_count"].as_u64(), s["total_tokens"].as_u64()),
        (Some(5), Some(15))
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}/messages?cursor=abc"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

async fn summary_counts_and_totals(kind: Kind) {
    // Proves: counts per role and exact token/cost totals (0.1 + 0.2 is 0.3 here).
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    for (role, tokens, cost) in [
        ("user", 10, 0.1),
        ("assistant", 20, 0.2),
        ("tool", 1, 0.0),
        ("system", 0, 0.0),
    ] {
        app.post(
            &format!("/v1/sessions/{id}/messages"),
            json!({"role": role, "content": "x", "tokens": tokens, "cost": cost}),
        )
        .await;
    }
    app.clock.advance_ms(2_500);
    let s = app.get(&format!("/v1/sessions/{id}/summary")).await.body;
    assert_eq!(s["message_count"], 4);
    assert_eq!(
        s["messages_by_role"],
        json!({"user": 1, "assistant": 1, "system": 1, "tool": 1})
    );
    assert_eq!(s["total_tokens"], 31);
    assert_eq!(s["total_cost"], json!(0.3));
    assert_eq!(s["duration_seconds"], json!(2.5));
    assert!(s["last_message_at"].is_string());
}

async fn invalid_messages_are_refused(kind: Kind) {
    // Proves: bad role, negative cost, missing content, oversized content are 400.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    let big = "x".repeat(64 * 1024 + 1);
    for body in [
        json!({"role": "robot", "content": "x"}),
        json!({"role": "user"}),
        json!({"role": "user", "content": "x", "cost": -1}),
        json!({"role": "user", "content": "x", "tokens": -3}),
        json!({"role": "user", "content": 5}),
        json!({"role": "user", "content": "x", "message_id": "m"}),
    ] {
        let res = app
            .post(&format!("/v1/sessions/{id}/messages"), body.clone())
            .await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{body}: {}", res.body);
    }
    let res = app
        .post(
            &format!("/v1/sessions/{id}/messages"),
            json!({"role": "user", "content": big}),
        )
        .await;
    assert!(
        res.status == StatusCode::BAD_REQUEST || res.status == StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        res.status
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.body["message_count"],
        0
    );
}

async fn messages_to_a_session_that_is_gone_are_refused(kind: Kind) {
    // Proves: a message to an unknown session, or to one whose TTL has passed (the sweeper
    // has not run), is 404 and stores nothing; the next session's messages start at 1.
    let app = TestApp::new(kind).await;
    let hello = json!({"role": "user", "content": "hello"});
    let unknown = "sess_1_aaaaaaaaaaaaaaaaaaaaaaaaaa";
    let id = app.create_id("u1", json!({"ttl_seconds": 1})).await;
    app.clock.advance_ms(1_000);
    for id in [unknown, id.as_str()] {
        let res = app
            .post(&format!("/v1/sessions/{id}/messages"), hello.clone())
            .await;
        assert_eq!(
            (res.status, res.code()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{id}: {}",
            res.body
        );
    }
    let next = app.create_id("u1", json!({})).await;
    let res = app
        .post(&format!("/v1/sessions/{next}/messages"), hello)
        .await;
    assert_eq!(
        (res.status, res.body["seq"].as_u64()),
        (StatusCode::CREATED, Some(1))
    );
    let listed = app.get(&format!("/v1/sessions/{id}/messages")).await;
    assert_eq!(listed.status, StatusCode::NOT_FOUND, "{}", listed.body);
}

async fn token_totals_stop_at_the_largest_integer_redis_keeps(kind: Kind) {
    // Proves: a total beyond 2^63 - 1 stays there (Redis refuses to add past it) instead of
    // failing the message or counting it in part: both messages land, and the session as read
    // back and as this process knew it say the same.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    let huge = json!({"role": "user", "content": "x", "tokens": u64::MAX});
    for seq in [1, 2] {
        let res = app
            .post(&format!("/v1/sessions/{id}/messages"), huge.clone())
            .await;
        assert_eq!(
            (res.status, res.body["seq"].as_u64()),
            (StatusCode::CREATED, Some(seq)),
            "{}",
            res.body
        );
    }
    let patched = app
        .patch(&format!("/v1/sessions/{id}"), json!({"data": {"a": 1}}))
        .await;
    let read = app.get(&format!("/v1/sessions/{id}")).await.body;
    for session in [&patched.body, &read] {
        assert_eq!(
            session["total_tokens"].as_u64(),
            Some(i64::MAX.cast_unsigned()),
            "{session}"
        );
        assert_eq!(session["message_count"], 2);
    }
}

async fn memory_is_replaced_and_merged(kind: Kind) {
    // Proves: memory starts empty, PUT replaces, PATCH merges (null removes), non-objects are 400.
    let app = TestApp::new(kind).await;
    let id = app.create_id("u1", json!({})).await;
    let path = format!("/v1/sessions/{id}/memory");
    assert_eq!(app.get(&path).await.body["memory"], json!({}));
    let res = app
        .put(
            &path,
            json!({"summary": "s", "preferences": {"lang": "en"}, "facts": ["a"]}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    let res = app
        .patch(
            &path,
            json!({"summary": null, "preferences": {"tone": "dry"}}),
        )
        .await;
    assert_eq!(
        res.body["memory"],
        json!({"preferences": {"lang": "en", "tone": "dry"}, "facts": ["a"]})
    );
    assert_eq!(app.get(&path).await.body["memory"], res.body["memory"]);
    let res = app.put(&path, json!({"only": 1})).await;
    assert_eq!(res.body["memory"], json!({"only": 1}));
    for bad in [json!([1]), json!("s"), Value::Null] {
        let res = app.put(&path, bad.clone()).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}
