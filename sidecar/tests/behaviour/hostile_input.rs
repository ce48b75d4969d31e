//! Bad input of every kind gets a 4xx problem response, never a 5xx or a crash.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::harness::{Kind, TestApp};

both_backends!(
    malformed_bodies_are_4xx_problems,
    unknown_routes_and_methods_are_problems,
    identifiers_are_validated
);

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = app.raw(req.body(Body::from(body)).unwrap()).await;
    let ct = res
        .headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (res.status, res.code().to_owned(), ct)
}

async fn malformed_bodies_are_4xx_problems(kind: Kind) {
    // Proves: malformed JSON, wrong types, non-objects, wrong media type, oversized bodies.
    let app = TestApp::new(kind).await;
    let json_ct = Some("application/json");
    let cases: Vec<(Option<&str>, Vec<u8>, StatusCode, &str)> = vec![
        (
            json_ct,
            b"{".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            json_ct,
            b"{\"user_id\": 5}".to_vec(),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json_ct,
            b"[1,2]".to_vec(),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json_ct,
            b"\"str\"".to_vec(),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json_ct,
            b"{\"user_id\": \"u\", \"metadata\": []}".to_vec(),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json_ct,
            b"{\"user_id\": \"u\", \"ttl_seconds\": -1}".to_vec(),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json_ct,
            b"{\"user_id\": \"u\", \"ttl_seconds\": 99999999999}".to_vec(),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json_ct,
            vec![0xff, 0xfe, 0x00],
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Some("text/plain"),
            b"{}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            None,
            b"{\"user_id\":\"u\"}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            json_ct,
            format!(
                "{{\"user_id\":\"u\",\"data\":{{\"x\":\"{}\"}}}}",
                "a".repeat(70 * 1024)
            )
            .into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            json_ct,
            b"{}".to_vec(),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
    ];
    for (ct, body, status, code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (got, got_code, got_ct) = send(&app, Method::POST, "/v1/sessions", ct, body).await;
        assert_eq!((got, got_code.as_str()), (status, code), "{shown}");
        assert_eq!(got_ct, "application/problem+json");
    }
    // application/merge-patch+json is JSON too.
    let id = app.create_id("u1", json!({})).await;
    let (status, _, _) = send(
        &app,
        Method::PATCH,
        &format!("/v1/sessions/{id}"),
        Some("application/merge-patch+json"),
        b"{\"data\":{\"a\":1}}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Objects are limited to 64 KiB after merging, not only per request.
    let half = "a".repeat(40 * 1024);
    assert_eq!(
        app.patch(&format!("/v1/sessions/{id}"), json!({"data": {"x": half}}))
            .await
            .status,
        StatusCode::OK
    );
    let res = app
        .patch(&format!("/v1/sessions/{id}"), json!({"data": {"y": half}}))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::BAD_REQUEST, "validation_failed")
    );
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.body["data"]
            .as_object()
            .unwrap()
            .len(),
        2,
        "the first patch stays, the second is refused"
    );
    assert_eq!(
        app.get("/v1/users/u/sessions").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing was created"
    );
}

async fn unknown_routes_and_methods_are_problems(kind: Kind) {
    // Proves: 404 for unknown paths and 405 for wrong methods, both as problem+json.
    let app = TestApp::new(kind).await;
    let (status, code, ct) = send(&app, Method::GET, "/v2/nothing", None, vec![]).await;
    assert_eq!(
        (status, code.as_str(), ct.as_str()),
        (
            StatusCode::NOT_FOUND,
            "route_not_found",
            "application/problem+json"
        )
    );
    let (status, code, _) = send(&app, Method::DELETE, "/v1/sessions", None, vec![]).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

async fn identifiers_are_validated(kind: Kind) {
    // Proves: ids with whitespace, control characters or over 128 bytes are 400.
    let app = TestApp::new(kind).await;
    for user in [
        json!(""),
        json!("a b"),
        json!("tab\t"),
        json!("x".repeat(129)),
        json!(null),
    ] {
        let res = app.post("/v1/sessions", json!({"user_id": user})).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{user}");
    }
    for field in ["org_id", "case_id", "performer_id"] {
        let res = app
            .post("/v1/sessions", json!({"user_id": "u", field: "bad id"}))
            .await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{field}");
    }
    let ok = app
        .post("/v1/sessions", json!({"user_id": "ünïcödé@example.com"}))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
}
