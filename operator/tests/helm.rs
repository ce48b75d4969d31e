//! The Helm chart under a real helm: lint and template with default and non-default values,
//! every rendered object validated against the official schemas, least-privilege RBAC, and the
//! chart kept in step with the operator (its CRD and its settings).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{repo_root, run_tool};
use serde_json::Value;

fn chart() -> String {
    repo_root()
        .join("charts/session-operator")
        .to_string_lossy()
        .into_owned()
}

fn custom_values() -> String {
    repo_root()
        .join("charts/session-operator/ci/custom-values.yaml")
        .to_string_lossy()
        .into_owned()
}

fn template(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "sessions",
        &chart,
        "--namespace",
        "session-system",
        "--include-crds",
    ];
    args.extend(extra);
    let (ok, out) = run_tool("helm", &args);
    assert!(ok, "helm template {extra:?}:\n{out}");
    session_operator::testing::yaml::from_yaml_documents(&out).unwrap()
}

#[test]
fn the_chart_lints_cleanly_with_default_and_custom_values() {
    let chart = chart();
    let custom = custom_values();
    for args in [
        vec!["lint", "--strict", &chart],
        vec!["lint", "--strict", &chart, "-f", &custom],
    ] {
        let (ok, out) = run_tool("helm", &args);
        assert!(ok && out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn every_rendered_object_passes_the_official_schemas() {
    let custom = custom_values();
    common::kubernetes_validate("default.yaml", &template(&[]));
    common::kubernetes_validate("custom.yaml", &template(&["-f", &custom]));
}

#[test]
fn the_chart_installs_what_an_operator_needs() {
    let kinds = |documents: &[Value]| -> Vec<String> {
        let mut kinds: Vec<String> = documents
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_owned())
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    };
    let default = template(&[]);
    assert_eq!(
        kinds(&default),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let custom = template(&["-f", &custom_values()]);
    for kind in ["ServiceMonitor", "Certificate"] {
        assert!(kinds(&custom).contains(&kind.to_owned()), "{kind}");
    }
    let deployment = default.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        deployment["spec"]["replicas"], 2,
        "two replicas: leader election"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let webhook = default
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    let hook = &webhook["webhooks"][0];
    assert_eq!(
        hook["objectSelector"]["matchExpressions"][0]["key"],
        "sessions.io/inject"
    );
    assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
}

#[test]
fn rbac_is_least_privilege_with_no_wildcards() {
    for documents in [template(&[]), template(&["-f", &custom_values()])] {
        for role in documents
            .iter()
            .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        {
            for rule in role["rules"].as_array().unwrap() {
                for field in ["apiGroups", "resources", "verbs"] {
                    let values = rule[field].as_array().unwrap();
                    assert!(
                        !values.iter().any(|v| v == "*"),
                        "wildcard in {}: {rule}",
                        role["metadata"]["name"]
                    );
                }
                let verbs = rule["verbs"].to_string();
                for forbidden in ["escalate", "bind", "impersonate", "deletecollection"] {
                    assert!(!verbs.contains(forbidden), "{rule}");
                }
            }
        }
    }
    // Only kinds the operator deletes when a spec turns them off can be deleted, and Redis pods
    // (restarted one at a time by a rolling update in cluster mode).
    let default = template(&[]);
    let cluster_role = default
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRole" && d["metadata"]["name"] == "sessions-session-operator"
        })
        .unwrap();
    let deletable: Vec<String> = cluster_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["verbs"].as_array().unwrap().iter().any(|v| v == "delete"))
        .flat_map(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        deletable,
        [
            "configmaps",
            "pods",
            "horizontalpodautoscalers",
            "servicemonitors",
            "podmonitors",
            "prometheusrules"
        ]
    );
    // With a watched namespace the grants are namespaced.
    let custom = template(&["-f", &custom_values()]);
    let main = custom
        .iter()
        .find(|d| d["metadata"]["name"] == "sessions-session-operator" && d["kind"] == "Role")
        .unwrap();
    assert_eq!(main["metadata"]["namespace"], "shop");
}

#[test]
fn the_values_schema_refuses_bad_values() {
    let chart = chart();
    for bad in [
        "webhook.failurePolicy=Maybe",
        "replicaCount=0",
        "nosuchsetting=1",
    ] {
        let (ok, out) = run_tool("helm", &["template", "x", &chart, "--set", bad]);
        assert!(!ok, "{bad} was accepted");
        assert!(
            out.contains("values don't meet the specifications of the schema"),
            "{bad}: {out}"
        );
    }
}

#[test]
fn the_chart_matches_the_operator() {
    let chart_crd = std::fs::read_to_string(
        repo_root().join("charts/session-operator/crds/sessionservice.yaml"),
    )
    .unwrap();
    let crd = std::fs::read_to_string(repo_root().join("crds/sessionservice.yaml")).unwrap();
    assert!(
        chart_crd == crd,
        "charts/session-operator/crds/ is stale: copy crds/sessionservice.yaml"
    );
    // Every environment variable the chart sets is one `session-operator run` reads.
    use clap::{Args, Command};
    let command = session_operator::testing::controller::Options::augment_args(Command::new("run"));
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .chain(["RUST_LOG".to_owned()])
        .collect();
    for documents in [template(&[]), template(&["-f", &custom_values()])] {
        let deployment = documents
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap();
        for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
        {
            let name = var["name"].as_str().unwrap();
            assert!(
                known.iter().any(|k| k == name),
                "the operator does not read {name}"
            );
        }
    }
}
