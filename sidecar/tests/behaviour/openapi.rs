//! The OpenAPI 3.1 document and the server agree: every endpoint of the API is documented, every
//! documented operation is served, and what the server answers is documented — the status codes
//! and, for JSON bodies, the schema (validated with a JSON Schema validator).

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use session_sidecar::testing::{AppState, Auth, router_and_doc};

use crate::both_backends;
use crate::harness::{Kind, Res, TestApp};

both_backends!(document_and_server_agree);

/// Every operation the API offers (plus the document itself is served at /openapi.json).
const OPERATIONS: &[(&str, &str)] = &[
    ("post", "/v1/sessions"),
    ("get", "/v1/sessions/{session_id}"),
    ("patch", "/v1/sessions/{session_id}"),
    ("put", "/v1/sessions/{session_id}/heartbeat"),
    ("post", "/v1/sessions/{session_id}/end"),
    ("delete", "/v1/sessions/{session_id}"),
    ("get", "/v1/users/{user_id}/sessions"),
    ("get", "/v1/orgs/{org_id}/sessions"),
    ("get", "/v1/users/{user_id}/current-session"),
    ("put", "/v1/users/{user_id}/current-session"),
    ("post", "/v1/sessions/{session_id}/messages"),
    ("get", "/v1/sessions/{session_id}/messages"),
    ("get", "/v1/sessions/{session_id}/summary"),
    ("get", "/v1/sessions/{session_id}/memory"),
    ("put", "/v1/sessions/{session_id}/memory"),
    ("patch", "/v1/sessions/{session_id}/memory"),
    ("post", "/v1/events"),
    ("get", "/v1/dead-letters"),
    ("get", "/v1/dead-letters/{id}"),
    ("delete", "/v1/dead-letters/{id}"),
    ("post", "/v1/dead-letters/{id}/replay"),
    ("post", "/v1/dead-letters/replay"),
    ("get", "/healthz"),
    ("get", "/readyz"),
];

fn validate(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let mut root = schema.clone();
    if let Some(obj) = root.as_object_mut() {
        obj.insert("components".into(), doc["components"].clone());
    }
    let validator =
        jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{what}: bad schema: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{instance}");
}

/// Checks one response against the operation's documented responses.
fn check(doc: &Value, method: &str, path: &str, res: &Res) {
    let op = &doc["paths"][path][method];
    let documented = &op["responses"][res.status.as_str()];
    assert!(
        documented.is_object(),
        "{method} {path} answered {} which is not documented: {}",
        res.status,
        res.body
    );
    if let Some(content) = documented["content"].as_object() {
        let ct = res.headers["content-type"].to_str().unwrap();
        let media = content.get(ct).unwrap_or_else(|| {
            panic!(
                "{method} {path} {}: content-type {ct} not documented",
                res.status
            )
        });
        validate(
            doc,
            &media["schema"],
            &res.body,
            &format!("{method} {path} {}", res.status),
        );
    }
}

