//! Redis, connected in the background. A sidecar must start, and answer `/healthz`, while its
//! Redis cannot be reached yet (the DNS record not published, Redis still starting, a wrong CA
//! or password): exiting would crash-loop the application pod it sits in. Until the first
//! connection succeeds every call fails fast as unavailable with the reason (which `/readyz`
//! shows and the log says once per attempt), and attempts repeat with a doubling pause.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::{Backend, BackendError, Commit, CommitOutcome, Probe, ReadOp, Reply};

/// The pause after the first failed attempt; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest pause: a Redis that comes up is served within this.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// A backend that is not connected yet, or the connected one.
pub struct Connecting {
    connected: OnceLock<Arc<dyn Backend>>,
    /// Why it is not connected yet, in words.
    waiting: Mutex<String>,
}

impl Connecting {
    /// Connects with `connect`: at once when Redis answers (the usual start, ready when it
    /// listens), otherwise in the background until it succeeds (or this backend is dropped).
    pub async fn start<F, Fut>(connect: F) -> Arc<Self>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn Backend>, BackendError>> + Send + 'static,
    {
        let this = Arc::new(Self {
            connected: OnceLock::new(),
            waiting: Mutex::new("connecting to Redis".to_owned()),
        });
        if !attempt(&connect, &this, 1).await {
            tokio::spawn(keep_trying(connect, Arc::downgrade(&this)));
        }
        this
    }

    fn backend(&self) -> Result<&Arc<dyn Backend>, BackendError> {
        self.connected.get().ok_or_else(|| {
            let reason = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            BackendError::Unavailable(reason.clone())
        })
    }
}

/// One connection attempt; `true` once connected.
async fn attempt<F, Fut>(connect: &F, target: &Connecting, attempt: u32) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Backend>, BackendError>>,
{
    match connect().await {
        Ok(backend) => {
            if attempt > 1 {
                tracing::info!(attempts = attempt, "connected to Redis: serving");
            }
            let _ = target.connected.set(backend);
            true
        }
        Err(error) => {
            let reason = match error {
                BackendError::Unavailable(reason) => reason,
                other => other.to_string(),
            };
            tracing::warn!(%reason, attempt, "cannot reach Redis yet; /healthz answers, /readyz says why, requests get 503 until it does");
            *target.waiting.lock().unwrap_or_else(|e| e.into_inner()) = reason;
            false
        }
    }
}

/// Attempts after the first, with a doubling pause, until one succeeds or nobody holds the
/// backend any more.
async fn keep_trying<F, Fut>(connect: F, target: Weak<Connecting>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Backend>, BackendError>>,
{
    let mut pause = FIRST_RETRY;
    for number in 2u32.. {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
        let Some(target) = target.upgrade() else {
            return;
        };
        if attempt(&connect, &target, number).await {
            return;
        }
    }
}

#[async_trait]
impl Backend for Connecting {
    async fn read(&self, ops: Vec<ReadOp>) -> Result<Vec<Reply>, BackendError> {
        self.backend()?.read(ops).await
    }
    async fn probe(&self, probes: Vec<Probe>) -> Result<Vec<bool>, BackendError> {
        self.backend()?.probe(probes).await
    }
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, BackendError> {
        self.backend()?.commit(commit).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.backend()?.ping().await
    }
    fn kind(&self) -> &'static str {
        "redis"
    }
}
