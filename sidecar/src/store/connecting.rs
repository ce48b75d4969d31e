//! Redis, connected in the background, and connected again when its URL changes.
//!
//! A sidecar must start, and answer `/healthz`, while its Redis cannot be reached yet (the DNS
//! record not published, Redis still starting, a wrong CA or password): exiting would
//! crash-loop the application pod it sits in. Until the first connection succeeds every call
//! fails fast as unavailable with the reason (which `/readyz` shows and the log says once per
//! attempt), and attempts repeat with a doubling pause.
//!
//! When the URL changes (new credentials in a mounted Secret, see [`super::redis_url`]) a new
//! backend is connected beside the serving one and swapped in once it is up; calls in flight
//! finish on the old one, whose connections close after them. If the new URL does not work,
//! the old connections keep serving and attempts repeat.

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::redis_url::{self, RedisUrl};
use super::{Backend, BackendError, Commit, CommitOutcome, Probe, ReadOp, Reply};
use crate::metrics::Metrics;

/// The pause after the first failed attempt; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest pause: a Redis that comes up is served within this.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// A backend that is not connected yet, or the connected one.
pub(crate) struct Connecting {
    connected: RwLock<Option<Arc<dyn Backend>>>,
    /// Why it is not connected yet, in words.
    waiting: Mutex<String>,
    metrics: Metrics,
    /// Dropped with this backend: stops its connecting task.
    _stop: oneshot::Sender<()>,
}

impl Connecting {
    /// Connects with `connect` to the current `url`: at once when Redis answers (the usual
    /// start, ready when it listens), otherwise in the background until it succeeds; then
    /// again with every new URL, for as long as this backend is held.
    pub(crate) async fn start<F, Fut>(connect: F, mut url: RedisUrl, metrics: Metrics) -> Arc<Self>
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn Backend>, BackendError>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let this = Arc::new(Self {
            connected: RwLock::new(None),
            waiting: Mutex::new("connecting to Redis".to_owned()),
            metrics,
            _stop: stop,
        });
        let first = url.borrow_and_update().clone();
        let connected = attempt(&connect, &this, first, 1).await;
        tokio::spawn(maintain(
            connect,
            url,
            Arc::downgrade(&this),
            connected,
            stopped,
        ));
        this
    }

    fn backend(&self) -> Result<Arc<dyn Backend>, BackendError> {
        self.connected
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                let reason = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                BackendError::Unavailable(reason.clone())
            })
    }

    fn serving(&self) -> bool {
        self.connected
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

/// One connection attempt with `url`; `true` once connected (and swapped in).
async fn attempt<F, Fut>(connect: &F, target: &Connecting, url: String, attempt: u32) -> bool
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Backend>, BackendError>>,
{
    let replacing = target.serving();
    match connect(url).await {
        Ok(backend) => {
            let old = target
                .connected
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .replace(backend);
            if old.is_some() {
                target.metrics.redis_url_reloads.inc();
                tracing::info!(
                    attempts = attempt,
                    "connected to Redis with the new URL: serving on it; the previous connections close as their calls finish"
                );
            } else if attempt > 1 {
                tracing::info!(attempts = attempt, "connected to Redis: serving");
            }
            true
        }
        Err(error) => {
            let reason = match error {
                BackendError::Unavailable(reason) => reason,
                other => other.to_string(),
            };
            if replacing {
                tracing::warn!(%reason, attempt, "cannot connect to Redis with the new URL; still serving on the connections opened with the previous one, and trying again");
            } else {
                tracing::warn!(%reason, attempt, "cannot reach Redis yet; /healthz answers, /readyz says why, requests get 503 until it does");
                *target.waiting.lock().unwrap_or_else(|e| e.into_inner()) = reason;
            }
            false
        }
    }
}

/// Attempts after the first: with a doubling pause until one succeeds, and again with every
/// new URL, until the backend is dropped.
async fn maintain<F, Fut>(
    connect: F,
    mut url: RedisUrl,
    target: Weak<Connecting>,
    mut connected: bool,
    mut stopped: oneshot::Receiver<()>,
) where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Backend>, BackendError>>,
{
    let mut pause = FIRST_RETRY;
    let mut number = 1u32;
    loop {
        let next = if connected {
            tokio::select! {
                next = redis_url::next(&mut url) => next,
                _ = &mut stopped => return,
            }
        } else {
            tokio::select! {
                () = tokio::time::sleep(pause) => url.borrow_and_update().clone(),
                // A new URL is tried at once.
                next = redis_url::next(&mut url) => next,
                _ = &mut stopped => return,
            }
        };
        if connected {
            (pause, number) = (FIRST_RETRY, 0);
        } else {
            pause = (pause * 2).min(MAX_RETRY);
        }
        number += 1;
        let Some(target) = target.upgrade() else {
            return;
        };
        connected = attempt(&connect, &target, next, number).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryBackend;
    use tokio::sync::watch;

    /// A new backend per URL, recording the URLs connected with in `connected`; URLs
    /// starting with `bad` fail to connect.
    fn connector(
        connected: Arc<Mutex<Vec<String>>>,
    ) -> impl Fn(String) -> std::future::Ready<Result<Arc<dyn Backend>, BackendError>> {
        move |url: String| {
            std::future::ready(if url.starts_with("bad") {
                Err(BackendError::Unavailable(format!("{url} refused")))
            } else {
                connected.lock().unwrap().push(url);
                Ok(Arc::new(MemoryBackend::new()) as Arc<dyn Backend>)
            })
        }
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen");
    }

    #[tokio::test]
    async fn a_new_url_is_swapped_in_and_a_broken_one_keeps_the_old_backend_serving() {
        let backends = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = watch::channel("one".to_owned());
        let metrics = Metrics::new("test");
        let store = Connecting::start(connector(backends.clone()), rx, metrics.clone()).await;
        store.ping().await.unwrap();
        let first = store.backend().unwrap();

        tx.send("bad-two".to_owned()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            Arc::ptr_eq(&store.backend().unwrap(), &first),
            "a URL that does not connect must not replace the serving backend"
        );
        store.ping().await.unwrap();
        assert_eq!(metrics.redis_url_reloads.get(), 0);

        tx.send("three".to_owned()).unwrap();
        eventually("the swap to the new URL", || {
            !Arc::ptr_eq(&store.backend().unwrap(), &first)
        })
        .await;
        assert_eq!(*backends.lock().unwrap(), ["one", "three"]);
        assert_eq!(metrics.redis_url_reloads.get(), 1);
    }

    #[tokio::test]
    async fn before_the_first_connection_calls_fail_with_the_reason_and_a_new_url_is_tried_at_once()
    {
        let backends = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = watch::channel("bad-one".to_owned());
        let store = Connecting::start(connector(backends.clone()), rx, Metrics::new("test")).await;
        let error = store.ping().await.unwrap_err();
        assert!(error.to_string().contains("bad-one refused"), "{error}");
        tx.send("two".to_owned()).unwrap();
        eventually("the connection with the new URL", || store.serving()).await;
        assert_eq!(backends.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn dropping_the_backend_stops_its_task() {
        let (tx, rx) = watch::channel("one".to_owned());
        let store = Connecting::start(connector(Arc::default()), rx, Metrics::new("test")).await;
        drop(store);
        eventually("the task to let go of the URL", || tx.receiver_count() == 0).await;
    }
}
