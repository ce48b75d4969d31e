//! Model-based: random sequences of API operations run against the embedded store and a real
//! `redis-server` side by side, and every reply must agree with a reference that decides every
//! change on a snapshot read first (the others may start a change from what they wrote last) — status and body, with session ids
//! mapped to the order they were first seen and times replaced (the two stores run on two
//! clocks a few milliseconds apart) — and so must every user's sessions at the end, and what
//! two racing clients get (one title claimed twice at once, two messages at once). When they
//! differ, proptest shrinks the sequence and prints the shortest one that still differs.

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use session_sidecar::testing::{CapPolicy, Policy};

use crate::harness::{Kind, Res, TestApp};

/// A well-formed session id no store ever holds.
const UNKNOWN: &str = "sess_0_aaaaaaaaaaaaaaaaaaaaaaaaaa";
const USERS: u8 = 3;

/// One API call; `session` picks among the sessions created so far (by creation order).
#[derive(Debug, Clone)]
enum Op {
    Create {
        user: u8,
        title: Option<u8>,
    },
    Get {
        session: u8,
    },
    Update {
        session: u8,
        title: u8,
    },
    Heartbeat {
        session: u8,
    },
    End {
        session: u8,
    },
    Delete {
        session: u8,
    },
    List {
        user: u8,
    },
    Current {
        user: u8,
    },
    Switch {
        user: u8,
        session: u8,
    },
    SwitchByTitle {
        user: u8,
        title: u8,
    },
    Append {
        session: u8,
        text: u8,
    },
    Messages {
        session: u8,
    },
    /// A patch of `data` only (the title left alone).
    Patch {
        session: u8,
        n: u8,
    },
    /// The session's memory replaced (`merge: false`) or merged into, then read.
    Remember {
        session: u8,
        n: u8,
        merge: bool,
    },
    /// Time passes on both stores' clocks (sessions expire, rate windows roll).
    Wait {
        minutes: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS;
    let session = any::<u8>();
    prop_oneof![
        3 => (user.clone(), prop::option::of(0u8..4)).prop_map(|(user, title)| Op::Create { user, title }),
        3 => session.prop_map(|session| Op::Get { session }),
        2 => (session, 0u8..4).prop_map(|(session, title)| Op::Update { session, title }),
        1 => session.prop_map(|session| Op::Heartbeat { session }),
        2 => session.prop_map(|session| Op::End { session }),
        1 => session.prop_map(|session| Op::Delete { session }),
        2 => user.clone().prop_map(|user| Op::List { user }),
        1 => user.clone().prop_map(|user| Op::Current { user }),
        1 => (user.clone(), session).prop_map(|(user, session)| Op::Switch { user, session }),
        1 => (user, 0u8..4).prop_map(|(user, title)| Op::SwitchByTitle { user, title }),
        2 => (session, any::<u8>()).prop_map(|(session, text)| Op::Append { session, text }),
        1 => session.prop_map(|session| Op::Messages { session }),
        2 => (session, any::<u8>()).prop_map(|(session, n)| Op::Patch { session, n }),
        2 => (session, any::<u8>(), any::<bool>()).prop_map(|(session, n, merge)| Op::Remember { session, n, merge }),
        1 => (1u8..90).prop_map(|minutes| Op::Wait { minutes }),
    ]
}

/// One store under test, with the sessions it created in order.
struct Subject {
    app: TestApp,
    created: Vec<String>,
}

impl Subject {
    fn session(&self, pick: u8) -> String {
        // One pick in eight names a session nobody has.
        if self.created.is_empty() || pick % 8 == 7 {
            return UNKNOWN.to_owned();
        }
        self.created[usize::from(pick) % self.created.len()].clone()
    }

