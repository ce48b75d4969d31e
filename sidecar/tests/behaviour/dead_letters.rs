//! Dead letters: poison events on the events stream are set aside with their error, attempts
//! and time, the consumer moves on and never loops; the service-scope API lists, inspects,
//! replays (once per `event_id`) and discards them.

use axum::http::StatusCode;
use serde_json::json;
use session_sidecar::testing::consume_once;
use session_sidecar::testing::{Append, Commit};
use session_sidecar::testing::{FAIL_ATTEMPTS, FAIL_FOR_MS};

use crate::both_backends;
use crate::events::inbound;
use crate::harness::{Kind, TestApp};

both_backends!(
    poison_events_are_set_aside_and_the_consumer_moves_on,
    an_event_that_keeps_failing_is_set_aside_after_its_attempts_and_replayed_once_fixed,
    replaying_all_applies_each_event_once_and_keeps_what_still_fails,
);

fn dead_lettered(app: &TestApp, reason: &str) -> u64 {
    app.metrics.dead_letters.with_label_values(&[reason]).get()
}

async fn poison_events_are_set_aside_and_the_consumer_moves_on(kind: Kind) {
    let app = TestApp::of_service(kind).await;
    let id = app.create_id("u1", json!({})).await;
    let not_an_envelope = Append {
        stream: app.sessions.keys().events(),
        fields: vec![("garbage".into(), "x".into())],
        max_len: None,
    };
    app.backend
        .commit(Commit {
            appends: vec![not_an_envelope],
            ..Commit::default()
        })
        .await
        .unwrap();
    app.publish(&inbound("auth.user.renamed.v1", json!({"user_id": "u1"})))
        .await;
    app.publish(&inbound("auth.user.deleted.v1", json!({})))
        .await;
    // A good event behind the poison ones is still applied.
    app.publish(&inbound("auth.user.deleted.v1", json!({"user_id": "u1"})))
        .await;
    assert_eq!(app.consume().await, 4);
    assert_eq!(app.consume().await, 0, "nothing is read twice");
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    let page = app.get("/v1/dead-letters").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let letters = page.body["items"].as_array().unwrap().clone();
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["malformed", "unknown_type", "invalid"]);
    assert_eq!(
        letters[0]["event"],
        json!({"garbage": "x"}),
        "raw fields kept"
    );
    assert!(
        letters[1]["error"]
            .as_str()
            .unwrap()
            .contains("`auth.user.renamed.v1` is not an event type"),
        "{}",
        letters[1]
    );
    assert_eq!(letters[2]["error"], "payload.user_id is required");
    for letter in &letters {
        assert_eq!(letter["attempts"], 1);
        assert!(letter["stream_id"].as_str().unwrap().contains('-'));
        assert!(letter["dead_lettered_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(letters[2]["event_type"], "auth.user.deleted.v1");
    let one = app
        .get(&format!(
            "/v1/dead-letters/{}",
            letters[1]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(one.body, letters[1]);
    for reason in ["malformed", "unknown_type", "invalid"] {
        assert_eq!(dead_lettered(&app, reason), 1, "{reason}");
    }
    // Replaying one that can never apply keeps it, and says why.
    let res = app
        .post(
            &format!(
                "/v1/dead-letters/{}/replay",
                letters[2]["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.body);
    assert_eq!(
        app.get("/v1/dead-letters").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

async fn an_event_that_keeps_failing_is_set_aside_after_its_attempts_and_replayed_once_fixed(
    kind: Kind,
) {
    // The user's shard outbox holds one event at most and already holds one, so deleting the
    // user (which must record session.deleted.v1) fails until the relay drains it.
    let app = TestApp::of_service_with(kind, |p| p.outbox_max_len = 1).await;
    let id = app.create_id("u1", json!({})).await;
    app.publish(&inbound("auth.user.deleted.v1", json!({"user_id": "u1"})))
        .await;
    app.publish(&inbound(
        "auth.user.deleted.v1",
        json!({"user_id": "nobody"}),
    ))
    .await;
    let pass = || consume_once(&app.sessions, &app.metrics, "w");
    // Many attempts in a short time are waited out: the cause may pass.
    for _ in 0..FAIL_ATTEMPTS {
        let r = pass().await;
        assert!(r.is_err(), "the failing event is retried: {r:?}");
    }
    // Attempts over a long enough time are not.
    app.clock.advance_ms(FAIL_FOR_MS);
    assert_eq!(
        pass().await.unwrap(),
        2,
        "set aside, and the next event applied"
    );
    assert_eq!(dead_lettered(&app, "failed"), 1);
    let letters = app.get("/v1/dead-letters").await.body["items"].clone();
    assert_eq!(letters.as_array().unwrap().len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["reason"], "failed");
    assert_eq!(letter["attempts"], FAIL_ATTEMPTS + 1);
    assert_eq!(
        letter["error"],
        "the event outbox is full; the relay is not keeping up"
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.status,
        StatusCode::OK,
        "not applied yet"
    );
    // The cause is fixed (the relay drains the outbox); the replay applies it, once.
    app.relay().await;
    let path = format!("/v1/dead-letters/{}/replay", letter["id"].as_str().unwrap());
    let res = app.post(&path, json!({})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["result"], "applied");
    assert_eq!(res.body["sessions_affected"], 1);
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(&path, json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get("/v1/dead-letters").await.body["items"], json!([]));
    let replays = &app.metrics.dead_letter_replays;
    assert_eq!(replays.with_label_values(&["replayed"]).get(), 1);
}

async fn replaying_all_applies_each_event_once_and_keeps_what_still_fails(kind: Kind) {
    let app = TestApp::of_service(kind).await;
    app.create_id("u1", json!({})).await;
    app.create_id("u1", json!({})).await;
    let deletion = inbound("auth.user.deleted.v1", json!({"user_id": "u1"}));
    // The same event set aside twice (a redelivery), and one that never applies.
    app.set_aside(&deletion).await;
    app.set_aside(&deletion).await;
    app.set_aside(&inbound("case.deleted.v1", json!({}))).await;
    let res = app.post("/v1/dead-letters/replay", json!({})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["replayed"], 2);
    let failed = res.body["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["code"], "validation_failed");
    let deleted = app.outbox_of("session.deleted.v1").await.len();
    assert_eq!(deleted, 2, "two sessions deleted once, not twice");
    let stuck = failed[0]["id"].as_str().unwrap();
    let left = app.get("/v1/dead-letters").await.body["items"].clone();
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["id"], stuck);
    let path = format!("/v1/dead-letters/{stuck}");
    assert_eq!(app.delete(&path).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.delete(&path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.metrics.dead_letters_discarded.get(), 1);
    assert_eq!(
        app.get("/v1/dead-letters/not-an-id").await.code(),
        "validation_failed"
    );
}
