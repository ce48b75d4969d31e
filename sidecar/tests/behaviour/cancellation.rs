//! Every future may be dropped at any `.await` (a client disconnects, a request times out, a
//! task is aborted at shutdown). Each operation is run against a store that stops answering
//! after its first `n` calls — before the call is made or after it took effect — and dropped
//! there, for every `n` the operation reaches; afterwards nothing is left behind: the user's
//! invariants hold, no lease blocks the next replica, and every event is still delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use session_sidecar::testing::{
    Backend, BackendError, Commit, CommitOutcome, Probe, ReadOp, Reply,
};
use session_sidecar::testing::{consume_once, relay_once};
use tokio::sync::watch;

use crate::both_backends;
use crate::concurrency::{CAP, check_invariants};
use crate::harness::{Kind, TestApp};

both_backends!(
    a_rename_between_the_reads_of_a_delete_leaves_no_title_behind,
    a_message_between_the_reads_and_the_commit_of_an_eviction_is_in_its_event,
    an_end_between_the_reads_and_the_commit_of_an_eviction_saves_the_session_it_would_end,
    writes_dropped_at_any_await_break_no_invariant,
    a_relay_dropped_at_any_await_leaves_no_lease_and_loses_no_event,
    a_consumer_dropped_at_any_await_applies_every_event_once,
);

/// Where the store stops answering.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// The call is never made.
    Before,
    /// The call takes effect; its answer never arrives.
    After,
}

/// The store, answering the first `allowed` calls and holding every later one until
/// [`Stalling::recover`]: the operation's future is dropped at the call it waits on, and
/// whatever comes after the drop (a lease given back in the background) goes through once the
/// store answers again.
struct Stalling {
    inner: Arc<dyn Backend>,
    allowed: AtomicUsize,
    stall: Stall,
    recovered: watch::Sender<bool>,
}

impl Stalling {
    fn new(inner: Arc<dyn Backend>, allowed: usize, stall: Stall) -> Self {
        Self {
            inner,
            allowed: AtomicUsize::new(allowed),
            stall,
            recovered: watch::Sender::new(false),
        }
    }

    /// Whether this call is answered at once (and counts it).
    fn answers(&self) -> bool {
        self.allowed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn recover(&self) {
        self.allowed.store(usize::MAX, Ordering::SeqCst);
        self.recovered.send_replace(true);
    }

    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        if self.answers() {
            return call.await;
        }
        let recovered = async {
            self.recovered
                .subscribe()
                .wait_for(|r| *r)
                .await
                .map(|_| ())
        };
        match self.stall {
            Stall::Before => {
                let _ = recovered.await;
                call.await
            }
            Stall::After => {
                let result = call.await;
                let _ = recovered.await;
                result
            }
        }
    }
}

