//! The Grafana dashboards against a real Prometheus: it scrapes a real sidecar on a real Redis
//! under a little traffic (and a Redis stall, so failures have series too) and the operator's
//! metrics, evaluates the generated recording rules, and every panel's query must parse and
//! return series. Also: the ConfigMap carries the discovery label, and the chart's copy of the
//! operator dashboard is the one the operator defines.
//!
//! With `DASHBOARD_DATA=<dir>`, each dashboard's panels are written there with their series
//! over the run (`query_range`), for `tests/dashboards/draw.py` to draw.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use apiserver::FakeApiServer;
use common::free_port;
use common::prometheus::{Prometheus, Sidecar, encode, http};
use common::redis_server::RedisServer;
use kube::ResourceExt;
use serde_json::{Value, json};
use session_operator::crd::{RedisClusterStatus, RedisMasterStatus, SessionService};
use session_operator::testing::capabilities::Capabilities;
use session_operator::testing::{dashboards, reconcile, webhook};

/// The operator at work while Prometheus scrapes, on its metrics endpoint as the controller
/// serves it: real reconciles of a SessionService against the fake API server (failing with
/// `ApplyFailed` while its StatefulSet's writes fail, from 6 to 9 s), real admission reviews
/// (injected, skipped, denied) counted as the webhook counts them, and, staged through the
/// same calls the reconciler makes since no Redis Cluster runs here, a cluster's health and
/// steps. Returns the port.
async fn operate(cluster: &SessionService, until: Instant) -> u16 {
    let (client, fake) = FakeApiServer::start();
    let mut ss = common::example("sessionservice-standalone.yaml");
    ss.metadata.uid = Some("7d3c1f9e-0000-4000-8000-000000000001".to_owned());
    ss.metadata.generation = Some(1);
    let path = format!(
        "/apis/sessions.io/v1alpha1/namespaces/{}/sessionservices/{}",
        ss.namespace().unwrap(),
        ss.name_any()
    );
    fake.insert(&path, serde_json::to_value(&ss).unwrap());
    let statefulset = format!(
        "/apis/apps/v1/namespaces/{}/statefulsets/{}-redis",
        ss.namespace().unwrap(),
        ss.name_any()
    );
    let ctx = apiserver::reconcile_context(client);
    let metrics = ctx.metrics.clone();
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { metrics.render() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (namespace, name) = (cluster.namespace().unwrap(), cluster.name_any());
    tokio::spawn(async move {
        let begin = Instant::now();
        let metrics = ctx.metrics.clone();
        metrics.leader.set(1);
        let policy = webhook::Policy {
            api: Capabilities::latest(),
            excluded_namespaces: vec!["kube-system".to_owned()],
        };
        let mut round = 0;
        while Instant::now() < until {
            round += 1;
            let failing = (6..9).contains(&begin.elapsed().as_secs());
            if failing {
                fake.fail_writes_to(&statefulset);
            } else {
                fake.heal();
            }
            let current: SessionService = serde_json::from_value(fake.get(&path).unwrap()).unwrap();
            let _ = reconcile::reconcile(Arc::new(current), ctx.clone()).await;
            for inject in ["sessions", "", "missing"] {
                let labels = if inject.is_empty() {
                    json!({})
                } else {
                    json!({"sessions.io/inject": inject})
                };
                let answer = webhook::review(&admission_review(labels), &policy, |_, name| {
                    let found = (name == "sessions").then(|| ss.clone());
                    async move { Ok(found) }
                })
                .await;
                if inject != "missing" || round % 4 == 0 {
                    webhook::count(&metrics, &answer);
                }
            }
            let master = |pod, slots| RedisMasterStatus {
                pod: Some(pod),
                node: format!("node{pod}"),
                slots,
                data_slots: 22,
                replicas: vec![pod + 3],
            };
            metrics.observe_cluster(
                &namespace,
                &name,
                Some(&RedisClusterStatus {
                    masters: vec![master(0, 5461), master(1, 5462), master(2, 5461)],
                    failing: Vec::new(),
                }),
            );
            if round % 5 == 0 {
                metrics.cluster_step(&namespace, &name, "slot_moved", 1);
                metrics
                    .cluster_keys_moved
                    .with_label_values(&[namespace.as_str(), name.as_str()])
                    .inc_by(40);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    port
}

/// An AdmissionReview for the creation of a pod with `labels`.
fn admission_review(labels: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "shop-frontend-", "namespace": "shop", "labels": labels},
                "spec": {"containers": [{"name": "frontend", "image": "registry.example.com/shop/frontend:1.4.2"}]},
            },
            "oldObject": null,
            "dryRun": false,
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_series_from_a_real_prometheus() {
    let ss = common::example("sessionservice-cluster.yaml");
    let service = ss.name_any();
    let redis = Arc::new(RedisServer::start());
    let url = redis.url();
    let sidecar = Sidecar::start(&service, &["--redis-url", &url]).await;
    let operator = operate(&ss, Instant::now() + Duration::from_secs(40)).await;
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(
        dir.path(),
        &session_operator::testing::slo::rule_groups(&ss),
        &[sidecar.admin, operator],
    );
    let from = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // Both targets scraped once before traffic starts, so every increment is seen.
    tokio::task::block_in_place(|| prometheus.query_until("up == 1", |r| r.len() == 2));

    // Creates, hits, misses, changes (invalidations), ends and 404s, over many users; halfway,
    // Redis stalls for 4 s, so misses and writes fail (5xx, Redis errors, the breaker opens)
    // and then heal.
    let api = sidecar.api;
    let stall = redis.clone();
    let traffic = tokio::task::spawn_blocking(move || {
        let begin = Instant::now();
        let mut stalled = false;
        let mut user = 0;
        while begin.elapsed() < Duration::from_secs(20) {
            if !stalled && begin.elapsed() > Duration::from_secs(7) {
                stall.cli(&["CLIENT", "PAUSE", "4000", "ALL"]);
                stalled = true;
            }
            user += 1;
            let user = format!("user{user}");
            let (status, body) = http(api, "POST", "/v1/sessions", Some(json!({"user_id": user})));
            if status == 201 {
                let id = serde_json::from_str::<Value>(&body).unwrap()["session_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let session = format!("/v1/sessions/{id}");
                for _ in 0..3 {
                    http(api, "GET", &session, None);
                }
                http(api, "PATCH", &session, Some(json!({"title": "t"})));
                http(api, "GET", &session, None);
                http(
                    api,
                    "POST",
                    &format!("{session}/end"),
                    Some(json!({"performer_id": user})),
                );
            }
            let unknown = session_sidecar::testing::new_session_id(0);
            http(api, "GET", &format!("/v1/sessions/{unknown}"), None);
            std::thread::sleep(Duration::from_millis(40));
        }
    });
    traffic.await.unwrap();

    let mut dashboards = dashboards::for_service(&ss);
    dashboards.push((
        "session-operator.json".to_owned(),
        dashboards::for_operator(),
    ));
    let mut checked = 0;
    for (file, dashboard) in &dashboards {
        for (title, expr) in dashboards::queries(dashboard) {
            let expr = expr.replace("$__rate_interval", "1m");
            let result =
                tokio::task::block_in_place(|| prometheus.query_until(&expr, |r| !r.is_empty()));
            assert!(!result.is_empty(), "{file}: {title}: {expr}");
            checked += 1;
        }
    }
    println!(
        "{checked} panel queries of {} dashboards returned series",
        dashboards.len()
    );
    if let Ok(out) = std::env::var("DASHBOARD_DATA") {
        let to = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for (file, dashboard) in &dashboards {
            let mut drawn = dashboard.clone();
            for panel in drawn["panels"].as_array_mut().unwrap() {
                for target in panel["targets"].as_array_mut().unwrap() {
                    let expr = target["expr"]
                        .as_str()
                        .unwrap()
                        .replace("$__rate_interval", "5s");
                    let (_, body) = http(
                        prometheus.port,
                        "GET",
                        &format!(
                            "/api/v1/query_range?query={}&start={from}&end={to}&step=1",
                            encode(&expr)
                        ),
                        None,
                    );
                    target["series"] =
                        serde_json::from_str::<Value>(&body).unwrap()["data"]["result"].clone();
                }
            }
            std::fs::write(
                format!("{out}/{file}"),
                serde_json::to_string_pretty(&drawn).unwrap(),
            )
            .unwrap();
        }
    }
    sidecar.stop().await;
}

#[test]
fn the_config_map_carries_the_discovery_label_and_every_dashboard() {
    for name in common::EXAMPLES {
        let objects = common::rendered(name);
        let ss = common::example(name);
        let maps: Vec<&Value> = objects
            .iter()
            .filter(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .ends_with("-dashboards")
            })
            .collect();
        assert_eq!(maps.len(), 1, "{name}");
        let map = maps[0];
        assert_eq!(
            map["metadata"]["labels"]["grafana_dashboard"], "1",
            "{name}"
        );
        for (file, dashboard) in dashboards::for_service(&ss) {
            let data: Value = serde_json::from_str(map["data"][&file].as_str().unwrap()).unwrap();
            assert_eq!(data, dashboard, "{name}: {file}");
            assert!(data["uid"].as_str().unwrap().len() <= 40);
        }
    }
}

#[test]
fn the_chart_ships_the_operator_dashboard_the_operator_defines() {
    let path = common::repo_root().join("charts/session-operator/dashboards/session-operator.json");
    let shipped: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        shipped,
        dashboards::for_operator(),
        "regenerate it: session-operator dashboards operator > {}",
        path.display()
    );
}
