//! The mutating admission webhook: a Pod labelled `sessions.io/inject: <SessionService>` gets
//! the sidecar of that SessionService. Unlabelled pods are never changed; a label naming a
//! SessionService that does not exist is refused with a message saying so.

pub mod certs;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use kube::api::{Api, DynamicObject};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::INJECT_LABEL;
use crate::capabilities::{self, Capabilities};
use crate::crd::SessionService;
use crate::inject;
use crate::telemetry::Metrics;

/// Where the webhook serves and where its certificate comes from.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "webhook-options")]
pub struct Options {
    /// Serve the admission webhook (HTTPS, path `/inject`) on this address; off when absent.
    #[arg(long, env = "OPERATOR_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// Read `tls.crt` and `tls.key` from this directory (e.g. a cert-manager Secret mounted
    /// there) instead of generating and rotating a certificate.
    #[arg(long, env = "OPERATOR_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// The webhook's Service (the names of a generated certificate).
    #[arg(
        long,
        env = "OPERATOR_WEBHOOK_SERVICE",
        default_value = "session-operator-webhook"
    )]
    pub webhook_service: String,
    /// The Secret that holds a generated certificate.
    #[arg(
        long,
        env = "OPERATOR_WEBHOOK_SECRET",
        default_value = "session-operator-webhook-tls"
    )]
    pub webhook_secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` the operator keeps current.
    #[arg(
        long,
        env = "OPERATOR_WEBHOOK_CONFIGURATION",
        default_value = "session-operator"
    )]
    pub webhook_configuration: String,
    /// Namespaces whose pods are never injected, besides the operator's own. The webhook
    /// configuration's namespaceSelector excludes them too, but only on Kubernetes 1.21+,
    /// where every namespace carries its `kubernetes.io/metadata.name` label.
    #[arg(
        long,
        env = "OPERATOR_WEBHOOK_EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,kube-node-lease"
    )]
    pub webhook_exclude_namespaces: Vec<String>,
}

/// What an admission decision depends on besides the pod.
#[derive(Clone, Debug)]
pub struct Policy {
    /// What the API server supports (native sidecars or plain containers).
    pub api: Capabilities,
    /// Namespaces whose pods are admitted unchanged.
    pub excluded_namespaces: Vec<String>,
}

/// Answers one AdmissionReview (the request body) with an AdmissionReview.
pub async fn review<F, Fut>(body: &[u8], policy: &Policy, lookup: F) -> Value
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = Result<Option<SessionService>, kube::Error>>,
{
    let request: Result<AdmissionRequest<DynamicObject>, String> =
        serde_json::from_slice::<AdmissionReview<DynamicObject>>(body)
            .map_err(|e| format!("not an AdmissionReview: {e}"))
            .and_then(|r| r.try_into().map_err(|e| format!("{e}")));
    let response = match request {
        Ok(request) => respond(&request, policy, lookup).await,
        Err(reason) => AdmissionResponse::invalid(reason),
    };
    encode(response)
}

async fn respond<F, Fut>(
    request: &AdmissionRequest<DynamicObject>,
    policy: &Policy,
    lookup: F,
) -> AdmissionResponse
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = Result<Option<SessionService>, kube::Error>>,
{
    let response = AdmissionResponse::from(request);
    let pod = match &request.object {
        Some(pod) if request.kind.kind == "Pod" && request.operation == Operation::Create => pod,
        _ => return response,
    };
    let Some(name) = pod.labels().get(INJECT_LABEL).cloned() else {
        return response;
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.namespace())
        .unwrap_or_else(|| "default".to_owned());
    if policy.excluded_namespaces.contains(&namespace) {
        return response;
    }
    let ss = match lookup(namespace.clone(), name.clone()).await {
        Ok(Some(ss)) => ss,
        Ok(None) => {
            return response.deny(format!(
                "SessionService {name:?} does not exist in namespace {namespace}: create it, or remove the {INJECT_LABEL} label"
            ));
        }
        Err(error) => {
            return response.deny(format!(
                "cannot read SessionService {name:?} in namespace {namespace}: {}; the pod is admitted once the operator can read it",
                crate::reconcile::api_message(&error)
            ));
        }
    };
    let object = match serde_json::to_value(pod) {
        Ok(object) => object,
        Err(error) => return response.deny(format!("unreadable pod: {error}")),
    };
    match inject::patch(&object, "", &ss, &policy.api) {
        Ok(None) => response,
        Ok(Some(patch)) => match response.clone().with_patch(patch) {
            Ok(patched) => patched,
            Err(error) => response.deny(format!("cannot encode the patch: {error}")),
        },
        Err(error) => response.deny(format!("cannot inject the sidecar: {error:#}")),
    }
}

/// The review as the API server reads it. kube keeps the patch as bytes, which serde writes
/// as an array of numbers; Kubernetes expects `[]byte` as base64 (kube-rs issue 1781).
fn encode(response: AdmissionResponse) -> Value {
    let mut review = serde_json::to_value(response.into_review()).unwrap_or_default();
    if let Some(patch) = review.pointer_mut("/response/patch")
        && let Some(numbers) = patch.as_array()
    {
        let bytes: Vec<u8> = numbers
            .iter()
            .filter_map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect();
        *patch = Value::String(data_encoding::BASE64.encode(&bytes));
    }
    review
}

/// What the webhook does for the pods it is asked about.
#[derive(Clone)]
struct Webhook {
    client: Client,
    api: capabilities::Shared,
    excluded: Vec<String>,
    metrics: Metrics,
}

async fn inject_handler(
    State(Webhook {
        client,
        api,
        excluded,
        metrics,
    }): State<Webhook>,
    body: Bytes,
) -> axum::Json<Value> {
    let policy = Policy {
        api: capabilities::current(&api),
        excluded_namespaces: excluded,
    };
    let answer = review(&body, &policy, |namespace, name| async move {
        Api::<SessionService>::namespaced(client, &namespace)
            .get_opt(&name)
            .await
    })
    .await;
    count(&metrics, &answer);
    axum::Json(answer)
}

/// Counts an answered review as `injected`, `skipped` (admitted unchanged) or `denied`.
pub fn count(metrics: &Metrics, answer: &Value) {
    let response = &answer["response"];
    let result = if response["allowed"] != true {
        "denied"
    } else if response.get("patch").is_some_and(|p| !p.is_null()) {
        "injected"
    } else {
        "skipped"
    };
    metrics
        .webhook_admissions
        .with_label_values(&[result])
        .inc();
}

/// Serves the webhook until the process ends, keeping its certificate current: generated and
/// rotated by the operator, or read again periodically from `--webhook-cert-dir`.
pub async fn serve(
    client: Client,
    options: Options,
    namespace: String,
    api: capabilities::Shared,
    metrics: Metrics,
) -> anyhow::Result<()> {
    let Some(address) = options.webhook_listen else {
        return Ok(());
    };
    let mut excluded = options.webhook_exclude_namespaces.clone();
    excluded.push(namespace.clone());
    let placement = certs::Placement {
        namespace,
        service: options.webhook_service.clone(),
        secret: options.webhook_secret.clone(),
        configuration: options.webhook_configuration.clone(),
    };
    let load = {
        let (client, placement, dir) = (
            client.clone(),
            placement.clone(),
            options.webhook_cert_dir.clone(),
        );
        move || {
            let (client, placement, dir) = (client.clone(), placement.clone(), dir.clone());
            async move {
                match dir {
                    Some(dir) => Ok::<_, anyhow::Error>((
                        tokio::fs::read(dir.join("tls.crt")).await?,
                        tokio::fs::read(dir.join("tls.key")).await?,
                    )),
                    None => {
                        let cert = certs::ensure(&client, &placement).await?;
                        certs::publish_ca_bundle(&client, &placement, &cert.ca_bundle).await?;
                        Ok((cert.cert.into_bytes(), cert.key.into_bytes()))
                    }
                }
            }
        }
    };
    let (cert, key) = load().await?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(cert, key).await?;
    let reloaded = tls.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(certs::CHECK_EVERY).await;
            match load().await {
                Ok((cert, key)) => {
                    if let Err(error) = reloaded.reload_from_pem(cert, key).await {
                        tracing::warn!(%error, "could not load the webhook certificate");
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "could not renew the webhook certificate")
                }
            }
        }
    });
    let app = Router::new()
        .route("/inject", post(inject_handler))
        .with_state(Webhook {
            client,
            api,
            excluded,
            metrics,
        });
    tracing::info!(%address, "serving the admission webhook");
    axum_server::bind_rustls(address, tls)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}
