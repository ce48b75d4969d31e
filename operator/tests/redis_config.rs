//! The Redis the operator configures, run for real: the rendered `redis.conf` and the exact
//! command line of the StatefulSet start a real `redis-server` (standalone, cluster node, TLS),
//! which then requires the password and holds the configured policies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

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
        .args(["--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (tests/run.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
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

fn make_certs(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (tests/run.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &key[..],
            &[
                "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=ca",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &key[..],
            &[
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
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
    make_certs(dir.path());
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
