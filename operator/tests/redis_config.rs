//! The Redis the operator configures, run for real: the rendered `redis.conf` and the exact
//! command line of the StatefulSet start a real `redis-server` (standalone, cluster node, TLS),
//! which then requires its users' passwords and holds the configured policies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;
#[path = "../../tests/support/test_certs.rs"]
mod test_certs;
use test_certs::make_test_certs;

use std::process::Command;

use common::free_cluster_port;
use common::redis_node::RedisNode;
use serde_json::Value;

fn start(objects: &[Value], dir: &std::path::Path, port: u16) -> RedisNode {
    RedisNode::start(objects, dir, "127.0.0.1", port, "sessions-redis-0")
}

/// `redis-cli` as `user` (`(name, password)`), or unauthenticated.
fn cli(
    port: u16,
    tls: Option<&std::path::Path>,
    user: Option<(&str, &str)>,
    args: &[&str],
) -> String {
    let mut command = Command::new("redis-cli");
    command.args(["-p", &port.to_string()]);
    if let Some(dir) = tls {
        command.args(["--tls", "--cacert", dir.join("ca.crt").to_str().unwrap()]);
    }
    if let Some((name, password)) = user {
        command
            .args(["--user", name])
            .env("REDISCLI_AUTH", password);
    }
    let out = command.args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn standalone_redis_runs_with_the_rendered_configuration() {
    let objects = common::rendered("sessionservice-standalone.yaml");
    let dir = tempfile::tempdir().unwrap();
    let port = free_cluster_port();
    let _redis = start(&objects, dir.path(), port);
    assert!(
        cli(port, None, None, &["ping"]).contains("NOAUTH"),
        "a password is required"
    );
    let replication = Some(("replication", common::REPLICATION_PASSWORD));
    assert_eq!(
        cli(port, None, replication, &["ping"]),
        "PONG",
        "the probes' user"
    );
    assert!(cli(port, None, replication, &["get", "sess:{0}:s:x"]).contains("NOPERM"));
    let sidecar = Some(("sidecar", "test-sidecar-password"));
    assert!(cli(port, None, sidecar, &["config", "get", "maxmemory"]).contains("NOPERM"));
    let password = Some(("admin", common::ADMIN_PASSWORD));
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
    assert_eq!(
        cli(
            port,
            None,
            password,
            &["config", "get", "tracking-table-max-keys"]
        ),
        "tracking-table-max-keys\n536870"
    );
}

#[test]
fn a_cluster_node_runs_over_tls_announcing_its_hostname() {
    let objects = common::rendered("sessionservice-cluster.yaml");
    let dir = tempfile::tempdir().unwrap();
    make_test_certs(dir.path());
    let port = free_cluster_port();
    let _redis = start(&objects, dir.path(), port);
    let password = Some(("admin", common::ADMIN_PASSWORD));
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
