//! A fake Kubernetes API server, the one thing these tests mock: an in-memory object store
//! behind kube's `Client`, speaking server-side apply the way the operator uses it. It counts
//! which writes changed something, can fail chosen objects, and can leave API groups out the
//! way a cluster without prometheus-operator (or without autoscaling/v2) does.

#![allow(dead_code)] // each test file uses part of the fake

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// A reconcile context over `client` (a fake's), as `session-operator run` builds it, for a
/// current API server.
pub fn reconcile_context(client: Client) -> Arc<session_operator::testing::reconcile::Context> {
    reconcile_context_for(
        client,
        session_operator::testing::capabilities::Capabilities::latest(),
    )
}

/// A reconcile context over `client` that expects mounted Secrets to be current after
/// `settle` (the test plays the kubelet).
pub fn reconcile_context_settling(
    client: Client,
    settle: std::time::Duration,
) -> Arc<session_operator::testing::reconcile::Context> {
    let ctx = reconcile_context(client);
    let ctx = Arc::try_unwrap(ctx).unwrap_or_else(|_| unreachable!("just made"));
    Arc::new(ctx.with_secret_volume_settle(settle))
}

/// A reconcile context for an API server with the capabilities `api`.
pub fn reconcile_context_for(
    client: Client,
    api: session_operator::testing::capabilities::Capabilities,
) -> Arc<session_operator::testing::reconcile::Context> {
    use kube::runtime::events::{Recorder, Reporter};
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "session-operator".to_owned(),
            instance: None,
        },
    );
    Arc::new(session_operator::testing::reconcile::Context::new(
        client,
        recorder,
        session_operator::testing::telemetry::Metrics::new().unwrap(),
        "session-system".to_owned(),
        Arc::new(std::sync::RwLock::new(api)),
    ))
}

/// One write request the fake saw.
#[derive(Clone, Debug)]
pub struct Write {
    pub method: String,
    pub path: String,
    /// Whether the stored object differs afterwards.
    pub changed: bool,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    missing_groups: Vec<String>,
    failing_paths: Vec<String>,
    writes: Vec<Write>,
    events: Vec<Value>,
    resource_version: u64,
}

#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

