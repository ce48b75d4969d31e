//! `session-operator status`: what a person on call needs about SessionServices, in one screen
//! (or as JSON for scripts) — conditions with their messages and ages, the Redis topology,
//! the session-service replicas, the webhook certificate's expiry, from Prometheus the current
//! SLIs and burn rates, and from the session service the dead letters waiting. Also usable as
//! the kubectl plugin `kubectl sessions status`.

use std::fmt::Write as _;

use anyhow::Context as _;
use hyper::body::Bytes;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use crate::crd::{RedisClusterStatus, RedisMode, SessionService};
use crate::resources::Names;

/// The windows shown, from the SLI recording rules.
const WINDOWS: [&str; 5] = ["5m", "1h", "6h", "1d", "3d"];

/// How the report is printed.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// The `status` command's arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The SessionService; every one in the namespace when absent.
    pub name: Option<String>,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// A Prometheus base URL (`http://host:port`) to read the current SLIs and burn rates from.
    #[arg(long)]
    pub prometheus: Option<String>,
    /// The session service's base URL (a port-forward, or a pod's IP) to count its dead
    /// letters; needs the SessionService's name.
    #[arg(long, requires = "name")]
    pub url: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The operator's MutatingWebhookConfiguration (it leads to the certificate).
    #[arg(long, default_value = "session-operator")]
    pub webhook_configuration: String,
    /// The Secret holding the webhook's generated certificate, in the operator's namespace.
    #[arg(long, default_value = "session-operator-webhook-tls")]
    pub webhook_secret: String,
}

/// Everything the command shows.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub webhook_certificate: Option<Certificate>,
    pub session_services: Vec<Service>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// RFC 3339; absent when the Secret does not say (a certificate not generated here).
    pub not_after: Option<String>,
    pub days_left: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub conditions: Vec<ConditionLine>,
    pub redis_mode: String,
    pub redis_endpoint: Option<String>,
    /// The StatefulSet's pod name prefix (`<name>-redis-`), for the topology's ordinals.
    pub redis_pod_prefix: String,
    pub redis_cluster: Option<RedisClusterStatus>,
    /// The Redis passwords' rotation, in words (absent when none was asked for).
    pub redis_password_rotation: Option<String>,
    /// The JWT key's rotation, in words.
    pub jwt_secret_rotation: Option<String>,
    /// The session-service Deployment: ready of wanted replicas (absent when it does not exist).
    pub server_replicas: Option<(i32, i32)>,
    pub slis: Option<Vec<Sli>>,
    /// What `--url` found.
    pub dead_letters: Option<DeadLetters>,
}

/// The dead letters waiting, or why they could not be counted.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetters {
    pub count: Option<usize>,
    /// `<id>: <reason>, set aside <time>` of the oldest.
    pub oldest: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionLine {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub age_seconds: i64,
}

/// One window of the SLIs.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sli {
    pub window: String,
    /// Share of user requests answered without a 5xx (absent: no data yet).
    pub availability: Option<f64>,
    /// How fast the availability budget burns (1 spends it exactly over the SLO window).
    pub availability_burn: Option<f64>,
    /// Share of user requests faster than the latency threshold.
    pub latency: Option<f64>,
    pub latency_burn: Option<f64>,
}

/// Gathers the report from the API server (and Prometheus).
///
/// # Errors
/// When the API server cannot be reached or the named SessionService does not exist.
pub async fn gather(client: &Client, options: &Options) -> anyhow::Result<Report> {
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<SessionService> = Api::namespaced(client.clone(), &namespace);
    let services = match &options.name {
        Some(name) => vec![api.get_opt(name).await?.with_context(|| {
            format!("there is no SessionService {namespace}/{name}; `kubectl get sessionservices -A` lists them")
        })?],
        None => api.list(&ListParams::default()).await?.items,
    };
    let now = Timestamp::now();
    let mut session_services = Vec::new();
    for ss in &services {
        let mut service = describe(client, ss, &namespace, now).await?;
        if let Some(url) = &options.prometheus {
            service.slis = Some(slis(url, ss).await?);
        }
        if let Some(url) = &options.url {
            service.dead_letters = Some(dead_letters(client, ss, url).await);
        }
        session_services.push(service);
    }
    Ok(Report {
        webhook_certificate: certificate(client, options).await,
        session_services,
    })
}

