//! The HTTP API (v1, JSON): routes, the OpenAPI 3.1 document generated from the same
//! handlers (so the two cannot drift apart), probes, limits and correlation ids.

pub(crate) mod asyncapi;
pub(crate) mod auth;
mod dead_letters;
mod events;
pub(crate) mod extract;
mod health;
pub(crate) mod hot;
mod lookup;
mod messages;
pub(crate) mod server;
mod sessions;
mod users;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, State};

use crate::cache::SessionCache;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use auth::Auth;
use extract::CorrelationId;

/// What every handler shares. Handlers see it as `Shared`, an `Arc`, so that the per-request
/// clones axum makes of the state cost one atomic increment (the profile showed cloning the
/// struct itself costing more than routing).
#[derive(Debug)]
pub struct AppState {
    pub sessions: Sessions,
    pub auth: Auth,
    pub max_body_bytes: usize,
    /// The hot path's local cache (`None` when turned off).
    pub cache: Option<Arc<SessionCache>>,
    pub metrics: Metrics,
}

/// The state handlers receive.
pub(crate) type Shared = Arc<AppState>;

#[derive(OpenApi)]
#[openapi(
    info(title = "Session API", description = "Sessions for microservices: lifecycle, listing, current session, messages, memory and inbound events."),
    tags(
        (name = "sessions", description = "Lifecycle of one session"),
        (name = "listing", description = "Sessions by user and org"),
        (name = "current", description = "The user's current session"),
        (name = "messages", description = "Messages and summary"),
        (name = "memory", description = "Per-session memory"),
        (name = "events", description = "Inbound events"),
        (name = "dead-letters", description = "Inbound events set aside by the consumer: list, inspect, replay, discard"),
        (name = "probes", description = "Health"),
    ),
    components(schemas(crate::error::Problem))
)]
struct ApiDoc;

/// The router and the OpenAPI document, built from the same route table.
pub fn router_and_doc(state: AppState) -> (Router, OpenApiDoc) {
    routes(Arc::new(state))
}

fn routes(state: Shared) -> (Router, OpenApiDoc) {
    let max_body = state.max_body_bytes;
    let metrics = state.metrics.clone();
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(sessions::create))
        .routes(routes!(sessions::get, sessions::update, sessions::delete))
        .routes(routes!(sessions::heartbeat))
        .routes(routes!(sessions::end))
        .routes(routes!(users::list_user))
        .routes(routes!(users::list_org))
        .routes(routes!(users::current, users::switch_current))
        .routes(routes!(messages::append, messages::list))
        .routes(routes!(messages::summary))
        .routes(routes!(
            messages::memory,
            messages::replace_memory,
            messages::merge_memory
        ))
        .routes(routes!(events::inbound))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::get, dead_letters::discard))
        .routes(routes!(dead_letters::replay))
        .routes(routes!(dead_letters::replay_all))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .route("/metrics", axum::routing::get(health::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .with_state(state)
        .split_for_parts();
    let served = doc.clone();
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { Json(served) }),
        )
        .route(
            "/asyncapi.json",
            axum::routing::get(|| async { Json(asyncapi::document()) }),
        )
        .fallback(|| async { Error::RouteNotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body));
    let router = server::limited(router, &metrics).layer(middleware::from_fn(correlation));
    (router, doc)
}

/// The application: the router, with the hot path in front.
pub type App = hot::HotPath<Router>;

/// The application for `state`.
pub fn app(state: AppState) -> App {
    app_and_admin(state).0
}

/// The application, and the admin router on the same state: only `/healthz`, `/readyz` and
/// `/metrics`, for kubelet probes and Prometheus, which cannot reach a sidecar's loopback
/// address.
pub(crate) fn app_and_admin(state: AppState) -> (App, Router) {
    let state: Shared = Arc::new(state);
    let (router, _) = routes(state.clone());
    let admin = Router::new()
        .route("/healthz", axum::routing::get(health::healthz))
        .route("/readyz", axum::routing::get(health::readyz))
        .route("/metrics", axum::routing::get(health::metrics))
        .with_state(state.clone());
    (hot::HotPath::new(router, state), admin)
}

/// Counts and times every routed request by its route template, method and status code.
async fn record_metrics(
    State(state): State<Shared>,
    route: MatchedPath,
    req: Request,
    next: Next,
) -> Response {
    let metrics = &state.metrics;
    let started = Instant::now();
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    metrics.observe_request(
        route.as_str(),
        method.as_str(),
        status.as_str(),
        started.elapsed(),
    );
    response
}

/// Longest accepted correlation id.
const MAX_CORRELATION_ID: usize = 128;

fn correlation_id(headers: &axum::http::HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("x-correlation-id")
        .filter(|c| {
            !c.is_empty()
                && c.len() <= MAX_CORRELATION_ID
                && c.chars().all(|ch| ch.is_ascii_graphic())
        })
        .map(str::to_owned)
        .or_else(|| {
            header("traceparent")
                .and_then(|t| t.split('-').nth(1))
                .filter(|id| id.len() == 32)
                .map(str::to_owned)
        })
}

/// Takes `X-Correlation-ID` (or the trace id of a W3C `traceparent`), makes it available to
/// handlers and events, and echoes it on the response. Requests that change state and bring
/// none get a new one (their events carry it); lookups do not, as they record nothing, and the
/// hot path stays free of the work.
async fn correlation(mut req: Request, next: Next) -> Response {
    let reading =
        req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD;
    // A UUIDv4 from the thread-local CSPRNG: no system call.
    let new_id = || {
        uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .to_string()
    };
    let Some(id) = correlation_id(req.headers()).or_else(|| (!reading).then(new_id)) else {
        return next.run(req).await;
    };
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let mut response = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-correlation-id", v);
    }
    response
}