    async fn apply(&mut self, op: &Op) -> Res {
        let app = &self.app;
        // Every call a millisecond after the last: listings order by time, and sessions created
        // in the same millisecond would fall back to their (random) ids.
        app.clock.advance_ms(1);
        let res = match op {
            Op::Create { user, title } => {
                let mut body = json!({"user_id": format!("u{user}")});
                if let Some(t) = title {
                    body["title"] = json!(format!("t{t}"));
                }
                app.post("/v1/sessions", body).await
            }
            Op::Get { session } => app.get(&format!("/v1/sessions/{}", self.session(*session))).await,
            Op::Update { session, title } => {
                app.patch(&format!("/v1/sessions/{}", self.session(*session)), json!({"title": format!("t{title}")}))
                    .await
            }
            Op::Heartbeat { session } => {
                app.put(&format!("/v1/sessions/{}/heartbeat", self.session(*session)), json!({})).await
            }
            Op::End { session } => {
                app.post(&format!("/v1/sessions/{}/end", self.session(*session)), json!({"performer_id": "system"}))
                    .await
            }
            Op::Delete { session } => app.delete(&format!("/v1/sessions/{}", self.session(*session))).await,
            Op::List { user } => app.get(&format!("/v1/users/u{user}/sessions")).await,
            Op::Current { user } => app.get(&format!("/v1/users/u{user}/current-session")).await,
            Op::Switch { user, session } => {
                app.put(&format!("/v1/users/u{user}/current-session"), json!({"session_id": self.session(*session)}))
                    .await
            }
            Op::SwitchByTitle { user, title } => {
                app.put(&format!("/v1/users/u{user}/current-session"), json!({"title": format!("t{title}")})).await
            }
            Op::Append { session, text } => {
                app.post(
                    &format!("/v1/sessions/{}/messages", self.session(*session)),
                    json!({"role": "user", "content": format!("m{text}"), "tokens": u64::from(*text)}),
                )
                .await
            }
            Op::Messages { session } => app.get(&format!("/v1/sessions/{}/messages", self.session(*session))).await,
            Op::Patch { session, n } => {
                app.patch(&format!("/v1/sessions/{}", self.session(*session)), json!({"data": {"n": n}})).await
            }
            Op::Remember { session, n, merge } => {
                let path = format!("/v1/sessions/{}/memory", self.session(*session));
                let body = json!({format!("k{}", n % 4): n});
                let written = if *merge { app.patch(&path, body).await } else { app.put(&path, body).await };
                if !written.status.is_success() {
                    return written;
                }
                app.get(&path).await
            }
            Op::Wait { minutes } => {
                app.clock.advance_ms(i64::from(*minutes) * 60_000);
                return Res {
                    status: axum::http::StatusCode::OK,
                    body: Value::Null,
                    headers: axum::http::HeaderMap::new(),
                };
            }
        };
        if matches!(op, Op::Create { .. })
            && let Some(id) = res.body["session_id"].as_str()
        {
            self.created.push(id.to_owned());
        }
        res
    }
}

/// The reply with what legitimately differs between the two stores taken out: session ids
/// become their creation index, times become `<time>`, other generated ids `<id>`.
fn normalised(value: &Value, subject: &Subject) -> Value {
    match value {
        Value::String(s) => {
            if let Some(n) = subject.created.iter().position(|id| id == s) {
                return json!(format!("<session {n}>"));
            }
            if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
                return json!("<time>");
            }
            if uuid::Uuid::parse_str(s).is_ok() || s.starts_with("msg_") {
                return json!("<id>");
            }
            value.clone()
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| normalised(v, subject)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                // Cursors encode store positions; their presence is compared, not their bytes.
                .map(|(k, v)| {
                    let v = if k.ends_with("cursor") && v.is_string() {
                        json!("<cursor>")
                    } else {
                        normalised(v, subject)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The policies of one run: an active cap of two with either policy, reached and left again
/// within a sequence. (No rate limit: Redis expires its window on its own clock, which the
/// sequence's waits do not move.)
fn tune(end_oldest: bool, write_hints: bool) -> impl FnOnce(&mut Policy) {
    move |p: &mut Policy| {
        p.max_active_per_user = Some(2);
        p.cap_policy = if end_oldest {
            CapPolicy::EndOldest
        } else {
            CapPolicy::Reject
        };
        p.write_hints_max_bytes = if write_hints { 1 << 20 } else { 0 };
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_embedded_store_and_redis_answer_every_sequence_alike(
        ops in prop::collection::vec(op(), 1..50),
        end_oldest in any::<bool>(),
    ) {
        runtime().block_on(async {
            // The reference and `unread` know nothing of what they wrote last: each change
            // reads first, or is one the store checks and fills in itself (ends, heartbeats,
            // messages: their events are built by Redis's script there). The other two may
            // start from what they wrote last (one script call per write).
            let mut reference = Subject { app: TestApp::with(Kind::Memory, tune(end_oldest, false)).await, created: Vec::new() };
            let mut memory = Subject { app: TestApp::with(Kind::Memory, tune(end_oldest, true)).await, created: Vec::new() };
            let mut redis = Subject { app: TestApp::with(Kind::Redis, tune(end_oldest, true)).await, created: Vec::new() };
            let mut unread = Subject { app: TestApp::with(Kind::Redis, tune(end_oldest, false)).await, created: Vec::new() };
            for (step, op) in ops.iter().enumerate() {
                let expected = reference.apply(op).await;
                for subject in [&mut memory, &mut redis, &mut unread] {
                    let got = subject.apply(op).await;
                    prop_assert_eq!(expected.status, got.status, "step {} {:?}: {} vs {}", step, op, expected.body, got.body);
                    prop_assert_eq!(
                        normalised(&expected.body, &reference),
                        normalised(&got.body, subject),
                        "step {} {:?}", step, op
                    );
                }
            }
            // Racing clients, on each store: one title claimed twice at once (one wins, one
            // conflicts) and two messages appended to one session at once (both count).
            let mut events = Vec::new();
            for subject in [&reference, &memory, &redis, &unread] {
                let outbox = serde_json::to_value(subject.app.outbox().await).unwrap();
                events.push(normalised(&outbox, subject));
            }
            for (other, name) in events[1..].iter().zip(["embedded store with write hints", "Redis", "Redis, nothing known"]) {
                prop_assert_eq!(&events[0], other, "events, {}", name);
            }
            let mut raced = Vec::new();
            for subject in [&mut reference, &mut memory, &mut redis, &mut unread] {
                let app = &subject.app;
                let claim = || app.post("/v1/sessions", json!({"user_id": "racer", "title": "same"}));
                let (a, b) = tokio::join!(claim(), claim());
                let mut statuses = vec![a.status.as_u16(), b.status.as_u16()];
                statuses.sort_unstable();
                let id = [a, b].into_iter().find_map(|r| r.body["session_id"].as_str().map(str::to_owned));
                let id = id.expect("one claim won");
                let messages = format!("/v1/sessions/{id}/messages");
                let append = |n: u8| app.post(&messages, json!({"role": "user", "content": format!("r{n}")}));
                let (x, y) = tokio::join!(append(1), append(2));
                let count = app.get(&format!("/v1/sessions/{id}")).await.body["message_count"].clone();
                raced.push((statuses, x.status.as_u16(), y.status.as_u16(), count));
            }
            for other in &raced[1..] {
                prop_assert_eq!(&raced[0], other, "racing clients");
            }
            prop_assert_eq!(&raced[0], &(vec![201, 409], 201, 201, json!(2)), "racing clients");
            let mut states: Vec<HashMap<u8, Value>> = Vec::new();
            for subject in [&reference, &memory, &redis, &unread] {
                let mut state = HashMap::new();
                for user in 0..USERS {
                    let list = subject.app.get(&format!("/v1/users/u{user}/sessions?limit=100")).await;
                    state.insert(user, normalised(&list.body, subject));
                }
                states.push(state);
            }
            prop_assert_eq!(&states[0], &states[1], "final state, embedded store with write hints");
            prop_assert_eq!(&states[0], &states[2], "final state, Redis");
            prop_assert_eq!(&states[0], &states[3], "final state, Redis, nothing known");
            Ok(())
        })?;
    }
}