async fn describe(
    client: &Client,
    ss: &SessionService,
    namespace: &str,
    now: Timestamp,
) -> anyhow::Result<Service> {
    let names = Names::of(ss);
    let status = ss.status.clone().unwrap_or_default();
    let conditions = status
        .conditions
        .iter()
        .map(|c| ConditionLine {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            age_seconds: (now.as_second() - c.last_transition_time.0.as_second()).max(0),
        })
        .collect();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let server_replicas = deployments.get_opt(&names.server()).await?.map(|d| {
        let wanted = d.spec.replicas.unwrap_or(1);
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        (ready, wanted)
    });
    Ok(Service {
        namespace: namespace.to_owned(),
        name: ss.name_any(),
        generation: ss.metadata.generation,
        observed_generation: status.observed_generation,
        conditions,
        redis_mode: match ss.spec.redis.mode {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::External => "external",
        }
        .to_owned(),
        redis_endpoint: status.redis_endpoint,
        redis_pod_prefix: format!("{}-", names.redis()),
        redis_cluster: status.redis_cluster,
        redis_password_rotation: status.redis_password_rotation,
        jwt_secret_rotation: status.jwt_secret_rotation,
        server_replicas,
        slis: None,
        dead_letters: None,
    })
}

/// Counts the dead letters through the session service's API; a failure is reported, not
/// fatal: the rest of the screen still helps.
async fn dead_letters(client: &Client, ss: &SessionService, url: &str) -> DeadLetters {
    let listed = async {
        crate::dead_letters::SessionApi::connect(client, ss, url)
            .await?
            .dead_letters()
            .await
    };
    match listed.await {
        Ok(letters) => DeadLetters {
            count: Some(letters.len()),
            oldest: letters.first().map(|l| {
                format!(
                    "{}: {}, set aside {}",
                    l["id"].as_str().unwrap_or("?"),
                    l["reason"].as_str().unwrap_or("?"),
                    l["dead_lettered_at"].as_str().unwrap_or("?")
                )
            }),
            error: None,
        },
        Err(error) => DeadLetters {
            count: None,
            oldest: None,
            error: Some(format!("{error:#}")),
        },
    }
}

/// The webhook certificate's expiry, found through the webhook configuration's Service
/// namespace; `None` when there is no webhook (or it cannot be read: the command still shows
/// the rest).
async fn certificate(client: &Client, options: &Options) -> Option<Certificate> {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = configs
        .get_opt(&options.webhook_configuration)
        .await
        .ok()??;
    let namespace = config
        .webhooks?
        .into_iter()
        .find_map(|w| w.client_config.service.map(|s| s.namespace))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets.get_opt(&options.webhook_secret).await.ok()??;
    let not_after = secret
        .annotations()
        .get(crate::webhook::certs::NOT_AFTER)
        .cloned();
    let days_left = not_after
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| (t.as_second() - Timestamp::now().as_second()) / 86_400);
    Some(Certificate {
        secret: format!("{namespace}/{}", options.webhook_secret),
        not_after,
        days_left,
    })
}

/// The SLIs of `ss` per window, from the recording rules the operator installs.
///
/// # Errors
/// When Prometheus cannot be reached or refuses a query.
pub async fn slis(base: &str, ss: &SessionService) -> anyhow::Result<Vec<Sli>> {
    let name = ss.name_any();
    let budget = |objective: f64| 1.0 - objective / 100.0;
    let (availability_budget, latency_budget) = (
        budget(ss.spec.slo.availability_objective),
        budget(ss.spec.slo.latency_objective),
    );
    let mut out = Vec::new();
    for window in WINDOWS {
        let ratio =
            |record: &str| format!("{record}:ratio_rate{window}{{session_service=\"{name}\"}}");
        let errors = query(base, &ratio("session_service:request_errors")).await?;
        let slow = query(base, &ratio("session_service:request_slow")).await?;
        out.push(Sli {
            window: window.to_owned(),
            availability: errors.map(|e| 1.0 - e),
            availability_burn: errors.map(|e| e / availability_budget),
            latency: slow.map(|s| 1.0 - s),
            latency_burn: slow.map(|s| s / latency_budget),
        });
    }
    Ok(out)
}