#[async_trait]
impl Backend for Stalling {
    async fn read(&self, ops: Vec<ReadOp>) -> Result<Vec<Reply>, BackendError> {
        self.call(self.inner.read(ops)).await
    }
    async fn probe(&self, probes: Vec<Probe>) -> Result<Vec<bool>, BackendError> {
        self.call(self.inner.probe(probes)).await
    }
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, BackendError> {
        self.call(self.inner.commit(commit)).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.call(self.inner.ping()).await
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

async fn a_rename_between_the_reads_of_a_delete_leaves_no_title_behind(kind: Kind) {
    // Proves: a delete that read the session, then waits while the session is renamed, removes
    // the new title's index entry (it used to look the index up by the title it read first and
    // left the new one pointing at the deleted session).
    let app = TestApp::new(kind).await;
    // The deleting sidecar writes the session, another one (current) and the session again
    // (calls 1 to 3), so its delete starts from its hints; another sidecar makes a third
    // session current, so that commit is refused (call 4) and the delete reads: its first read
    // is answered, its second waits until the session is renamed.
    let store = Arc::new(Stalling::new(app.backend.clone(), 5, Stall::Before));
    let stalling = app.through(|_| store.clone()).await;
    let id = stalling.create_id("u1", json!({"title": "first"})).await;
    stalling.create_id("u1", json!({})).await;
    let path = format!("/v1/sessions/{id}");
    let patched = stalling.patch(&path, json!({"metadata": {"k": 1}})).await;
    assert_eq!(patched.status, axum::http::StatusCode::OK);
    app.create_id("u1", json!({})).await;
    let rename_meanwhile = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let renamed = app.patch(&path, json!({"title": "second"})).await;
        assert_eq!(renamed.status, axum::http::StatusCode::OK);
        store.recover();
    };
    let (deleted, ()) = tokio::join!(stalling.delete(&path), rename_meanwhile);
    assert_eq!(deleted.status, axum::http::StatusCode::NO_CONTENT);
    let shard = session_sidecar::testing::parse_session_id(&id, app.sessions.policy().shard_count)
        .expect("a session id of this deployment");
    let titles = app.sessions.keys().titles(shard, "u1");
    let left = app
        .backend
        .read(vec![ReadOp::HGetAll(titles)])
        .await
        .unwrap();
    assert_eq!(left, [Reply::Pairs(Vec::new())], "no title entry is left");
}

async fn a_message_between_the_reads_and_the_commit_of_an_eviction_is_in_its_event(kind: Kind) {
    // Proves: with a cap of one active session (end the oldest), another process, which never
    // read the oldest session, appends a message to it (one call: the store counts it where it
    // is) while a create that will end it waits: in one call (the store picks the session when
    // the commit runs), and decided on a snapshot (the create read the session first: its
    // commit must not end the session as it read it, so it is refused and decided again).
    // Either way the `session.ended.v1` event and the session both count the message.
    for path in [Eviction::OneCall, Eviction::OnSnapshot] {
        let app = TestApp::with(kind, |p| {
            p.max_active_per_user = Some(1);
            p.cap_policy = session_sidecar::testing::CapPolicy::EndOldest;
        })
        .await;
        let (creator, first) = path.creator(&app).await;
        let oldest = app.create_id("u1", json!({})).await;
        let other = app.through(|store| store).await;
        create_around(creator, path, async {
            let hello = json!({"role": "user", "content": "hello"});
            let res = other
                .post(&format!("/v1/sessions/{oldest}/messages"), hello)
                .await;
            assert_eq!(res.status, axum::http::StatusCode::CREATED, "{}", res.body);
        })
        .await;
        let mut ended = app.outbox_of("session.ended.v1").await;
        let ids: Vec<_> = ended
            .iter()
            .map(|e| e.payload["session_id"].clone())
            .collect();
        let expected: Vec<_> = first.iter().chain([&oldest]).map(|id| json!(id)).collect();
        assert_eq!(
            ids, expected,
            "{path:?}: the creator's first session, then the oldest"
        );
        let ended = ended.pop().unwrap();
        assert_eq!(ended.payload["message_count"], 1, "{}", ended.payload);
        let session = app.get(&format!("/v1/sessions/{oldest}")).await.body;
        assert_eq!(
            (
                session["status"].as_str(),
                session["message_count"].as_u64()
            ),
            (Some("ended"), Some(1))
        );
        assert_eq!(session["version"], ended.payload["version"]);
    }
}

/// How a create at the active cap (end-oldest) decides which session to end.
#[derive(Debug, Clone, Copy)]
enum Eviction {
    /// In its one call: the store picks the oldest active session.
    OneCall,
    /// On a snapshot read first: the creating sidecar made the user's first session itself, so
    /// it starts from its hints, which the sessions made elsewhere since (ending that first
    /// one at the cap) left stale: the one-call try is refused and the create decided on a
    /// snapshot.
    OnSnapshot,
}

/// The sidecar whose create waits before its commit, and the store that holds it back.
struct Creator {
    store: Arc<Stalling>,
    app: TestApp,
}

impl Eviction {
    /// The creating sidecar on `app`'s store, before the user's other sessions are made; on
    /// the snapshot path with the session it made first (ended by the cap later), whose id
    /// comes back.
    async fn creator(self, app: &TestApp) -> (Creator, Option<String>) {
        // Calls answered before the create's commit waits: on the snapshot path the first
        // create, the refused try and the snapshot.
        let answered = match self {
            Eviction::OneCall => 0,
            Eviction::OnSnapshot => 3,
        };
        let store = Arc::new(Stalling::new(app.backend.clone(), answered, Stall::Before));
        let creator = Creator {
            app: app.through(|_| store.clone()).await,
            store,
        };
        let first = match self {
            Eviction::OneCall => None,
            Eviction::OnSnapshot => Some(creator.app.create_id("u1", json!({})).await),
        };
        app.clock.advance_ms(1); // the oldest session by creation time, not by a tie of ids
        (creator, first)
    }
}

/// A create for `u1` by `creator`, whose commit waits until `meanwhile` (another process's
/// write) is done; it must succeed.
async fn create_around(
    creator: Creator,
    path: Eviction,
    meanwhile: impl std::future::Future<Output = ()>,
) {
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        meanwhile.await;
        creator.store.recover();
    };
    let body = json!({"user_id": "u1"});
    let (created, ()) = tokio::join!(creator.app.post("/v1/sessions", body), meanwhile);
    assert_eq!(
        created.status,
        axum::http::StatusCode::CREATED,
        "{path:?}: {}",
        created.body
    );
}

