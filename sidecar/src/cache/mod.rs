//! The local cache of the hot path: ready-to-send `GET /v1/sessions/{id}` responses.
//!
//! - Bounded by bytes (a weigher counts body, key and per-entry overhead), with CLOCK-Pro
//!   eviction from `quick_cache`.
//! - Single-flight: concurrent misses for one id wait for the first one's store read.
//! - Every entry has a hard maximum age and never outlives the session's `expires_at`; a 404 is
//!   remembered for a short negative TTL.
//! - Coherence: local writes and Redis invalidations remove entries. A fill holds a
//!   `quick_cache` placeholder while it reads the store; removing the key (an invalidation)
//!   removes the placeholder, so the stale read can no longer be inserted. Flushes bump an epoch
//!   that fills check too. While the invalidation connection is down nothing new is cached.

pub(crate) mod tracking;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use quick_cache::sync::{Cache, DefaultLifecycle, PlaceholderGuard};
use quick_cache::{DefaultHashBuilder, Weighter};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::sessions::ChangeListener;

/// Bytes counted per entry beyond its key and body: the entry struct, the cache's slot and
/// the allocator's overhead, measured roughly. Keeps the byte bound honest for small bodies.
const ENTRY_OVERHEAD_BYTES: u64 = 160;

/// A cached response.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// 200 with the session JSON, or 404 with the problem JSON.
    pub found: bool,
    pub body: Bytes,
    /// The owner, for the per-user check in server mode (`None` for a 404).
    pub owner: Option<Arc<str>>,
    /// Unix milliseconds on the engine's clock: the entry is served while `now < valid_until_ms`.
    pub valid_until_ms: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct EntryWeighter;

impl Weighter<String, Entry> for EntryWeighter {
    fn weight(&self, key: &String, value: &Entry) -> u64 {
        let owner = value.owner.as_ref().map_or(0, |o| o.len());
        (key.len() + value.body.len() + owner) as u64 + ENTRY_OVERHEAD_BYTES
    }
}

type Inner = Cache<String, Entry, EntryWeighter>;

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub negative_ttl: Duration,
}

/// The cache; share it as `Arc<SessionCache>`.
pub struct SessionCache {
    inner: Inner,
    config: CacheConfig,
    /// Bumped by every flush; a fill that started in an older epoch is not inserted.
    epoch: AtomicU64,
    /// Whether invalidations are flowing, so new fills may be kept.
    tracked: AtomicBool,
    metrics: Metrics,
    /// The engine's clock, so entries expire exactly when the sessions do.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The result of a lookup.
pub(crate) enum Lookup<'a> {
    Hit(Entry),
    /// Read the store, then [`Fill::complete`].
    Miss(Fill<'a>),
}

/// The right to fill one key after a miss.
pub(crate) struct Fill<'a> {
    guard: PlaceholderGuard<
        'a,
        String,
        Entry,
        EntryWeighter,
        DefaultHashBuilder,
        DefaultLifecycle<String, Entry>,
    >,
    epoch: u64,
    cache: &'a SessionCache,
}

/// Typical session response size, for sizing the cache's hash tables.
const TYPICAL_ENTRY_BYTES: u64 = 1024;

impl SessionCache {
    /// A cache that starts untracked (see `SessionCache::set_tracked`).
    #[must_use]
    pub fn new(
        config: CacheConfig,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
        tracked: bool,
    ) -> Self {
        let items = usize::try_from(config.max_bytes / TYPICAL_ENTRY_BYTES)
            .unwrap_or(usize::MAX)
            .max(16);
        let inner = Cache::with_weighter(items, config.max_bytes, EntryWeighter);
        metrics.tracking_connected.set(i64::from(tracked));
        Self {
            inner,
            config,
            epoch: AtomicU64::new(0),
            tracked: AtomicBool::new(tracked),
            metrics,
            clock,
        }
    }

