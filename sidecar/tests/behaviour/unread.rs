//! One call to Redis per write also for a session this sidecar neither wrote nor read (another
//! sidecar, another replica did): the store checks the session's own fields in the same step
//! and names the keys of its user, title and case by what the document holds. A write refused
//! because of the session itself is answered from the session as the refusal found it; any
//! other refused write is decided on a snapshot, which says why.

use serde_json::{Value, json};

use session_sidecar::testing::CapPolicy;

use crate::calls::Calls;
use crate::harness::{Kind, Res, TestApp};

#[tokio::test]
async fn a_create_for_a_user_another_sidecar_served_takes_one_call() {
    // Proves: a sidecar that knows nothing of a user (the user's current session came from
    // another sidecar) creates in one call: the commit turns off the flag of whichever session
    // the user's pointer names, and reports which, so that this sidecar drops the copy it had
    // cached. A title held by another live session is refused in the same call: the refusal
    // reports the session holding it.
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
    c.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    c.get("/v1/users/warm-up/sessions").await; // and the read script
    let taken = json!({"user_id": "u1", "title": "taken"});
    let (n, res) = calls.during(c.post("/v1/sessions", taken)).await;
    assert_eq!((n, res.code()), (1, "title_conflict"), "{}", res.body);
}

#[tokio::test]
async fn a_create_past_the_creation_rate_is_answered_in_one_call() {
    // Proves: the commit's rate guard is the limit itself: its refusal answers 429 with the
    // time the window has left (as Retry-After), in the same call, from the hints or without;
    // the user's current session is still known from the hints afterwards (the next create of
    // another user is unaffected).
    let app = TestApp::with(Kind::Redis, |p| p.create_rate_limit = Some(2)).await;
    app.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let mut calls = Calls::new(&app).await;
    for _ in 0..2 {
        let (n, res) = calls
            .during(app.post("/v1/sessions", json!({"user_id": "u1"})))
            .await;
        assert_eq!((n, res.status.as_u16()), (1, 201), "{}", res.body);
    }
    for _ in 0..2 {
        let (n, res) = calls
            .during(app.post("/v1/sessions", json!({"user_id": "u1"})))
            .await;
        assert_eq!((n, res.code()), (1, "rate_limited"), "{}", res.body);
        let retry: u64 = res.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((59..=60).contains(&retry), "{retry}");
    }
    let b = app.beside().await;
    let (n, res) = calls
        .during(b.post("/v1/sessions", json!({"user_id": "u1"})))
        .await;
    assert_eq!(
        (n, res.code()),
        (1, "rate_limited"),
        "knowing nothing: {}",
        res.body
    );
}

#[tokio::test]
async fn without_write_hints_every_create_is_one_call() {
    // Proves: a sidecar that keeps no write hints creates in one call too (the commit checks
    // the limits and turns off whichever session was current), the first create of a user and
    // every one after it; the former current session shows it.
    let app = TestApp::with(Kind::Redis, |p| p.write_hints_max_bytes = 0).await;
    app.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let mut calls = Calls::new(&app).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (n, res) = calls
            .during(app.post("/v1/sessions", json!({"user_id": "u1"})))
            .await;
        assert_eq!((n, res.status.as_u16()), (1, 201), "{}", res.body);
        ids.push(res.body["session_id"].as_str().unwrap().to_owned());
    }
    for (id, current) in ids.iter().zip([false, false, true]) {
        let session = app.get(&format!("/v1/sessions/{id}")).await.body;
        assert_eq!(session["current"], current, "{session}");
    }
}

#[tokio::test]
async fn heartbeats_and_ends_of_sessions_another_sidecar_wrote_take_one_call_each() {
    // Proves: a heartbeat and an end of sessions this sidecar never wrote nor read are one
    // call each: the store checks the session and writes the change, its user's index and
    // (for the end) the event carrying the session as the change left it, which is the
    // session as both sidecars then read it. The user's index follows: with a cap of one
    // active session, the end frees the user's room. A refused end (already ended) is
    // answered from the session as the refusal found it: 409, in the same call.
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
        (1, 409),
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
    // the current session changes nothing; the current session cannot be deleted (400).
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
    let (n, again) = calls
        .during(b.put("/v1/users/u1/current-session", to_one))
        .await;
    assert_eq!((n, again.status.as_u16(), &again.body), (1, 200, &res.body));
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
    assert_eq!(
        (n, res.code()),
        (1, "current_session_delete"),
        "{}",
        res.body
    );
    assert_eq!(a.get(&current).await.status.as_u16(), 200);
}

