//! One call to Redis per write: a change starts from what this process wrote last (its hints),
//! guarded by what it assumed; a hint that another sidecar made stale is refused by the guard,
//! and the change is decided again on a snapshot, as if there had been no hint.

use serde_json::json;

use session_sidecar::testing::CapPolicy;

use crate::harness::{Kind, TestApp};

/// Counts the calls clients make to Redis, as `MONITOR` shows them in the order Redis ran
/// them: a script call or a read of one key sent as its command is one; the commands a script
/// runs are not (they show as `lua`), nor pings and the test's own markers.
struct Calls {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    admin: ::redis::aio::MultiplexedConnection,
    markers: u64,
}

impl Calls {
    async fn new(app: &TestApp) -> Self {
        let client = ::redis::Client::open(app.admin_url()).unwrap();
        let monitor = client.get_async_monitor().await.unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = monitor.into_on_message::<String>();
            while let Some(line) = futures::StreamExt::next(&mut stream).await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            lines,
            admin: client.get_multiplexed_async_connection().await.unwrap(),
            markers: 0,
        }
    }

    async fn mark(&mut self) -> String {
        self.markers += 1;
        let marker = format!("calls-marker-{}", self.markers);
        let _: String = ::redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut self.admin)
            .await
            .unwrap();
        marker
    }

    /// The calls made while `work` ran.
    async fn during<T>(&mut self, work: impl std::future::Future<Output = T>) -> (u64, T) {
        let start = self.mark().await;
        let out = work.await;
        let end = self.mark().await;
        let (mut counting, mut calls) = (false, 0);
        loop {
            let line = self.lines.recv().await.expect("MONITOR ended");
            if line.contains(&start) {
                counting = true;
            } else if line.contains(&end) {
                return (calls, out);
            } else if counting && !line.contains(" lua]") {
                let command = line.split("] \"").nth(1).unwrap_or_default();
                let command = command.split('"').next().unwrap_or_default();
                let store = [
                    "EVALSHA",
                    "EVAL",
                    "EVALSHA_RO",
                    "EVAL_RO",
                    "GET",
                    "HGET",
                    "HGETALL",
                ];
                calls += u64::from(store.contains(&command.to_uppercase().as_str()));
            }
        }
    }
}

/// Two sidecars on one Redis: `a`, whose hints are not told of the changes Redis reports (so
/// a hint `b` made stale is used and refused by its guard), and `b`; first the app that owns
/// the Redis server, to keep alive.
async fn a_stale_pair() -> (TestApp, TestApp, TestApp) {
    let origin = TestApp::new(Kind::Redis).await;
    let (a, b) = (
        origin.beside_with_unreported_hints().await,
        origin.beside().await,
    );
    (origin, a, b)
}