impl FakeApiServer {
    /// A client talking to a new fake.
    pub fn start() -> (Client, Self) {
        let fake = Self::default();
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = server.handle(request).await;
                respond.send_response(response);
            }
        });
        (Client::new(service, "default"), fake)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Stores an object as if it existed already.
    pub fn insert(&self, path: &str, object: Value) {
        self.state().objects.insert(path.to_owned(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state().objects.get(path).cloned()
    }

    /// Sets an object's status, as a controller of that kind would.
    pub fn set_status(&self, path: &str, status: Value) {
        let mut state = self.state();
        let object = state
            .objects
            .get_mut(path)
            .unwrap_or_else(|| panic!("no {path}"));
        object["status"] = status;
    }

    /// Serves no resource of this API group (`404 the server could not find the requested
    /// resource`).
    pub fn remove_group(&self, group: &str) {
        self.state().missing_groups.push(group.to_owned());
    }

    /// Answers 500 to writes of this path.
    pub fn fail_writes_to(&self, path: &str) {
        self.state().failing_paths.push(path.to_owned());
    }

    pub fn heal(&self) {
        self.state().failing_paths.clear();
    }

    /// Takes the writes and Events seen since the last call.
    pub fn take_writes(&self) -> (Vec<Write>, Vec<Value>) {
        let mut state = self.state();
        (
            std::mem::take(&mut state.writes),
            std::mem::take(&mut state.events),
        )
    }

    pub fn paths(&self) -> Vec<String> {
        self.state().objects.keys().cloned().collect()
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let selector = request.uri().query().and_then(label_selector);
        let json_patch = request
            .headers()
            .get("content-type")
            .is_some_and(|t| t == "application/json-patch+json");
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (code, value) = if json_patch {
            self.json_patch(&path, body)
        } else if method == Method::POST && !path.ends_with("/events") {
            self.create(&path, body)
        } else if method == Method::PUT {
            self.replace(&path, body)
        } else {
            self.answer(&method, &path, body)
        };
        let value = match selector {
            Some(wanted) if value["items"].is_array() => only_labelled(value, &wanted),
            _ => value,
        };
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&value).unwrap()))
            .unwrap()
    }

    fn record(state: &mut State, method: &str, path: &str, object: &mut Value) {
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        state.writes.push(Write {
            method: method.to_owned(),
            path: path.to_owned(),
            changed: true,
        });
    }

    /// POST to a collection: the object's path is the collection plus its name.
    fn create(&self, collection: &str, mut object: Value) -> (StatusCode, Value) {
        let mut state = self.state();
        let path = format!(
            "{collection}/{}",
            object["metadata"]["name"].as_str().unwrap_or_default()
        );
        if state.objects.contains_key(&path) {
            return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
        }
        Self::record(&mut state, "POST", &path, &mut object);
        state.objects.insert(path, object.clone());
        (StatusCode::CREATED, object)
    }

    /// PUT with optimistic concurrency on `metadata.resourceVersion`.
    fn replace(&self, path: &str, mut object: Value) -> (StatusCode, Value) {
        let mut state = self.state();
        let Some(current) = state.objects.get(path) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "not found");
        };
        if current["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified",
            );
        }
        Self::record(&mut state, "PUT", path, &mut object);
        state.objects.insert(path.to_owned(), object.clone());
        (StatusCode::OK, object)
    }

    fn json_patch(&self, path: &str, patch: Value) -> (StatusCode, Value) {
        let mut state = self.state();
        let Some(mut object) = state.objects.get(path).cloned() else {
            return status(StatusCode::NOT_FOUND, "NotFound", "not found");
        };
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        if let Err(error) = json_patch::patch(&mut object, &patch) {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                &error.to_string(),
            );
        }
        Self::record(&mut state, "PATCH", path, &mut object);
        state.objects.insert(path.to_owned(), object.clone());
        (StatusCode::OK, object)
    }

    fn answer(&self, method: &Method, path: &str, body: Value) -> (StatusCode, Value) {
        let mut state = self.state();
        let group = path
            .strip_prefix("/apis/")
            .and_then(|p| p.split('/').next())
            .unwrap_or("");
        if state.missing_groups.iter().any(|g| g == group) {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        if method != Method::GET && state.failing_paths.iter().any(|p| p == path) {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "etcdserver: request timed out",
            );
        }
        if path.ends_with("/events") && method == Method::POST {
            state.events.push(body.clone());
            return (StatusCode::CREATED, body);
        }
        match *method {
            Method::GET => match state.objects.get(path) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
            },
            Method::PATCH => {
                let (target, subresource) = match path.strip_suffix("/status") {
                    Some(base) => (base.to_owned(), true),
                    None => (path.to_owned(), false),
                };
                let existing = state.objects.get(&target).cloned();
                let mut next = if subresource {
                    let Some(mut object) = existing.clone() else {
                        return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                    };
                    object["status"] = body["status"].clone();
                    object
                } else {
                    // One field manager owns every field it applies: the applied
                    // configuration is the object, plus what the server keeps.
                    let mut object = body;
                    if let Some(old) = &existing {
                        for kept in ["uid", "creationTimestamp", "resourceVersion"] {
                            if let Some(v) = old["metadata"].get(kept) {
                                object["metadata"][kept] = v.clone();
                            }
                        }
                        if let Some(s) = old.get("status") {
                            object["status"] = s.clone();
                        }
                    }
                    object
                };
                let changed = existing.as_ref() != Some(&next);
                if changed {
                    state.resource_version += 1;
                    next["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                }
                state.writes.push(Write {
                    method: method.to_string(),
                    path: path.to_owned(),
                    changed,
                });
                state.objects.insert(target, next.clone());
                (StatusCode::OK, next)
            }
            Method::DELETE => {
                let removed = state.objects.remove(path);
                state.writes.push(Write {
                    method: method.to_string(),
                    path: path.to_owned(),
                    changed: removed.is_some(),
                });
                match removed {
                    Some(object) => (StatusCode::OK, object),
                    None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
                }
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not supported by the fake",
            ),
        }
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

/// The `k=v` pairs of a list request's `labelSelector` (equality selectors only).
fn label_selector(query: &str) -> Option<Vec<(String, String)>> {
    let encoded = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("labelSelector="))?;
    let decoded = encoded
        .replace("%3D", "=")
        .replace("%2C", ",")
        .replace("%2F", "/");
    Some(
        decoded
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// A list with only the items carrying every wanted label, as the API server filters.
fn only_labelled(mut list: Value, wanted: &[(String, String)]) -> Value {
    if let Some(items) = list["items"].as_array_mut() {
        items.retain(|item| {
            wanted
                .iter()
                .all(|(k, v)| item["metadata"]["labels"][k].as_str() == Some(v.as_str()))
        });
    }
    list
}
