//! Named sessions (seed 001): unique titles per user, one current session, switching.

use axum::http::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::harness::{Kind, TestApp};

both_backends!(
    titles_are_unique_per_user,
    creating_makes_the_new_session_current,
    switching_by_id_and_by_title,
    no_current_session_is_404,
);

async fn titles_are_unique_per_user(kind: Kind) {
    // Proves: a duplicate title of the same user is 409; another user may use it.
    let app = TestApp::new(kind).await;
    app.create("u1", json!({"title": "Data Analysis"})).await;
    let dup = app
        .post(
            "/v1/sessions",
            json!({"user_id": "u1", "title": "Data Analysis"}),
        )
        .await;
    assert_eq!(
        (dup.status, dup.code()),
        (StatusCode::CONFLICT, "title_conflict")
    );
    app.create("u2", json!({"title": "Data Analysis"})).await;
    assert_eq!(
        app.get("/v1/users/u1/sessions").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for bad in [json!(""), json!("   "), json!("x".repeat(201)), json!(5)] {
        let res = app
            .post("/v1/sessions", json!({"user_id": "u1", "title": bad}))
            .await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

async fn creating_makes_the_new_session_current(kind: Kind) {
    // Proves: exactly one current session; the previous one stops being current.
    let app = TestApp::new(kind).await;
    let a = app.create_id("u1", json!({})).await;
    let b = app.create_id("u1", json!({})).await;
    assert_eq!(
        app.get(&format!("/v1/sessions/{a}")).await.body["current"],
        false
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{b}")).await.body["current"],
        true
    );
    let cur = app.get("/v1/users/u1/current-session").await;
    assert_eq!(cur.body["session_id"], b.as_str());
    let listed = app.get("/v1/users/u1/sessions").await.body;
    let currents = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["current"] == true)
        .count();
    assert_eq!(currents, 1);
}

async fn switching_by_id_and_by_title(kind: Kind) {
    // Proves: switch by title or id; 404 unknown; 400 ambiguous; 409 ended; other users' ids 404.
    let app = TestApp::new(kind).await;
    let a = app.create_id("u1", json!({"title": "alpha"})).await;
    let b = app.create_id("u1", json!({"title": "beta"})).await;
    let res = app
        .put("/v1/users/u1/current-session", json!({"title": "alpha"}))
        .await;
    assert_eq!(
        (res.status, res.body["session_id"].as_str()),
        (StatusCode::OK, Some(a.as_str()))
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{b}")).await.body["current"],
        false
    );
    let res = app
        .put("/v1/users/u1/current-session", json!({"session_id": b}))
        .await;
    assert_eq!(res.body["current"], true);
    assert_eq!(
        app.get(&format!("/v1/sessions/{a}")).await.body["current"],
        false
    );
    let res = app
        .put("/v1/users/u1/current-session", json!({"title": "gamma"}))
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let res = app
        .put(
            "/v1/users/u1/current-session",
            json!({"title": "alpha", "session_id": a}),
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = app.put("/v1/users/u1/current-session", json!({})).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let other = app.create_id("u2", json!({})).await;
    let res = app
        .put("/v1/users/u1/current-session", json!({"session_id": other}))
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{}", res.body);
    app.end(&a, json!({"performer_id": "u1"})).await;
    let res = app
        .put("/v1/users/u1/current-session", json!({"session_id": a}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::CONFLICT, "session_ended")
    );
    // Switching to the session that is already current changes nothing.
    let before = app.get(&format!("/v1/sessions/{b}")).await.body["version"].clone();
    let res = app
        .put("/v1/users/u1/current-session", json!({"session_id": b}))
        .await;
    assert_eq!(res.body["version"], before);
}

async fn no_current_session_is_404(kind: Kind) {
    // Proves: a user without sessions has no current session (404), and bad user ids are 400.
    let app = TestApp::new(kind).await;
    let res = app.get("/v1/users/nobody/current-session").await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let long = "u".repeat(129);
    assert_eq!(
        app.get(&format!("/v1/users/{long}/current-session"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}
