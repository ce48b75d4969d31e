//! Property tests of hostile input: whatever JSON or bytes arrive, every endpoint answers with a
//! success or a 4xx problem — never a 5xx, never a panic.

use axum::body::Body;
use axum::http::{Method, Request};
use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::harness::{Kind, TestApp};

/// Any JSON value, nested a few levels, with the field names the API knows mixed in.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("user_id".to_owned()),
        Just("title".to_owned()),
        Just("metadata".to_owned()),
        Just("performer_id".to_owned()),
        Just("ttl_seconds".to_owned()),
        Just("role".to_owned()),
        Just("content".to_owned()),
        Just("cost".to_owned()),
        Just("event_id".to_owned()),
        Just("payload".to_owned()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        Just(Value::String("user".into())),
        Just(Value::String("system".into())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn send(app: &TestApp, method: Method, path: &str, body: Vec<u8>) -> u16 {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    app.raw(req).await.status.as_u16()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_json_on_any_endpoint_is_answered_without_a_5xx(body in json(), route in 0usize..9) {
        // Proves: arbitrary JSON bodies on every writing endpoint give 2xx or 4xx.
        let rt = runtime();
        rt.block_on(async {
            let app = TestApp::new(Kind::Memory).await;
            let id = app.create_id("u1", serde_json::json!({})).await;
            let (method, path) = match route {
                0 => (Method::POST, "/v1/sessions".to_owned()),
                1 => (Method::PATCH, format!("/v1/sessions/{id}")),
                2 => (Method::PUT, format!("/v1/sessions/{id}/heartbeat")),
                3 => (Method::POST, format!("/v1/sessions/{id}/end")),
                4 => (Method::POST, format!("/v1/sessions/{id}/messages")),
                5 => (Method::PUT, format!("/v1/sessions/{id}/memory")),
                6 => (Method::PATCH, format!("/v1/sessions/{id}/memory")),
                7 => (Method::PUT, "/v1/users/u1/current-session".to_owned()),
                _ => (Method::POST, "/v1/events".to_owned()),
            };
            let status = send(&app, method, &path, body.to_string().into_bytes()).await;
            prop_assert!(status < 500, "{path} answered {status} to {body}");
            Ok(())
        })?;
    }

    #[test]
    fn any_bytes_as_a_body_or_an_id_are_answered_without_a_5xx(bytes in prop::collection::vec(any::<u8>(), 0..300), segment in "[^/?#]{0,80}") {
        // Proves: raw bytes as a body, and arbitrary text as a session id, give 2xx or 4xx.
        let rt = runtime();
        rt.block_on(async {
            let app = TestApp::new(Kind::Memory).await;
            let status = send(&app, Method::POST, "/v1/sessions", bytes.clone()).await;
            prop_assert!(status < 500, "body {bytes:?} answered {status}");
            let encoded: String = segment.bytes().map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
            for method in [Method::GET, Method::DELETE] {
                let status = send(&app, method, &format!("/v1/sessions/{encoded}"), Vec::new()).await;
                prop_assert!(status < 500, "id {segment:?} answered {status}");
            }
            Ok(())
        })?;
    }
}
