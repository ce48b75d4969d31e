//! The AsyncAPI document describes the events we really publish and consume.

use serde_json::{Value, json};
use session_sidecar::testing::ReadOp;
use session_sidecar::testing::document;

use crate::both_backends;
use crate::harness::{Kind, TestApp};

both_backends!(every_relayed_event_matches_the_asyncapi_document);

fn validate(doc: &Value, event: &Value) {
    validate_message(doc, event["event_type"].as_str().unwrap(), event);
}

fn validate_message(doc: &Value, name: &str, event: &Value) {
    let mut schema = doc["components"]["messages"][name]["payload"].clone();
    assert!(schema.is_object(), "{name} is not documented");
    schema
        .as_object_mut()
        .unwrap()
        .insert("components".into(), doc["components"].clone());
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(event)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?}\n{event}");
}

async fn every_relayed_event_matches_the_asyncapi_document(kind: Kind) {
    // Proves: each published event type, as relayed to the stream, validates against its
    // documented message; the consumed messages accept what other services send.
    let app = TestApp::of_service(kind).await;
    let doc = app.get("/asyncapi.json").await.body;
    assert!(
        doc == document(),
        "the served document is the generated one"
    );
    assert_eq!(doc["asyncapi"], "3.0.0");
    let a = app
        .create_id(
            "u1",
            json!({"title": "t", "org_id": "o", "case_id": "c", "metadata": {"k": [1]}}),
        )
        .await;
    let b = app.create_id("u1", json!({"ttl_seconds": 1})).await;
    app.patch(&format!("/v1/sessions/{a}"), json!({"data": {"x": 1}}))
        .await;
    app.end(&a, json!({"performer_id": "system"})).await;
    app.put("/v1/users/u1/current-session", json!({"session_id": b}))
        .await;
    let c = app.create_id("u2", json!({})).await;
    app.create_id("u2", json!({})).await;
    app.delete(&format!("/v1/sessions/{c}")).await;
    app.clock.advance_ms(1_000);
    session_sidecar::testing::sweep_once(&app.background)
        .await
        .unwrap();
    app.relay().await;
    let events = app.events().await;
    let mut kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "session.created.v1",
            "session.deleted.v1",
            "session.ended.v1",
            "session.expired.v1",
            "session.updated.v1"
        ]
    );
    for event in &events {
        validate(&doc, &serde_json::to_value(event).unwrap());
    }
    let inbound = json!({"event_id": uuid::Uuid::new_v4().to_string(), "event_type": "case.deleted.v1", "timestamp": "2026-01-01T00:00:00.000Z", "source": "case-service", "payload": {"case_id": "c"}});
    validate(&doc, &inbound);
    assert_eq!(
        app.post("/v1/events", inbound).await.status,
        axum::http::StatusCode::OK
    );
    // A dead letter, as the consumer stores it, matches its documented message.
    app.publish(&crate::events::inbound("case.deleted.v1", json!({})))
        .await;
    app.consume().await;
    let r = app
        .backend
        .read(vec![ReadOp::XRange(
            app.sessions.keys().dead_letters(),
            None,
            10,
        )])
        .await
        .unwrap();
    let entries = r.into_iter().next().unwrap().into_entries();
    assert_eq!(entries.len(), 1);
    let fields: serde_json::Map<String, Value> = entries[0]
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    validate_message(&doc, "DeadLetter", &Value::Object(fields));
}
