//! Sidecar injection: real AdmissionReview objects in, JSONPatch responses out; the offline
//! `inject` on every workload kind; injected manifests validated with `kubernetes-validate`;
//! and the webhook's generated certificate verified as a TLS client would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use common::example;
use serde_json::{Value, json};
use session_operator::crd::SessionService;
use session_operator::testing::capabilities::Capabilities;
use session_operator::testing::inject::{self, CONTAINER};
use session_operator::testing::webhook::{self, certs};

fn pod(labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "shop-frontend-7d9c-", "namespace": "shop", "labels": labels},
        "spec": {"containers": [{"name": "frontend", "image": "registry.example.com/shop/frontend:1.4.2"}]},
    })
}

/// An AdmissionReview as the API server sends it for a pod creation.
fn admission_review(object: &Value, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": object["kind"]},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": object["kind"]},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    }))
    .unwrap()
}

/// A current API server; the operator runs in `session-system`.
fn policy() -> webhook::Policy {
    policy_for(Capabilities::latest())
}

fn policy_for(api: Capabilities) -> webhook::Policy {
    webhook::Policy {
        api,
        excluded_namespaces: vec!["kube-system".into(), "session-system".into()],
    }
}

/// What Debian's kube-apiserver v1.20.2 serves.
fn kubernetes_1_20() -> Capabilities {
    Capabilities::of_version("v1.20.2", 20, &["v1", "v2beta1", "v2beta2"], &["v1beta1"])
}

async fn send(object: &Value, operation: &str, known: Option<SessionService>) -> Value {
    send_with(&policy(), object, operation, known).await
}

async fn send_with(
    policy: &webhook::Policy,
    object: &Value,
    operation: &str,
    known: Option<SessionService>,
) -> Value {
    webhook::review(
        &admission_review(object, operation),
        policy,
        |namespace: String, name: String| async move {
            assert_eq!(namespace, "shop");
            Ok(known.filter(|ss| ss.metadata.name.as_deref() == Some(name.as_str())))
        },
    )
    .await
}

/// The response's JSON patch, decoded from base64 as the API server does.
fn patch_of(review: &Value) -> Option<json_patch::Patch> {
    let encoded = review["response"]["patch"].as_str()?;
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    let bytes = data_encoding::BASE64.decode(encoded.as_bytes()).unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn sidecars(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|field| pod["spec"][field].as_array().into_iter().flatten())
        .filter(|c| c["name"] == CONTAINER)
        .collect()
}

#[tokio::test]
async fn a_labelled_pod_gets_a_native_sidecar_through_a_json_patch() {
    let ss = example("sessionservice-standalone.yaml");
    let mut object = pod(json!({"app": "shop-frontend", "sessions.io/inject": "sessions"}));
    let review = send(&object, "CREATE", Some(ss)).await;
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(
        review["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(review["response"]["allowed"], true);
    let patch = patch_of(&review).expect("a patch");
    json_patch::patch(&mut object, &patch).unwrap();
    let injected = sidecars(&object);
    assert_eq!(injected.len(), 1);
    let sidecar = injected[0];
    assert_eq!(
        object["spec"]["initContainers"][0]["name"], CONTAINER,
        "a native sidecar, first"
    );
    assert_eq!(sidecar["restartPolicy"], "Always");
    let env: Vec<(&str, &Value)> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let var = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e)
            .unwrap()
    };
    assert_eq!(var("SESSION_SERVICE_NAME")["value"], "sessions");
    assert_eq!(var("SESSION_LISTEN")["value"], "127.0.0.1:7070");
    assert_eq!(var("SESSION_CACHE_MAX_AGE_MS")["value"], "10000");
    // The sidecar user's URL, from the mounted Secret the sidecar rereads.
    assert!(env.iter().all(|(name, _)| *name != "SESSION_REDIS_URL"));
    assert_eq!(
        var("SESSION_REDIS_URL_FILE")["value"],
        "/etc/session/redis-url/url"
    );
    let volume = object["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "redis-url")
        .expect("the URL volume");
    assert_eq!(volume["secret"]["secretName"], "sessions-redis-sidecar");
    assert_eq!(volume["secret"]["items"][0]["key"], "url");
    assert_eq!(
        sidecar["volumeMounts"][0],
        json!({"name": "redis-url", "mountPath": "/etc/session/redis-url", "readOnly": true})
    );
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        sidecar["readinessProbe"]["httpGet"]["port"],
        "session-admin"
    );
    assert_eq!(
        object["metadata"]["annotations"]["sessions.io/injected"],
        "sessions"
    );
    object["metadata"]["name"] = json!("shop-frontend-7d9c-x2x4");
    common::kubernetes_validate("pod.yaml", &[object]);
}

