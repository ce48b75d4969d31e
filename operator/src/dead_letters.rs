//! `session-operator dead-letters`: the inbound events a session service set aside (malformed,
//! of an unknown type, invalid, or failing again and again), listed, inspected, replayed or
//! discarded through the session service's own API. Also usable as `kubectl sessions
//! dead-letters`.
//!
//! The session service is reached at `--url` (a `kubectl port-forward` to its Service, or a
//! pod's IP from inside the cluster network); the command mints a short-lived service-scope
//! token from the SessionService's JWT Secret, which the kubeconfig's user must be allowed to
//! read.

use std::fmt::Write as _;

use anyhow::Context as _;
use hyper::Method;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::crd::SessionService;
use crate::http_client;
use crate::resources::Names;
use crate::resources::server::JWT_KEY;
use crate::status_report::Output;

/// How long a minted token is valid: one command's worth.
const TOKEN_SECONDS: u64 = 300;
/// The scope that lets a token read every user's data (the session service's service scope).
const SERVICE_SCOPE: &str = "sessions:service";

/// The `dead-letters` command's arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The SessionService.
    pub name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The session service's base URL, e.g. `http://127.0.0.1:7070` after `kubectl
    /// port-forward -n NAMESPACE svc/NAME 7070`.
    #[arg(long)]
    pub url: String,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum Action {
    /// Every dead letter, oldest first.
    List,
    /// One dead letter: its event, error, attempts and time.
    Show { id: String },
    /// Apply one dead letter's event now (or every one's with `--all`) and remove it; one
    /// that still fails stays. Idempotent: an event applied before changes nothing.
    Replay {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Remove a dead letter without applying its event.
    Discard { id: String },
}

/// One dead letter as the session service lists it.
#[derive(Debug, Deserialize)]
pub(crate) struct DeadLetter {
    pub id: String,
    pub reason: String,
    pub error: String,
    pub attempts: u32,
    pub dead_lettered_at: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
}

/// The session service's API, with a service-scope token.
pub(crate) struct SessionApi {
    base: String,
    token: String,
}

impl SessionApi {
    /// Mints a token from the SessionService's JWT Secret, for the service at `url`.
    ///
    /// # Errors
    /// When the Secret cannot be read or holds no key.
    pub(crate) async fn connect(
        client: &Client,
        ss: &SessionService,
        url: &str,
    ) -> anyhow::Result<Self> {
        let namespace = ss
            .namespace()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let name = ss
            .spec
            .server
            .jwt_secret_name
            .clone()
            .unwrap_or_else(|| Names::of(ss).jwt_secret());
        let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get(&name)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the JWT Secret {namespace}/{name} to sign a service token: {}",
                    crate::reconcile::api_message(&e)
                )
            })?;
        let key = secret
            .data
            .and_then(|mut d| d.remove(JWT_KEY))
            .with_context(|| format!("the Secret {namespace}/{name} has no {JWT_KEY}"))?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            token: service_token(&key.0)?,
        })
    }

    /// Calls `path`; the answer's JSON (`null` for 204), or the problem in words.
    ///
    /// # Errors
    /// When the service cannot be reached or answers an error.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let answer = http_client::request(method.clone(), &url, Some(&self.token), body)
            .await
            .with_context(|| format!("{method} {url}"))?;
        if answer.status.is_success() {
            if answer.body.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&answer.body)
                .with_context(|| format!("{method} {url} answered something that is not JSON"));
        }
        let problem: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let words = problem["detail"]
            .as_str()
            .or(problem["title"].as_str())
            .map_or_else(
                || String::from_utf8_lossy(&answer.body).into_owned(),
                str::to_owned,
            );
        let code = problem["code"].as_str().unwrap_or("error");
        anyhow::bail!(
            "{method} {url} answered {} ({code}): {words}",
            answer.status.as_u16()
        )
    }

    /// Every dead letter, oldest first, following the pages.
    ///
    /// # Errors
    /// As [`SessionApi::call`].
    pub(crate) async fn dead_letters(&self) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/dead-letters?limit=100&cursor={c}"),
                None => "/v1/dead-letters?limit=100".to_owned(),
            };
            let page = self.call(Method::GET, &path, None).await?;
            all.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(all),
            }
        }
    }
}

