//! `session-sidecar`: the session API, served from an embedded store or from Redis.
//!
//! One binary, two modes (DESIGN section 2): `sidecar` on 127.0.0.1 beside an application, and
//! `server`, the session service with auth and background work. The crate is laid out like the
//! design:
//!
//! - [`config`] — flags and environment variables, validated all at once.
//! - [`api`] — HTTP handlers, problem responses, auth, the generated OpenAPI document.
//! - [`sessions`] — the session engine: every domain rule (DESIGN section 4), once.
//! - [`store`] — the storage contract and its two backends, Redis and embedded.
//! - [`events`] — outbox relay, expiry sweeper, inbound consumer.
//! - [`model`] — the session, message and event types and input validation.
//! - [`ids`], [`clock`], [`error`] — session ids and shards, time, the error type.

pub mod api;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod ids;
pub mod model;
pub mod sessions;
pub mod store;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::AppState;
use crate::api::auth::Auth;
use crate::clock::SystemClock;
use crate::config::{Config, Mode};
use crate::sessions::Sessions;
use crate::store::Backend;
use crate::store::memory::MemoryBackend;

/// Opens the configured store: Redis when a URL is given, else the embedded one.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn open_backend(config: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    match &config.redis_url {
        Some(url) => Ok(Arc::from(
            store::redis::connect(url, config.redis_cluster).await?,
        )),
        None => Ok(Arc::new(MemoryBackend::new())),
    }
}

/// Builds the application state for `config` over `backend`.
#[must_use]
pub fn state(config: &Config, backend: Arc<dyn Backend>) -> AppState {
    let sessions = Sessions::new(
        backend,
        &config.key_prefix,
        Arc::new(SystemClock),
        config.policy(),
    );
    let auth = match (&config.mode, &config.jwt_secret) {
        (Mode::Server, Some(secret)) => Auth::hs256(secret.as_bytes()),
        _ => Auth::TrustPod,
    };
    AppState {
        sessions,
        auth,
        max_body_bytes: config.max_body_bytes,
    }
}

/// Serves until `shutdown` turns true, then drains in-flight requests and stops the
/// background work.
///
/// # Errors
/// When the store cannot be opened or the address cannot be bound.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let backend = open_backend(&config).await?;
    match &config.redis_url {
        None => tracing::warn!(
            "no Redis configured: using the embedded in-process store (data lives and dies with this process)"
        ),
        Some(_) => tracing::info!(cluster = config.redis_cluster, "using Redis"),
    }
    let state = state(&config, backend);
    let mut background = config
        .runs_background_work()
        .then(|| events::spawn(&state.sessions, &shutdown));
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, mode = ?config.mode, "serving");
    let mut stop = shutdown.clone();
    axum::serve(listener, api::app(state))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
    if let Some(set) = background.as_mut() {
        while set.join_next().await.is_some() {}
    }
    tracing::info!("stopped");
    Ok(())
}
