//! One call to Redis per write: a change starts from what this process wrote last (its hints),
//! guarded by what it assumed; a hint that another sidecar made stale is refused by the guard,
//! and the change is decided again on a snapshot, as if there had been no hint.

use serde_json::json;

use session_sidecar::testing::CapPolicy;

use crate::calls::Calls;
use crate::harness::{Kind, TestApp};

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
async fn a_switch_by_a_title_the_hints_gave_a_session_since_renamed_finds_its_new_holder() {
    // Proves: `a` read a session of `b`'s by its title, and knows it by that title while `b`
    // renames it, gives the title to a new session and ends the first (`a`'s hints were not
    // told). `a`'s switch by that title is refused (the session is no longer so titled), and
    // the refusal, which finds the first session ended, is not taken as the answer: the title
    // is looked up again, and the switch goes to its new holder.
    let (_origin, a, b) = a_stale_pair().await;
    let first = b.create_id("u1", json!({"title": "foo"})).await;
    a.get(&format!("/v1/sessions/{first}")).await;
    let renamed = b
        .patch(&format!("/v1/sessions/{first}"), json!({"title": "bar"}))
        .await;
    assert_eq!(renamed.status.as_u16(), 200, "{}", renamed.body);
    let holder = b.create_id("u1", json!({"title": "foo"})).await;
    let ended = b.end(&first, json!({"performer_id": "u1"})).await;
    assert_eq!(ended.status.as_u16(), 200, "{}", ended.body);
    b.create_id("u1", json!({})).await; // the current session now
    let res = a
        .put("/v1/users/u1/current-session", json!({"title": "foo"}))
        .await;
    assert_eq!(res.status.as_u16(), 200, "{}", res.body);
    assert_eq!(res.body["session_id"], holder.as_str());
}

#[tokio::test]
async fn a_create_past_a_refusing_active_cap_is_answered_in_one_call() {
    // Proves: with a cap of 3 active sessions that refuses creates past it, a create past the
    // cap is refused by the commit's cap guard, which is the limit itself: 409 in the same
    // call, each time. An end brings the user below the cap: the next create is one call from
    // the hints, which the refusals kept.
    let app = TestApp::with(Kind::Redis, |p| {
        p.max_active_per_user = Some(3);
        p.cap_policy = CapPolicy::Reject;
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
    ] {
        ids.push(create_counted(&app, &mut calls, (expected, 201), what).await);
    }
    for (expected, what) in [
        (1, "refused by the cap guard"),
        (1, "refused by the cap guard again"),
    ] {
        create_counted(&app, &mut calls, (expected, 409), what).await;
    }
    let end = app.end(&ids[0], json!({"performer_id": "u1"})).await;
    assert_eq!(end.status.as_u16(), 200, "{}", end.body);
    create_counted(
        &app,
        &mut calls,
        (1, 201),
        "below the cap again: from the hints",
    )
    .await;
}

/// Creates a session of `u1`, checking the calls it made to Redis and its status; its id.
async fn create_counted(
    app: &TestApp,
    calls: &mut Calls,
    expected: (u64, u16),
    what: &str,
) -> String {
    let create = app.post("/v1/sessions", json!({"user_id": "u1"}));
    let (n, res) = calls.during(create).await;
    assert_eq!((n, res.status.as_u16()), expected, "{what}: {}", res.body);
    res.body["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
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