/// An HS256 token with the service scope, valid for [`TOKEN_SECONDS`].
fn service_token(secret: &[u8]) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = json!({
        "sub": "session-operator",
        "scope": SERVICE_SCOPE,
        "iat": now,
        "exp": now + TOKEN_SECONDS,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )?)
}

/// Runs the command; what to print.
///
/// # Errors
/// When the SessionService, its Secret or the session service cannot be reached, or the
/// session service refuses.
pub async fn run(client: &Client, options: &Options) -> anyhow::Result<String> {
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let ss = Api::<SessionService>::namespaced(client.clone(), &namespace)
        .get_opt(&options.name)
        .await?
        .with_context(|| {
            format!(
                "there is no SessionService {namespace}/{}; `kubectl get sessionservices -A` lists them",
                options.name
            )
        })?;
    let api = SessionApi::connect(client, &ss, &options.url).await?;
    let answer = match &options.action {
        Action::List => Value::Array(api.dead_letters().await?),
        Action::Show { id } => {
            api.call(Method::GET, &format!("/v1/dead-letters/{id}"), None)
                .await?
        }
        Action::Replay { id: Some(id), .. } => {
            api.call(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None)
                .await?
        }
        Action::Replay { id: None, .. } => {
            api.call(Method::POST, "/v1/dead-letters/replay", None)
                .await?
        }
        Action::Discard { id } => {
            api.call(Method::DELETE, &format!("/v1/dead-letters/{id}"), None)
                .await?;
            json!({"discarded": id})
        }
    };
    if matches!(options.output, Output::Json) {
        return Ok(serde_json::to_string_pretty(&answer)? + "\n");
    }
    let target = format!("{namespace}/{}", options.name);
    Ok(match &options.action {
        Action::List => list_text(&target, &answer)?,
        Action::Show { .. } => serde_json::to_string_pretty(&answer)? + "\n",
        Action::Replay { id: Some(id), .. } => format!(
            "Replayed dead letter {id} of {target}: event {} {} ({} session(s) affected); it is removed.\n",
            answer["event_id"].as_str().unwrap_or("?"),
            answer["result"].as_str().unwrap_or("?"),
            answer["sessions_affected"]
        ),
        Action::Replay { id: None, .. } => replay_all_text(&target, &answer),
        Action::Discard { id } => {
            format!("Discarded dead letter {id} of {target}; its event will not be applied.\n")
        }
    })
}

fn list_text(target: &str, answer: &Value) -> anyhow::Result<String> {
    let letters: Vec<DeadLetter> = serde_json::from_value(answer.clone())?;
    let mut out = String::new();
    if letters.is_empty() {
        let _ = writeln!(out, "No dead letters in {target}.");
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "{} dead letter(s) in {target}, oldest first:",
        letters.len()
    );
    for l in &letters {
        let _ = writeln!(
            out,
            "  {}  {}  {} attempt(s)  set aside {}  event {} {}\n      {}",
            l.id,
            l.reason,
            l.attempts,
            l.dead_lettered_at,
            l.event_type.as_deref().unwrap_or("(no type)"),
            l.event_id.as_deref().unwrap_or("(no id)"),
            l.error
        );
    }
    let _ = writeln!(
        out,
        "Replay one with `replay ID` (or all with `replay --all`) once the cause is fixed; `discard ID` drops one."
    );
    Ok(out)
}

fn replay_all_text(target: &str, answer: &Value) -> String {
    let mut out = format!(
        "Replayed {} dead letter(s) of {target}.\n",
        answer["replayed"]
    );
    let failed = answer["failed"].as_array().cloned().unwrap_or_default();
    if !failed.is_empty() {
        let _ = writeln!(out, "{} still fail and stay:", failed.len());
        for f in failed {
            let _ = writeln!(
                out,
                "  {} ({}): {}",
                f["id"].as_str().unwrap_or("?"),
                f["code"].as_str().unwrap_or("?"),
                f["error"].as_str().unwrap_or("?")
            );
        }
    }
    out
}
