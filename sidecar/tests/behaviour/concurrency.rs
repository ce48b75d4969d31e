//! Concurrency invariants: many clients race on one user (creates with colliding titles,
//! switches, ends, deletes, the active cap); afterwards a checker reads the raw store and
//! verifies that no invariant was broken.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use serde_json::json;
use session_sidecar::testing::{ReadOp, Reply};
use session_sidecar::testing::{Record, Status};

use crate::both_backends;
use crate::harness::{Kind, TestApp, send, types};

both_backends!(racing_clients_on_one_user_break_no_invariant);

pub(crate) const CAP: u32 = 3;
const CLIENTS: usize = 12;
const OPS_PER_CLIENT: usize = 25;
const TITLES: [&str; 4] = ["a", "b", "c", "d"];

async fn racing_clients_on_one_user_break_no_invariant(kind: Kind) {
    // Proves: under concurrent creates (colliding titles), switches, ends and deletes on one
    // user, with maxActivePerUser = 3: one current session, unique titles, the cap, one end
    // event per ended session, distinct event ids, and indexes that match the documents.
    race(&TestApp::with(kind, |p| p.max_active_per_user = Some(CAP)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_clients_on_a_cluster_break_no_invariant() {
    // Proves: the same on a real Redis Cluster.
    let cluster = crate::harness::RedisCluster::start();
    race(&TestApp::on_cluster_with(&cluster, |p| p.max_active_per_user = Some(CAP)).await).await;
}

async fn race(app: &TestApp) {
    let router = app.router.clone();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let router = router.clone();
        clients.spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..OPS_PER_CLIENT {
                let title = TITLES[(c + i) % TITLES.len()];
                let (method, path, body) = match (c + i) % 4 {
                    0 => (
                        "POST",
                        "/v1/sessions".to_owned(),
                        json!({"user_id": "racer", "title": title}),
                    ),
                    1 => (
                        "PUT",
                        "/v1/users/racer/current-session".to_owned(),
                        json!({"title": title}),
                    ),
                    2 => ("END", String::new(), json!({"performer_id": "racer"})),
                    _ => ("DELETE", String::new(), json!({})),
                };
                let status = match method {
                    "END" | "DELETE" => {
                        // Act on some session of the user, whichever the listing shows first.
                        let list = send(&router, "GET", "/v1/users/racer/sessions", None)
                            .await
                            .1;
                        let Some(id) = list["items"]
                            .as_array()
                            .and_then(|a| a.get((c + i) % a.len().max(1)))
                            .and_then(|s| s["session_id"].as_str())
                            .map(str::to_owned)
                        else {
                            continue;
                        };
                        if method == "END" {
                            send(
                                &router,
                                "POST",
                                &format!("/v1/sessions/{id}/end"),
                                Some(body),
                            )
                            .await
                            .0
                        } else {
                            send(&router, "DELETE", &format!("/v1/sessions/{id}"), None)
                                .await
                                .0
                        }
                    }
                    m => send(&router, m, &path, Some(body)).await.0,
                };
                statuses.push(status);
            }
            statuses
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = clients.join_next().await {
        statuses.extend(done.unwrap());
    }
    assert!(
        statuses
            .iter()
            .all(|s| s.is_success() || s.is_client_error()),
        "no 5xx: {statuses:?}"
    );
    assert!(statuses.contains(&StatusCode::CREATED));
    check_invariants(app).await;
}

fn all(key: String) -> ReadOp {
    ReadOp::all_members(key, 100_000)
}

/// Reads the raw state of user `racer` and checks every invariant.
pub(crate) async fn check_invariants(app: &TestApp) {
    let (k, user) = (app.sessions.keys(), "racer");
    let shard = session_sidecar::testing::shard_of(user, app.sessions.policy().shard_count);
    let r = app
        .backend
        .read(vec![
            all(k.user_sessions(shard, user)),
            all(k.user_active(shard, user)),
            ReadOp::Get(k.current(shard, user)),
            ReadOp::HGetAll(k.titles(shard, user)),
            all(k.expiry(shard)),
        ])
        .await
        .unwrap();
    let mut r = r.into_iter();
    let members = |reply: Option<Reply>| -> HashSet<String> {
        reply
            .unwrap()
            .into_scored()
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    };
    let (indexed, active_index) = (members(r.next()), members(r.next()));
    let current = r.next().unwrap().into_opt_string();
    let titles: HashMap<String, String> = r.next().unwrap().into_pairs().into_iter().collect();
    let expiry = members(r.next());
    let docs: Vec<Record> = {
        let ops = indexed
            .iter()
            .map(|id| ReadOp::HGetAll(k.session(shard, id)))
            .collect();
        app.backend
            .read(ops)
            .await
            .unwrap()
            .into_iter()
            .map(|reply| {
                Record::from_fields(reply.into_pairs())
                    .unwrap()
                    .expect("every indexed session has a document")
            })
            .collect()
    };
    // One current session, and the pointer agrees with the documents.
    let flagged: Vec<&Record> = docs.iter().filter(|d| d.current).collect();
    assert!(
        flagged.len() <= 1,
        "{} sessions flagged current",
        flagged.len()
    );
    assert_eq!(
        flagged.first().map(|d| d.session_id.clone()),
        current,
        "current pointer and flags agree"
    );
    // Unique titles, and the title index maps each to its session.
    let mut seen = HashSet::new();
    for d in &docs {
        if let Some(t) = &d.title {
            assert!(seen.insert(t.clone()), "title {t} used twice");
            assert_eq!(titles.get(t), Some(&d.session_id), "title index for {t}");
        }
    }
    assert_eq!(titles.len(), seen.len(), "no stale title entries");
    // The active cap and the active index.
    let active: HashSet<String> = docs
        .iter()
        .filter(|d| d.status == Status::Active)
        .map(|d| d.session_id.clone())
        .collect();
    assert!(
        active.len() <= CAP as usize,
        "{} active sessions over the cap",
        active.len()
    );
    assert_eq!(active, active_index, "active index matches the documents");
    assert!(
        indexed.is_subset(&expiry),
        "every session is in the expiry queue"
    );
    // Events: distinct ids; one end event per ended session; one create per session created.
    let events = app.outbox().await;
    let ids: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are distinct");
    let mut ends: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.event_type == "session.ended.v1") {
        *ends
            .entry(e.payload["session_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        ends.values().all(|n| *n == 1),
        "one end event per session: {ends:?}"
    );
    for d in docs.iter().filter(|d| d.status == Status::Ended) {
        assert_eq!(
            ends.get(&d.session_id),
            Some(&1),
            "ended session {} has its event",
            d.session_id
        );
    }
    let created = types(&events)
        .iter()
        .filter(|t| **t == "session.created.v1")
        .count();
    let deleted = types(&events)
        .iter()
        .filter(|t| **t == "session.deleted.v1")
        .count();
    assert_eq!(
        created - deleted,
        docs.len(),
        "creates minus deletes = sessions that exist"
    );
}
