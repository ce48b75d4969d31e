//! The reconcile of a cluster-mode SessionService drives the cluster manager: against a fake
//! API server that lists six Redis pods whose IPs are real `redis-server` nodes (on port 6379
//! of their own loopback addresses, as pods), reconciles alone form the cluster, report each
//! step in `RedisReady` and an Event, roll the pods one at a time — a replica first — when the
//! StatefulSet's revision changes, and never shrink the StatefulSet while they cannot look.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::FakeApiServer;
use common::redis_cluster::{Cluster, SHARDS};
use serde_json::json;
use session_operator::crd::SessionService;
use session_operator::testing::reconcile;

const NS: &str = "platform";
const SS_PATH: &str = "/apis/sessions.io/v1alpha1/namespaces/platform/sessionservices/sessions-ha";
const PODS_PATH: &str = "/api/v1/namespaces/platform/pods";
const STS_PATH: &str = "/apis/apps/v1/namespaces/platform/statefulsets/sessions-ha-redis";

fn pod_list(cluster: &Cluster, revision: &str) -> serde_json::Value {
    let items: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": format!("sessions-ha-redis-{i}"),
                    "namespace": NS,
                    "labels": {
                        "controller-revision-hash": revision,
                        "app.kubernetes.io/name": "session-service",
                        "app.kubernetes.io/instance": "sessions-ha",
                        "app.kubernetes.io/component": "redis",
                    },
                },
                "status": {"podIP": node.ip},
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

fn condition(fake: &FakeApiServer, type_: &str) -> Option<(String, String, String)> {
    let ss: SessionService = serde_json::from_value(fake.get(SS_PATH)?).ok()?;
    let c = ss
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_form_the_cluster_and_roll_its_pods_one_at_a_time() {
    let cluster = Cluster::start_on_port(31, 6, 6379);
    let (client, fake) = FakeApiServer::start();
    let mut ss = common::example("sessionservice-cluster.yaml");
    ss.spec.redis.tls.enabled = false;
    ss.spec.redis.tls.secret_name = None;
    ss.spec.sessions.shard_count = Some(i32::try_from(SHARDS).unwrap());
    ss.metadata.uid = Some("7d3c1f9e-0000-4000-8000-000000000009".to_owned());
    ss.metadata.generation = Some(1);
    fake.insert(SS_PATH, serde_json::to_value(&ss).unwrap());
    // The Secrets the nodes were started from (their users' passwords), as a past reconcile
    // left them.
    for secret in cluster.objects.iter().filter(|o| o["kind"] == "Secret") {
        let name = secret["metadata"]["name"].as_str().unwrap();
        fake.insert(
            &format!("/api/v1/namespaces/{NS}/secrets/{name}"),
            secret.clone(),
        );
    }
    fake.insert(PODS_PATH, pod_list(&cluster, "rev1"));
    let ctx = apiserver::reconcile_context(client);
    let reconcile_once = || async {
        let current: SessionService = serde_json::from_value(fake.get(SS_PATH).unwrap()).unwrap();
        reconcile::reconcile(Arc::new(current), ctx.clone()).await
    };

    // Reconciles alone bootstrap the cluster.
    let mut reasons = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = reconcile_once().await;
        let (status, reason, message) = condition(&fake, "RedisReady").unwrap();
        reasons.insert(reason.clone());
        if status == "True" {
            assert_eq!(reason, "ClusterReady");
            assert!(
                message.contains("3 masters with 1 replica(s) each"),
                "{message}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {reason}: {message}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("RedisReady reasons on the way: {reasons:?}");
    assert!(reasons.contains("Bootstrapping"), "{reasons:?}");
    let (_, events) = fake.take_writes();
    let notes: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", e["reason"], e["note"]))
        .collect();
    // One Event per kind of step (the recorder folds repeats of a reason into a series).
    for (reason, words) in [
        ("RedisClusterBootstrapping", "joining 5 new node(s)"),
        ("RedisClusterScaling", "now replicates"),
    ] {
        assert!(
            notes
                .iter()
                .any(|n| n.contains(reason) && n.contains(words)),
            "{reason}: {notes:#?}"
        );
    }
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains(r#"session_operator_redis_cluster_actions_total{action="meet",namespace="platform",session_service="sessions-ha"}"#),
        "{metrics}"
    );

    // A new StatefulSet revision: the next reconcile restarts one pod, a replica.
    let mut sts = fake.get(STS_PATH).unwrap();
    sts["status"] = json!({"updateRevision": "rev2", "currentRevision": "rev1", "replicas": 6});
    fake.insert(STS_PATH, sts);
    reconcile_once().await.unwrap();
    let (writes, _) = fake.take_writes();
    let deleted: Vec<&str> = writes
        .iter()
        .filter(|w| w.method == "DELETE" && w.path.starts_with(PODS_PATH))
        .map(|w| w.path.as_str())
        .collect();
    assert_eq!(deleted.len(), 1, "one pod at a time: {deleted:?}");
    let ordinal: usize = deleted[0].rsplit('-').next().unwrap().parse().unwrap();
    let me = cluster
        .view(ordinal)
        .into_iter()
        .find(|n| n.myself)
        .unwrap();
    assert!(
        me.is_replica(),
        "replicas roll first, pod {ordinal} is a master"
    );
    let (_, reason, message) = condition(&fake, "RedisReady").unwrap();
    assert_eq!(reason, "RollingUpdate", "{message}");

    // When the manager cannot look at the cluster (here the pod list fails), the StatefulSet
    // keeps the pods it has: only the manager's word may shrink it.
    let mut sts = fake.get(STS_PATH).unwrap();
    sts["spec"]["replicas"] = json!(8);
    fake.insert(STS_PATH, sts);
    fake.insert(PODS_PATH, json!({"kind": "NotAList"}));
    let _ = reconcile_once().await;
    let (_, reason, message) = condition(&fake, "RedisReady").unwrap();
    assert_eq!(reason, "PodListFailed", "{message}");
    assert_eq!(fake.get(STS_PATH).unwrap()["spec"]["replicas"], 8);
}
