//! The Redis the operator configures, run for real: the rendered `redis.conf` and the exact
//! command line of the StatefulSet start a real `redis-server` (standalone, cluster node, TLS),
//! which then requires the password and holds the configured policies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;
#[path = "../../tests/support/test_certs.rs"]
mod test_certs;
use test_certs::make_test_certs;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A port whose cluster-bus neighbour (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts redis-server as the StatefulSet would, with paths and the port moved to `dir`.
fn start(objects: &[Value], dir: &std::path::Path, port: u16) -> Redis {
    start_on(objects, dir, "127.0.0.1", port)
}

/// The same on a given loopback address (127.0.0.0/8 is all loopback on Linux).
fn start_on(objects: &[Value], dir: &std::path::Path, ip: &str, port: u16) -> Redis {
    let conf = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap()["data"]["redis.conf"]
        .as_str()
        .unwrap()
        .replace("dir /data", &format!("dir {}", dir.display()))
        .replace(" /tls/", &format!(" {}/", dir.display()))
        .replace("6379", &port.to_string());
    let conf_path = dir.join("redis.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let container = &objects.iter().find(|o| o["kind"] == "StatefulSet").unwrap()["spec"]["template"]
        ["spec"]["containers"][0];
    assert_eq!(container["command"][0], "redis-server");
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/etc/redis/redis.conf", conf_path.to_str().unwrap())
                .replace("$(REDIS_PASSWORD)", "test-redis-password")
                .replace("$(POD_NAME)", "sessions-redis-0")
        })
        .collect();
    let child = Command::new("redis-server")
        .args(&args)
        .args(["--bind", ip])
        // Distinct loopback addresses share one interface, so a node must say which is its
        // own; in Kubernetes every pod has its own address.
        .args(["--cluster-announce-ip", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (tests/run.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((ip, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server refused the rendered configuration"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis(child)
}

fn cli(port: u16, tls: Option<&std::path::Path>, password: Option<&str>, args: &[&str]) -> String {
    let mut command = Command::new("redis-cli");
    command.args(["-p", &port.to_string()]);
    if let Some(dir) = tls {
        command.args(["--tls", "--cacert", dir.join("ca.crt").to_str().unwrap()]);
    }
    if let Some(password) = password {
        command.env("REDISCLI_AUTH", password);
    }
    let out = command.args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn standalone_redis_runs_with_the_rendered_configuration() {
    let objects = common::rendered("sessionservice-standalone.yaml");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _redis = start(&objects, dir.path(), port);
    assert!(
        cli(port, None, None, &["ping"]).contains("NOAUTH"),
        "a password is required"
    );
    let password = Some("test-redis-password");
    assert_eq!(cli(port, None, password, &["ping"]), "PONG");
    assert_eq!(
        cli(port, None, password, &["config", "get", "maxmemory-policy"]),
        "maxmemory-policy\nnoeviction"
    );
    assert_eq!(
        cli(port, None, password, &["config", "get", "appendonly"]),
        "appendonly\nyes"
    );
    assert_eq!(
        cli(port, None, password, &["config", "get", "maxmemory"]),
        format!("maxmemory\n{}", 768 * 1024 * 1024)
    );
}

#[test]
fn a_cluster_node_runs_over_tls_announcing_its_hostname() {
    let objects = common::rendered("sessionservice-cluster.yaml");
    let dir = tempfile::tempdir().unwrap();
    make_test_certs(dir.path());
    let port = free_port();
    let _redis = start(&objects, dir.path(), port);
    let password = Some("test-redis-password");
    let tls = Some(dir.path());
    assert_eq!(cli(port, tls, password, &["ping"]), "PONG");
    assert!(cli(port, tls, password, &["cluster", "info"]).contains("cluster_known_nodes:1"));
    let announced = cli(
        port,
        tls,
        password,
        &["config", "get", "cluster-announce-hostname"],
    );
    assert_eq!(
        announced,
        "cluster-announce-hostname\nsessions-redis-0.sessions-ha-redis-headless.platform.svc"
    );
    assert_eq!(
        cli(port, tls, password, &["config", "get", "maxmemory-policy"]),
        "maxmemory-policy\nvolatile-ttl"
    );
    assert_eq!(
        cli(port, None, password, &["ping"]),
        "",
        "no plaintext port"
    );
}

#[test]
fn the_bootstrap_job_forms_the_cluster_once_and_is_idempotent() {
    // The Job's script, run against six real nodes started with the rendered configuration.
    // Only the addressing is changed: node i is 127.0.0.(i+1) instead of its pod DNS name, and
    // all share a free port instead of 6379.
    let mut ss = common::example("sessionservice-cluster.yaml");
    ss.spec.redis.tls.enabled = false;
    ss.spec.redis.tls.secret_name = None;
    let objects = session_operator::render::objects(&ss, &common::test_secrets()).unwrap();
    let port = free_port();
    let dirs: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let _nodes: Vec<Redis> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| start_on(&objects, dir.path(), &format!("127.0.0.{}", i + 1), port))
        .collect();
    let job = objects.iter().find(|o| o["kind"] == "Job").unwrap();
    let script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
        .as_str()
        .unwrap()
        .replace(
            r#"host="sessions-ha-redis-$i.sessions-ha-redis-headless.platform.svc""#,
            r#"host="127.0.0.$((i + 1))""#,
        )
        .replace("redis-cli ", &format!("redis-cli -p {port} "))
        .replace(":6379", &format!(":{port}"));
    assert!(
        script.contains("127.0.0.$((i + 1))"),
        "the script's addressing changed: {script}"
    );
    // Name resolution is the cluster DNS's job; here `getent hosts <ip>` answers the address.
    let bin = tempfile::tempdir().unwrap();
    let getent = bin.path().join("getent");
    std::fs::write(&getent, "#!/bin/sh\necho \"$2 $2\"\n").unwrap();
    std::fs::set_permissions(&getent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let run = || {
        let out = Command::new("timeout")
            .args(["120", "sh", "-c", &script])
            .env("PATH", &path)
            .env("REDISCLI_AUTH", "test-redis-password")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the bootstrap failed:\n{text}");
        text
    };
    let first = run();
    assert!(first.contains("All 16384 slots covered"), "{first}");
    let password = Some("test-redis-password");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = cli(
            port,
            None,
            password,
            &["-h", "127.0.0.6", "cluster", "info"],
        );
        if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6") {
            assert!(info.contains("cluster_size:3"), "three masters: {info}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not become healthy: {info}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = run();
    assert!(
        second.contains("already belongs to a cluster: nothing to do"),
        "{second}"
    );
}
