//! The webhook's certificate lifecycle against a fake API server: generated once and shared
//! through its Secret, rotated 30 days before expiry with the old CA kept in the bundle, and
//! published as the caBundle of the MutatingWebhookConfiguration without needless writes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "common/apiserver.rs"]
mod apiserver;

use apiserver::FakeApiServer;
use serde_json::json;
use session_operator::testing::webhook::certs::{self, Placement};

const SECRET: &str = "/api/v1/namespaces/session-system/secrets/session-operator-webhook-tls";
const CONFIG: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/session-operator";

fn placement() -> Placement {
    Placement {
        namespace: "session-system".into(),
        service: "session-operator-webhook".into(),
        secret: "session-operator-webhook-tls".into(),
        configuration: "session-operator".into(),
    }
}

#[tokio::test]
async fn the_certificate_is_generated_once_and_shared() {
    let (client, fake) = FakeApiServer::start();
    let first = certs::ensure(&client, &placement()).await.unwrap();
    let (writes, _) = fake.take_writes();
    assert_eq!(writes.len(), 1, "the Secret is created");
    let secret = fake.get(SECRET).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    // Another replica (or a restart) reads the same certificate and writes nothing.
    let again = certs::ensure(&client, &placement()).await.unwrap();
    assert_eq!(again, first);
    assert!(fake.take_writes().0.is_empty());
}

#[tokio::test]
async fn an_expiring_certificate_is_rotated_keeping_the_old_ca_trusted() {
    let (client, fake) = FakeApiServer::start();
    let first = certs::ensure(&client, &placement()).await.unwrap();
    // Pretend it expires in ten days.
    let mut secret = fake.get(SECRET).unwrap();
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    secret["metadata"]["annotations"]["sessions.io/not-after"] = json!(
        soon.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    fake.insert(SECRET, secret);
    let rotated = certs::ensure(&client, &placement()).await.unwrap();
    assert_ne!(rotated.cert, first.cert);
    assert!(rotated.not_after > soon + time::Duration::days(300));
    assert!(
        rotated.ca_bundle.ends_with(&first.ca_bundle),
        "the old CA stays trusted"
    );
    assert_eq!(rotated.ca_bundle.matches("BEGIN CERTIFICATE").count(), 2);
}

#[tokio::test]
async fn the_ca_bundle_is_published_once() {
    let (client, fake) = FakeApiServer::start();
    fake.insert(
        CONFIG,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
               "metadata": {"name": "session-operator", "resourceVersion": "1"},
               "webhooks": [{"name": "inject.sessions.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                             "clientConfig": {"service": {"name": "session-operator-webhook", "namespace": "session-system", "path": "/inject"}}}]}),
    );
    let cert = certs::ensure(&client, &placement()).await.unwrap();
    fake.take_writes();
    certs::publish_ca_bundle(&client, &placement(), &cert.ca_bundle)
        .await
        .unwrap();
    let published = fake.get(CONFIG).unwrap()["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        data_encoding::BASE64.decode(published.as_bytes()).unwrap(),
        cert.ca_bundle.as_bytes()
    );
    assert_eq!(fake.take_writes().0.len(), 1);
    certs::publish_ca_bundle(&client, &placement(), &cert.ca_bundle)
        .await
        .unwrap();
    assert!(
        fake.take_writes().0.is_empty(),
        "no write when the bundle is current"
    );
}
