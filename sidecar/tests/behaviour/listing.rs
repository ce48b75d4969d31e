//! Listing by user and by org: newest first, complete, stable cursor pagination.

use std::collections::HashSet;

use axum::http::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::harness::{Kind, TestApp};

both_backends!(
    user_listing_pages_through_everything_once,
    org_listing_follows_the_events,
    bad_page_parameters_are_refused
);

async fn pages(app: &TestApp, base: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("{base}?limit={limit}&cursor={c}"),
            None => format!("{base}?limit={limit}"),
        };
        let res = app.get(&path).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        out.extend(
            res.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["session_id"].as_str().unwrap().to_owned()),
        );
        match res.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

async fn user_listing_pages_through_everything_once(kind: Kind) {
    // Proves: newest first, ties broken by id, every session exactly once across pages.
    let app = TestApp::new(kind).await;
    let mut created = Vec::new();
    for i in 0..9 {
        if i % 3 == 0 {
            app.clock.advance_ms(1); // groups of three share a creation millisecond
        }
        created.push(app.create_id("u1", json!({})).await);
    }
    app.create("u2", json!({})).await;
    let listed = pages(&app, "/v1/users/u1/sessions", 2).await;
    assert_eq!(listed.len(), 9);
    assert_eq!(listed.iter().collect::<HashSet<_>>().len(), 9);
    let mut expected = created.clone();
    expected.sort_by(|a, b| b.cmp(a));
    let groups: Vec<Vec<String>> = created
        .chunks(3)
        .rev()
        .map(|g| {
            let mut g = g.to_vec();
            g.sort_by(|a, b| b.cmp(a));
            g
        })
        .collect();
    assert_eq!(listed, groups.concat());
    assert_eq!(pages(&app, "/v1/users/u1/sessions", 100).await, listed);
}

async fn org_listing_follows_the_events(kind: Kind) {
    // Proves: the org index is derived from relayed events: created appear, deleted disappear.
    let app = TestApp::new(kind).await;
    let a = app.create_id("u1", json!({"org_id": "acme"})).await;
    app.create_id("u1", json!({})).await; // makes `a` deletable
    let b = app.create_id("u2", json!({"org_id": "acme"})).await;
    app.create("u3", json!({"org_id": "other"})).await;
    assert!(
        pages(&app, "/v1/orgs/acme/sessions", 10).await.is_empty(),
        "not relayed yet"
    );
    app.relay().await;
    let mut listed = pages(&app, "/v1/orgs/acme/sessions", 1).await;
    listed.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(
        app.delete(&format!("/v1/sessions/{a}")).await.status,
        StatusCode::NO_CONTENT
    );
    app.relay().await;
    assert_eq!(pages(&app, "/v1/orgs/acme/sessions", 10).await, [b]);
}

async fn bad_page_parameters_are_refused(kind: Kind) {
    // Proves: limit outside 1..=100, a foreign cursor or an unknown parameter is 400.
    let app = TestApp::new(kind).await;
    for q in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "cursor=%%%",
        "cursor=bm9jb2xvbg",
        "colour=red",
    ] {
        let res = app.get(&format!("/v1/users/u1/sessions?{q}")).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{q}: {}", res.body);
        assert_eq!(res.headers["content-type"], "application/problem+json");
    }
}
