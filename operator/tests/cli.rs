//! The `session-operator` binary: `crd`, `render`, and clear refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Output};

fn operator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_session-operator"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn crd_prints_the_checked_in_crd() {
    let out = operator(&["crd"]);
    assert!(out.status.success());
    let checked_in =
        std::fs::read_to_string(common::repo_root().join("crds/sessionservice.yaml")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), checked_in);
}

#[test]
fn render_prints_every_object_with_fresh_passwords() {
    let file = common::repo_root().join("examples/sessionservice-cluster.yaml");
    let first = operator(&["render", "-f", file.to_str().unwrap()]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = String::from_utf8(first.stdout).unwrap();
    let documents = session_operator::testing::yaml::from_yaml_documents(&text).unwrap();
    assert_eq!(
        documents.len(),
        19,
        "the cluster example: every object but a bootstrap Job (the operator forms the cluster)"
    );
    let second = operator(&["render", "-f", file.to_str().unwrap()]);
    assert_ne!(
        text,
        String::from_utf8(second.stdout).unwrap(),
        "passwords are generated"
    );
}

#[test]
fn render_refuses_bad_manifests_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: sessions.io/v1alpha1\nkind: SessionService\nmetadata: {name: s}\nspec: {slo: {latencyThresholdSeconds: 0.03}}\n",
    )
    .unwrap();
    let out = operator(&["render", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must be a bucket bound"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing is printed for a bad file");

    std::fs::write(&bad, "apiVersion: [unclosed\n").unwrap();
    let out = operator(&["render", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = operator(&["render", "-f", "/nonexistent.yaml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent.yaml"));
}