#[tokio::test]
async fn writes_from_hints_take_one_call_to_redis_each() {
    // Proves: once a process has written a session (and its user's current session), each of
    // its next writes there takes one call to Redis (the commit script): a create for that user; a message, a
    // heartbeat, a patch, a new title, a memory replacement, a switch to it, a delete and an
    // end of it. The first create of a user, with nothing known, is one call too (the commit
    // turns off the flag of whichever session the user's pointer names). A message to a session that only stopped being current (its room in the hints
    // went to the new current session) is one call too: the store checks the session itself
    // and answers with the document as the message left it, which the next writes start from.
    let app = TestApp::new(Kind::Redis).await;
    app.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let calls = tokio::sync::Mutex::new(Calls::new(&app).await);
    let calls_of = |method: &'static str, path: String, body| {
        let (app, calls) = (&app, &calls);
        async move {
            let (n, res) = calls
                .lock()
                .await
                .during(app.call(method.parse().unwrap(), &path, body))
                .await;
            assert!(res.status.is_success(), "{method} {path}: {}", res.body);
            (n, res.body)
        }
    };
    let create = |title: &str| {
        calls_of(
            "POST",
            "/v1/sessions".to_owned(),
            Some(json!({"user_id": "u1", "title": title})),
        )
    };
    let (calls, first) = create("one").await;
    assert_eq!(calls, 1, "a create with nothing known");
    let (calls, second) = create("two").await;
    assert_eq!(calls, 1, "a create from the hints");
    let first = first["session_id"].as_str().unwrap().to_owned();
    let second = second["session_id"].as_str().unwrap().to_owned();
    let message = |id: &str| {
        (
            "POST",
            format!("/v1/sessions/{id}/messages"),
            Some(json!({"role": "user", "content": "hello"})),
        )
    };
    let steps = [
        (message(&second), 1, "a message"),
        (
            (
                "PUT",
                format!("/v1/sessions/{second}/heartbeat"),
                Some(json!({})),
            ),
            1,
            "a heartbeat",
        ),
        (
            (
                "PATCH",
                format!("/v1/sessions/{second}"),
                Some(json!({"data": {"n": 1}})),
            ),
            1,
            "a patch",
        ),
        (
            (
                "PATCH",
                format!("/v1/sessions/{second}"),
                Some(json!({"title": "two-b"})),
            ),
            1,
            "a new title",
        ),
        (
            (
                "PUT",
                format!("/v1/sessions/{second}/memory"),
                Some(json!({"summary": "hi"})),
            ),
            1,
            "a memory replacement",
        ),
        (
            message(&first),
            1,
            "a message to the session that stopped being current",
        ),
        (
            (
                "PUT",
                "/v1/users/u1/current-session".to_owned(),
                Some(json!({"session_id": first})),
            ),
            1,
            "a switch",
        ),
        (
            message(&second),
            1,
            "a message to the session that stopped being current",
        ),
        (
            ("DELETE", format!("/v1/sessions/{second}"), None),
            1,
            "a delete",
        ),
        (
            (
                "POST",
                format!("/v1/sessions/{first}/end"),
                Some(json!({"performer_id": "u1"})),
            ),
            1,
            "an end",
        ),
    ];
    for ((method, path, body), expected, what) in steps {
        let (calls, _) = calls_of(method, path, body).await;
        assert_eq!(calls, expected, "{what}");
    }
}

#[tokio::test]
async fn a_create_for_a_user_another_sidecar_served_takes_one_call() {
    // Proves: a sidecar that knows nothing of a user (the user's current session came from
    // another sidecar) creates in one call: the commit turns off the flag of whichever session
    // the user's pointer names, and reports which, so that this sidecar drops the copy it had
    // cached. A title held by another live session is refused, decided on a snapshot.
    let a = TestApp::new(Kind::Redis).await;
    let b = a.beside().await;
    let before = a.create_id("u1", json!({"title": "taken"})).await;
    b.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let path = format!("/v1/sessions/{before}");
    assert_eq!(b.get(&path).await.body["current"], true); // now in b's cache
    let mut calls = Calls::new(&a).await;
    let (n, res) = calls
        .during(b.post("/v1/sessions", json!({"user_id": "u1"})))
        .await;
    assert_eq!((n, res.status.as_u16()), (1, 201), "{}", res.body);
    let now_current = res.body["session_id"].as_str().unwrap().to_owned();
    for app in [&a, &b] {
        let former = app.get(&path).await.body;
        assert_eq!(
            (former["current"].as_bool(), former["version"].as_u64()),
            (Some(false), Some(2))
        );
        let current = app.get("/v1/users/u1/current-session").await.body;
        assert_eq!(current["session_id"], now_current.as_str());
    }
    let c = a.beside().await;
    let res = c
        .post("/v1/sessions", json!({"user_id": "u1", "title": "taken"}))
        .await;
    assert_eq!(res.code(), "title_conflict", "{}", res.body);
}

