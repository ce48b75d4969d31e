//! Reconcile against a fake API server: what is applied, what the status says on success and
//! on failure, that a second pass changes nothing, that the generated password survives, and
//! that missing optional APIs degrade to a False condition instead of a stuck reconcile.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::sync::Arc;
use std::time::Duration;

use apiserver::FakeApiServer;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use session_operator::crd::SessionService;
use session_operator::testing::capabilities::Capabilities;
use session_operator::testing::reconcile::{self, Context, Error};

const STS_PATH: &str = "/apis/apps/v1/namespaces/shop/statefulsets/sessions-redis";
const DEPLOY_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments/sessions";
const SECRET_PATH: &str = "/api/v1/namespaces/shop/secrets/sessions-redis-sidecar";
const ACL_PATH: &str = "/api/v1/namespaces/shop/secrets/sessions-redis-acl";
const HPA_PATH: &str = "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers/sessions";

struct Harness {
    fake: FakeApiServer,
    ctx: Arc<Context>,
    /// The SessionService's path in the fake.
    path: String,
}

impl Harness {
    fn new(example: &str) -> Self {
        Self::on(example, Capabilities::latest())
    }

    /// A harness whose operator discovered an API server with the capabilities `api`.
    fn on(example: &str, api: Capabilities) -> Self {
        let (client, fake) = FakeApiServer::start();
        let mut ss = common::example(example);
        ss.metadata.uid = Some("7d3c1f9e-0000-4000-8000-000000000001".to_owned());
        ss.metadata.generation = Some(1);
        let path = format!(
            "/apis/sessions.io/v1alpha1/namespaces/{}/sessionservices/{}",
            ss.metadata.namespace.as_deref().unwrap(),
            ss.metadata.name.as_deref().unwrap()
        );
        fake.insert(&path, serde_json::to_value(&ss).unwrap());
        let ctx = apiserver::reconcile_context_for(client, api);
        Self { fake, ctx, path }
    }

    /// The SessionService as the controller would see it now.
    fn current(&self) -> SessionService {
        serde_json::from_value(self.fake.get(&self.path).unwrap()).unwrap()
    }

    async fn reconcile(&self) -> Result<Action, Error> {
        reconcile::reconcile(Arc::new(self.current()), self.ctx.clone()).await
    }

    fn condition(&self, type_: &str) -> (String, String, String) {
        let ss = self.current();
        let c = ss
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"));
        (c.status, c.reason, c.message)
    }

    fn password(&self) -> Vec<u8> {
        let secret = self.fake.get(SECRET_PATH).unwrap();
        data_encoding::BASE64
            .decode(secret["data"]["password"].as_str().unwrap().as_bytes())
            .unwrap()
    }

    /// Pretends the workloads came up.
    fn make_ready(&self) {
        self.fake
            .set_status(STS_PATH, json!({"readyReplicas": 1, "replicas": 1}));
        self.fake
            .set_status(DEPLOY_PATH, json!({"readyReplicas": 2, "replicas": 2}));
    }
}

