//! Probes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::Shared;

/// Probe answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    pub status: &'static str,
    /// `embedded` or `redis`.
    pub store: &'static str,
    /// Why the store does not answer (readiness only): refused, DNS, TLS verification,
    /// credentials, a timeout, or the circuit breaker's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, description = "Alive", body = Health)))]
pub(crate) async fn healthz(State(state): State<Shared>) -> Json<Health> {
    Json(Health {
        status: "ok",
        store: state.sessions.backend().kind(),
        reason: None,
    })
}

/// Readiness: the store answers (always, for the embedded store).
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, description = "Ready", body = Health),
    (status = 503, description = "The store does not answer", body = Health),
))]
pub(crate) async fn readyz(State(state): State<Shared>) -> (StatusCode, Json<Health>) {
    let store = state.sessions.backend().kind();
    match state.sessions.backend().ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                store,
                reason: None,
            }),
        ),
        Err(error) => {
            tracing::warn!(%error, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable",
                    store,
                    reason: Some(error.to_string()),
                }),
            )
        }
    }
}

/// Prometheus text exposition of every metric.
pub(crate) async fn metrics(State(state): State<Shared>) -> impl axum::response::IntoResponse {
    if let Some(cache) = &state.cache {
        cache.observe();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