#[tokio::test]
async fn heartbeats_and_ends_of_sessions_another_sidecar_wrote_take_one_call_each() {
    // Proves: a heartbeat and an end of sessions this sidecar never wrote nor read are one
    // call each: the store checks the session and writes the change, its user's index and
    // (for the end) the event carrying the session as the change left it, which is the
    // session as both sidecars then read it. The user's index follows: with a cap of one
    // active session, the end frees the user's room. A refused end (already ended) reads to
    // say why: 409, two calls.
    let a = TestApp::with(Kind::Redis, |p| p.max_active_per_user = Some(1)).await;
    let b = a.beside().await;
    let (one, two) = (
        a.create_id("u1", json!({"title": "one", "data": {"n": 1}}))
            .await,
        a.create_id("u2", json!({})).await,
    );
    b.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let mut calls = Calls::new(&a).await;
    let (n, res) = calls
        .during(b.put(
            &format!("/v1/sessions/{two}/heartbeat"),
            json!({"ttl_seconds": 7200}),
        ))
        .await;
    assert_eq!(
        (n, res.status.as_u16()),
        (1, 200),
        "a heartbeat: {}",
        res.body
    );
    assert_eq!(res.body, a.get(&format!("/v1/sessions/{two}")).await.body);

    let end = json!({"performer_id": "agent-7", "reason": "resolved"});
    let (n, res) = calls.during(b.end(&one, end.clone())).await;
    assert_eq!((n, res.status.as_u16()), (1, 200), "an end: {}", res.body);
    let read = a.get(&format!("/v1/sessions/{one}")).await.body;
    assert_eq!(res.body, read);
    assert_eq!(
        (
            read["status"].as_str(),
            read["end_reason"].as_str(),
            read["version"].as_u64()
        ),
        (Some("ended"), Some("resolved"), Some(2))
    );
    let ended = b.outbox_of("session.ended.v1").await;
    assert_eq!(ended.len(), 1);
    assert_eq!(
        ended[0].payload, read,
        "the event carries the session as ended"
    );
    assert_eq!(ended[0].performer_id.as_deref(), Some("agent-7"));
    let again = a.create("u1", json!({"title": "again"})).await;
    assert_eq!(
        again["status"], "active",
        "the ended session left the user's active index"
    );

    let (n, res) = calls.during(b.end(&one, end)).await;
    assert_eq!(
        (n, res.status.as_u16()),
        (2, 409),
        "a refused end: {}",
        res.body
    );
    assert_eq!(b.outbox_of("session.ended.v1").await.len(), 1);
}

#[tokio::test]
async fn switches_and_deletes_of_sessions_another_sidecar_wrote_take_one_call_each() {
    // Proves: a switch of the current session and a delete, of sessions this sidecar never
    // wrote nor read, are one call each. The switch turns off the flag of whichever session
    // the user's pointer names and answers with the session as its event carries it; the
    // delete removes every key and index entry of the session (named by its document's user,
    // title and case) and frees its title. Refused ones are decided on a snapshot: a switch to
    // the current session changes nothing; the current session cannot be deleted (400). A
    // switch by a title the sidecar does not know looks the title up first (two calls).
    let a = TestApp::new(Kind::Redis).await;
    let b = a.beside().await;
    let one = a.create_id("u1", json!({"title": "one"})).await;
    let two = a
        .create_id("u1", json!({"title": "two", "case_id": "c1"}))
        .await;
    a.post(
        &format!("/v1/sessions/{two}/messages"),
        json!({"role": "user", "content": "hi"}),
    )
    .await;
    a.put(&format!("/v1/sessions/{two}/memory"), json!({"k": 1}))
        .await;
    b.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let mut calls = Calls::new(&a).await;

    let to_one = json!({"session_id": one});
    let (n, res) = calls
        .during(b.put("/v1/users/u1/current-session", to_one.clone()))
        .await;
    assert_eq!((n, res.status.as_u16()), (1, 200), "a switch: {}", res.body);
    assert_eq!(
        (res.body["current"].as_bool(), res.body["version"].as_u64()),
        (Some(true), Some(3))
    );
    assert_eq!(res.body, a.get(&format!("/v1/sessions/{one}")).await.body);
    let updated = b.outbox_of("session.updated.v1").await;
    assert_eq!(updated.last().map(|e| &e.payload), Some(&res.body));
    let former = a.get(&format!("/v1/sessions/{two}")).await.body;
    assert_eq!(
        (former["current"].as_bool(), former["version"].as_u64()),
        (Some(false), Some(3)),
        "created, a message, no longer current (the memory is not in the document)"
    );
    let (_, again) = calls
        .during(b.put("/v1/users/u1/current-session", to_one))
        .await;
    assert_eq!((again.status.as_u16(), &again.body), (200, &res.body));
    assert_eq!(b.outbox_of("session.updated.v1").await.len(), updated.len());

    let (n, res) = calls.during(b.delete(&format!("/v1/sessions/{two}"))).await;
    assert_eq!((n, res.status.as_u16()), (1, 204), "a delete: {}", res.body);
    let deleted = b.outbox_of("session.deleted.v1").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        deleted[0].payload, former,
        "the event carries the session as it was"
    );
    assert_eq!(mentions(&a, &two).await, Vec::<String>::new());
    let retitled = a
        .post("/v1/sessions", json!({"user_id": "u1", "title": "two"}))
        .await;
    assert_eq!(retitled.status.as_u16(), 201, "{}", retitled.body);

    let current = format!(
        "/v1/sessions/{}",
        retitled.body["session_id"].as_str().unwrap()
    );
    let (n, res) = calls.during(b.delete(&current)).await;
    assert_eq!(res.code(), "current_session_delete", "{}", res.body);
    assert!(n > 1, "decided on a snapshot after the refused call: {n}");
    assert_eq!(a.get(&current).await.status.as_u16(), 200);

    // A title this sidecar does not know is looked up first: two calls; a missing one, one.
    let c = a.beside().await;
    c.create_id("warm-up", json!({})).await;
    let by_title = |title: &str| c.put("/v1/users/u1/current-session", json!({"title": title}));
    let (n, res) = calls.during(by_title("one")).await;
    assert_eq!((n, res.status.as_u16()), (2, 200), "by title: {}", res.body);
    assert_eq!(res.body["session_id"], one.as_str());
    let (n, res) = calls.during(by_title("missing")).await;
    assert_eq!((n, res.code()), (1, "not_found"), "{}", res.body);
}