#[tokio::test]
async fn a_switch_by_a_title_the_sidecar_does_not_know_takes_one_call() {
    // Proves: a switch of the current session by a title that a sidecar's hints do not know
    // is one call: the store names the session by the user's title index, checks it active,
    // unexpired and not current already, sets the user's pointer to it, turns off the former
    // current session and answers with the session as its event carries it. Refused ones are
    // answered from the refusal, in the same call: the current session already (nothing
    // changes), a title nobody holds (404), an ended session's (409), an expired one's (404).
    // Each probe is from a sidecar that knows nothing.
    let a = TestApp::new(Kind::Redis).await;
    let one = a.create_id("u1", json!({"title": "one"})).await;
    let two = a.create_id("u1", json!({"title": "two"})).await;
    let mut calls = Calls::new(&a).await;
    let (n, res) = switch_by_title(&a, &mut calls, "one").await;
    assert_eq!((n, res.status.as_u16()), (1, 200), "by title: {}", res.body);
    assert_eq!(res.body["session_id"], one.as_str());
    assert_eq!(res.body, a.get(&format!("/v1/sessions/{one}")).await.body);
    let updated = a.outbox_of("session.updated.v1").await;
    assert_eq!(updated.last().map(|e| &e.payload), Some(&res.body));
    let former = a.get(&format!("/v1/sessions/{two}")).await.body;
    assert_eq!(former["current"], false, "{former}");
    assert_eq!(a.get("/v1/users/u1/current-session").await.body, res.body);

    let (n, again) = switch_by_title(&a, &mut calls, "one").await;
    assert_eq!((n, again.status.as_u16(), &again.body), (1, 200, &res.body));
    let (n, res) = switch_by_title(&a, &mut calls, "missing").await;
    assert_eq!((n, res.code()), (1, "not_found"), "{}", res.body);
    let ended = a.end(&two, json!({"performer_id": "u1"})).await;
    assert_eq!(ended.status.as_u16(), 200, "{}", ended.body);
    let (n, res) = switch_by_title(&a, &mut calls, "two").await;
    assert_eq!((n, res.code()), (1, "session_ended"), "{}", res.body);
    a.create_id("u1", json!({"title": "brief", "ttl_seconds": 1}))
        .await;
    a.create_id("u1", json!({})).await; // the current one: "brief" is not
    a.clock.advance_ms(1_001);
    let (n, res) = switch_by_title(&a, &mut calls, "brief").await;
    assert_eq!(
        (n, res.code()),
        (1, "not_found"),
        "an expired session's: {}",
        res.body
    );
    assert_eq!(a.outbox_of("session.updated.v1").await.len(), updated.len());
}

/// Switches `u1`'s current session by `title` from a sidecar that knows nothing; the calls to
/// Redis it made, and its answer.
async fn switch_by_title(a: &TestApp, calls: &mut Calls, title: &str) -> (u64, Res) {
    let sidecar = a.beside().await;
    sidecar.create_id("warm-up", json!({})).await; // loads the scripts
    let switch = sidecar.put("/v1/users/u1/current-session", json!({"title": title}));
    calls.during(switch).await
}

#[tokio::test]
async fn patches_and_memory_writes_of_sessions_another_sidecar_wrote_take_one_call_each() {
    // Proves: a patch that leaves the title alone, a memory replacement and a memory merge,
    // of a session this sidecar never wrote nor read, are one call each: the store merges the
    // objects (RFC 7386: `null` removes, objects merge member by member), moves the session
    // between case indexes and answers with the session as its event carries it. A merge past
    // the size limit is refused by the store, which says so in the same call: 400, nothing
    // changed.
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
    assert_eq!((n, res.code()), (1, "validation_failed"), "{}", res.body);
    assert_eq!(res.body["detail"], "memory is larger than 65536 bytes");
    let res = a.patch(&path, json!({"data": {"big": big}})).await;
    assert_eq!(res.status.as_u16(), 200, "{}", res.body);
    let (n, res) = calls
        .during(c.patch(&path, json!({"data": {"bigger": big}})))
        .await;
    assert_eq!((n, res.code()), (1, "validation_failed"), "{}", res.body);
    assert_eq!(res.body["detail"], "data is larger than 65536 bytes");
    let stored = a.get(&path).await.body;
    assert_eq!(
        (stored["version"].as_u64(), stored["data"].get("bigger")),
        (Some(3), None)
    );
}