async fn document_and_server_agree(kind: Kind) {
    // As the session service: the document covers the dead letters too.
    let app = TestApp::of_service(kind).await;
    let (_, doc) = router_and_doc(AppState {
        sessions: app.sessions.clone(),
        auth: Auth::TrustPod,
        max_body_bytes: 1024,
        cache: None,
        metrics: app.metrics.clone(),
    });
    let doc = serde_json::to_value(doc).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc,
        app.get("/openapi.json").await.body,
        "the served document is the generated one"
    );
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let design: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, design,
        "documented operations differ from the API's operations"
    );

    // Walk every operation with a valid request and with an invalid one; both answers must be
    // documented, with bodies matching their schemas.
    let id = app
        .create_id("u1", json!({"title": "t", "org_id": "o1", "case_id": "c1"}))
        .await;
    let other = app.create_id("u1", json!({})).await;
    app.post(
        &format!("/v1/sessions/{id}/messages"),
        json!({"role": "user", "content": "hi"}),
    )
    .await;
    app.relay().await;
    let event = json!({"event_id": uuid::Uuid::new_v4().to_string(), "event_type": "case.deleted.v1", "timestamp": "2026-01-01T00:00:00.000Z", "source": "case-service", "payload": {"case_id": "c1"}});
    // Two dead letters: one whose event applies now, one whose payload never will.
    app.set_aside(&crate::events::inbound(
        "auth.user.deleted.v1",
        json!({"user_id": "gone"}),
    ))
    .await;
    app.set_aside(&crate::events::inbound("auth.user.deleted.v1", json!({})))
        .await;
    let letters = app.get("/v1/dead-letters").await.body;
    let letter = |i: usize| letters["items"][i]["id"].as_str().unwrap().to_owned();
    let (replayable, stuck) = (letter(0), letter(1));
    let valid: Vec<(&str, String, Option<Value>)> = vec![
        (
            "post",
            "/v1/sessions".into(),
            Some(json!({"user_id": "u2", "title": "x", "metadata": {"k": 1}})),
        ),
        ("get", format!("/v1/sessions/{id}"), None),
        (
            "patch",
            format!("/v1/sessions/{id}"),
            Some(json!({"data": {"a": 1}})),
        ),
        (
            "put",
            format!("/v1/sessions/{id}/heartbeat"),
            Some(json!({"ttl_seconds": 60})),
        ),
        ("get", "/v1/users/u1/sessions".into(), None),
        ("get", "/v1/orgs/o1/sessions".into(), None),
        ("get", "/v1/users/u1/current-session".into(), None),
        (
            "put",
            "/v1/users/u1/current-session".into(),
            Some(json!({"session_id": id})),
        ),
        (
            "post",
            format!("/v1/sessions/{id}/messages"),
            Some(json!({"role": "assistant", "content": "yo", "tokens": 3, "cost": 0.01})),
        ),
        ("get", format!("/v1/sessions/{id}/messages"), None),
        ("get", format!("/v1/sessions/{id}/summary"), None),
        (
            "put",
            format!("/v1/sessions/{id}/memory"),
            Some(json!({"summary": "s"})),
        ),
        (
            "patch",
            format!("/v1/sessions/{id}/memory"),
            Some(json!({"facts": ["f"]})),
        ),
        ("get", format!("/v1/sessions/{id}/memory"), None),
        ("post", "/v1/events".into(), Some(event)),
        ("get", "/v1/dead-letters".into(), None),
        ("get", format!("/v1/dead-letters/{replayable}"), None),
        (
            "post",
            format!("/v1/dead-letters/{replayable}/replay"),
            None,
        ),
        ("post", "/v1/dead-letters/replay".into(), None),
        ("delete", format!("/v1/dead-letters/{stuck}"), None),
        (
            "post",
            format!("/v1/sessions/{other}/end"),
            Some(json!({"performer_id": "system"})),
        ),
        ("delete", format!("/v1/sessions/{other}"), None),
        ("get", "/healthz".into(), None),
        ("get", "/readyz".into(), None),
    ];
    let unknown = session_sidecar::testing::new_session_id(0);
    let invalid: Vec<(&str, String, Option<Value>)> = vec![
        (
            "post",
            "/v1/sessions".into(),
            Some(json!({"user_id": "u2", "title": "x"})),
        ),
        ("get", format!("/v1/sessions/{unknown}"), None),
        (
            "patch",
            format!("/v1/sessions/{id}"),
            Some(json!({"timestamp": "x"})),
        ),
        (
            "put",
            format!("/v1/sessions/{id}/heartbeat"),
            Some(json!({"ttl_seconds": 0})),
        ),
        ("get", "/v1/users/u1/sessions?limit=0".into(), None),
        ("get", "/v1/users/nobody/current-session".into(), None),
        (
            "put",
            "/v1/users/u1/current-session".into(),
            Some(json!({"title": "nope"})),
        ),
        ("post", format!("/v1/sessions/{id}/end"), Some(json!({}))),
        ("delete", format!("/v1/sessions/{id}"), None),
        (
            "post",
            format!("/v1/sessions/{id}/messages"),
            Some(json!({"role": "x", "content": ""})),
        ),
        ("get", format!("/v1/sessions/{unknown}/summary"), None),
        ("put", format!("/v1/sessions/{id}/memory"), Some(json!([1]))),
        (
            "post",
            "/v1/events".into(),
            Some(json!({"event_type": "x"})),
        ),
        ("get", "/v1/dead-letters?cursor=x".into(), None),
        ("get", "/v1/dead-letters/9-9".into(), None),
        ("post", "/v1/dead-letters/nope/replay".into(), None),
        ("delete", format!("/v1/dead-letters/{stuck}"), None),
    ];
    let mut seen = BTreeSet::new();
    for (method, path, body) in valid.into_iter().chain(invalid) {
        let res = app
            .call(
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                &path,
                body,
            )
            .await;
        let template = template_of(&doc, method, &path);
        check(&doc, method, &template, &res);
        seen.insert((method.to_owned(), template, res.status.is_success()));
    }
    for (m, p) in &design {
        assert!(
            seen.contains(&(m.clone(), p.clone(), true)),
            "{m} {p} was never exercised successfully"
        );
    }
    assert!(seen.iter().filter(|(_, _, ok)| !ok).count() >= 12);
    let res = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(res.status, StatusCode::OK);
}

/// The documented path template that `path` matches.
fn template_of(doc: &Value, method: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap();
    let parts: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .find(|t| {
            let tp: Vec<&str> = t.split('/').collect();
            tp.len() == parts.len()
                && tp
                    .iter()
                    .zip(&parts)
                    .all(|(a, b)| a.starts_with('{') || a == b)
                && doc["paths"][t.as_str()][method].is_object()
        })
        .unwrap_or_else(|| panic!("no documented template for {method} {path}"))
        .clone()
}