/// The value of an instant query that returns at most one series (`None`: no series, or not
/// a number yet, as when there was no traffic in the window).
///
/// # Errors
/// When Prometheus cannot be reached or answers with an error.
pub async fn query(base: &str, expr: &str) -> anyhow::Result<Option<f64>> {
    let encoded: String = url_encode(expr);
    let url = format!(
        "{}/api/v1/query?query={encoded}",
        base.trim_end_matches('/')
    );
    let body = get(&url)
        .await
        .with_context(|| format!("could not query Prometheus at {base}"))?;
    let reply: Value = serde_json::from_slice(&body)
        .with_context(|| format!("Prometheus at {base} answered something other than JSON"))?;
    if reply["status"] != "success" {
        anyhow::bail!(
            "Prometheus at {base} refused the query {expr}: {}",
            reply["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(reply["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite()))
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP GET (Prometheus is reached over `http://`, often through a port-forward).
async fn get(url: &str) -> anyhow::Result<Bytes> {
    Ok(
        crate::http_client::request(hyper::Method::GET, url, None, None)
            .await?
            .body,
    )
}

/// The report as a person reads it.
#[must_use]
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    for s in &report.session_services {
        service_text(&mut out, s);
        out.push('\n');
    }
    if report.session_services.is_empty() {
        out.push_str("No SessionService here.\n\n");
    }
    match &report.webhook_certificate {
        Some(Certificate {
            secret,
            not_after: Some(at),
            days_left,
        }) => {
            let left = days_left.map_or(String::new(), |d| format!(" ({d} days left)"));
            let _ = writeln!(
                out,
                "Webhook certificate: {secret} expires {at}{left}; the operator renews it 30 days before"
            );
        }
        Some(c) => {
            let _ = writeln!(
                out,
                "Webhook certificate: {} (expiry not recorded: provided from outside, e.g. cert-manager)",
                c.secret
            );
        }
        None => out.push_str("Webhook certificate: no webhook configuration found\n"),
    }
    out
}

fn service_text(out: &mut String, s: &Service) {
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready");
    let headline = ready.map_or("no status yet".to_owned(), |c| {
        let word = if c.status == "True" {
            "Ready"
        } else {
            "NOT READY"
        };
        format!("{word} for {}", age(c.age_seconds))
    });
    let stale = match (s.generation, s.observed_generation) {
        (Some(g), Some(o)) if g != o => format!(" (spec generation {g}, status describes {o})"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "SessionService {}/{}: {headline}{stale}",
        s.namespace, s.name
    );
    out.push_str("\nConditions\n");
    for c in &s.conditions {
        let _ = writeln!(
            out,
            "  {:<18} {:<6} {:<16} {:>6}  {}",
            c.type_,
            c.status,
            c.reason,
            age(c.age_seconds),
            c.message
        );
    }
    let endpoint = s
        .redis_endpoint
        .as_deref()
        .unwrap_or("from the user's Secret");
    let _ = writeln!(out, "\nRedis: {} at {endpoint}", s.redis_mode);
    if let Some(cluster) = &s.redis_cluster {
        let pod = |o: i32| format!("{}{o}", s.redis_pod_prefix);
        for m in &cluster.masters {
            let who = m.pod.map_or(format!("node {}", m.node), pod);
            let replicas = if m.replicas.is_empty() {
                "no replica".to_owned()
            } else {
                m.replicas
                    .iter()
                    .map(|&r| pod(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                out,
                "  master {who:<24} {:>5} slots, {:>3} data slots; replicas: {replicas}",
                m.slots, m.data_slots
            );
        }
        if cluster.failing.is_empty() {
            out.push_str("  failing: none\n");
        }
        for f in &cluster.failing {
            let _ = writeln!(out, "  failing: {f}");
        }
    }
    if let Some(rotation) = &s.redis_password_rotation {
        let _ = writeln!(out, "Redis passwords: {rotation}");
    }
    if let Some(rotation) = &s.jwt_secret_rotation {
        let _ = writeln!(out, "JWT key: {rotation}");
    }
    match s.server_replicas {
        Some((ready, wanted)) => {
            let _ = writeln!(out, "Session service: {ready}/{wanted} replicas ready");
        }
        None => out.push_str("Session service: no Deployment (yet)\n"),
    }
    match &s.dead_letters {
        Some(DeadLetters { count: Some(0), .. }) => out.push_str("Dead letters: none\n"),
        Some(DeadLetters {
            count: Some(n),
            oldest,
            ..
        }) => {
            let _ = writeln!(
                out,
                "Dead letters: {n} (oldest {}); `kubectl sessions dead-letters {} -n {} --url URL list` shows them",
                oldest.as_deref().unwrap_or("?"),
                s.name,
                s.namespace
            );
        }
        Some(DeadLetters {
            error: Some(error), ..
        }) => {
            let _ = writeln!(out, "Dead letters: could not be counted: {error}");
        }
        _ => {}
    }
    if let Some(slis) = &s.slis {
        out.push_str("\nSLIs      availability   burn   latency   burn\n");
        let pct = |v: Option<f64>| v.map_or("no data".to_owned(), |v| format!("{:.3}%", v * 100.0));
        let burn = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        for w in slis {
            let _ = writeln!(
                out,
                "  {:<6} {:>12} {:>6} {:>9} {:>6}",
                w.window,
                pct(w.availability),
                burn(w.availability_burn),
                pct(w.latency),
                burn(w.latency_burn)
            );
        }
    }
}

/// `42s`, `7m`, `3h`, `12d`.
fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(42), "42s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(10_800), "3h");
        assert_eq!(age(3 * 86_400), "3d");
    }

    #[test]
    fn queries_are_url_encoded() {
        assert_eq!(url_encode(r#"a{b="c"}"#), "a%7Bb%3D%22c%22%7D");
    }
}