#[tokio::test]
async fn unlabelled_pods_updates_and_other_kinds_are_never_touched() {
    let ss = example("sessionservice-standalone.yaml");
    let plain = send(&pod(json!({"app": "other"})), "CREATE", Some(ss.clone())).await;
    assert_eq!(plain["response"]["allowed"], true);
    assert!(patch_of(&plain).is_none());
    let labelled = pod(json!({"sessions.io/inject": "sessions"}));
    let update = send(&labelled, "UPDATE", Some(ss.clone())).await;
    assert!(patch_of(&update).is_none());
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "shop", "labels": {"sessions.io/inject": "sessions"}}});
    let other = send(&config_map, "CREATE", Some(ss)).await;
    assert!(patch_of(&other).is_none());
}

#[tokio::test]
async fn injection_is_idempotent() {
    let ss = example("sessionservice-standalone.yaml");
    let mut object = pod(json!({"sessions.io/inject": "sessions"}));
    let first = send(&object, "CREATE", Some(ss.clone())).await;
    json_patch::patch(&mut object, &patch_of(&first).unwrap()).unwrap();
    let second = send(&object, "CREATE", Some(ss.clone())).await;
    assert_eq!(second["response"]["allowed"], true);
    assert!(patch_of(&second).is_none(), "never two sidecars");
    let documents = vec![example_app()[0].clone()];
    let once = inject::inject_documents(documents, &ss, &Capabilities::latest()).unwrap();
    let twice = inject::inject_documents(once.clone(), &ss, &Capabilities::latest()).unwrap();
    assert_eq!(once, twice);
}

#[tokio::test]
async fn auto_injects_a_native_sidecar_where_the_server_has_them_and_a_container_on_1_20() {
    let ss = example("sessionservice-standalone.yaml");
    assert_eq!(
        ss.spec.sidecar.native, None,
        "the example leaves it to auto"
    );
    let current = send(
        &pod(json!({"sessions.io/inject": "sessions"})),
        "CREATE",
        Some(ss.clone()),
    )
    .await;
    let mut object = pod(json!({"sessions.io/inject": "sessions"}));
    json_patch::patch(&mut object, &patch_of(&current).unwrap()).unwrap();
    assert_eq!(object["spec"]["initContainers"][0]["name"], CONTAINER);
    assert_eq!(
        object["spec"]["initContainers"][0]["restartPolicy"],
        "Always"
    );

    // A 1.20 server: a plain container, nothing a 1.20 pod does not have; even when the spec
    // asks for native (which the SessionService's FeaturesAvailable condition reports).
    for native in [None, Some(true)] {
        let mut ss = ss.clone();
        ss.spec.sidecar.native = native;
        let old = send_with(
            &policy_for(kubernetes_1_20()),
            &pod(json!({"sessions.io/inject": "sessions"})),
            "CREATE",
            Some(ss),
        )
        .await;
        let mut object = pod(json!({"sessions.io/inject": "sessions"}));
        json_patch::patch(&mut object, &patch_of(&old).unwrap()).unwrap();
        assert!(object["spec"].get("initContainers").is_none(), "{native:?}");
        let sidecar = &object["spec"]["containers"][1];
        assert_eq!(sidecar["name"], CONTAINER);
        assert!(sidecar.get("restartPolicy").is_none());
        assert_eq!(
            sidecar["ports"][0]["protocol"], "TCP",
            "server-side apply on 1.20 needs it"
        );
    }
}