#[tokio::test]
async fn a_first_reconcile_applies_everything_and_reports_progress() {
    let h = Harness::new("sessionservice-standalone.yaml");
    let action = h.reconcile().await.unwrap();
    assert_eq!(action, Action::requeue(reconcile::PROGRESS_CHECK));
    let (writes, events) = h.fake.take_writes();
    let applied: Vec<&str> = writes
        .iter()
        .filter(|w| {
            w.method == "PATCH" && !w.path.ends_with("/status") && !w.path.contains("/events/")
        })
        .map(|w| w.path.as_str())
        .collect();
    assert_eq!(applied.len(), 19, "{applied:#?}");
    assert!(writes.iter().all(|w| w.changed));
    for object in h.fake.paths().iter().filter(|p| *p != &h.path) {
        let stored = h.fake.get(object).unwrap();
        assert_eq!(
            stored["metadata"]["ownerReferences"][0]["controller"], true,
            "{object}"
        );
        assert_eq!(
            stored["metadata"]["ownerReferences"][0]["name"], "sessions",
            "{object}"
        );
    }
    assert_eq!(h.condition("Ready").0, "False");
    assert_eq!(
        h.condition("RedisReady"),
        (
            "False".into(),
            "Progressing".into(),
            "0 of 1 Redis pods ready".into()
        )
    );
    assert_eq!(h.condition("ServerReady").1, "Progressing");
    assert_eq!(h.condition("AutoscalingReady").0, "True");
    assert_eq!(h.condition("AlertsReady").0, "True");
    let status = h.current().status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.redis_endpoint.as_deref(),
        Some("sessions-redis.shop.svc:6379")
    );
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );
    assert_eq!(h.condition("FeaturesAvailable").0, "True");
    // One Event per condition on the first pass.
    assert_eq!(events.len(), 6, "{events:#?}");
    assert!(events.iter().any(|e| e["type"] == "Warning"
        && e["reason"] == "RedisNotReady"
        && e["note"] == "Progressing: 0 of 1 Redis pods ready"));
}

#[tokio::test]
async fn once_ready_a_second_reconcile_changes_nothing() {
    let h = Harness::new("sessionservice-standalone.yaml");
    h.reconcile().await.unwrap();
    h.make_ready();
    assert_eq!(
        h.reconcile().await.unwrap(),
        Action::requeue(reconcile::RESYNC)
    );
    assert_eq!(
        h.condition("Ready"),
        (
            "True".into(),
            "AllPartsReady".into(),
            "Redis, the session service, autoscaling and alerts are ready".into()
        )
    );
    assert_eq!(h.current().status.unwrap().ready_replicas, Some(2));
    let (_, events) = h.fake.take_writes();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "Normal" && e["reason"] == "Ready")
    );
    let ready_since = h.current().status.unwrap().conditions[0]
        .last_transition_time
        .clone();
    let password = h.password();

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        h.reconcile().await.unwrap(),
        Action::requeue(reconcile::RESYNC)
    );
    let (writes, events) = h.fake.take_writes();
    let changed: Vec<&apiserver::Write> = writes.iter().filter(|w| w.changed).collect();
    assert!(changed.is_empty(), "the second pass changed {changed:#?}");
    assert!(
        !writes.iter().any(|w| w.path.ends_with("/status")),
        "no status write"
    );
    assert!(
        events.is_empty(),
        "no Event without a transition: {events:#?}"
    );
    assert_eq!(h.password(), password, "the password is not regenerated");
    assert_eq!(
        h.current().status.unwrap().conditions[0].last_transition_time,
        ready_since
    );
}

#[tokio::test]
async fn an_existing_password_is_kept_and_used_in_the_url_and_the_acl_file() {
    let h = Harness::new("sessionservice-standalone.yaml");
    h.fake.insert(
        SECRET_PATH,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sessions-redis-sidecar", "namespace": "shop"},
               "data": {"password": data_encoding::BASE64.encode(b"set-before-the-operator")}}),
    );
    h.reconcile().await.unwrap();
    assert_eq!(h.password(), b"set-before-the-operator");
    let url = h.fake.get(SECRET_PATH).unwrap()["data"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = String::from_utf8(data_encoding::BASE64.decode(url.as_bytes()).unwrap()).unwrap();
    assert_eq!(
        url,
        "redis://sidecar:set-before-the-operator@sessions-redis.shop.svc:6379"
    );
    let acl = h.fake.get(ACL_PATH).unwrap()["data"]["users.acl"]
        .as_str()
        .unwrap()
        .to_owned();
    let acl = String::from_utf8(data_encoding::BASE64.decode(acl.as_bytes()).unwrap()).unwrap();
    use sha2::Digest;
    let hash = data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(b"set-before-the-operator"));
    assert!(
        acl.contains(&format!("user sidecar on #{hash} ")),
        "the ACL file holds the kept password's hash: {acl}"
    );
    assert!(
        !acl.contains("set-before-the-operator"),
        "and never the password"
    );
}

