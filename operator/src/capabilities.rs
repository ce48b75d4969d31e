//! What the API server serves. The operator asks at start (version and discovery) and again
//! every minute, so a control-plane upgrade is noticed without a restart, and never sends a
//! field or a kind the server does not know. Older servers get the nearest thing they do
//! serve, and the SessionService says what that costs (see [`Capabilities::degradations`]).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::ApiResource;

use crate::crd::SessionService;

/// How often the operator asks the API server again.
pub(crate) const REDISCOVER_EVERY: Duration = Duration::from_secs(60);

/// The features the objects depend on, as one API server serves them.
#[derive(Clone, Debug, PartialEq)]
pub struct Capabilities {
    /// `v1.20.2`, as the server reports it.
    pub version: String,
    /// Native sidecars: init containers with `restartPolicy: Always` (on by default from 1.29).
    pub native_sidecars: bool,
    /// `StatefulSet.spec.persistentVolumeClaimRetentionPolicy` (on by default from 1.27).
    pub pvc_retention_policy: bool,
    /// The CRD's CEL validation rules are enforced (on by default from 1.25); older servers
    /// drop them.
    pub validation_rules: bool,
    /// The HorizontalPodAutoscaler API: `autoscaling/v2` (1.23+), else `v2beta2`, else none.
    pub autoscaling: Option<ApiResource>,
    /// The PodDisruptionBudget API: `policy/v1` (1.21+), else `v1beta1`, else none.
    pub disruption_budgets: Option<ApiResource>,
}

impl Capabilities {
    /// A current API server: what `render` and `inject` assume offline.
    pub fn latest() -> Self {
        Self::of_version("latest", u32::MAX, &["v2"], &["v1"])
    }

    /// What a server of `minor` version serving these `autoscaling` and `policy` versions
    /// supports.
    pub fn of_version(
        version: &str,
        minor: u32,
        autoscaling_versions: &[&str],
        policy_versions: &[&str],
    ) -> Self {
        let pick = |base: ApiResource, served: &[&str], preference: &[&str]| {
            preference
                .iter()
                .find(|v| served.contains(v))
                .map(|version| with_version(&base, version))
        };
        Self {
            version: version.to_owned(),
            native_sidecars: minor >= 29,
            pvc_retention_policy: minor >= 27,
            validation_rules: minor >= 25,
            autoscaling: pick(
                ApiResource::erase::<HorizontalPodAutoscaler>(&()),
                autoscaling_versions,
                &["v2", "v2beta2"],
            ),
            disruption_budgets: pick(
                ApiResource::erase::<PodDisruptionBudget>(&()),
                policy_versions,
                &["v1", "v1beta1"],
            ),
        }
    }

    /// Asks the API server: its version, and which versions of `autoscaling` and `policy` it
    /// serves.
    pub(crate) async fn discover(client: &Client) -> Result<Self, kube::Error> {
        let version = client.apiserver_version().await?;
        let minor = version
            .minor
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or(0);
        let groups = client.list_api_groups().await?;
        let served = |group: &str| -> Vec<&str> {
            groups
                .groups
                .iter()
                .filter(|g| g.name == group)
                .flat_map(|g| g.versions.iter().map(|v| v.version.as_str()))
                .collect()
        };
        Ok(Self::of_version(
            &version.git_version,
            minor,
            &served("autoscaling"),
            &served("policy"),
        ))
    }

    /// Whether `ss`'s injected sidecars are native: `spec.sidecar.native`, or where it is
    /// unset (auto) whatever the server supports; never on a server without them.
    pub(crate) fn native_sidecar(&self, ss: &SessionService) -> bool {
        self.native_sidecars && ss.spec.sidecar.native.unwrap_or(true)
    }

    /// What `ss` asks for that this server cannot give, in words: empty on a current server.
    pub(crate) fn degradations(&self, ss: &SessionService) -> Vec<String> {
        let mut lost = Vec::new();
        let server = &self.version;
        if !self.validation_rules {
            lost.push(format!(
                "this API server ({server}) does not enforce the CRD's validation rules (CEL, Kubernetes 1.25+): changes they refuse elsewhere (redis.mode, sessions.shardCount, shards beyond shardCount) are accepted here and break the SessionService; do not make them"
            ));
        }
        if ss.spec.sidecar.native == Some(true) && !self.native_sidecars {
            lost.push(format!(
                "spec.sidecar.native is true, but this API server ({server}) has no native sidecars (Kubernetes 1.29+): sidecars are injected as plain containers; upgrade the cluster, or leave the field unset"
            ));
        }
        let stores = ss.spec.redis.mode != crate::crd::RedisMode::External;
        if stores && !ss.spec.redis.persistence.retain_on_delete && !self.pvc_retention_policy {
            lost.push(format!(
                "redis.persistence.retainOnDelete is false, but this API server ({server}) cannot delete a StatefulSet's volumes with it (Kubernetes 1.27+): delete the Redis PersistentVolumeClaims by hand after deleting the SessionService"
            ));
        }
        if ss.spec.autoscaling.enabled && self.autoscaling.is_none() {
            lost.push(format!(
                "autoscaling is on, but this API server ({server}) serves neither autoscaling/v2 nor autoscaling/v2beta2: the session service keeps its minimum replicas; set spec.autoscaling.enabled to false"
            ));
        }
        if self.disruption_budgets.is_none() {
            lost.push(format!(
                "this API server ({server}) serves no PodDisruptionBudget API: a node drain may stop a Redis master and its replica together"
            ));
        }
        lost
    }
}

fn with_version(base: &ApiResource, version: &str) -> ApiResource {
    ApiResource {
        version: version.to_owned(),
        api_version: format!("{}/{version}", base.group),
        ..base.clone()
    }
}

/// The capabilities every part of the process reads, kept current by [`keep_current`].
pub(crate) type Shared = Arc<RwLock<Capabilities>>;

/// The current capabilities.
pub(crate) fn current(shared: &Shared) -> Capabilities {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Asks the API server every [`REDISCOVER_EVERY`] and updates `shared` when the answer
/// changed (a control-plane upgrade); a failed question keeps the last answer.
pub(crate) async fn keep_current(client: Client, shared: Shared) {
    loop {
        tokio::time::sleep(REDISCOVER_EVERY).await;
        match Capabilities::discover(&client).await {
            Ok(found) => {
                let mut known = shared.write().unwrap_or_else(|e| e.into_inner());
                if *known != found {
                    tracing::info!(from = %known.version, to = %found.version, "the API server changed; adapting the objects to it");
                    *known = found;
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::reconcile::api_message(&error), "could not ask the API server what it serves; keeping the last answer")
            }
        }
    }
}