#[tokio::test]
async fn patches_and_memory_writes_of_sessions_another_sidecar_wrote_take_one_call_each() {
    // Proves: a patch that leaves the title alone, a memory replacement and a memory merge,
    // of a session this sidecar never wrote nor read, are one call each: the store merges the
    // objects (RFC 7386: `null` removes, objects merge member by member), moves the session
    // between case indexes and answers with the session as its event carries it. A merge past
    // the size limit is refused by the store and decided on a snapshot: 400, nothing changed.
    let a = TestApp::new(Kind::Redis).await;
    let b = a.beside().await;
    let metadata = json!({"a": 1, "keep": {"x": 1}, "n": 1.50});
    let one = a
        .create_id("u1", json!({"metadata": metadata, "case_id": "c1"}))
        .await;
    let path = format!("/v1/sessions/{one}");
    b.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let mut calls = Calls::new(&a).await;

    let patch = json!({
        "metadata": {"a": null, "keep": {"y": [1, null]}, "new": "é"},
        "data": {"d": true},
        "case_id": "c2",
        "performer_id": "agent-7",
    });
    let (n, res) = calls.during(b.patch(&path, patch)).await;
    assert_eq!((n, res.status.as_u16()), (1, 200), "a patch: {}", res.body);
    assert_eq!(
        (
            &res.body["metadata"],
            &res.body["data"],
            &res.body["case_id"]
        ),
        (
            &json!({"keep": {"x": 1, "y": [1, null]}, "n": 1.50, "new": "é"}),
            &json!({"d": true}),
            &json!("c2")
        )
    );
    assert_eq!(res.body["version"], 2);
    assert_eq!(res.body, a.get(&path).await.body);
    let updated = b.outbox_of("session.updated.v1").await;
    let event = updated.last().expect("an updated event");
    assert_eq!(
        (&event.payload, event.performer_id.as_deref()),
        (&res.body, Some("agent-7"))
    );
    let indexes = mentions(&a, &one).await;
    assert!(
        indexes.iter().any(|k| k.ends_with(":c:c2"))
            && !indexes.iter().any(|k| k.ends_with(":c:c1")),
        "the session moved from case c1 to c2: {indexes:?}"
    );

    // A third sidecar: `b` knows the session now (its patch read it back).
    let c = a.beside().await;
    c.create_id("warm-up-c", json!({})).await;
    let memory = format!("{path}/memory");
    let (n, res) = calls
        .during(c.put(&memory, json!({"m": 1, "o": {"p": 1}})))
        .await;
    assert_eq!(
        (n, res.status.as_u16()),
        (1, 200),
        "a replacement: {}",
        res.body
    );
    let (n, res) = calls
        .during(c.patch(&memory, json!({"m": null, "o": {"q": 2}})))
        .await;
    assert_eq!((n, res.status.as_u16()), (1, 200), "a merge: {}", res.body);
    assert_eq!(res.body["memory"], json!({"o": {"p": 1, "q": 2}}));
    assert_eq!(res.body, a.get(&memory).await.body);

    let big = "x".repeat(40 * 1024);
    let (n, res) = calls.during(c.patch(&memory, json!({"big": big}))).await;
    assert_eq!((n, res.status.as_u16()), (1, 200), "{}", res.body);
    let (n, res) = calls.during(c.patch(&memory, json!({"bigger": big}))).await;
    assert_eq!(res.code(), "validation_failed", "{}", res.body);
    assert!(n > 1, "decided on a snapshot after the refused call: {n}");
    let res = a.patch(&path, json!({"data": {"big": big}})).await;
    assert_eq!(res.status.as_u16(), 200, "{}", res.body);
    let (n, res) = calls
        .during(c.patch(&path, json!({"data": {"bigger": big}})))
        .await;
    assert_eq!(res.code(), "validation_failed", "{}", res.body);
    assert!(n > 1, "decided on a snapshot after the refused call: {n}");
    let stored = a.get(&path).await.body;
    assert_eq!(
        (stored["version"].as_u64(), stored["data"].get("bigger")),
        (Some(3), None)
    );
}

