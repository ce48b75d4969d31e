//! What the operator applies: snapshots of every builder's output per example, every object
//! validated against the official Kubernetes schemas of two versions, and the properties that
//! matter checked one by one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{EXAMPLES, example, rendered, test_secrets};
use serde_json::{Value, json};
use session_operator::testing::resources;

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn snapshots_of_every_example() {
    for name in EXAMPLES {
        let mut objects = rendered(name);
        // The dashboards are thousands of lines of JSON, checked on their own (dashboards.rs,
        // tests/dashboards.sh); the snapshot keeps their file names.
        for object in &mut objects {
            if object["kind"] == "ConfigMap"
                && object["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-dashboards"))
                && let Some(data) = object["data"].as_object_mut()
            {
                for value in data.values_mut() {
                    *value = Value::String("(a Grafana dashboard)".to_owned());
                }
            }
        }
        let yaml = session_operator::testing::yaml::to_yaml_documents(&objects).unwrap();
        insta::assert_snapshot!(name.trim_end_matches(".yaml"), yaml);
    }
}

#[test]
fn every_rendered_object_passes_the_official_schemas_of_two_kubernetes_versions() {
    let crd_text =
        std::fs::read_to_string(common::repo_root().join("crds/sessionservice.yaml")).unwrap();
    let crd = session_operator::testing::yaml::from_yaml_documents(&crd_text).unwrap();
    for name in EXAMPLES {
        let mut objects = rendered(name);
        objects.extend(crd.clone());
        common::kubernetes_validate(name, &objects);
    }
}

