//! The CRD: in sync with `crds/`, and its rules accept the examples and refuse what they
//! should, with the messages users will see.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{EXAMPLES, example, parse_one, repo_root};
use kube::CustomResourceExt;
use session_operator::crd::SessionService;

#[test]
fn the_checked_in_crd_is_the_generated_one() {
    let generated = session_operator::testing::yaml::to_yaml(&SessionService::crd()).unwrap();
    let checked_in = std::fs::read_to_string(repo_root().join("crds/sessionservice.yaml")).unwrap();
    assert!(
        generated == checked_in,
        "crds/sessionservice.yaml is stale: run `cargo run -p session-operator -- crd > crds/sessionservice.yaml`"
    );
}

#[test]
fn the_crd_has_the_names_columns_and_subresources_kubectl_needs() {
    let crd = serde_json::to_value(SessionService::crd()).unwrap();
    assert_eq!(crd["spec"]["group"], "sessions.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "sess");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Redis", "Ready", "Replicas", "Age"]);
}

/// Every property of the spec and status has a description, so `kubectl explain` helps.
#[test]
fn every_field_is_described() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                let path = format!("{path}.{name}");
                let described = property["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty());
                if !described
                    && !path.starts_with(".metadata")
                    && path != ".apiVersion"
                    && path != ".kind"
                {
                    missing.push(path.clone());
                }
                // Kubernetes' own types (resources, conditions) carry their own descriptions.
                if !path.ends_with("resources") && !path.ends_with("conditions") {
                    walk(&path, property, missing);
                }
            }
        }
    }
    let crd = serde_json::to_value(SessionService::crd()).unwrap();
    let mut missing = Vec::new();
    walk(
        "",
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        &mut missing,
    );
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn the_latency_rule_lists_exactly_the_sidecars_buckets() {
    let crd = serde_json::to_string(&SessionService::crd()).unwrap();
    let rule_start = crd.find("self in [").unwrap() + "self in [".len();
    let rule_end = rule_start + crd[rule_start..].find(']').unwrap();
    let bounds: Vec<f64> = crd[rule_start..rule_end]
        .split(',')
        .map(|b| b.trim().parse().unwrap())
        .collect();
    assert_eq!(bounds, session_sidecar::testing::REQUEST_BUCKETS);
}

#[test]
fn the_examples_are_valid() {
    for name in EXAMPLES {
        let ss = example(name);
        assert!(ss.validate_cel().is_ok(), "{name}");
    }
}

#[test]
fn an_empty_spec_takes_every_default() {
    let ss = parse_one(
        "apiVersion: sessions.io/v1alpha1\nkind: SessionService\nmetadata: {name: s}\nspec: {}\n",
    )
    .unwrap();
    let spec = &ss.spec;
    assert_eq!(spec.redis.maxmemory_policy.as_str(), "noeviction");
    assert!(spec.redis.persistence.enabled && spec.redis.persistence.retain_on_delete);
    assert_eq!(spec.sessions.ttl_seconds, 86_400);
    assert_eq!(
        (spec.autoscaling.min_replicas, spec.autoscaling.max_replicas),
        (2, 10)
    );
    assert_eq!(spec.slo.latency_threshold_seconds, 0.05);
    assert_eq!(ss.metadata.namespace.as_deref(), Some("default"));
}