#[tokio::test]
async fn a_new_title_for_a_session_another_sidecar_wrote_takes_one_call_when_the_user_is_named() {
    // Proves: a patch that renames a session this sidecar does not know, naming the user, is
    // one call: the commit requires the new title free in the user's index and moves the
    // session's entry (the former title is free again, the new one taken). Removing the title
    // frees it too, without naming the user. A title another session holds is refused and decided on a snapshot: 409.
    let a = TestApp::new(Kind::Redis).await;
    let one = a.create_id("u1", json!({"title": "first"})).await;
    a.create_id("u1", json!({"title": "taken"})).await;
    let path = format!("/v1/sessions/{one}");
    let mut calls = Calls::new(&a).await;
    let fresh = || async {
        let sidecar = a.beside().await;
        sidecar.create_id("warm-up", json!({})).await; // loads the scripts
        sidecar
    };

    let rename = json!({"title": "second", "user_id": "u1"});
    let (n, res) = calls.during(fresh().await.patch(&path, rename)).await;
    assert_eq!((n, res.status.as_u16()), (1, 200), "a rename: {}", res.body);
    assert_eq!(
        (&res.body["title"], &res.body["version"]),
        (&json!("second"), &json!(3))
    );
    let titled = |title: &str| json!({"user_id": "u1", "title": title});
    assert_eq!(
        a.post("/v1/sessions", titled("second")).await.code(),
        "title_conflict"
    );
    let freed = a.post("/v1/sessions", titled("first")).await;
    assert_eq!(
        freed.status.as_u16(),
        201,
        "the former title is free: {}",
        freed.body
    );

    let (n, res) = calls
        .during(
            fresh()
                .await
                .patch(&path, json!({"title": "taken", "user_id": "u1"})),
        )
        .await;
    assert_eq!(res.code(), "title_conflict", "{}", res.body);
    assert!(n > 1, "decided on a snapshot after the refused call: {n}");

    let untitle = json!({"title": null}); // a removal needs no user
    let (n, res) = calls.during(fresh().await.patch(&path, untitle)).await;
    assert_eq!(
        (n, res.status.as_u16()),
        (1, 200),
        "a removal: {}",
        res.body
    );
    assert_eq!(res.body.get("title"), None);
    let freed = a.post("/v1/sessions", titled("second")).await;
    assert_eq!(
        freed.status.as_u16(),
        201,
        "the removed title is free: {}",
        freed.body
    );
}

