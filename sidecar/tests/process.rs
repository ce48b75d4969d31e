//! The `session-sidecar` binary as a process: the README's first command, configuration errors,
//! graceful shutdown, and two server processes racing on one Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{RedisServer, free_port, redis_cli, wait_for_port};
use serde_json::{Value, json};
use session_sidecar::contract::acl::Role;

const BIN: &str = env!("CARGO_BIN_EXE_session-sidecar");
/// The binary's default key prefix, which the test servers' users are limited to.
const PREFIX: &str = "sess";

/// A running `session-sidecar`, killed if still running when dropped.
struct Sidecar {
    child: Child,
    port: u16,
}

impl Sidecar {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1", args, env)
    }

    /// A sidecar listening on `ip` (reached on 127.0.0.1 all the same).
    fn start_on(ip: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let listen = format!("{ip}:{port}");
        let child = Command::new(BIN)
            .args(["--listen", &listen])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "session-sidecar");
        Self { child, port }
    }

    /// One HTTP/1.1 request; returns the status and the JSON body (or `Null`).
    fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        http(self.port, method, path, token, body)
    }

    /// Creates a session for `user` (201, or the test fails) and returns its path.
    fn create_session(&self, user: &str) -> String {
        let (status, created) =
            self.http("POST", "/v1/sessions", None, Some(json!({"user_id": user})));
        assert_eq!(status, 201, "{created}");
        format!("/v1/sessions/{}", created["session_id"].as_str().unwrap())
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One HTTP/1.1 request to a loopback port; returns the status and the JSON body (or `Null`).
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    (status, json)
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_embedded_default_serves_and_stops_cleanly_on_sigterm() {
    // Proves: with no flags but a port, the binary serves the API on the embedded store and
    // exits 0 after SIGTERM.
    let sidecar = Sidecar::start(&[], &[]);
    let (status, health) = sidecar.http("GET", "/readyz", None, None);
    assert_eq!((status, health["store"].as_str()), (200, Some("embedded")));
    let (status, created) = sidecar.http(
        "POST",
        "/v1/sessions",
        None,
        Some(json!({"user_id": "alice", "title": "Data analysis"})),
    );
    assert_eq!(status, 201);
    let id = created["session_id"].as_str().unwrap();
    let (status, found) = sidecar.http("GET", &format!("/v1/sessions/{id}"), None, None);
    assert_eq!((status, &found), (200, &created));
    assert!(sidecar.terminate().success());
}

#[test]
fn configuration_errors_are_reported_together() {
    // Proves: every configuration problem is printed at once and the exit status is 2.
    let out = Command::new(BIN)
        .args([
            "--mode",
            "server",
            "--shard-count",
            "0",
            "--redis-url",
            "http://nope",
            "--ttl-seconds",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("configuration error").count(), 4, "{stderr}");
    let out = Command::new(BIN)
        .args(["--listen", "0.0.0.0:7999"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "sidecar mode refuses a public address"
    );
}

#[test]
fn two_server_processes_expire_each_session_exactly_once() {
    // Proves: two session services sweeping one Redis publish exactly one session.expired.v1
    // per session, and the relay delivers each event to the stream once.
    let redis = RedisServer::start_for("race");
    let secret = "0123456789abcdef0123456789abcdef";
    let env = [("SESSION_JWT_SECRET", secret)];
    let url = redis.url_as(Role::Server);
    let args = [
        "--mode",
        "server",
        "--redis-url",
        &url,
        "--key-prefix",
        "race",
    ];
    let (a, b) = (Sidecar::start(&args, &env), Sidecar::start(&args, &env));
    let exp = chrono::Utc::now().timestamp() + 600;
    let claims = json!({"sub": "tests", "scope": "sessions:service", "exp": exp});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut ids = HashSet::new();
    for i in 0..20 {
        let server = if i % 2 == 0 { &a } else { &b };
        let (status, s) = server.http(
            "POST",
            "/v1/sessions",
            Some(&token),
            Some(json!({"user_id": format!("user-{}", i % 6), "ttl_seconds": 1})),
        );
        assert_eq!(status, 201, "{s}");
        ids.insert(s["session_id"].as_str().unwrap().to_owned());
    }
    let mut conn = redis::Client::open(redis.admin_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let expired = |conn: &mut redis::Connection| -> Vec<String> {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg("race:{events}:stream")
            .arg("-")
            .arg("+")
            .query(conn)
            .unwrap();
        entries
            .into_iter()
            .filter_map(|(_, fields)| {
                fields
                    .into_iter()
                    .find(|(k, _)| k == "envelope")
                    .map(|(_, v)| v)
            })
            .map(|e| serde_json::from_str::<Value>(&e).unwrap())
            .filter(|e| e["event_type"] == "session.expired.v1")
            .map(|e| e["payload"]["session_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while expired(&mut conn).len() < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} of 20 expired events arrived",
            expired(&mut conn).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500)); // time for any duplicate to show up
    let seen = expired(&mut conn);
    assert_eq!(seen.len(), 20, "each session expired exactly once");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ids);
    assert!(a.terminate().success() && b.terminate().success());
}

#[test]
fn sigterm_drains_in_flight_requests() {
    // Proves: a request in flight when SIGTERM arrives still gets its answer, and then the
    // process exits 0. Redis is made slow on purpose (DEBUG SLEEP) so the request is in flight.
    let redis = RedisServer::start_for(PREFIX);
    let sidecar = Sidecar::start(&["--redis-url", &redis.url], &[]);
    let port = sidecar.port;
    let unknown = format!("/v1/sessions/sess_0_{}", "a".repeat(26));
    let redis_port = redis.port.to_string();
    let sleeper = std::thread::spawn(move || {
        redis_cli()
            .args(["-p", &redis_port, "DEBUG", "SLEEP", "0.6"])
            .output()
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
    let request = std::thread::spawn(move || http(port, "GET", &unknown, None, None));
    std::thread::sleep(Duration::from_millis(100));
    let exit = sidecar.terminate();
    let (status, body) = request.join().unwrap();
    assert_eq!(status, 404, "the in-flight lookup was answered: {body}");
    assert!(exit.success());
    sleeper.join().unwrap();
}

#[test]
fn logs_never_contain_session_ids_tokens_or_secrets() {
    // Proves: at debug level, across successes, failures and a Redis outage, the JSON logs
    // carry no session id, bearer token or JWT secret.
    let mut redis = RedisServer::start_for(PREFIX);
    let secret = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t";
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mode",
            "server",
            "--redis-url",
            &redis.url_as(Role::Server),
        ])
        .env("SESSION_JWT_SECRET", secret)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(port, "session-sidecar");
    let exp = chrono::Utc::now().timestamp() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let (status, s) = http(
        port,
        "POST",
        "/v1/sessions",
        Some(&token),
        Some(json!({"title": "t"})),
    );
    assert_eq!(status, 201);
    let id = s["session_id"].as_str().unwrap().to_owned();
    http(
        port,
        "GET",
        &format!("/v1/sessions/{id}"),
        Some(&token),
        None,
    );
    http(
        port,
        "GET",
        &format!("/v1/sessions/{id}"),
        Some("forged.token.value"),
        None,
    );
    http(
        port,
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(&token),
        Some(json!({})),
    );
    redis.kill();
    let (status, _) = http(
        port,
        "GET",
        &format!("/v1/sessions/sess_0_{}", "a".repeat(26)),
        Some(&token),
        None,
    );
    assert_eq!(status, 503, "a miss during the outage");
    http(
        port,
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(&token),
        Some(json!({"performer_id": "alice"})),
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.lines().count() > 5, "the test produced logs: {logs}");
    let random_part = id.rsplit('_').next().unwrap();
    for (what, needle) in [
        ("session id", random_part),
        ("token", token.as_str()),
        ("secret", secret),
    ] {
        assert!(
            !logs.contains(needle),
            "the logs contain the {what}:\n{logs}"
        );
    }
}

#[test]
fn oversized_headers_are_refused_with_431() {
    // Proves: header limits hold (hyper's: about 400 KiB of headers, at most 100 of them): too
    // much gets 431 and the process keeps serving.
    let sidecar = Sidecar::start(&[], &[]);
    let send = |headers: String| -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = write!(
            stream,
            "GET /healthz HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n"
        );
        let mut raw = String::new();
        let _ = stream.read_to_string(&mut raw);
        raw.lines().next().unwrap_or_default().to_owned()
    };
    assert!(send(format!("x-big: {}\r\n", "a".repeat(8_000))).contains("200"));
    assert!(send(format!("x-big: {}\r\n", "a".repeat(1_000_000))).contains("431"));
    assert!(send((0..200).map(|i| format!("x-h{i}: v\r\n")).collect()).contains("431"));
    assert_eq!(
        sidecar.http("GET", "/healthz", None, None).0,
        200,
        "still serving"
    );
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    // Proves: on a listener that is not loopback-only, the header read timeout (10 s) closes a
    // connection whose headers never end (slowloris), and the process keeps serving others
    // meanwhile. (A loopback listener's clients are the pod's own containers: no timer there.)
    let sidecar = Sidecar::start_on("0.0.0.0", &["--allow-non-loopback"], &[]);
    let mut slow = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    write!(slow, "GET /healthz HTTP/1.1\r\nhost: x\r\n").unwrap();
    assert_eq!(
        sidecar.http("GET", "/healthz", None, None).0,
        200,
        "others are served"
    );
    let mut rest = Vec::new();
    let read = slow.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(
        read.is_ok(),
        "closed by the server, not by our read timeout: {read:?}"
    );
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "closed after {took:?}"
    );
}

#[test]
fn tls_to_redis_works_with_the_ca_in_ssl_cert_file_and_refuses_an_unknown_ca() {
    // Proves: `rediss://` connects when the CA is trusted through SSL_CERT_FILE (how the
    // operator configures session pods) — sessions are written, read and invalidated over
    // TLS — and a certificate from an unknown CA is not accepted.
    let (redis, ca) = RedisServer::start_tls(PREFIX);
    let ca = ca.to_string_lossy().into_owned();
    let sidecar = Sidecar::start(&["--redis-url", &redis.url], &[("SSL_CERT_FILE", &ca)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sidecar.http("GET", "/readyz", None, None).0 != 200 {
        assert!(Instant::now() < deadline, "not ready over TLS");
        std::thread::sleep(Duration::from_millis(50));
    }
    let path = sidecar.create_session("alice");
    assert_eq!(sidecar.http("GET", &path, None, None).0, 200);
    let other = Sidecar::start(&["--redis-url", &redis.url], &[("SSL_CERT_FILE", &ca)]);
    // A newer session becomes current, so the first one may be deleted.
    let body = Some(json!({"user_id": "alice"}));
    assert_eq!(other.http("POST", "/v1/sessions", None, body).0, 201);
    assert_eq!(other.http("DELETE", &path, None, None).0, 204);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sidecar.http("GET", &path, None, None).0 != 404 {
        assert!(
            Instant::now() < deadline,
            "the delete was not seen over TLS tracking"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Without the CA the certificate is refused, and the process says why while it keeps
    // serving its probes (the system roots do not hold the test's CA).
    let untrusting = Sidecar::start(
        &["--redis-url", &redis.url],
        &[("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")],
    );
    let (status, health) = wait_for_reason(&untrusting, "TLS verification");
    assert_eq!(status, 503);
    assert!(
        health["reason"].as_str().unwrap().contains("UnknownIssuer"),
        "{health}"
    );
    assert_eq!(untrusting.http("GET", "/healthz", None, None).0, 200);
}

/// Polls `/readyz` until its reason mentions `words` (10 s at most); returns the answer.
fn wait_for_reason(sidecar: &Sidecar, words: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, health) = sidecar.http("GET", "/readyz", None, None);
        if health["reason"].as_str().is_some_and(|r| r.contains(words)) {
            return (status, health);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said {words:?}: {health}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn starts_while_redis_is_unreachable_and_serves_once_it_answers() {
    // Proves: a sidecar whose Redis is down (still starting, its DNS record not yet there)
    // does not exit and crash-loop its application pod: /healthz answers, /readyz is 503 with
    // the reason, requests get 503, and it serves as soon as Redis answers.
    let mut redis = RedisServer::start_for(PREFIX);
    redis.kill();
    let sidecar = Sidecar::start(&["--redis-url", &redis.url], &[]);
    let (status, health) = wait_for_reason(&sidecar, "refused");
    assert_eq!(status, 503, "{health}");
    assert_eq!(sidecar.http("GET", "/healthz", None, None).0, 200);
    let body = Some(json!({"user_id": "alice"}));
    assert_eq!(
        sidecar.http("POST", "/v1/sessions", None, body.clone()).0,
        503
    );
    let unresolvable = Sidecar::start(&["--redis-url", "redis://redis.invalid:6379"], &[]);
    wait_for_reason(&unresolvable, "does not resolve (DNS)");

    redis.restart();
    let started = Instant::now();
    while sidecar.http("GET", "/readyz", None, None).0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not serving 10 s after Redis came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("serving {:?} after Redis came up", started.elapsed());
    let (status, created) = sidecar.http("POST", "/v1/sessions", None, body);
    assert_eq!(status, 201, "{created}");
}

#[test]
fn the_admin_listener_serves_probes_and_metrics_only() {
    // Proves: `--admin-listen` exposes /healthz, /readyz and /metrics for kubelet and
    // Prometheus, and nothing of the session API.
    let admin = free_port();
    let sidecar = Sidecar::start(&["--admin-listen", &format!("127.0.0.1:{admin}")], &[]);
    wait_for_port(admin, "the admin listener");
    assert_eq!(http(admin, "GET", "/healthz", None, None).0, 200);
    assert_eq!(http(admin, "GET", "/readyz", None, None).0, 200);
    let path = sidecar.create_session("alice");
    assert_eq!(http(admin, "GET", &path, None, None).0, 404);
    assert_eq!(
        http(
            admin,
            "POST",
            "/v1/sessions",
            None,
            Some(json!({"user_id": "a"}))
        )
        .0,
        404
    );
    let mut stream = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.contains("session_requests_total"), "{text}");
    assert!(sidecar.terminate().success());
}

#[test]
fn a_redis_user_missing_a_rule_is_reported_by_name_until_it_is_granted() {
    // Proves: a process whose Redis user lacks a command of its role (an external Redis set
    // up by hand) does not fail requests one by one: /readyz names what is missing and the
    // rules to grant, and once they are granted it serves without a restart. A sidecar user
    // is not enough for the session service, which also runs the background work.
    let redis = RedisServer::start_for(PREFIX);
    redis.cli(&["acl", "setuser", "sidecar", "-xadd"]);
    let sidecar = Sidecar::start(&["--redis-url", &redis.url], &[]);
    let (status, health) = wait_for_reason(&sidecar, "may not run what the sidecar role needs");
    assert_eq!(status, 503);
    let reason = health["reason"].as_str().unwrap();
    assert!(
        reason.contains("xadd sess:{0}:s:acl-check * f v"),
        "{reason}"
    );
    assert!(
        reason.contains("+xadd") && reason.contains("~sess:{[0-9]*}:*"),
        "{reason}"
    );
    assert!(
        !reason.contains("test-password"),
        "no password in the reason"
    );
    redis.cli(&["acl", "setuser", "sidecar", "+xadd"]);
    let granted = Instant::now();
    while sidecar.http("GET", "/readyz", None, None).0 != 200 {
        assert!(
            granted.elapsed() < Duration::from_secs(10),
            "not serving after the grant"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("serving {:?} after the rule was granted", granted.elapsed());
    let body = Some(json!({"user_id": "alice"}));
    assert_eq!(sidecar.http("POST", "/v1/sessions", None, body).0, 201);

    let secret = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t";
    let server = Sidecar::start(
        &["--mode", "server", "--redis-url", &redis.url],
        &[("SESSION_JWT_SECRET", secret)],
    );
    let (_, health) = wait_for_reason(&server, "may not run what the server role needs");
    assert!(
        health["reason"].as_str().unwrap().contains("xrange"),
        "{health}"
    );
}

/// The value of the unlabelled-but-for-the-service series `name` on `port`'s `/metrics`.
fn metric(port: u16, name: &str) -> f64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

#[test]
fn a_new_password_in_the_url_file_is_used_without_a_restart_and_no_request_fails() {
    // Proves: a sidecar reading its Redis URL from a file (the mounted Secret an injected
    // sidecar gets) moves to a rotated password on its own, under load and without a failed
    // request; once the old password is gone and every connection is cut, it reconnects with
    // the new one, its cache's invalidation tracking included.
    let redis = RedisServer::start_for(PREFIX);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("url");
    std::fs::write(&file, &redis.url).unwrap();
    let sidecar = Sidecar::start(
        &[
            "--redis-url-file",
            file.to_str().unwrap(),
            "--create-rate-limit",
            "0",
        ],
        &[],
    );
    while sidecar.http("GET", "/readyz", None, None).0 != 200 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let path = sidecar.create_session("alice");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = sidecar.port;
    let load = {
        let stop = stop.clone();
        let path = path.clone();
        std::thread::spawn(move || {
            let (mut sent, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = Some(json!({"user_id": format!("user-{}", sent % 50)}));
                for (method, path, body, want) in [
                    ("GET", path.as_str(), None, 200),
                    ("POST", "/v1/sessions", body, 201),
                ] {
                    let (status, reply) = http(port, method, path, None, body);
                    sent += 1;
                    if status != want {
                        failed.push(format!("{method} {path}: {status} {reply}"));
                    }
                }
            }
            (sent, failed)
        })
    };
    let old = common::password("sidecar");
    let new = "sidecar-rotated-password";
    let rotated = Instant::now();
    redis.cli(&["acl", "setuser", "sidecar", &format!(">{new}")]);
    std::fs::write(&file, redis.url.replace(&old, new)).unwrap();
    while metric(port, "session_redis_url_reloads_total") < 1.0 {
        assert!(
            rotated.elapsed() < Duration::from_secs(15),
            "the new URL was not connected with"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved = rotated.elapsed();
    redis.cli(&["acl", "setuser", "sidecar", &format!("<{old}")]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = load.join().unwrap();
    println!(
        "moved to the new password {moved:?} after the file changed: {sent} requests, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "first failures: {:?}",
        &failed[..failed.len().min(5)]
    );

    // Every connection cut: what reconnects must use the new password, as the old is refused.
    // Tracking is back when the cache flushes (what it does on recovering tracking); lookups
    // read on its connections, so a create proves the store's connection is back too (its first
    // call after the cut may fail: it reconnects on that call).
    let flushes = metric(port, "session_cache_flushes_total");
    assert!(
        redis
            .cli(&["client", "kill", "user", "sidecar"])
            .trim()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    let cut = Instant::now();
    while metric(port, "session_cache_flushes_total") <= flushes
        || metric(port, "session_cache_tracking_connected") < 1.0
        || sidecar.http("GET", &path, None, None).0 != 200
        || sidecar
            .http(
                "POST",
                "/v1/sessions",
                None,
                Some(json!({"user_id": "bob"})),
            )
            .0
            != 201
    {
        assert!(
            cut.elapsed() < Duration::from_secs(10),
            "not serving on the new password"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = redis_cli()
        .args([
            "-p",
            &redis.port.to_string(),
            "--user",
            "sidecar",
            "--pass",
            &old,
            "ping",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("WRONGPASS")
            || String::from_utf8_lossy(&refused.stderr).contains("WRONGPASS"),
        "the old password must be refused"
    );
}
