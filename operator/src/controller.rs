//! `session-operator run`: the controller, behind leader election, with health and metrics
//! endpoints and a clean shutdown on SIGTERM.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use crate::capabilities::{self, Capabilities};
use crate::crd::SessionService;
use crate::reconcile::{self, Context};
use crate::resources::MANAGER;
use crate::telemetry::Metrics;

/// How `run` is configured (flags and environment of `session-operator run`).
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "OPERATOR_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Watch SessionServices in this namespace only; all namespaces when absent.
    #[arg(long, env = "OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "OPERATOR_LEASE_NAME",
        default_value = "session-operator-leader"
    )]
    pub lease_name: String,
    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    #[command(flatten)]
    pub webhook: crate::webhook::Options,
}

/// Process state the probes report.
struct Health {
    metrics: Metrics,
    /// The API server answered; standbys are ready too (they take over on failover).
    connected: AtomicBool,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if health.connected.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server",
        )
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> String {
    health.metrics.render()
}

/// Resolves on SIGTERM or SIGINT.
async fn signalled() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        connected: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(options.metrics_listen).await?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .with_state(health.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(%error, "the health and metrics server stopped");
        }
    });

    // One TLS crypto provider for the process (the API client and the webhook server).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await?;
    let found = Capabilities::discover(&client).await.map_err(|e| {
        anyhow::anyhow!(
            "asking the API server what it serves: {}",
            reconcile::api_message(&e)
        )
    })?;
    health.connected.store(true, Ordering::Relaxed);
    info!(
        kubernetes = %found.version,
        native_sidecars = found.native_sidecars,
        autoscaling = found.autoscaling.as_ref().map_or("none", |r| r.api_version.as_str()),
        disruption_budgets = found.disruption_budgets.as_ref().map_or("none", |r| r.api_version.as_str()),
        "connected to the API server"
    );
    let api: capabilities::Shared = Arc::new(RwLock::new(found));
    let rediscovery = tokio::spawn(capabilities::keep_current(client.clone(), api.clone()));

    // Every replica serves the webhook, leader or not: admission must not wait for an election.
    let webhook = {
        let (client, options, namespace, api, metrics) = (
            client.clone(),
            options.webhook.clone(),
            options.lease_namespace.clone(),
            api.clone(),
            metrics.clone(),
        );
        tokio::spawn(async move {
            if let Err(error) =
                crate::webhook::serve(client, options, namespace, api, metrics).await
            {
                tracing::error!(error = %format!("{error:#}"), "the admission webhook stopped");
            }
        })
    };
    let background = [webhook, rediscovery];

    let identity = options
        .identity
        .clone()
        .unwrap_or_else(|| format!("session-operator-{}", std::process::id()));
    let lease = LeaseManagerBuilder::new(client.clone(), &options.lease_name)
        .with_namespace(&options.lease_namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leader, lease_task) = lease.watch().await;
    info!(lease = %options.lease_name, %identity, "waiting for the leader lease");
    let mut signal = Box::pin(signalled());
    while !*leader.borrow_and_update() {
        tokio::select! {
            changed = leader.changed() => changed?,
            () = &mut signal => {
                info!("stopping: signal received while standing by");
                background.iter().for_each(tokio::task::JoinHandle::abort);
                drop(leader);
                let _ = lease_task.await;
                info!("stopped cleanly");
                return Ok(());
            }
        }
    }
    info!("leading: starting the controller");
    metrics.leader.set(1);

    // Stops on a signal or when the lease is lost; `leader` is dropped then, which releases
    // the lease.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let lost = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let lost = lost.clone();
        async move {
            tokio::select! {
                () = signal => info!("stopping: signal received"),
                () = async {
                    while leader.changed().await.is_ok() && *leader.borrow() {}
                } => {
                    lost.store(true, Ordering::Relaxed);
                    warn!("lost the leader lease: stopping");
                }
            }
            drop(leader);
            let _ = stopping.send(true);
        }
    });
    if crd_installed(&client, stopped.clone()).await {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: Some(identity),
        };
        let ctx = Arc::new(Context::new(
            client.clone(),
            Recorder::new(client.clone(), reporter),
            metrics.clone(),
            options.lease_namespace.clone(),
            api.clone(),
        ));
        let initial = capabilities::current(&api);
        let controller = run_controller(
            client,
            options.watch_namespace.as_deref(),
            &initial,
            ctx,
            once_stopped(stopped.clone()),
        );
        // Reconciles are safe to interrupt: after a short grace the process stops anyway, so
        // a Redis slot move in progress never holds up a rollout of the operator.
        tokio::select! {
            () = controller => {}
            () = async { once_stopped(stopped).await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "reconciles still running after the grace period; stopping without them (each resumes on the next leader)");
            }
        }
    }
    metrics.leader.set(0);
    background.iter().for_each(tokio::task::JoinHandle::abort);
    let _ = lease_task.await;
    if lost.load(Ordering::Relaxed) {
        anyhow::bail!("lost the leader lease; restarting to rejoin as a standby");
    }
    info!("stopped cleanly");
    Ok(())
}