/// The keys of `app`'s Redis that name or hold `id`, but for event streams.
async fn mentions(app: &TestApp, id: &str) -> Vec<String> {
    let client = ::redis::Client::open(app.admin_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut found = Vec::new();
    for key in keys {
        let kind: String = ::redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let holds = match kind.as_str() {
            "zset" => {
                let score: Option<f64> = ::redis::cmd("ZSCORE")
                    .arg(&key)
                    .arg(id)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                score.is_some()
            }
            "hash" => {
                let values: Vec<String> = ::redis::cmd("HVALS")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                values.iter().any(|v| v == id)
            }
            "string" => {
                let value: String = ::redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                value == id
            }
            _ => false,
        };
        if key.contains(id) && kind != "stream" || holds {
            found.push(key);
        }
    }
    found
}

#[tokio::test]
async fn a_switch_by_title_takes_one_call_to_redis_and_a_stale_title_is_decided_again() {
    // Proves: a switch by the title of a session this process knows is one call; when another
    // sidecar renamed that session meanwhile (and `a`'s hints were not told), the switch by
    // the old title is refused by the guard on the session's version and decided again: 404,
    // and the current session stays where it was.
    let a = TestApp::new(Kind::Redis).await;
    let mut calls = Calls::new(&a).await;
    let one = a.create_id("u1", json!({"title": "one"})).await;
    a.create_id("u1", json!({"title": "two"})).await;
    let to_one = json!({"title": "one"});
    a.get(&format!("/v1/sessions/{one}")).await;
    let (n, res) = calls
        .during(a.put("/v1/users/u1/current-session", to_one))
        .await;
    assert_eq!((n, res.status.as_u16()), (1, 200), "{}", res.body);
    assert_eq!(res.body["session_id"], one.as_str());

    let (_origin, a, b) = a_stale_pair().await;
    let one = a.create_id("u1", json!({"title": "one"})).await;
    let two = a.create_id("u1", json!({"title": "two"})).await;
    a.get(&format!("/v1/sessions/{one}")).await;
    let renamed = b
        .patch(&format!("/v1/sessions/{one}"), json!({"title": "uno"}))
        .await;
    assert_eq!(renamed.status.as_u16(), 200, "{}", renamed.body);
    let res = a
        .put("/v1/users/u1/current-session", json!({"title": "one"}))
        .await;
    assert_eq!(res.status.as_u16(), 404, "{}", res.body);
    let current = b.get("/v1/users/u1/current-session").await;
    assert_eq!(current.body["session_id"], two.as_str());
}

#[tokio::test]
async fn a_user_found_at_the_active_cap_reads_first_instead_of_trying_the_hints() {
    // Proves: with a cap of 3 active sessions (end-oldest), a create past the cap is decided
    // on a snapshot; once a create found the user at the cap, the next one reads first instead
    // of trying the hints (whose cap guard would refuse it): three calls (the user's state,
    // the active sessions, the commit), not four. Below the cap again, the next create's
    // snapshot clears the mark, and the one after is one call.
    let app = TestApp::with(Kind::Redis, |p| {
        p.max_active_per_user = Some(3);
        p.cap_policy = CapPolicy::EndOldest;
    })
    .await;
    // Loads the scripts (NOSCRIPT, then EVAL): the commit's, and the read's (a snapshot).
    app.create_id("warm-up", json!({})).await;
    app.get("/v1/users/warm-up/sessions").await;
    let mut calls = Calls::new(&app).await;
    let mut ids = Vec::new();
    for (expected, what) in [
        (1, "nothing known: the commit checks the cap"),
        (1, "from the hints"),
        (1, "from the hints, reaching the cap"),
        (4, "refused by the cap guard, decided again"),
        (3, "known to be at the cap: read first"),
    ] {
        app.clock.advance_ms(1); // the oldest ended at the cap is the first created
        ids.push(create_counted(&app, &mut calls, expected, what).await);
    }
    for id in &ids[2..4] {
        let ended = app.end(id, json!({"performer_id": "u1"})).await;
        assert_eq!(ended.status.as_u16(), 200, "{}", ended.body);
    }
    for (expected, what) in [(2, "the snapshot finds room"), (1, "from the hints again")] {
        create_counted(&app, &mut calls, expected, what).await;
    }
}

/// Creates a session of `u1`, checking it made `expected` calls to Redis; its id.
async fn create_counted(app: &TestApp, calls: &mut Calls, expected: u64, what: &str) -> String {
    let create = app.post("/v1/sessions", json!({"user_id": "u1"}));
    let (n, res) = calls.during(create).await;
    assert_eq!(
        (n, res.status.as_u16()),
        (expected, 201),
        "{what}: {}",
        res.body
    );
    res.body["session_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_write_after_a_lookup_takes_one_call_to_redis() {
    // Proves: `a` looks up a session `b` created (a cache miss, read from Redis); `a`'s message
    // to it then starts from the document it read: one call. When `b` changes a session `a`
    // has looked up, Redis's report drops what `a` read at once (there is no echo of a commit
    // of `a`'s to wait for), and `a`'s message leaves the checks to the store: one call too,
    // and the message still gets the next sequence number.
    let a = TestApp::new(Kind::Redis).await;
    let b = a.beside().await;
    let mut calls = Calls::new(&a).await;
    let hello = json!({"role": "user", "content": "hello"});
    let lookup = |id: String| {
        let a = &a;
        async move { a.get(&format!("/v1/sessions/{id}")).await }
    };

    let id = b.create_id("u1", json!({})).await;
    let (n, res) = calls.during(lookup(id.clone())).await;
    assert_eq!((n, res.status.as_u16()), (1, 200), "the lookup reads Redis");
    let messages = format!("/v1/sessions/{id}/messages");
    let (n, res) = calls.during(a.post(&messages, hello.clone())).await;
    assert_eq!((n, res.status.as_u16()), (1, 201), "{}", res.body);

    let other = b.create_id("u2", json!({})).await;
    assert_eq!(lookup(other.clone()).await.status.as_u16(), 200);
    let messages = format!("/v1/sessions/{other}/messages");
    assert_eq!(b.post(&messages, hello.clone()).await.status.as_u16(), 201);
    a.settle().await;
    let (n, res) = calls.during(a.post(&messages, hello)).await;
    assert_eq!((n, res.body["seq"].as_u64()), (1, Some(2)), "{}", res.body);
}

#[tokio::test]
async fn messages_racing_from_two_sidecars_all_land_numbered_one_call_each() {
    // Proves: two sidecars append 20 messages each, all at once, to a session neither wrote
    // nor read: every append is one call to Redis (the counters are added where they are
    // stored, so racing appends never conflict), every message gets its own number from 1 to
    // 40, and the session counts 40 messages and all their tokens.
    let a = TestApp::new(Kind::Redis).await;
    let b = a.beside().await;
    let origin = a.beside().await;
    let id = origin.create_id("u1", json!({})).await;
    let messages = format!("/v1/sessions/{id}/messages");
    for app in [&a, &b] {
        // loads the commit script (NOSCRIPT, then EVAL) before counting
        app.create_id("warm-up", json!({})).await;
    }
    let mut calls = Calls::new(&a).await;
    let all = futures::future::join_all((1..=40u64).map(|n| {
        let app = if n % 2 == 0 { &a } else { &b };
        let body = json!({"role": "user", "content": format!("m{n}"), "tokens": n});
        let messages = &messages;
        async move { app.post(messages, body).await }
    }));
    let (n, replies) = calls.during(all).await;
    assert_eq!(n, 40, "one call per append");
    let mut seqs: Vec<u64> = replies
        .iter()
        .map(|res| {
            assert_eq!(res.status.as_u16(), 201, "{}", res.body);
            res.body["seq"].as_u64().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    let session = a.get(&format!("/v1/sessions/{id}")).await.body;
    assert_eq!(
        (
            session["message_count"].as_u64(),
            session["total_tokens"].as_u64()
        ),
        (Some(40), Some(820))
    );
    let listed = a.get(&format!("{messages}?limit=100")).await.body;
    let listed: Vec<u64> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        listed,
        (1..=40).collect::<Vec<_>>(),
        "stored with their numbers"
    );
}

#[tokio::test]
async fn a_document_this_sidecar_only_wrote_is_not_reported_and_its_guard_catches_a_change() {
    // Proves: `a` wrote a session; Redis's report of `a`'s own write (if any) leaves the hint in
    // place: `a`'s next message is one call. Redis tracks only documents a sidecar read, so when
    // `b` writes the session next, nothing is reported to `a`: `a`'s next message commits from
    // its hint, the version guard refuses it, and the message is sent again with the checks
    // left to the store: two calls, and the message still gets the next sequence number.
    let a = TestApp::new(Kind::Redis).await;
    let b = a.beside().await;
    let mut calls = Calls::new(&a).await;
    let id = a.create_id("u1", json!({})).await;
    let messages = format!("/v1/sessions/{id}/messages");
    let hello = json!({"role": "user", "content": "hello"});
    a.settle().await;
    let (n, res) = calls.during(a.post(&messages, hello.clone())).await;
    assert_eq!(
        (n, res.status.as_u16()),
        (1, 201),
        "a's own write keeps its hint"
    );

    assert_eq!(b.post(&messages, hello.clone()).await.status.as_u16(), 201);
    a.settle().await;
    let (n, res) = calls.during(a.post(&messages, hello)).await;
    assert_eq!(res.status.as_u16(), 201, "{}", res.body);
    assert_eq!(res.body["seq"], 3);
    assert_eq!(n, 2, "the refused commit, the commit the store checks");
}

#[tokio::test]
async fn a_hint_another_sidecar_made_stale_is_refused_and_the_write_decided_again() {
    // Proves: sidecar `a` wrote a session and its user's current pointer; sidecar `b` then
    // changes both (and `a`'s hints are not told: as when Redis's report comes so soon after
    // `a`'s own write that it is taken for its echo, or the invalidation connection is down).
    // `a`'s next writes start from its stale hints, are refused by their guards and are
    // decided again on what Redis holds: no message counted twice or lost, the right
    // session stops being current, and an end of a session `b` ended is refused with 409.
    let (_origin, a, b) = a_stale_pair().await;
    let first = a.create_id("u1", json!({"title": "first"})).await;
    let messages = format!("/v1/sessions/{first}/messages");
    let hello = json!({"role": "user", "content": "hello"});
    assert_eq!(b.post(&messages, hello.clone()).await.body["seq"], 1);
    let from_a = a.post(&messages, hello).await;
    assert_eq!(from_a.status.as_u16(), 201, "{}", from_a.body);
    assert_eq!(
        from_a.body["seq"], 2,
        "decided again on the message b added"
    );
    assert_eq!(
        b.get(&format!("/v1/sessions/{first}")).await.body["message_count"],
        2
    );

    // `b` creates a session for u1: the current pointer moves away from what `a` knows.
    let second = b.create_id("u1", json!({})).await;
    let third = a.create_id("u1", json!({})).await;
    a.settle().await;
    let current = |id: String| {
        let a = &a;
        async move { a.get(&format!("/v1/sessions/{id}")).await.body["current"].clone() }
    };
    assert_eq!(current(first.clone()).await, false);
    assert_eq!(
        current(second.clone()).await,
        false,
        "the session b made current stops being so"
    );
    assert_eq!(current(third.clone()).await, true);
    let listed = a.get("/v1/users/u1/current-session").await;
    assert_eq!(listed.body["session_id"], third.as_str());

    // `b` makes the second session current; `a`, still knowing the third as current, switches
    // to the first (which it just wrote): refused, decided again: the second (not the third)
    // stops being current.
    let beat = a
        .put(&format!("/v1/sessions/{first}/heartbeat"), json!({}))
        .await;
    assert_eq!(
        beat.status.as_u16(),
        200,
        "`a` knows the first session again"
    );
    let to_second = b
        .put(
            "/v1/users/u1/current-session",
            json!({"session_id": second}),
        )
        .await;
    assert_eq!(to_second.status.as_u16(), 200, "{}", to_second.body);
    let to_first = a
        .put("/v1/users/u1/current-session", json!({"session_id": first}))
        .await;
    assert_eq!(to_first.status.as_u16(), 200, "{}", to_first.body);
    a.settle().await;
    assert_eq!(current(second.clone()).await, false);
    assert_eq!(current(third.clone()).await, false);
    assert_eq!(current(first.clone()).await, true);

    // `b` ends the first session; `a` still remembers it active.
    assert_eq!(
        b.end(&first, json!({"performer_id": "b"}))
            .await
            .status
            .as_u16(),
        200
    );
    let again = a.end(&first, json!({"performer_id": "a"})).await;
    assert_eq!(again.status.as_u16(), 409, "{}", again.body);
    assert_eq!(again.code(), "session_ended");
}

#[tokio::test]
async fn an_error_found_on_a_stale_hint_is_decided_again_on_what_redis_holds() {
    // Proves: `a` remembers a session whose data is near the 64 KiB limit; `b` then empties
    // it. `a`'s patch would exceed the limit merged with what `a` remembers, but not with what
    // Redis holds: it is applied (200), not refused with 400 on the stale hint. A patch too
    // large for what Redis holds is still refused. (`a`'s hints are not told of `b`'s change.)
    let (_origin, a, b) = a_stale_pair().await;
    let big = "x".repeat(60_000);
    let id = a.create_id("u1", json!({"data": {"big": big}})).await;
    let path = format!("/v1/sessions/{id}");
    let emptied = b.patch(&path, json!({"data": {"big": null}})).await;
    assert_eq!(emptied.status.as_u16(), 200, "{}", emptied.body);
    let more = a
        .patch(&path, json!({"data": {"more": "y".repeat(10_000)}}))
        .await;
    assert_eq!(more.status.as_u16(), 200, "{}", more.body);
    assert_eq!(
        more.body["data"]["more"].as_str().map(str::len),
        Some(10_000)
    );
    assert!(more.body["data"].get("big").is_none());
    let too_much = a.patch(&path, json!({"data": {"big": big}})).await;
    assert_eq!(too_much.status.as_u16(), 400, "{}", too_much.body);
}