#[tokio::test]
async fn pods_of_excluded_namespaces_are_admitted_unchanged() {
    let ss = example("sessionservice-standalone.yaml");
    for namespace in ["kube-system", "session-system"] {
        let mut object = pod(json!({"sessions.io/inject": "sessions"}));
        object["metadata"]["namespace"] = json!(namespace);
        let mut review: Value =
            serde_json::from_slice(&admission_review(&object, "CREATE")).unwrap();
        review["request"]["namespace"] = json!(namespace);
        let answer = webhook::review(&serde_json::to_vec(&review).unwrap(), &policy(), |_, _| {
            let ss = ss.clone();
            async move { Ok(Some(ss)) }
        })
        .await;
        assert_eq!(answer["response"]["allowed"], true, "{namespace}");
        assert!(patch_of(&answer).is_none(), "{namespace}: no sidecar");
    }
}

#[tokio::test]
async fn a_missing_session_service_is_refused_clearly() {
    let review = send(&pod(json!({"sessions.io/inject": "nope"})), "CREATE", None).await;
    assert_eq!(review["response"]["allowed"], false);
    let message = review["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(r#"SessionService "nope" does not exist in namespace shop"#),
        "{message}"
    );
    assert!(patch_of(&review).is_none());
}

#[tokio::test]
async fn a_broken_review_is_answered_not_crashed_on() {
    let review = webhook::review(b"{not json", &policy(), |_, _| async { Ok(None) }).await;
    assert_eq!(review["response"]["allowed"], false);
    assert!(
        review["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not an AdmissionReview")
    );
}

#[tokio::test]
async fn without_native_sidecars_a_plain_container_is_appended_and_tls_mounts_the_ca() {
    let mut ss = example("sessionservice-cluster.yaml");
    ss.spec.sidecar.native = Some(false);
    let mut object = pod(json!({"sessions.io/inject": "sessions-ha"}));
    object["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let review = send(&object, "CREATE", Some(ss)).await;
    json_patch::patch(&mut object, &patch_of(&review).unwrap()).unwrap();
    assert!(object["spec"].get("initContainers").is_none());
    let sidecar = &object["spec"]["containers"][1];
    assert_eq!(sidecar["name"], CONTAINER);
    assert!(sidecar.get("restartPolicy").is_none());
    assert_eq!(
        object["spec"]["volumes"][1]["secret"]["secretName"],
        "sessions-ha-redis-tls"
    );
    let env = sidecar["env"].to_string();
    assert!(
        env.contains("SSL_CERT_FILE") && env.contains(r#""SESSION_REDIS_CLUSTER","value":"true""#),
        "{env}"
    );
    object["metadata"]["name"] = json!("p");
    common::kubernetes_validate("tls-pod.yaml", &[object]);
}

fn example_app() -> Vec<Value> {
    let text =
        std::fs::read_to_string(common::repo_root().join("examples/app-deployment.yaml")).unwrap();
    session_operator::testing::yaml::from_yaml_documents(&text).unwrap()
}

#[test]
fn offline_injection_covers_every_workload_kind_and_validates() {
    let ss = example("sessionservice-standalone.yaml");
    let template = json!({"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]}});
    let selector = json!({"matchLabels": {"app": "w"}});
    let mut documents = example_app();
    documents.extend([
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s", "namespace": "shop"}, "spec": {"serviceName": "s", "selector": selector, "template": template}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d", "namespace": "shop"}, "spec": {"selector": selector, "template": template}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "shop"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "registry.example.com/app:1"}]}}}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c", "namespace": "shop"}, "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "app", "image": "registry.example.com/app:1"}]}}}}}}),
    ]);
    let injected = inject::inject_documents(documents, &ss, &Capabilities::latest()).unwrap();
    for document in &injected {
        let template = match document["kind"].as_str().unwrap() {
            "Service" => {
                assert!(
                    !document.to_string().contains(CONTAINER),
                    "a Service is left alone"
                );
                continue;
            }
            "Pod" => document,
            "CronJob" => &document["spec"]["jobTemplate"]["spec"]["template"],
            _ => &document["spec"]["template"],
        };
        assert_eq!(sidecars(template).len(), 1, "{}", document["kind"]);
        assert_eq!(
            template["metadata"]["labels"]["sessions.io/inject"], "sessions",
            "admitted by the Redis NetworkPolicy"
        );
    }
    common::kubernetes_validate("workloads.yaml", &injected);
}