/// How long running reconciles may finish after a stop was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often the operator looks for the SessionService CRD while it is not installed.
const CRD_CHECK: Duration = Duration::from_secs(2);

/// Resolves once `stopped` turns true (or its sender is gone).
async fn once_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Waits until the API server serves SessionServices; `false` when stopped first. Watching a
/// kind that is not installed would only back off for minutes, and hold up a shutdown.
async fn crd_installed(client: &Client, stopped: tokio::sync::watch::Receiver<bool>) -> bool {
    let api_version = SessionService::api_version(&());
    let plural = SessionService::plural(&());
    let mut said = false;
    let stop = once_stopped(stopped);
    tokio::pin!(stop);
    loop {
        match client.list_api_group_resources(&api_version).await {
            Ok(list) if list.resources.iter().any(|r| r.name == plural) => {
                if said {
                    info!("the SessionService CRD is installed now: starting the controller");
                }
                return true;
            }
            Ok(_) | Err(kube::Error::Api(_)) => {
                if !said {
                    warn!(%api_version, "the SessionService CRD is not installed: install it with the chart, or `session-operator crd | kubectl apply -f -`; checking every 2 s");
                    said = true;
                }
            }
            Err(error) => {
                warn!(error = %reconcile::api_message(&error), "could not ask the API server for the SessionService CRD; asking again")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(CRD_CHECK) => {}
            () = &mut stop => return false,
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn dynamic_api(
    client: &Client,
    namespace: Option<&str>,
    resource: &ApiResource,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

async fn run_controller(
    client: Client,
    namespace: Option<&str>,
    served: &Capabilities,
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Only the operator's own children are watched (and cached).
    let owned = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGER}"))
        .any_semantic();
    let mut controller = Controller::new(
        api::<SessionService>(&client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .owns(api::<ConfigMap>(&client, namespace), owned.clone())
    .owns(api::<Secret>(&client, namespace), owned.clone())
    .owns(api::<Service>(&client, namespace), owned.clone())
    .owns(api::<StatefulSet>(&client, namespace), owned.clone())
    .owns(api::<Deployment>(&client, namespace), owned.clone())
    .owns(api::<NetworkPolicy>(&client, namespace), owned.clone());
    // The versions this server serves, as the objects are applied.
    for resource in [&served.disruption_budgets, &served.autoscaling]
        .into_iter()
        .flatten()
    {
        controller = controller.owns_with(
            dynamic_api(&client, namespace, resource),
            resource.clone(),
            owned.clone(),
        );
    }
    controller
        // Redis pods belong to the StatefulSet, not to the SessionService: a restarted pod (a new
        // IP the cluster must learn) wakes its SessionService through its instance label.
        .watches(
            api::<Pod>(&client, namespace),
            watcher::Config::default()
                .labels(&format!(
                    "app.kubernetes.io/component=redis,app.kubernetes.io/managed-by={MANAGER}"
                ))
                .any_semantic(),
            |pod| {
                let name = pod.labels().get(crate::resources::INSTANCE_LABEL)?.clone();
                Some(ObjectRef::new(&name).within(&pod.namespace()?))
            },
        )
        .with_config(controller::Config::default().concurrency(4))
        .graceful_shutdown_on(stop)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(session_service = %object, "reconciled"),
                Err(error) => warn!(%error, "controller"),
            }
        })
        .await;
}