#[tokio::test]
async fn a_failed_apply_shows_in_the_conditions_and_backs_off() {
    let h = Harness::new("sessionservice-standalone.yaml");
    h.fake.fail_writes_to(STS_PATH);
    let error = h.reconcile().await.unwrap_err();
    assert_eq!(error.reason(), "ApplyFailed");
    assert!(
        error.to_string().contains("StatefulSet/sessions-redis"),
        "{error}"
    );
    let (status, reason, message) = h.condition("RedisReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ApplyFailed"));
    assert!(
        message.contains("etcdserver: request timed out"),
        "{message}"
    );
    // People read this with `kubectl describe`: the server's words and what to do, no dump.
    assert!(
        message.starts_with("apps/v1 StatefulSet/sessions-redis was refused: the API server said"),
        "{message}"
    );
    assert!(message.ends_with("retrying with backoff"), "{message}");
    assert!(
        !message.contains("Status {") && !message.contains("ApiError"),
        "{message}"
    );
    // Everything else was still applied.
    assert!(h.fake.get(DEPLOY_PATH).is_some());
    let (_, events) = h.fake.take_writes();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "RedisNotReady")
    );
    // Backoff doubles per consecutive failure, and a success resets it.
    let ss = Arc::new(h.current());
    let delays: Vec<Action> = (0..3)
        .map(|_| reconcile::error_policy(ss.clone(), &error, h.ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [5, 10, 20].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    assert_eq!(reconcile::backoff(30), Duration::from_secs(300));
}

#[tokio::test]
async fn recovery_after_a_failure_clears_the_condition() {
    let h = Harness::new("sessionservice-standalone.yaml");
    h.fake.fail_writes_to(STS_PATH);
    assert!(h.reconcile().await.is_err());
    h.fake.heal();
    h.reconcile().await.unwrap();
    h.make_ready();
    h.reconcile().await.unwrap();
    assert_eq!(h.condition("RedisReady").0, "True");
    assert_eq!(h.condition("Ready").0, "True");
    let text = h.ctx.metrics.render();
    assert!(
        text.contains(r#"session_operator_reconciles_total{result="error"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"session_operator_reconcile_errors_total{reason="ApplyFailed"} 1"#));
    assert!(text.contains("session_operator_reconcile_duration_seconds_count 3"));
}

#[tokio::test]
async fn without_prometheus_operator_everything_else_is_applied() {
    let h = Harness::new("sessionservice-standalone.yaml");
    h.fake.remove_group("monitoring.coreos.com");
    let action = h.reconcile().await.unwrap();
    assert_eq!(action, Action::requeue(reconcile::MISSING_API_CHECK));
    let (status, reason, message) = h.condition("AlertsReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ApiUnavailable")
    );
    assert!(
        message.contains("install the prometheus-operator CRDs"),
        "{message}"
    );
    assert!(h.fake.get(DEPLOY_PATH).is_some() && h.fake.get(HPA_PATH).is_some());
    assert_eq!(h.condition("AutoscalingReady").0, "True");
}

#[tokio::test]
async fn without_autoscaling_v2_and_policy_v1_the_rest_still_runs() {
    let h = Harness::new("sessionservice-standalone.yaml");
    h.fake.remove_group("autoscaling");
    h.fake.remove_group("policy");
    assert_eq!(
        h.reconcile().await.unwrap(),
        Action::requeue(reconcile::MISSING_API_CHECK)
    );
    let (status, reason, message) = h.condition("AutoscalingReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ApiUnavailable")
    );
    assert!(
        message.contains("autoscaling/v2 HorizontalPodAutoscaler is not served"),
        "{message}"
    );
    assert_eq!(h.condition("RedisReady").1, "ApiUnavailable");
    assert!(h.fake.get(STS_PATH).is_some() && h.fake.get(DEPLOY_PATH).is_some());
}

#[tokio::test]
async fn on_kubernetes_1_20_only_what_it_serves_is_sent_and_the_status_says_what_is_lost() {
    let api = Capabilities::of_version("v1.20.2", 20, &["v1", "v2beta1", "v2beta2"], &["v1beta1"]);
    let h = Harness::on("sessionservice-standalone.yaml", api);
    let mut ss = h.current();
    ss.spec.redis.persistence.retain_on_delete = false;
    ss.spec.sidecar.native = Some(true);
    h.fake.insert(&h.path, serde_json::to_value(&ss).unwrap());
    h.reconcile().await.unwrap();
    let hpa = h
        .fake
        .get("/apis/autoscaling/v2beta2/namespaces/shop/horizontalpodautoscalers/sessions")
        .expect("the HPA in autoscaling/v2beta2");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2beta2");
    assert!(h.fake.get(HPA_PATH).is_none(), "nothing in autoscaling/v2");
    for name in ["sessions", "sessions-redis"] {
        let pdb = h
            .fake
            .get(&format!(
                "/apis/policy/v1beta1/namespaces/shop/poddisruptionbudgets/{name}"
            ))
            .expect("the PodDisruptionBudget in policy/v1beta1");
        assert_eq!(pdb["apiVersion"], "policy/v1beta1");
    }
    let sts = h.fake.get(STS_PATH).unwrap();
    assert!(
        sts["spec"]
            .get("persistentVolumeClaimRetentionPolicy")
            .is_none(),
        "a field 1.20 does not know is never sent"
    );
    for object in [&sts, &h.fake.get(DEPLOY_PATH).unwrap()] {
        for port in object["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        {
            assert_eq!(port["protocol"], "TCP", "{port}");
        }
    }
    let (status, reason, message) = h.condition("FeaturesAvailable");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "OlderApiServer")
    );
    assert!(
        message.contains("v1.20.2") && message.contains("no native sidecars"),
        "{message}"
    );
    assert!(
        message.contains("delete the Redis PersistentVolumeClaims by hand"),
        "{message}"
    );
    // Missing features do not make the SessionService unready.
    h.make_ready();
    h.reconcile().await.unwrap();
    assert_eq!(h.condition("Ready").0, "True");
}