#[test]
fn offline_injection_refuses_a_namespace_the_secrets_are_not_in() {
    let ss = example("sessionservice-standalone.yaml");
    let mut documents = example_app();
    documents[0]["metadata"]["namespace"] = json!("elsewhere");
    let error = inject::inject_documents(documents, &ss, &Capabilities::latest())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("is in namespace elsewhere, but SessionService sessions is in shop"),
        "{error}"
    );
}

#[test]
fn the_generated_webhook_certificate_verifies_for_the_service_names() {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let placement = certs::Placement {
        namespace: "session-system".into(),
        service: "session-operator-webhook".into(),
        secret: "session-operator-webhook-tls".into(),
        configuration: "session-operator".into(),
    };
    let now = time::OffsetDateTime::now_utc();
    let cert = certs::generate(placement.dns_names(), now).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(cert.ca_bundle.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider,
    )
    .build()
    .unwrap();
    let leaf = CertificateDer::from_pem_slice(cert.cert.as_bytes()).unwrap();
    for name in [
        "session-operator-webhook.session-system.svc",
        "session-operator-webhook.session-system.svc.cluster.local",
    ] {
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from("evil.example.com").unwrap(),
                &[],
                UnixTime::now()
            )
            .is_err()
    );
    // Renewal: not while fresh, 30 days before the end, and when absent.
    assert!(!certs::needs_renewal(Some(&cert), now));
    assert!(certs::needs_renewal(
        Some(&cert),
        now + time::Duration::days(340)
    ));
    assert!(certs::needs_renewal(None, now));
}

#[tokio::test]
async fn the_webhook_answers_over_tls_looking_the_session_service_up_in_the_api() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (client, fake) = apiserver::FakeApiServer::start();
    let ss = example("sessionservice-standalone.yaml");
    fake.insert(
        "/apis/sessions.io/v1alpha1/namespaces/shop/sessionservices/sessions",
        serde_json::to_value(&ss).unwrap(),
    );
    // A certificate as cert-manager would mount it.
    let dir = tempfile::tempdir().unwrap();
    let cert = certs::generate(vec!["localhost".into()], time::OffsetDateTime::now_utc()).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &cert.cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), &cert.key).unwrap();
    let port = common::free_port();
    let options = webhook::Options {
        webhook_listen: Some(([127, 0, 0, 1], port).into()),
        webhook_cert_dir: Some(dir.path().to_owned()),
        webhook_service: "session-operator-webhook".into(),
        webhook_secret: "unused".into(),
        webhook_configuration: "unused".into(),
        webhook_exclude_namespaces: vec!["kube-system".into()],
    };
    let api = Arc::new(std::sync::RwLock::new(Capabilities::latest()));
    let metrics = session_operator::testing::telemetry::Metrics::new().unwrap();
    tokio::spawn(webhook::serve(
        client,
        options,
        "session-system".into(),
        api,
        metrics.clone(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(cert.ca_bundle.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let tcp = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(tcp) => break tcp,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the webhook did not listen: {e}"),
        }
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("a verified TLS handshake");
    let body = admission_review(&pod(json!({"sessions.io/inject": "sessions"})), "CREATE");
    let head = format!(
        "POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let review: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(review["response"]["allowed"], true);
    let mut object = pod(json!({"sessions.io/inject": "sessions"}));
    json_patch::patch(&mut object, &patch_of(&review).unwrap()).unwrap();
    assert_eq!(sidecars(&object).len(), 1);
    // Counted for the operator dashboard's admissions panel.
    let admitted = |result: &str| {
        metrics
            .webhook_admissions
            .with_label_values(&[result])
            .get()
    };
    assert_eq!(
        (
            admitted("injected"),
            admitted("skipped"),
            admitted("denied")
        ),
        (1, 0, 0)
    );
}