#[tokio::test]
async fn a_new_title_for_a_session_another_sidecar_wrote_takes_one_call() {
    // Proves: a patch that renames a session this sidecar does not know is one call, from a
    // trusted caller that does not name the user too: the commit requires the new title free
    // in the index of the user the document names and moves the session's entry (the former
    // title is free again, the new one taken). Removing the title frees it too. A title another
    // live session holds is refused in the same call (409); the title the session has already
    // is set again (its version moves, as on a snapshot).
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

    let rename = json!({"title": "second"});
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
        .during(fresh().await.patch(&path, json!({"title": "taken"})))
        .await;
    assert_eq!((n, res.code()), (1, "title_conflict"), "{}", res.body);
    let (n, res) = calls
        .during(fresh().await.patch(&path, json!({"title": "second"})))
        .await;
    assert_eq!(
        (n, res.status.as_u16()),
        (1, 200),
        "the title it has: {}",
        res.body
    );
    assert_eq!(
        (&res.body["title"], &res.body["version"]),
        (&json!("second"), &json!(4))
    );

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
async fn creates_past_the_active_cap_end_the_oldest_in_one_call() {
    // Proves: with a cap of 3 active sessions (end-oldest), every create past the cap is one
    // call, from a sidecar that knows the user's sessions or from one that knows nothing: the
    // store picks the oldest active session (by creation), ends it as an end does, and appends
    // its `session.ended.v1` event before the create's. The current session, when it is the
    // oldest, is ended as no longer current.
    let a = TestApp::with(Kind::Redis, |p| {
        p.max_active_per_user = Some(3);
        p.cap_policy = CapPolicy::EndOldest;
    })
    .await;
    a.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let mut calls = Calls::new(&a).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        a.clock.advance_ms(1); // the oldest is the first created
        ids.push(create_one_call(&a, &mut calls).await);
    }
    assert_eq!(
        statuses(&a, &ids).await,
        ["ended", "ended", "ended", "active", "active", "active"],
        "each create past the cap ended the oldest active session"
    );
    let events: Vec<(String, String)> = a
        .outbox()
        .await
        .into_iter()
        .map(|e| {
            (
                e.event_type,
                e.payload["session_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let at = |kind: &str, id: &str| events.iter().position(|(k, i)| k == kind && i == id);
    for (victim, next) in ids[..3].iter().zip(&ids[3..]) {
        assert!(
            at("session.ended.v1", victim) < at("session.created.v1", next),
            "the end of {victim} comes before the create that ended it: {events:?}"
        );
    }

    // The oldest active session current again; a sidecar that knows nothing creates.
    let switched = a
        .put(
            "/v1/users/u1/current-session",
            json!({"session_id": ids[3]}),
        )
        .await;
    assert_eq!(switched.status.as_u16(), 200, "{}", switched.body);
    let b = a.beside().await;
    a.clock.advance_ms(1);
    ids.push(create_one_call(&b, &mut calls).await);
    assert_eq!(
        statuses(&a, &ids[3..]).await,
        ["ended", "active", "active", "active"],
        "the current session was the oldest"
    );
    let former = a.get(&format!("/v1/sessions/{}", ids[3])).await.body;
    assert_eq!(
        (&former["current"], &former["performer_id"]),
        (&json!(false), &json!("system")),
        "{former}"
    );
    let ended = a.outbox_of("session.ended.v1").await;
    let event = ended
        .iter()
        .find(|e| e.payload["session_id"] == ids[3].as_str());
    assert_eq!(
        event.map(|e| &e.payload),
        Some(&former),
        "its event says so too"
    );
    let current = a.get("/v1/users/u1/current-session").await;
    assert_eq!(current.body["session_id"], ids[6].as_str());
}

#[tokio::test]
async fn a_create_that_must_end_several_sessions_ends_them_in_one_call_alike() {
    // Proves: a sidecar of a rollout that raises the cap adds an active session past the cap of
    // the others; their next create must end two sessions: the store picks both, the oldest
    // first, and ends each as it ends one at the cap, in the same call (it was refused and
    // decided on a snapshot: three calls). Sessions ended either way are stored and reported
    // alike: the same fields, the same answer but for ids, times and versions. Each end's event
    // has an id of its own (the second's derived from the first's and its session's id, as the
    // embedded store derives it), in its stream entry and its envelope alike, and the create's
    // event comes after them.
    let a = TestApp::with(Kind::Redis, |p| {
        p.max_active_per_user = Some(2);
        p.cap_policy = CapPolicy::EndOldest;
    })
    .await;
    a.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let mut ids = Vec::new();
    for _ in 0..3 {
        a.clock.advance_ms(1);
        ids.push(a.create_id("u1", json!({})).await); // the third ends the first, picked
    }
    let c = a.beside_with(|p| p.max_active_per_user = Some(3)).await;
    a.clock.advance_ms(1);
    ids.push(c.create_id("u1", json!({})).await);
    // From a sidecar that knows nothing.
    let d = a.beside().await;
    let mut calls = Calls::new(&a).await;
    a.clock.advance_ms(1);
    let create = d.post("/v1/sessions", json!({"user_id": "u1"}));
    let (n, res) = calls.during(create).await;
    assert_eq!((n, res.status.as_u16()), (1, 201), "{}", res.body);
    ids.push(res.body["session_id"].as_str().unwrap().to_owned());
    assert_eq!(
        statuses(&a, &ids).await,
        ["ended", "ended", "ended", "active", "active"],
        "the first picked at the cap; the next two past it, in one call"
    );
    let fields = stored_fields(&a, &ids[0]).await;
    for id in &ids[1..3] {
        assert_eq!(
            stored_fields(&a, id).await,
            fields,
            "the same fields stored"
        );
    }
    let view = |session: Value| {
        let mut view = session.as_object().cloned().unwrap_or_default();
        for varies in [
            "session_id",
            "created_at",
            "updated_at",
            "expires_at",
            "ended_at",
            "version",
        ] {
            view.remove(varies);
        }
        view
    };
    let first = view(a.get(&format!("/v1/sessions/{}", ids[0])).await.body);
    for id in &ids[1..3] {
        let session = a.get(&format!("/v1/sessions/{id}")).await.body;
        assert_eq!(view(session), first, "the same answer");
    }

    // The stream entries of the outbox: each end's event id, in its field and its envelope.
    let shard =
        session_sidecar::testing::parse_session_id(&ids[0], a.sessions.policy().shard_count)
            .expect("a session id of this deployment");
    let client = ::redis::Client::open(a.admin_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = ::redis::cmd("XRANGE")
        .arg(a.sessions.keys().outbox(shard))
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    let events: Vec<(String, Value)> = entries
        .into_iter()
        .map(|(_, fields)| {
            let field = |name: &str| fields.iter().find(|(f, _)| f == name).unwrap().1.clone();
            let envelope: Value = serde_json::from_str(&field("envelope")).unwrap();
            assert_eq!(envelope["event_id"], field("event_id").as_str());
            (field("event_id"), envelope)
        })
        .filter(|(_, e)| e["payload"]["user_id"] == "u1")
        .collect();
    let order: Vec<(&str, &str)> = events
        .iter()
        .map(|(_, e)| {
            let kind = e["event_type"].as_str().unwrap_or_default();
            (
                kind,
                e["payload"]["session_id"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let ended = "session.ended.v1";
    assert_eq!(
        &order[order.len() - 3..],
        [
            (ended, ids[1].as_str()),
            (ended, ids[2].as_str()),
            ("session.created.v1", ids[4].as_str())
        ],
        "the two ends, oldest first, then the create"
    );
    let (second, third) = (&events[events.len() - 3].0, &events[events.len() - 2].0);
    let namespace = uuid::Uuid::parse_str(second).unwrap();
    let derived = uuid::Uuid::new_v5(&namespace, ids[2].as_bytes()).to_string();
    assert_eq!(third, &derived, "derived as the embedded store derives it");
    let unique: std::collections::BTreeSet<&String> = events.iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), events.len(), "every event id its own");
}

/// Creates a session of `u1` on `app`, checking it took one call to Redis; its id.
async fn create_one_call(app: &TestApp, calls: &mut Calls) -> String {
    let (n, res) = calls
        .during(app.post("/v1/sessions", json!({"user_id": "u1"})))
        .await;
    assert_eq!((n, res.status.as_u16()), (1, 201), "{}", res.body);
    res.body["session_id"].as_str().unwrap().to_owned()
}

/// The status of each session.
async fn statuses(app: &TestApp, ids: &[String]) -> Vec<String> {
    let mut statuses = Vec::new();
    for id in ids {
        let session = app.get(&format!("/v1/sessions/{id}")).await.body;
        statuses.push(session["status"].as_str().unwrap_or_default().to_owned());
    }
    statuses
}

/// The names of the fields of the session's document in Redis.
async fn stored_fields(app: &TestApp, id: &str) -> Vec<String> {
    let shard = session_sidecar::testing::parse_session_id(id, app.sessions.policy().shard_count)
        .expect("a session id of this deployment");
    let key = app.sessions.keys().session(shard, id);
    let client = ::redis::Client::open(app.admin_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let mut fields: Vec<String> = ::redis::cmd("HKEYS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    fields.sort_unstable();
    fields
}

#[tokio::test]
async fn refused_writes_of_sessions_another_sidecar_wrote_are_answered_in_one_call() {
    // Proves: a write of a session this sidecar does not know that the store refuses because
    // of the session itself (gone, ended, another user's) is answered from the session as the
    // refusal found it (the commit reports it), with the error a snapshot would give: one
    // call, not the refused call and a read.
    let a = TestApp::new(Kind::Redis).await;
    let b = a.beside().await;
    let ended = a.create_id("u1", json!({})).await;
    let end = a.end(&ended, json!({"performer_id": "u1"})).await;
    assert_eq!(end.status.as_u16(), 200, "{}", end.body);
    // Another user on u1's shard (a session of another shard is not u1's without a call).
    let shards = a.sessions.policy().shard_count;
    let shard_of = |user: &str| session_sidecar::testing::shard_of(user, shards);
    let neighbour = (2..)
        .map(|n| format!("u{n}"))
        .find(|user| shard_of(user) == shard_of("u1"))
        .unwrap();
    let other = a.create_id(&neighbour, json!({})).await;
    let missing = format!("/v1/sessions/{}", "sess_0_aaaaaaaaaaaaaaaaaaaaaaaaaa");
    b.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let mut calls = Calls::new(&a).await;
    let one_call = |(n, res): (u64, Res), code: &str, what: &str| {
        assert_eq!((n, res.code()), (1, code), "{what}: {}", res.body);
    };
    let (ended, other) = (
        format!("/v1/sessions/{ended}"),
        format!("/v1/sessions/{other}"),
    );
    let hello = json!({"role": "user", "content": "hello"});
    let message = calls
        .during(b.post(&format!("{ended}/messages"), hello))
        .await;
    one_call(message, "session_ended", "a message");
    let heartbeat = calls
        .during(b.put(&format!("{missing}/heartbeat"), json!({})))
        .await;
    one_call(heartbeat, "not_found", "a heartbeat");
    let not_theirs = json!({"performer_id": neighbour, "user_id": "u1"});
    let end = calls
        .during(b.post(&format!("{other}/end"), not_theirs))
        .await;
    one_call(end, "session_user_mismatch", "an end");
    let patch = calls
        .during(b.patch(&ended, json!({"metadata": {"k": 1}})))
        .await;
    one_call(patch, "session_ended", "a patch");
    let memory = calls
        .during(b.put(&format!("{ended}/memory"), json!({"k": 1})))
        .await;
    one_call(memory, "session_ended", "a memory write");
    one_call(
        calls.during(b.delete(&missing)).await,
        "not_found",
        "a delete",
    );
    let current = "/v1/users/u1/current-session";
    let ended_id = ended.trim_start_matches("/v1/sessions/");
    let switch = calls
        .during(b.put(current, json!({"session_id": ended_id})))
        .await;
    one_call(switch, "session_ended", "a switch");
    let other_id = other.trim_start_matches("/v1/sessions/");
    let switch = calls
        .during(b.put(current, json!({"session_id": other_id})))
        .await;
    one_call(switch, "not_found", "a switch to another user's session");
}

#[tokio::test]
async fn a_title_an_expired_session_still_holds_is_taken_in_one_call() {
    // Proves: the title index may still give a title to a session that has expired but not
    // been swept yet; the store checks the holder's expiry itself, so a create or a rename to
    // that title from a sidecar that knows nothing is one call, and the index then gives the
    // title to the new holder.
    let a = TestApp::new(Kind::Redis).await;
    let brief = json!({"title": "brief", "ttl_seconds": 1});
    a.create_id("u1", brief.clone()).await;
    a.create_id("u1", json!({"title": "short", "ttl_seconds": 1}))
        .await;
    let renamed = a.create_id("u1", json!({})).await;
    a.clock.advance_ms(1_001);
    let mut calls = Calls::new(&a).await;
    let b = a.beside().await;
    b.create_id("warm-up", json!({})).await; // loads the scripts (NOSCRIPT, then EVAL)
    let (n, res) = calls
        .during(b.post("/v1/sessions", json!({"user_id": "u1", "title": "brief"})))
        .await;
    assert_eq!((n, res.status.as_u16()), (1, 201), "{}", res.body);
    let again = a
        .post("/v1/sessions", json!({"user_id": "u1", "title": "brief"}))
        .await;
    assert_eq!(again.code(), "title_conflict", "the new holder has it");
    let path = format!("/v1/sessions/{renamed}");
    let (n, res) = calls
        .during(b.patch(&path, json!({"title": "short"})))
        .await;
    assert_eq!((n, res.status.as_u16()), (1, 200), "{}", res.body);
    assert_eq!(res.body["title"], "short");
}
