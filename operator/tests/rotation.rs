//! Rotating the Redis users' passwords and the JWT key under a steady load, against real
//! processes: a real `redis-server` started from the rendered configuration, a real session
//! service (as the `server` user, verifying tokens an issuer signs with the Secret's key) and a
//! real injected sidecar (as the `sidecar` user, reading its URL from the mounted Secret as the
//! webhook injects it) serving requests, the operator's reconciles against a fake API server,
//! and this test playing the kubelet: it rolls the session service when its Deployment's
//! template changes, starting the new process before stopping the old, and keeps the pods'
//! mounted Secrets current. The application's pod is never restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiserver::FakeApiServer;
use common::prometheus::{Sidecar, http, http_as};
use common::redis_node::RedisNode;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use session_operator::crd::SessionService;
use session_operator::testing::reconcile;

const NS: &str = "shop";
const IP: &str = "127.43.0.1";
const SS_PATH: &str = "/apis/sessions.io/v1alpha1/namespaces/shop/sessionservices/sessions";
const PODS_PATH: &str = "/api/v1/namespaces/shop/pods";
const DEPLOY_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments/sessions";

/// A value of the Secret `sessions-<name>` as the fake holds it now.
fn secret_text(fake: &FakeApiServer, name: &str, key: &str) -> Option<String> {
    let secret = fake.get(&format!("/api/v1/namespaces/{NS}/secrets/sessions-{name}"))?;
    let value = secret["data"][key].as_str()?;
    String::from_utf8(data_encoding::BASE64.decode(value.as_bytes()).ok()?).ok()
}

/// A value of a Redis user's Secret.
fn stored(fake: &FakeApiServer, user: &str, key: &str) -> Option<String> {
    secret_text(fake, &format!("redis-{user}"), key)
}

/// The user's URL from its Secret, pointed at the test's Redis.
fn url_of(fake: &FakeApiServer, user: &str) -> String {
    stored(fake, user, "url")
        .unwrap()
        .replace("sessions-redis.shop.svc", IP)
}

/// The Redis pod's readiness probe as the StatefulSet gives it, run against the test's Redis
/// with the pod's mounted Secret in `dir`.
fn redis_probe(fake: &FakeApiServer, dir: &std::path::Path) -> bool {
    let sts = fake
        .get(&format!(
            "/apis/apps/v1/namespaces/{NS}/statefulsets/sessions-redis"
        ))
        .unwrap();
    let command =
        &sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"];
    let script = command[2]
        .as_str()
        .unwrap()
        .replace("redis-cli", &format!("redis-cli -h {IP} -p 6379"))
        .replace("/etc/redis-users/", &format!("{}/", dir.display()));
    Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap()
        .status
        .success()
}

/// A service-scope token signed with `key`, as an issuer makes them.
fn token(key: &str) -> String {
    let exp = Timestamp::now().as_second() + 300;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "load", "scope": "sessions:service", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

/// The session service as its Deployment's pods start it now: the server user, and the JWT
/// keys of the Secret.
async fn start_server(fake: &FakeApiServer) -> Sidecar {
    let (url, key) = (
        url_of(fake, "server"),
        secret_text(fake, "jwt", "jwt-secret").unwrap(),
    );
    let mut args = vec![
        "--mode",
        "server",
        "--redis-url",
        &url,
        "--jwt-secret",
        &key,
    ];
    let extra = secret_text(fake, "jwt", "extra-jwt-secret");
    if let Some(extra) = &extra {
        args.extend(["--jwt-extra-secret", extra.as_str()]);
    }
    Sidecar::start("sessions", &args).await
}

fn pod(name: &str, labels: Value, annotations: Value, created: Timestamp, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "labels": labels, "annotations": annotations,
                        "creationTimestamp": Timestamp::from_second(created.as_second()).unwrap().to_string()},
           "status": {"podIP": ip}})
}

/// The pods the kubelet runs now: Redis, the session service (with its template's
/// annotations) and the application with its injected sidecar.
struct Pods {
    redis: Value,
    server: Value,
    app: Value,
}