async fn an_end_between_the_reads_and_the_commit_of_an_eviction_saves_the_session_it_would_end(
    kind: Kind,
) {
    // Proves: with a cap of three active sessions (end the oldest), another process, which
    // never read them, ends the middle one (one call; neither the create's victim nor the
    // current session) while a create that would end the oldest waits: in one call (the store
    // finds room when the commit runs), and decided on a snapshot (the end moves the user's
    // version, so the create's commit is refused and decided again). Either way there is
    // room, and the oldest session stays active.
    for path in [Eviction::OneCall, Eviction::OnSnapshot] {
        let app = TestApp::with(kind, |p| {
            p.max_active_per_user = Some(3);
            p.cap_policy = session_sidecar::testing::CapPolicy::EndOldest;
        })
        .await;
        let (creator, first) = path.creator(&app).await;
        let oldest = app.create_id("u1", json!({})).await;
        let middle = app.create_id("u1", json!({})).await;
        app.create_id("u1", json!({})).await;
        let other = app.through(|store| store).await;
        create_around(creator, path, async {
            let res = other.end(&middle, json!({"performer_id": "u1"})).await;
            assert_eq!(res.status, axum::http::StatusCode::OK, "{}", res.body);
        })
        .await;
        let ended: Vec<_> = app
            .outbox_of("session.ended.v1")
            .await
            .into_iter()
            .map(|e| e.payload["session_id"].clone())
            .collect();
        let expected: Vec<_> = first.iter().chain([&middle]).map(|id| json!(id)).collect();
        assert_eq!(
            ended, expected,
            "{path:?}: the creator's first session (at the cap), then the one ended by hand"
        );
        let session = app.get(&format!("/v1/sessions/{oldest}")).await.body;
        assert_eq!(session["status"], "active", "{path:?}: {session}");
    }
}

/// Store calls any single operation below makes, at most (a create reads, checks the rate
/// limit and commits; retries add more).
const CALLS: usize = 6;
/// Long enough for any operation on a healthy store; the dropped ones wait for ever.
const DROP_AFTER: Duration = Duration::from_millis(300);

/// Runs `op` on an app whose store stalls after `n` calls, for every `n` and both kinds of
/// stall, dropping it where it stalls; once the store answers again, calls `check`.
async fn at_every_await<F, Fut>(app: &TestApp, mut op: F, check: impl AsyncFn(&TestApp))
where
    F: FnMut(TestApp) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for stall in [Stall::Before, Stall::After] {
        for n in 0..CALLS {
            let store = Arc::new(Stalling::new(app.backend.clone(), n, stall));
            let stalling = app.through(|_| store.clone()).await;
            let _ = tokio::time::timeout(DROP_AFTER, op(stalling)).await;
            store.recover();
            // Background work the drop started (a lease given back) gets to run.
            tokio::time::sleep(Duration::from_millis(20)).await;
            check(app).await;
        }
    }
}

/// Whether a lease key is held.
async fn held(app: &TestApp, key: String) -> bool {
    let r = app.backend.read(vec![ReadOp::Get(key)]).await.unwrap();
    r.into_iter()
        .next()
        .and_then(Reply::into_opt_string)
        .is_some()
}