    /// Looks `id` up; waits while another task fills the same id.
    pub(crate) async fn lookup(&self, id: &str) -> Lookup<'_> {
        loop {
            match self.inner.get_value_or_guard_async(id).await {
                Ok(entry) if entry.valid_until_ms > self.clock.now_ms() => {
                    self.metrics.cache_hits.inc();
                    return Lookup::Hit(entry);
                }
                Ok(_) => {
                    self.inner.remove(id);
                }
                Err(guard) => {
                    self.metrics.cache_misses.inc();
                    return Lookup::Miss(Fill {
                        guard,
                        epoch: self.epoch.load(Ordering::Acquire),
                        cache: self,
                    });
                }
            }
        }
    }

    fn later_by(&self, d: Duration) -> i64 {
        self.clock
            .now_ms()
            .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// A valid cached entry for `id` right now, without waiting on a fill in progress (the hot
    /// path's lookup; anything else goes the full way through [`SessionCache::lookup`]).
    pub(crate) fn try_hit(&self, id: &str) -> Option<Entry> {
        let entry = self
            .inner
            .get(id)
            .filter(|e| e.valid_until_ms > self.clock.now_ms())?;
        self.metrics.cache_hits.inc();
        Some(entry)
    }

    /// An entry for a found session: valid for the maximum age, never past `expires_ms`.
    #[must_use]
    /// `owner` is kept only where callers are checked against it (server mode); a sidecar
    /// trusts its pod and saves the allocation.
    pub(crate) fn found(&self, body: Bytes, owner: Option<&str>, expires_ms: i64) -> Entry {
        let valid_until_ms = self.later_by(self.config.max_age).min(expires_ms);
        Entry {
            found: true,
            body,
            owner: owner.map(Arc::from),
            valid_until_ms,
        }
    }

    /// An entry for an id the store does not know: valid for the negative TTL.
    #[must_use]
    pub(crate) fn not_found(&self, body: Bytes) -> Entry {
        Entry {
            found: false,
            body,
            owner: None,
            valid_until_ms: self.later_by(self.config.negative_ttl),
        }
    }

    /// Whether invalidations are flowing (new fills are kept).
    #[must_use]
    pub fn is_tracked(&self) -> bool {
        self.tracked.load(Ordering::Acquire)
    }

    /// Drops the entry of one session (or its in-flight fill).
    pub(crate) fn invalidate(&self, id: &str) {
        self.inner.remove(id);
        self.metrics.cache_invalidations.inc();
    }

    /// Drops everything, including fills in flight.
    pub(crate) fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner.clear();
        self.metrics.cache_flushes.inc();
    }

    /// Marks the invalidation connection up or down. Going up flushes (anything cached before
    /// may have missed invalidations); going down stops caching new fills.
    pub(crate) fn set_tracked(&self, tracked: bool) {
        let was = self.tracked.swap(tracked, Ordering::AcqRel);
        self.metrics.tracking_connected.set(i64::from(tracked));
        if tracked && !was {
            self.flush();
        }
    }

    /// Updates the size gauges (called when metrics are scraped).
    pub(crate) fn observe(&self) {
        self.metrics
            .cache_entries
            .set(i64::try_from(self.inner.len()).unwrap_or(i64::MAX));
        self.metrics
            .cache_bytes
            .set(i64::try_from(self.inner.weight()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
impl SessionCache {
    /// Entries and bytes held.
    fn size(&self) -> (usize, u64) {
        (self.inner.len(), self.inner.weight())
    }
}

impl Fill<'_> {
    /// Caches `entry` unless an invalidation or flush arrived since the lookup, or
    /// invalidations are not flowing. Returns whether it was cached.
    pub(crate) fn complete(self, entry: Entry) -> bool {
        let cache = self.cache;
        let current = cache.epoch.load(Ordering::Acquire) == self.epoch
            && cache.tracked.load(Ordering::Acquire);
        let inserted = current && self.guard.insert(entry).is_ok();
        if !inserted {
            cache.metrics.cache_fills_discarded.inc();
        }
        inserted
    }
}

impl ChangeListener for SessionCache {
    fn changed(&self, session_id: &str) {
        self.invalidate(session_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ManualClock;

    fn cache(tracked: bool) -> (SessionCache, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let config = CacheConfig {
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(1),
        };
        (
            SessionCache::new(config, Metrics::new("t"), clock.clone(), tracked),
            clock,
        )
    }

    async fn miss<'a>(c: &'a SessionCache, id: &str) -> Fill<'a> {
        match c.lookup(id).await {
            Lookup::Miss(fill) => fill,
            Lookup::Hit(_) => panic!("expected a miss for {id}"),
        }
    }

    async fn is_hit(c: &SessionCache, id: &str) -> bool {
        matches!(c.lookup(id).await, Lookup::Hit(_))
    }

    #[tokio::test]
    async fn a_fill_is_served_until_its_max_age_or_the_session_expiry() {
        let (c, clock) = cache(true);
        let entry = c.found(Bytes::from_static(b"{}"), Some("u"), 1_000_000 + 4_000);
        assert!(miss(&c, "a").await.complete(entry));
        assert!(is_hit(&c, "a").await);
        clock.advance_ms(3_999);
        assert!(is_hit(&c, "a").await);
        clock.advance_ms(1);
        assert!(!is_hit(&c, "a").await, "never past expires_at");
        let entry = c.found(Bytes::from_static(b"{}"), Some("u"), i64::MAX);
        assert!(miss(&c, "b").await.complete(entry));
        clock.advance_ms(10_000);
        assert!(!is_hit(&c, "b").await, "never past the maximum age");
        assert!(
            miss(&c, "n")
                .await
                .complete(c.not_found(Bytes::from_static(b"404")))
        );
        assert!(is_hit(&c, "n").await);
        clock.advance_ms(1_000);
        assert!(
            !is_hit(&c, "n").await,
            "404s are remembered for the negative TTL only"
        );
    }

    #[tokio::test]
    async fn an_invalidation_during_a_fill_discards_the_fill() {
        let (c, _) = cache(true);
        let fill = miss(&c, "a").await;
        c.invalidate("a"); // the session changed while the store read was in flight
        assert!(!fill.complete(c.found(Bytes::from_static(b"old"), None, i64::MAX)));
        assert!(!is_hit(&c, "a").await);
    }

    #[tokio::test]
    async fn a_flush_during_a_fill_discards_the_fill_and_untracked_fills_are_not_kept() {
        let (c, _) = cache(true);
        let fill = miss(&c, "a").await;
        c.flush();
        assert!(!fill.complete(c.found(Bytes::from_static(b"old"), None, i64::MAX)));
        c.set_tracked(false);
        assert!(
            !miss(&c, "b")
                .await
                .complete(c.found(Bytes::from_static(b"x"), None, i64::MAX))
        );
        c.set_tracked(true);
        assert!(
            miss(&c, "b")
                .await
                .complete(c.found(Bytes::from_static(b"x"), None, i64::MAX))
        );
    }

    #[tokio::test]
    async fn a_fill_dropped_at_its_await_hands_the_fill_to_a_waiting_lookup() {
        // Single flight survives cancellation: the filling request goes away (its future is
        // dropped while it reads the store); a lookup waiting on that fill becomes the filler
        // instead of waiting for ever, and a dropped waiter leaves nothing behind either.
        let (c, _) = cache(true);
        let fill = miss(&c, "a").await;
        let waiter = async { matches!(c.lookup("a").await, Lookup::Miss(_)) };
        let dropped = async {
            tokio::task::yield_now().await;
            drop(fill);
        };
        let joined = tokio::time::timeout(Duration::from_secs(1), async {
            tokio::join!(waiter, dropped)
        });
        assert!(joined.await.expect("the waiter was released").0);
        let fill = miss(&c, "b").await;
        let gave_up = tokio::time::timeout(Duration::from_millis(10), c.lookup("b")).await;
        assert!(gave_up.is_err(), "a lookup waits while another fills");
        assert!(fill.complete(c.found(Bytes::from_static(b"x"), None, i64::MAX)));
        assert!(is_hit(&c, "b").await);
        assert!(
            matches!(c.lookup("a").await, Lookup::Miss(_)),
            "no placeholder left"
        );
    }

    #[tokio::test]
    async fn tracking_coming_back_flushes_everything() {
        let (c, _) = cache(true);
        assert!(
            miss(&c, "a")
                .await
                .complete(c.found(Bytes::from_static(b"x"), None, i64::MAX))
        );
        c.set_tracked(false);
        assert!(
            is_hit(&c, "a").await,
            "hits keep being served while Redis is unreachable"
        );
        c.set_tracked(true);
        assert!(!is_hit(&c, "a").await);
    }

    #[tokio::test]
    async fn the_byte_bound_holds() {
        let (c, _) = cache(true);
        let body = Bytes::from(vec![b'x'; 1000]);
        for i in 0..5_000 {
            let id = format!("sess_{i}");
            if let Lookup::Miss(fill) = c.lookup(&id).await {
                fill.complete(c.found(body.clone(), None, i64::MAX));
            }
        }
        let (entries, bytes) = c.size();
        assert!(bytes <= 1 << 20, "{bytes}");
        assert!(entries > 500 && entries < 1100, "{entries}");
    }
}