impl Pods {
    fn publish(&self, fake: &FakeApiServer) {
        fake.insert(
            PODS_PATH,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                   "items": [self.redis, self.server, self.app]}),
        );
    }
}

fn server_labels() -> Value {
    json!({"app.kubernetes.io/name": "session-service", "app.kubernetes.io/instance": "sessions",
           "app.kubernetes.io/component": "server"})
}

fn template_annotations(fake: &FakeApiServer) -> Value {
    fake.get(DEPLOY_PATH).unwrap()["spec"]["template"]["metadata"]["annotations"].clone()
}

async fn ready(sidecar: &Sidecar) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin = sidecar.admin;
    while tokio::task::spawn_blocking(move || http(admin, "GET", "/readyz", None).0)
        .await
        .unwrap()
        != 200
    {
        assert!(Instant::now() < deadline, "the new process is not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests at a steady rate: creates through the sidecar, reads of what was created through
/// it and through whichever session-service process is current. Counts every answer that is
/// not a success.
struct Load {
    server: Arc<AtomicU16>,
    /// The token the issuer signs now.
    token: Arc<Mutex<String>>,
    sent: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(sidecar: u16, server: u16, token: String) -> Self {
        let server = Arc::new(AtomicU16::new(server));
        let token = Arc::new(Mutex::new(token));
        let (sent, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (server, token, sent, failed, stop) = (
                server.clone(),
                token.clone(),
                sent.clone(),
                failed.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = json!({"user_id": format!("user-{}", i % 50)});
                    let (status, created) = http(sidecar, "POST", "/v1/sessions", Some(body));
                    let mut answers = vec![("create", status, created.clone())];
                    if status == 201 {
                        let id: Value = serde_json::from_str(&created).unwrap();
                        let path = format!("/v1/sessions/{}", id["session_id"].as_str().unwrap());
                        let (status, body) = http(sidecar, "GET", &path, None);
                        answers.push(("sidecar read", status, body));
                        let bearer = token.lock().unwrap().clone();
                        let (status, body) = http_as(
                            Some(&bearer),
                            server.load(Ordering::Relaxed),
                            "GET",
                            &path,
                            None,
                        );
                        answers.push(("server read", status, body));
                    }
                    for (what, status, body) in answers {
                        sent.fetch_add(1, Ordering::Relaxed);
                        if !(200..300).contains(&status) {
                            failed
                                .lock()
                                .unwrap()
                                .push(format!("{what}: {status} {body}"));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Self {
            server,
            token,
            sent,
            failed,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let failed = self.failed.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), failed)
    }
}

/// `AUTH user password` against the test's Redis: what it answers.
fn auth(user: &str, password: &str) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", IP, "-p", "6379", "--user", user])
        .env("REDISCLI_AUTH", password)
        .arg("ping")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    format!("{} {}", stdout.trim(), stderr.trim())
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_every_password_and_the_jwt_key_under_load_fails_no_request() {
    let mut ss = common::example("sessionservice-standalone.yaml");
    // Tokens of the old key are accepted 1 s after issuers got the new one.
    ss.spec.server.jwt_rotation_grace_seconds = 1;
    let objects = session_operator::testing::render::objects(&ss, &common::test_secrets()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _redis = RedisNode::start(&objects, dir.path(), IP, 6379, "sessions-redis-0");
    let (client, fake) = FakeApiServer::start();
    let mut ss_value = serde_json::to_value(&ss).unwrap();
    ss_value["metadata"]["uid"] = json!("7d3c1f9e-0000-4000-8000-000000000043");
    ss_value["metadata"]["generation"] = json!(1);
    fake.insert(SS_PATH, ss_value.clone());
    // The Secrets the Redis pod was started from, as a past reconcile left them.
    for secret in objects.iter().filter(|o| o["kind"] == "Secret") {
        let name = secret["metadata"]["name"].as_str().unwrap();
        fake.insert(
            &format!("/api/v1/namespaces/{NS}/secrets/{name}"),
            secret.clone(),
        );
    }
    // The test updates the Redis pod's mounted Secret at once, as the kubelet does within a
    // minute.
    let ctx = apiserver::reconcile_context_settling(client, Duration::from_secs(1));
    let reconcile_once = || async {
        let current: SessionService = serde_json::from_value(fake.get(SS_PATH).unwrap()).unwrap();
        reconcile::reconcile(Arc::new(current), ctx.clone()).await
    };
    let before = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(3600);
    reconcile_once().await.unwrap();
    let injected = || json!({"sessions.io/inject": "sessions"});
    let mut pods = Pods {
        redis: pod(
            "sessions-redis-0",
            json!({"app.kubernetes.io/name": "session-service", "app.kubernetes.io/instance": "sessions",
                   "app.kubernetes.io/component": "redis"}),
            json!({}),
            before,
            IP,
        ),
        server: pod(
            "sessions-7f9c-0",
            server_labels(),
            template_annotations(&fake),
            before,
            "10.0.0.2",
        ),
        app: pod("app-5d8b-0", injected(), json!({}), before, "10.0.0.3"),
    };
    // The application's pod as the webhook injected it.
    pods.app["spec"] =
        json!({"containers": [session_operator::testing::inject::sidecar_container(&ss, false)]});
    pods.publish(&fake);

    let mut server = start_server(&fake).await;
    // The application pod's mounted Secret, kept current by the kubelet below.
    let app_mount = tempfile::tempdir().unwrap();
    let url_file = app_mount.path().join("url");
    std::fs::write(&url_file, url_of(&fake, "sidecar")).unwrap();
    let sidecar = Sidecar::start(
        "sessions",
        &["--redis-url-file", url_file.to_str().unwrap()],
    )
    .await;
    ready(&server).await;
    ready(&sidecar).await;
    let mut old: Vec<(String, String)> = ["admin", "server", "sidecar"]
        .iter()
        .map(|u| ((*u).to_owned(), stored(&fake, u, "password").unwrap()))
        .collect();
    old.push((
        "replication".to_owned(),
        secret_text(&fake, "redis-acl", "replication-password").unwrap(),
    ));
    let old_key = secret_text(&fake, "jwt", "jwt-secret").unwrap();
    let load = Load::start(sidecar.api, server.api, token(&old_key));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Both rotations are asked for at once.
    let started = Instant::now();
    ss_value["metadata"]["annotations"] = json!({
        "sessions.io/rotate-redis-passwords": "2026-12-01",
        "sessions.io/rotate-jwt-secret": "2026-12-01",
    });
    ss_value["status"] = fake.get(SS_PATH).unwrap()["status"].clone();
    fake.insert(SS_PATH, ss_value.clone());
    let mut rolls = 0;
    let mounted = tempfile::tempdir().unwrap();
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        reconcile_once().await.unwrap();
        let status = fake.get(SS_PATH).unwrap()["status"].clone();
        let text = |field: &str| status[field].as_str().unwrap_or_default().to_owned();
        let (passwords, jwt) = (text("redisPasswordRotation"), text("jwtSecretRotation"));
        for line in [&passwords, &jwt] {
            if !seen.contains(line) {
                println!("status: {line}");
                seen.push(line.clone());
            }
        }
        // The issuer signs with whatever key the Secret holds now.
        *load.token.lock().unwrap() = token(&secret_text(&fake, "jwt", "jwt-secret").unwrap());
        // The kubelet keeps the Redis pod's mounted ACL Secret current.
        std::fs::write(
            mounted.path().join("replication-password"),
            secret_text(&fake, "redis-acl", "replication-password").unwrap(),
        )
        .unwrap();
        assert!(redis_probe(&fake, mounted.path()), "the Redis probe failed");
        // And the application pod's.
        std::fs::write(&url_file, url_of(&fake, "sidecar")).unwrap();
        let pending_roll = template_annotations(&fake) != pods.server["metadata"]["annotations"];
        if passwords.starts_with("Redis passwords rotated")
            && jwt.starts_with("JWT key rotated")
            && !pending_roll
        {
            break;
        }
        // The Deployment's template changed: a rolling update, the new pod first.
        if pending_roll {
            let next = start_server(&fake).await;
            ready(&next).await;
            load.server.store(next.api, Ordering::Relaxed);
            // As Kubernetes takes the old pod out of the endpoints before it stops it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::mem::replace(&mut server, next).stop().await;
            rolls += 1;
            pods.server = pod(
                &format!("sessions-7f9c-{rolls}"),
                server_labels(),
                template_annotations(&fake),
                Timestamp::now(),
                "10.0.0.4",
            );
            pods.publish(&fake);
        }
        assert!(
            Instant::now() < deadline,
            "the rotations did not finish in 60 s: {passwords} / {jwt}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let admin = sidecar.admin;
    let metrics = tokio::task::spawn_blocking(move || http(admin, "GET", "/metrics", None).1)
        .await
        .unwrap();
    let reloads: u32 = metrics
        .lines()
        .find(|line| line.starts_with("session_redis_url_reloads_total{"))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .expect("the reload counter");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, failed) = load.finish();
    println!(
        "rotated the admin, server, sidecar and replication passwords and the JWT key in {took:.2?} under load ({rolls} rolls of the session service, the application's sidecar moved {reloads} time without a restart): {sent} requests, {} failed",
        failed.len()
    );
    assert!(rolls >= 2, "the session service rolled");
    assert_eq!(reloads, 1, "the sidecar moved to the new password once");
    assert!(failed.is_empty(), "failed requests: {failed:#?}");
    for (user, password) in &old {
        let answer = auth(user, password);
        assert!(
            answer.contains("WRONGPASS"),
            "{user}'s old password: {answer}"
        );
        let new = if user == "replication" {
            secret_text(&fake, "redis-acl", "replication-password").unwrap()
        } else {
            stored(&fake, user, "password").unwrap()
        };
        assert_ne!(&new, password);
        assert_eq!(auth(user, &new), "PONG", "{user}'s new password");
    }
    for user in ["admin", "server", "sidecar"] {
        assert!(stored(&fake, user, "previous-password").is_none());
    }
    assert!(secret_text(&fake, "redis-acl", "previous-password").is_none());
    let masterauth = Command::new("redis-cli")
        .args([
            "-h",
            IP,
            "-p",
            "6379",
            "--user",
            "admin",
            "config",
            "get",
            "masterauth",
        ])
        .env("REDISCLI_AUTH", stored(&fake, "admin", "password").unwrap())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&masterauth.stdout)
            .contains(&secret_text(&fake, "redis-acl", "replication-password").unwrap()),
        "replicas authenticate with the new password"
    );
    let acl = secret_text(&fake, "redis-acl", "users.acl").unwrap();
    assert_eq!(
        acl.matches('#').count(),
        4,
        "one hash per user again: {acl}"
    );
    assert!(
        redis_probe(&fake, mounted.path()),
        "the probe passes on the new password"
    );
    // The session service now refuses the old key and accepts the new one.
    let new_key = secret_text(&fake, "jwt", "jwt-secret").unwrap();
    assert_ne!(new_key, old_key);
    assert!(secret_text(&fake, "jwt", "extra-jwt-secret").is_none());
    let port = server.api;
    let (refused, accepted) = tokio::task::spawn_blocking(move || {
        (
            http_as(
                Some(&token(&old_key)),
                port,
                "GET",
                "/v1/users/u/sessions",
                None,
            )
            .0,
            http_as(
                Some(&token(&new_key)),
                port,
                "GET",
                "/v1/users/u/sessions",
                None,
            )
            .0,
        )
    })
    .await
    .unwrap();
    assert_eq!((refused, accepted), (401, 200));
    server.stop().await;
    sidecar.stop().await;
}