async fn writes_dropped_at_any_await_break_no_invariant(kind: Kind) {
    let app = TestApp::with(kind, |p| p.max_active_per_user = Some(CAP)).await;
    let first = app.create_id("racer", json!({"title": "a"})).await;
    let checked = async |app: &TestApp| check_invariants(app).await;
    let writes: Vec<(&str, String, Value)> = vec![
        (
            "POST",
            "/v1/sessions".into(),
            json!({"user_id": "racer", "title": "b"}),
        ),
        (
            "PUT",
            "/v1/users/racer/current-session".into(),
            json!({"session_id": first}),
        ),
        (
            "PATCH",
            format!("/v1/sessions/{first}"),
            json!({"title": "c"}),
        ),
        (
            "POST",
            format!("/v1/sessions/{first}/messages"),
            json!({"role": "user", "content": "hi"}),
        ),
        (
            "POST",
            format!("/v1/sessions/{first}/end"),
            json!({"performer_id": "racer"}),
        ),
    ];
    for (method, path, body) in writes {
        at_every_await(
            &app,
            |stalling| {
                let (path, body) = (path.clone(), body.clone());
                async move {
                    let method = method.parse().unwrap();
                    stalling.call(method, &path, Some(body)).await;
                }
            },
            checked,
        )
        .await;
    }
    // Deletes of every session, each dropped at every await, then done for real.
    let list = app.get("/v1/users/racer/sessions").await.body;
    for item in list["items"].as_array().unwrap() {
        let path = format!("/v1/sessions/{}", item["session_id"].as_str().unwrap());
        at_every_await(
            &app,
            |stalling| {
                let path = path.clone();
                async move {
                    stalling.delete(&path).await;
                }
            },
            checked,
        )
        .await;
    }
    check_invariants(&app).await;
}

async fn a_relay_dropped_at_any_await_leaves_no_lease_and_loses_no_event(kind: Kind) {
    let app = TestApp::of_service(kind).await;
    let user_shard = session_sidecar::testing::shard_of("u1", app.sessions.policy().shard_count);
    app.create_id("u1", json!({})).await;
    at_every_await(
        &app,
        |stalling| async move {
            let _ = relay_once(&stalling.sessions, "dropped").await;
        },
        async |app: &TestApp| {
            let lock = app.sessions.keys().relay_lock(user_shard);
            assert!(
                !held(app, lock).await,
                "the dropped relay gave its lease back"
            );
            relay_once(&app.sessions, "next").await.unwrap();
            assert!(
                app.outbox().await.is_empty(),
                "the next replica relayed everything"
            );
            // Something to relay for the next dropped pass.
            app.create_id("u1", json!({})).await;
        },
    )
    .await;
    relay_once(&app.sessions, "next").await.unwrap();
    let mut delivered: Vec<String> = app.events().await.into_iter().map(|e| e.event_id).collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(
        delivered.len(),
        2 * CALLS + 1,
        "every event delivered (repeats allowed)"
    );
}

async fn a_consumer_dropped_at_any_await_applies_every_event_once(kind: Kind) {
    let app = TestApp::of_service(kind).await;
    let users = std::sync::Mutex::new(Vec::<String>::new());
    // Publishes a deletion of a new user with a session, for the next dropped pass.
    let publish = async |app: &TestApp| {
        let user = format!("gone{}", users.lock().unwrap().len());
        app.create_id(&user, json!({})).await;
        let event = crate::events::inbound("auth.user.deleted.v1", json!({"user_id": user}));
        app.publish(&event).await;
        users.lock().unwrap().push(user);
    };
    publish(&app).await;
    at_every_await(
        &app,
        |stalling| async move {
            let _ = consume_once(&stalling.sessions, &stalling.metrics, "dropped").await;
        },
        async |app: &TestApp| {
            let lock = app.sessions.keys().consumer_lock();
            assert!(
                !held(app, lock).await,
                "the dropped consumer gave its lease back"
            );
            while consume_once(&app.sessions, &app.metrics, "next")
                .await
                .unwrap()
                > 0
            {}
            let users = users.lock().unwrap().clone();
            for user in &users {
                let listed = app.get(&format!("/v1/users/{user}/sessions")).await.body;
                assert_eq!(listed["items"], json!([]), "{user}: {listed}");
            }
            publish(app).await;
        },
    )
    .await;
    let deleted = app.outbox_of("session.deleted.v1").await.len();
    assert_eq!(deleted, 2 * CALLS, "each deletion applied once");
}
