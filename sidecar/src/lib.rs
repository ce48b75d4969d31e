//! `session-sidecar`: the session API, served from an embedded store or from Redis.
//!
//! One binary, two modes: `sidecar` on 127.0.0.1 beside an application, and
//! `server`, the session service with auth and background work.
//!
//! Public are only [`run`] and [`config`] (the binary), [`contract`] (the Redis key layout and
//! users the operator provisions) and [`testing`] (what the integration tests drive directly).
//! Every other module is private; inside them `pub` marks what those three re-export. The
//! modules:
//!
//! - `config` — flags and environment variables, validated all at once.
//! - `api` — HTTP handlers, problem responses, auth (the shared secret, or an OIDC identity
//!   provider's published keys), the generated OpenAPI document; the hot path: `api::lookup`
//!   (the one read path of `GET /v1/sessions/{id}`: cache, fill from the store, response) and
//!   `api::hot` (cache hits answered in front of the router).
//! - `sessions` — the session engine: every domain rule, once; the guarded commits it builds
//!   (`sessions::plan`; `sessions::plan::unread` for a change of a session this process has
//!   not read, which the store checks and names itself); and its write hints
//!   (`sessions::recent`: what this process wrote or read last, so a write commits in one
//!   call).
//! - `store` — the storage contract, typed reads on it (`store::reads`), its two backends
//!   (Redis, with its scripts' arguments encoded in `store::script_args`, and embedded), the
//!   circuit breaker, the Redis ACL rules of each role (`store::acl`, checked at connect), and
//!   the Redis URL, reread from a file (`store::redis_url`).
//! - `circuit` — the circuit-breaker state machine, shared by Redis and the identity provider.
//! - `cache` — the hot path's local cache and its coherence with Redis (client tracking).
//! - `metrics` — Prometheus metrics.
//! - `events` — outbox relay, expiry sweeper, inbound consumer.
//! - `model` — the session, message and event types and input validation.
//! - `ids`, `clock`, `error` — session ids and shards, time, the error type.

// Keeps the rule above checked: a `pub` item nothing re-exports is a warning.
#![warn(unreachable_pub)]

mod api;
mod cache;
mod circuit;
mod clock;
pub mod config;
mod error;
mod events;
mod ids;
mod metrics;
mod model;
mod sessions;
mod store;
pub mod testing;

/// What the operator provisions Redis for, defined here next to the commands that need it: the
/// key layout, the Redis users with their ACL rules, and how often a mounted Redis URL file is
/// reread (the operator waits that long before it drops a rotated password).
pub mod contract {
    pub use crate::store::Keys;
    pub use crate::store::acl;
    pub use crate::store::redis_url::RELOAD_INTERVAL;
}

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::AppState;
use crate::api::auth::{Auth, IdentityProvider};
use crate::cache::SessionCache;
use crate::cache::tracking::{TrackedConnections, Tracking};
use crate::clock::SystemClock;
use crate::config::{Config, Mode};
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::store::Backend;
use crate::store::breaker::Breaker;
use crate::store::memory::MemoryBackend;

/// Whether a shutdown was asked for (or nobody can ask any more).
#[must_use]
pub(crate) fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Everything a running process is made of, built from the configuration.
pub(crate) struct Service {
    pub state: AppState,
    /// Keeps the cache coherent with Redis (`None` on the embedded store or without a cache).
    pub tracking: Option<Tracking>,
}

