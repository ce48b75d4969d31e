//! The HTTP API (DESIGN section 5): routes, the OpenAPI 3.1 document generated from the same
//! handlers (so the two cannot drift apart), probes, limits and correlation ids.

pub mod asyncapi;
pub mod auth;
mod events;
pub mod extract;
mod health;
mod messages;
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

/// Shared state of every handler: cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub sessions: Sessions,
    pub auth: Auth,
    pub max_body_bytes: usize,
    /// The hot path's local cache (`None` when turned off).
    pub cache: Option<Arc<SessionCache>>,
    pub metrics: Metrics,
}

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
        (name = "probes", description = "Health"),
    ),
    components(schemas(crate::error::Problem))
)]
struct ApiDoc;

/// The router and the OpenAPI document, built from the same route table.
pub fn router_and_doc(state: AppState) -> (Router, OpenApiDoc) {
    let max_body = state.max_body_bytes;
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
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .route("/metrics", axum::routing::get(health::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.metrics.clone(),
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
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(correlation));
    (router, doc)
}

/// The application router.
pub fn app(state: AppState) -> Router {
    router_and_doc(state).0
}

/// Counts and times every routed request by its route template, method and status code.
async fn record_metrics(
    State(metrics): State<Metrics>,
    route: MatchedPath,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let response = next.run(req).await;
    let labels = [route.as_str(), method.as_str()];
    metrics
        .request_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .inc();
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

/// Takes `X-Correlation-ID` (or the trace id of a W3C `traceparent`, or a new UUID), makes it
/// available to handlers and events, and echoes it on the response.
async fn correlation(mut req: Request, next: Next) -> Response {
    let id = correlation_id(req.headers()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let mut response = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-correlation-id", v);
    }
    response
}
