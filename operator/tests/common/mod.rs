//! Shared by the operator's test files.
#![allow(dead_code)]

pub mod prometheus;
pub mod redis_cluster;
pub mod redis_node;
pub mod redis_server;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use session_operator::crd::SessionService;
use session_operator::testing::render;
use session_operator::testing::resources::{RedisPasswords, Secrets};

/// The admin user's password in [`test_secrets`] (the operator's own Redis work).
pub const ADMIN_PASSWORD: &str = "test-admin-password";
/// The replication user's password in [`test_secrets`] (replicas and the pods' probes).
pub const REPLICATION_PASSWORD: &str = "test-replication-password";

pub const EXAMPLES: &[&str] = &[
    "sessionservice-standalone.yaml",
    "sessionservice-cluster.yaml",
    "sessionservice-external.yaml",
];

pub use session_sidecar::testing::{free_cluster_port, free_port};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Fixed credentials, so rendered objects are reproducible.
pub fn test_secrets() -> Secrets {
    Secrets {
        redis: RedisPasswords {
            admin: ADMIN_PASSWORD.to_owned(),
            server: "test-server-password".to_owned(),
            sidecar: "test-sidecar-password".to_owned(),
            replication: REPLICATION_PASSWORD.to_owned(),
            ..RedisPasswords::default()
        },
        jwt_secret: "test-jwt-secret-test-jwt-secret-0123456789".to_owned(),
        jwt_rotation: None,
    }
}

pub fn example(name: &str) -> SessionService {
    let text = std::fs::read_to_string(repo_root().join("examples").join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut services = render::parse(&text, "default").unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert_eq!(services.len(), 1, "{name}");
    services.remove(0)
}

pub fn rendered(name: &str) -> Vec<Value> {
    render::objects(&example(name), &test_secrets()).unwrap()
}

pub fn parse_one(yaml: &str) -> anyhow::Result<SessionService> {
    Ok(render::parse(yaml, "default")?.remove(0))
}

/// Runs a tool the test command installs; a missing tool fails the test with the reason.
pub fn run_tool(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required (tests/run.sh installs it): {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// API groups whose kinds the official Kubernetes schemas do not cover.
const THIRD_PARTY: &[&str] = &["monitoring.coreos.com/", "cert-manager.io/"];

/// Validates `documents` with `kubernetes-validate --strict` against Kubernetes 1.30 and 1.37:
/// every object of a Kubernetes kind must pass, and only third-party kinds may go unchecked.
pub fn kubernetes_validate(name: &str, documents: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(
        &path,
        session_operator::testing::yaml::to_yaml_documents(documents).unwrap(),
    )
    .unwrap();
    let third_party = |api: &str| THIRD_PARTY.iter().any(|g| api.starts_with(g));
    let checked = documents
        .iter()
        .filter(|d| !third_party(d["apiVersion"].as_str().unwrap_or_default()))
        .count();
    for version in ["1.30.0", "1.37.0"] {
        let (ok, out) = run_tool(
            "kubernetes-validate",
            &["--strict", "-k", version, path.to_str().unwrap()],
        );
        assert!(ok, "{name} on {version}:\n{out}");
        assert_eq!(
            out.matches(" passed for resource ").count(),
            checked,
            "{name} on {version}: every Kubernetes object is checked\n{out}"
        );
        for line in out.lines().filter(|l| l.starts_with("WARN")) {
            assert!(
                THIRD_PARTY
                    .iter()
                    .any(|g| line.contains(&format!("api version {g}"))),
                "{name} on {version}: {line}"
            );
        }
    }
}