/// Opens the configured store (Redis behind a circuit breaker, connected in the background so
/// the process serves its probes while Redis is not reachable yet, and again when the URL file
/// changes; or the embedded store) and builds the engine, the cache and the metrics.
///
/// # Errors
/// When the Redis URL file cannot be read; never for an unreachable Redis (that is retried).
pub(crate) async fn build(config: &Config) -> anyhow::Result<Service> {
    let metrics = Metrics::new(&config.service_name);
    let url = config.redis_url().map_err(anyhow::Error::msg)?;
    let backend: Arc<dyn Backend> = match &url {
        Some(url) => {
            let (cluster, wait, breaker_metrics) =
                (config.redis_cluster, config.replica_wait(), metrics.clone());
            let (role, keys) = (config.redis_role(), store::Keys::new(&config.key_prefix));
            store::connecting::Connecting::start(
                move |url: String| {
                    let (metrics, keys) = (breaker_metrics.clone(), keys.clone());
                    async move {
                        let redis =
                            store::redis::connect_with(&url, cluster, wait, Some((role, &keys)))
                                .await?;
                        Ok(Arc::new(Breaker::new(redis, metrics)) as Arc<dyn Backend>)
                    }
                },
                url.clone(),
                metrics.clone(),
            )
            .await
        }
        None => Arc::new(MemoryBackend::new()),
    };
    let embedded = url.is_none();
    // On the embedded store this process sees every change, so its cache is coherent at once.
    let clock = Arc::new(SystemClock);
    let cache = config.cache().map(|c| {
        Arc::new(SessionCache::new(
            c,
            metrics.clone(),
            clock.clone(),
            embedded,
        ))
    });
    let mut sessions = Sessions::new(backend, &config.key_prefix, clock, config.policy());
    if let Some(cache) = &cache {
        sessions = sessions.with_listener(cache.clone());
    }
    let tracking = match (url, &cache) {
        (Some(url), Some(cache)) => {
            let reads = TrackedConnections::new(cache.clone(), metrics.clone());
            sessions = sessions.with_tracked_reads(reads.clone());
            Some(Tracking {
                url,
                cluster: config.redis_cluster,
                keys: sessions.keys().clone(),
                shard_count: config.shard_count,
                hints: sessions.write_hints(),
                reads,
            })
        }
        _ => None,
    };
    let auth = match config.mode {
        Mode::Server => {
            let idp = config.identity_provider().map(|idp| {
                let idp = IdentityProvider::new(idp, metrics.clone());
                idp.keep_fresh();
                idp
            });
            let secrets: Vec<&[u8]> = [&config.jwt_secret, &config.jwt_extra_secret]
                .into_iter()
                .flatten()
                .map(|s| s.as_bytes())
                .collect();
            Auth::server(&secrets, idp, Some(metrics.clone()))
        }
        Mode::Sidecar => Auth::TrustPod,
    };
    let state = AppState {
        sessions,
        auth,
        max_body_bytes: config.max_body_bytes,
        cache,
        metrics,
    };
    Ok(Service { state, tracking })
}

/// Serves until `shutdown` turns true, then drains in-flight requests and stops the
/// background work.
///
/// # Errors
/// When the store cannot be opened or the address cannot be bound.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let Service { state, tracking } = build(&config).await?;
    if config.uses_redis() {
        tracing::info!(cluster = config.redis_cluster, "using Redis");
    } else {
        tracing::warn!(
            "no Redis configured: using the embedded in-process store (data lives and dies with this process)"
        );
    }
    let mut tasks = if config.runs_background_work() {
        events::spawn(&state.sessions, &state.metrics, &shutdown)
    } else {
        tokio::task::JoinSet::new()
    };
    if let (Some(tracking), Some(cache)) = (tracking, state.cache.clone()) {
        tasks.spawn(tracking.run(cache, shutdown.clone()));
    }
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, mode = ?config.mode, "serving");
    let (app, admin) = api::app_and_admin(state);
    if let Some(address) = config.admin_listen {
        let admin_listener = TcpListener::bind(address).await?;
        tracing::info!(admin_listen = %admin_listener.local_addr()?, "serving probes and metrics");
        let admin = api::server::tower_app(admin);
        tasks.spawn(api::server::serve(admin_listener, admin, shutdown.clone()));
    }
    api::server::serve(listener, app, shutdown.clone()).await;
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}