fn refusal(spec: &str) -> String {
    let yaml = format!(
        "apiVersion: sessions.io/v1alpha1\nkind: SessionService\nmetadata: {{name: s}}\nspec: {spec}\n"
    );
    match parse_one(&yaml) {
        Ok(_) => panic!("accepted: {spec}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn cross_field_rules_refuse_with_clear_messages() {
    for (spec, message) in [
        (
            "{redis: {mode: external}}",
            "redis.external (the Secret holding the URL) is required",
        ),
        (
            "{redis: {external: {secretName: x}}}",
            "redis.external is only used when redis.mode is external",
        ),
        ("{redis: {shards: 5}}", "only apply to redis.mode cluster"),
        (
            "{redis: {tls: {enabled: true}}}",
            "redis.tls.secretName is required",
        ),
        (
            "{sessions: {ttlSeconds: 100, maxTtlSeconds: 10}}",
            "maxTtlSeconds must be at least",
        ),
        (
            "{autoscaling: {minReplicas: 5, maxReplicas: 2}}",
            "maxReplicas must be at least",
        ),
        (
            "{slo: {latencyThresholdSeconds: 0.04}}",
            "must be a bucket bound",
        ),
        (
            "{slo: {availabilityObjective: 100}}",
            "strictly between 0 and 100",
        ),
        ("{slo: {latencyObjective: 0}}", "strictly between 0 and 100"),
        (
            "{server: {oidc: {issuer: 'http://idp.example', audience: sessions}}}",
            "server.oidc.issuer must be an https:// URL",
        ),
        (
            "{server: {oidc: {issuer: 'https://idp.example', audience: sessions, jwksUrl: 'http://idp.example/keys'}}}",
            "server.oidc.jwksUrl must be an https:// URL",
        ),
    ] {
        let error = refusal(spec);
        assert!(error.contains(message), "{spec}: {error}");
    }
}

#[test]
fn the_schema_refuses_wrong_types_ranges_and_patterns() {
    for (spec, message) in [
        ("{redis: {maxmemory: lots}}", "/spec/redis/maxmemory"),
        ("{redis: {mode: sentinel}}", "/spec/redis/mode"),
        ("{redis: {mode: cluster, shards: 2}}", "/spec/redis/shards"),
        (
            "{redis: {maxmemoryPolicy: allkeys-lru}}",
            "/spec/redis/maxmemoryPolicy",
        ),
        ("{sessions: {ttlSeconds: -1}}", "/spec/sessions/ttlSeconds"),
        (
            "{autoscaling: {p99LatencyTarget: fast}}",
            "/spec/autoscaling/p99LatencyTarget",
        ),
        ("{server: {replicas: two}}", "/spec/server/replicas"),
    ] {
        let error = refusal(spec);
        assert!(error.contains(message), "{spec}: {error}");
    }
}

#[test]
fn integral_percentages_are_accepted() {
    let ss = parse_one(
        "apiVersion: sessions.io/v1alpha1\nkind: SessionService\nmetadata: {name: s}\nspec: {slo: {availabilityObjective: 99, latencyThresholdSeconds: 1}}\n",
    )
    .unwrap();
    assert_eq!(ss.spec.slo.availability_objective, 99.0);
}

#[test]
fn long_names_and_other_kinds_are_refused() {
    let long = "s".repeat(41);
    let error = format!(
        "{:#}",
        parse_one(&format!(
            "apiVersion: sessions.io/v1alpha1\nkind: SessionService\nmetadata: {{name: {long}}}\nspec: {{}}\n"
        ))
        .unwrap_err()
    );
    assert!(error.contains("at most 40 characters"), "{error}");
    let error = format!(
        "{:#}",
        parse_one("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s}\n").unwrap_err()
    );
    assert!(
        error.contains("expected a sessions.io/v1alpha1 SessionService"),
        "{error}"
    );
}

#[test]
fn immutable_fields_cannot_change_and_the_cluster_may_be_resized() {
    let cluster = example("sessionservice-cluster.yaml");
    for (change, message) in [
        (
            Box::new(|s: &mut SessionService| s.spec.sessions.shard_count = Some(32))
                as Box<dyn Fn(&mut SessionService)>,
            "sessions.shardCount is immutable",
        ),
        (
            Box::new(|s| s.spec.redis.mode = session_operator::crd::RedisMode::Standalone),
            "redis.mode is immutable",
        ),
        (
            Box::new(|s| s.spec.redis.shards = 2),
            "less than the minimum of 3",
        ),
    ] {
        let mut changed = cluster.clone();
        change(&mut changed);
        let error = changed
            .validate_cel_update(&cluster)
            .err()
            .map(|e| e.to_string())
            .or_else(|| {
                session_operator::testing::render::parse(
                    &session_operator::testing::yaml::to_yaml_documents(&[serde_json::to_value(
                        &changed,
                    )
                    .unwrap()])
                    .unwrap(),
                    "default",
                )
                .err()
                .map(|e| format!("{e:#}"))
            })
            .expect("the change is refused");
        assert!(error.contains(message), "{error}");
    }
    // Growing and shrinking the cluster (masters and replicas) is allowed.
    for (shards, replicas) in [(6, 1), (4, 2), (3, 0)] {
        let mut scaled = cluster.clone();
        scaled.spec.redis.shards = shards;
        scaled.spec.redis.replicas_per_shard = replicas;
        scaled.spec.autoscaling.max_replicas = 30;
        assert!(
            scaled.validate_cel_update(&cluster).is_ok(),
            "{shards} masters with {replicas} replicas each"
        );
    }
}