#[tokio::test]
async fn turning_autoscaling_off_deletes_only_the_operators_hpa() {
    let h = Harness::new("sessionservice-standalone.yaml");
    h.reconcile().await.unwrap();
    assert!(h.fake.get(HPA_PATH).is_some());
    let mut object = h.fake.get(&h.path).unwrap();
    object["spec"]["autoscaling"]["enabled"] = Value::Bool(false);
    object["metadata"]["generation"] = json!(2);
    h.fake.insert(&h.path, object);
    h.reconcile().await.unwrap();
    assert!(h.fake.get(HPA_PATH).is_none(), "the HPA is deleted");
    assert_eq!(h.fake.get(DEPLOY_PATH).unwrap()["spec"]["replicas"], 2);
    assert_eq!(h.current().status.unwrap().observed_generation, Some(2));
    assert_eq!(h.condition("AutoscalingReady").1, "Disabled");

    // A user's own HPA of the same name is not ours to delete.
    h.fake.insert(
        HPA_PATH,
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": "sessions", "namespace": "shop", "labels": {"team": "shop"}}}),
    );
    h.reconcile().await.unwrap();
    assert!(h.fake.get(HPA_PATH).is_some());
}

#[tokio::test]
async fn external_mode_applies_no_redis_objects_and_reports_external() {
    let h = Harness::new("sessionservice-external.yaml");
    h.reconcile().await.unwrap();
    assert!(
        h.fake.paths().iter().all(|p| !p.contains("redis")),
        "{:#?}",
        h.fake.paths()
    );
    assert_eq!(h.condition("RedisReady").0, "True");
    assert_eq!(h.condition("RedisReady").1, "External");
    assert_eq!(h.current().status.unwrap().redis_endpoint, None);
}