#[test]
fn external_mode_creates_no_redis_objects() {
    let objects = rendered("sessionservice-external.yaml");
    assert_eq!(
        kinds(&objects),
        [
            "Deployment/sessions-ext",
            "Service/sessions-ext",
            "PodDisruptionBudget/sessions-ext",
            "ServiceMonitor/sessions-ext",
            "PodMonitor/sessions-ext-sidecars",
            "ConfigMap/sessions-ext-dashboards"
        ]
    );
    let env = &find(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
    let url = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SESSION_REDIS_URL")
        .unwrap();
    assert_eq!(url["valueFrom"]["secretKeyRef"]["name"], "managed-redis");
    let jwt = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SESSION_JWT_SECRET")
        .unwrap();
    assert_eq!(jwt["valueFrom"]["secretKeyRef"]["name"], "identity-jwt");
}

#[test]
fn turned_off_parts_are_deleted_not_left_behind() {
    let ss = example("sessionservice-external.yaml");
    let desired = resources::desired(&ss, &test_secrets(), &resources::Runtime::default()).unwrap();
    let deleted: Vec<(String, String)> = desired
        .delete
        .iter()
        .map(|u| (u.resource.kind.clone(), u.name.clone()))
        .collect();
    assert_eq!(
        deleted,
        [
            (
                "HorizontalPodAutoscaler".to_owned(),
                "sessions-ext".to_owned()
            ),
            ("PrometheusRule".to_owned(), "sessions-ext-slo".to_owned())
        ]
    );
    // Without an HPA the Deployment carries the replica count; with one it must not.
    let fixed = rendered("sessionservice-external.yaml");
    assert_eq!(find(&fixed, "Deployment")["spec"]["replicas"], 3);
    let scaled = rendered("sessionservice-standalone.yaml");
    assert!(
        find(&scaled, "Deployment")["spec"]
            .get("replicas")
            .is_none()
    );
}

#[test]
fn cluster_mode_announces_hostnames_and_is_formed_by_the_operator() {
    let objects = rendered("sessionservice-cluster.yaml");
    let sts = find(&objects, "StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 6);
    assert!(
        sts["spec"]
            .get("persistentVolumeClaimRetentionPolicy")
            .is_none(),
        "volumes retained on delete: the server's default, so the field is not sent"
    );
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"].to_string();
    assert!(args.contains("--cluster-announce-hostname"));
    assert!(args.contains("$(POD_NAME).sessions-ha-redis-headless.platform.svc"));
    let conf = find(&objects, "ConfigMap")["data"]["redis.conf"]
        .as_str()
        .unwrap();
    assert!(conf.contains("cluster-preferred-endpoint-type hostname"));
    // The operator forms and repairs the cluster itself: no bootstrap Job.
    assert!(objects.iter().all(|o| o["kind"] != "Job"));
    // Ready means the node serves its part of the cluster, not a bare PING.
    let probe = container["readinessProbe"]["exec"]["command"][2]
        .as_str()
        .unwrap();
    assert!(probe.contains("cluster_state:ok") && probe.contains("master_link_status:up"));
    // The operator's pods reach Redis (by namespace and name).
    let policy = find(&objects, "NetworkPolicy");
    let from = policy["spec"]["ingress"][0]["from"].as_array().unwrap();
    assert!(from.iter().any(|peer| {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "session-system"
            && peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "session-operator"
    }));
}

#[test]
fn a_cluster_of_every_size_renders_and_validates() {
    for (shards, replicas) in [(3, 0), (6, 2), (64, 1)] {
        let mut ss = common::example("sessionservice-cluster.yaml");
        ss.spec.redis.shards = shards;
        ss.spec.redis.replicas_per_shard = replicas;
        ss.spec.sessions.shard_count = Some(1024);
        ss.validate_cel().unwrap();
        let objects = session_operator::testing::render::objects(&ss, &test_secrets()).unwrap();
        assert_eq!(
            find(&objects, "StatefulSet")["spec"]["replicas"],
            shards * (1 + replicas)
        );
        common::kubernetes_validate(&format!("cluster-{shards}x{replicas}.yaml"), &objects);
    }
    // Never more masters than slots holding session data.
    let mut ss = common::example("sessionservice-cluster.yaml");
    ss.spec.sessions.shard_count = Some(4);
    ss.spec.redis.shards = 6;
    let error = ss.validate_cel().unwrap_err().to_string();
    assert!(
        error.contains("redis.shards must not exceed sessions.shardCount"),
        "{error}"
    );
}

#[test]
fn each_redis_user_has_a_secret_with_its_url_and_only_redis_mounts_the_acl_file() {
    let objects = rendered("sessionservice-standalone.yaml");
    for (user, password) in [
        ("admin", "test-admin-password"),
        ("server", "test-server-password"),
        ("sidecar", "test-sidecar-password"),
    ] {
        let secret =
            |key| common::redis_node::secret_value(&objects, &format!("-redis-{user}"), key);
        assert_eq!(secret("username"), user);
        assert_eq!(secret("password"), password);
        assert_eq!(
            secret("url"),
            format!("redis://{user}:{password}@sessions-redis.shop.svc:6379")
        );
    }
    // Which Secrets each workload may read: the session service the server user's, Redis the
    // ACL file, and nobody but the operator the admin's.
    let secrets_of = |kind: &str| -> Vec<String> {
        let object = objects.iter().find(|o| o["kind"] == kind).unwrap();
        let text = object["spec"]["template"].to_string();
        let mut names: Vec<String> = ["admin", "server", "sidecar", "acl"]
            .iter()
            .map(|s| format!("sessions-redis-{s}"))
            .filter(|name| text.contains(&format!("\"{name}\"")))
            .collect();
        names.sort();
        names
    };
    assert_eq!(secrets_of("Deployment"), ["sessions-redis-server"]);
    assert_eq!(secrets_of("StatefulSet"), ["sessions-redis-acl"]);
    let acl = common::redis_node::secret_value(&objects, "-redis-acl", "users.acl");
    assert!(acl.starts_with("user default off "), "{acl}");
    assert!(!acl.contains("test-") && acl.lines().count() == 5, "{acl}");
}

#[test]
fn every_pod_is_non_root_read_only_without_capabilities() {
    for name in EXAMPLES {
        for object in rendered(name) {
            let pod = match object["kind"].as_str().unwrap() {
                "Deployment" | "StatefulSet" => &object["spec"]["template"]["spec"],
                _ => continue,
            };
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"],
                "RuntimeDefault"
            );
            assert_eq!(pod["automountServiceAccountToken"], false);
            for container in pod["containers"].as_array().unwrap() {
                let security = &container["securityContext"];
                assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(security["allowPrivilegeEscalation"], false);
                assert_eq!(security["capabilities"]["drop"][0], "ALL");
            }
        }
    }
}

#[test]
fn the_network_policy_admits_only_this_session_services_pods() {
    let objects = rendered("sessionservice-standalone.yaml");
    let policy = find(&objects, "NetworkPolicy");
    let from = &policy["spec"]["ingress"][0]["from"];
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["sessions.io/session-service"],
        "sessions"
    );
    assert_eq!(
        from[1]["podSelector"]["matchLabels"]["sessions.io/inject"],
        "sessions"
    );
    // The server's pods carry the label the policy admits.
    let server = find(&objects, "Deployment");
    assert_eq!(
        server["spec"]["template"]["metadata"]["labels"]["sessions.io/session-service"],
        "sessions"
    );
}

#[test]
fn objects_are_owned_by_the_session_service_when_it_has_a_uid() {
    let mut ss = example("sessionservice-standalone.yaml");
    ss.metadata.uid = Some("0b9b3c4e-1111-2222-3333-444455556666".to_owned());
    for object in session_operator::testing::render::objects(&ss, &test_secrets()).unwrap() {
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "SessionService");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["uid"], "0b9b3c4e-1111-2222-3333-444455556666");
    }
}

/// The session service's environment, with Secret references resolved to test values, as the
/// sidecar's own command line: every variable must be one the sidecar knows, every value must
/// parse, and the configuration must pass the sidecar's validation.
fn sidecar_accepts(env: &[Value]) -> Result<(), String> {
    use clap::{CommandFactory, Parser};
    use session_sidecar::config::Config;
    let command = Config::command();
    let mut args = vec!["session-sidecar".to_owned()];
    for var in env {
        let name = var["name"].as_str().unwrap();
        if name == "SSL_CERT_FILE" {
            continue; // read by rustls, not by the sidecar's flags
        }
        let value = match var["value"].as_str() {
            Some(v) => v.to_owned(),
            None => match var["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap() {
                "url" => "redis://127.0.0.1:6379".to_owned(),
                "jwt-secret" => "k".repeat(48),
                "extra-jwt-secret" => "n".repeat(48),
                other => return Err(format!("unexpected secret key {other}")),
            },
        };
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name))
            .ok_or_else(|| format!("the sidecar has no setting {name}"))?;
        let flag = format!("--{}", arg.get_long().unwrap());
        if arg.get_action().takes_values() {
            args.extend([flag, value]);
        } else if value == "true" {
            args.push(flag);
        }
    }
    let config = Config::try_parse_from(&args).map_err(|e| e.to_string())?;
    config.validate().map_err(|problems| problems.join("; "))
}

#[test]
fn the_session_service_environment_is_one_the_sidecar_accepts() {
    for name in EXAMPLES {
        let objects = rendered(name);
        let env = find(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone();
        sidecar_accepts(&env).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let bogus = [json!({"name": "SESSION_NO_SUCH_SETTING", "value": "1"})];
    assert!(
        sidecar_accepts(&bogus)
            .unwrap_err()
            .contains("no setting SESSION_NO_SUCH_SETTING")
    );
}

#[test]
fn volumes_are_deleted_with_the_statefulset_only_where_the_server_can_and_was_asked() {
    use session_operator::testing::capabilities::Capabilities;
    let mut ss = example("sessionservice-standalone.yaml");
    ss.spec.redis.persistence.retain_on_delete = false;
    let policy = |api: Capabilities| {
        let runtime = resources::Runtime {
            api,
            ..resources::Runtime::default()
        };
        let desired = resources::desired(&ss, &test_secrets(), &runtime).unwrap();
        let sts = desired
            .apply
            .iter()
            .find_map(|c| match &c.object {
                resources::Object::StatefulSet(sts) => Some(sts.clone()),
                _ => None,
            })
            .unwrap();
        serde_json::to_value(sts.spec.persistent_volume_claim_retention_policy).unwrap()
    };
    assert_eq!(
        policy(Capabilities::latest()),
        json!({"whenDeleted": "Delete", "whenScaled": "Retain"})
    );
    let old = Capabilities::of_version("v1.26.0", 26, &["v2"], &["v1"]);
    assert_eq!(policy(old), Value::Null, "1.26 does not serve the field");
}

#[test]
fn the_default_shard_count_follows_the_redis_it_runs_on() {
    // A single Redis gets 16 shards (every shard costs each write a prefix check of the
    // sidecars' invalidation tracking, and more buy nothing there); a Redis Cluster 64.
    let shard_env = |example_file: &str| {
        let objects = rendered(example_file);
        let deployment = find(&objects, "Deployment");
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "SESSION_SHARD_COUNT")
            .map(|e| e["value"].clone())
            .unwrap()
    };
    assert_eq!(shard_env("sessionservice-standalone.yaml"), "16");
    assert_eq!(shard_env("sessionservice-cluster.yaml"), "64");
    let mut ss = example("sessionservice-standalone.yaml");
    ss.spec.sessions.shard_count = Some(128);
    assert_eq!(ss.spec.shard_count(), 128, "an explicit count wins");
}

#[test]
fn an_identity_provider_is_wired_into_the_session_service() {
    let ss = common::parse_one(
        "apiVersion: sessions.io/v1alpha1\nkind: SessionService\nmetadata: {name: sessions, namespace: shop}\nspec:\n  server:\n    oidc: {issuer: 'https://login.example.com/realms/shop', audience: session-service, jwksUrl: 'https://login.example.com/realms/shop/certs', caConfigMap: idp-ca}\n",
    )
    .unwrap();
    let objects = session_operator::testing::render::objects(&ss, &test_secrets()).unwrap();
    let pod = &find(&objects, "Deployment")["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap_or("(from a Secret)").to_owned())
    };
    assert_eq!(
        value("SESSION_OIDC_ISSUER").as_deref(),
        Some("https://login.example.com/realms/shop")
    );
    assert_eq!(
        value("SESSION_OIDC_AUDIENCE").as_deref(),
        Some("session-service")
    );
    assert_eq!(
        value("SESSION_OIDC_JWKS_URL").as_deref(),
        Some("https://login.example.com/realms/shop/certs")
    );
    assert_eq!(
        value("SESSION_OIDC_CA_FILE").as_deref(),
        Some("/etc/session/oidc-ca/ca.crt")
    );
    assert_eq!(
        value("SESSION_JWT_SECRET").as_deref(),
        Some("(from a Secret)"),
        "the HS256 key stays"
    );
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "idp-ca");
    assert_eq!(
        pod["containers"][0]["volumeMounts"][0]["mountPath"],
        "/etc/session/oidc-ca"
    );
    common::kubernetes_validate("oidc", &objects);
}
