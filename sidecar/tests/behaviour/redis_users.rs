//! Least privilege in Redis: the users the operator renders, on a real `redis-server` and a
//! real 6-node cluster. The rest of the suite already runs as the sidecar user (its API) and the
//! server user (background work); this file proves what each may not do.

use axum::http::StatusCode;
use serde_json::json;
use session_sidecar::contract::acl::Role;

use crate::common::{RedisCluster, RedisServer};
use crate::harness::{Kind, TestApp};

/// What no client user may run: every call is refused (`NOPERM`; inside a script "The user
/// executing the script can't run this command").
const REFUSED: &[&[&str]] = &[
    &["flushall"],
    &["flushdb"],
    &["config", "get", "*"],
    &["config", "set", "maxmemory", "1"],
    &["keys", "*"],
    &["scan", "0"],
    &["debug", "sleep", "0"],
    &["shutdown", "nosave"],
    &["module", "list"],
    &["acl", "list"],
    &["acl", "setuser", "sidecar", "+@all"],
    &["client", "kill", "type", "normal"],
    &["monitor"],
    &["cluster", "reset"],
    &["replicaof", "no", "one"],
    &["eval", "return redis.call('flushall')", "0"],
    &["get", "other-app:secret"],
    &["set", "other-app:secret", "x"],
];

/// Reads only the server may make: the events stream and its dead letters.
const SERVER_ONLY: &[&[&str]] = &[
    &["xrange", "t:{events}:stream", "-", "+"],
    &["xrange", "t:{events}:dead-letters", "-", "+"],
    &["get", "t:{events}:consumer-offset"],
    &["xdel", "t:{0}:outbox", "1-0"],
    &["zadd", "t:{o:acme}:sessions", "1", "x"],
];

async fn answer(
    url: &str,
    cluster: bool,
    call: &[&str],
) -> Result<redis::Value, redis::RedisError> {
    let mut cmd = redis::cmd(call[0]);
    for arg in &call[1..] {
        cmd.arg(*arg);
    }
    if cluster {
        let seeds: Vec<&str> = url.split(',').collect();
        let mut conn = redis::cluster::ClusterClient::new(seeds)
            .unwrap()
            .get_async_connection()
            .await
            .unwrap();
        cmd.query_async(&mut conn).await
    } else {
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        cmd.query_async(&mut conn).await
    }
}

async fn assert_refused(url: &str, cluster: bool, user: &str, calls: &[&[&str]]) {
    for call in calls {
        let reply = answer(url, cluster, call).await;
        // DEBUG is off on every server too (`enable-debug-command no`), which Redis checks
        // before the user's rules.
        let refused = match &reply {
            Err(e) => {
                e.code() == Some("NOPERM")
                    || e.to_string()
                        .contains("The user executing the script can't")
                    || (call[0] == "debug" && e.to_string().contains("DEBUG command not allowed"))
            }
            Ok(_) => false,
        };
        assert!(refused, "{user} ran `{}`: {reply:?}", call.join(" "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_users_may_not_run_admin_commands_or_touch_keys_outside_the_prefix() {
    // Proves: on the rendered ACL file, the sidecar and the server users are refused every
    // dangerous command and every key outside the prefix; the sidecar also the events stream,
    // dead letters and stream deletes, which the server may use; `default` is off.
    let redis = RedisServer::start();
    let sidecar = redis.url_as(Role::Sidecar);
    let server = redis.url_as(Role::Server);
    assert_refused(&sidecar, false, "sidecar", REFUSED).await;
    assert_refused(&sidecar, false, "sidecar", SERVER_ONLY).await;
    assert_refused(&server, false, "server", REFUSED).await;
    for call in SERVER_ONLY {
        answer(&server, false, call)
            .await
            .unwrap_or_else(|e| panic!("server could not run `{}`: {e}", call.join(" ")));
    }
    let ok = answer(
        &sidecar,
        false,
        &["zrevrangebyscore", "t:{o:acme}:sessions", "+inf", "-inf"],
    );
    ok.await.expect("the sidecar reads org listings");
    let anonymous = format!("redis://127.0.0.1:{}", redis.port);
    let refused = answer(&anonymous, false, &["ping"]).await.unwrap_err();
    assert!(
        refused.to_string().contains("NOAUTH"),
        "default user: {refused}"
    );
    assert!(redis.cli(&["acl", "whoami"]).contains("admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_sidecar_user_is_limited_alike_and_the_suite_runs_on_it() {
    // Proves: the same rules on every node of a 6-node cluster (replicas sync as the
    // replication user), refusals routed to whichever node serves the key, and the app on it
    // as the sidecar user creates, reads and ends sessions.
    let cluster = RedisCluster::start();
    let sidecar = cluster.url_as(Role::Sidecar);
    let keyed: Vec<&[&str]> = REFUSED
        .iter()
        .chain(SERVER_ONLY)
        .copied()
        .filter(|c| {
            // Keyless commands go to a random node; the keyed ones prove the routing.
            matches!(c[0], "get" | "set" | "xrange" | "xdel" | "zadd")
        })
        .collect();
    assert_refused(&sidecar, true, "sidecar", &keyed).await;
    let app = TestApp::on_cluster(&cluster).await;
    let id = app.create_id("u1", json!({})).await;
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.status,
        StatusCode::OK
    );
    let ended = app.end(&id, json!({"performer_id": "u1"})).await;
    assert_eq!(ended.status, StatusCode::OK);
    assert_eq!(app.relay().await, 2, "the server user relays both events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_is_a_clear_error_and_does_not_open_the_circuit() {
    // Proves: the dead letters, which the sidecar user may not read, answer 500
    // store_permission_denied (retrying cannot help), and the refusals do not count as Redis
    // failures: after many of them a session is still created and read.
    let app = TestApp::new(Kind::Redis).await;
    for _ in 0..20 {
        let res = app.get("/v1/dead-letters").await;
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.code(), "store_permission_denied");
        assert!(res.headers.get("retry-after").is_none());
    }
    let id = app.create_id("u1", json!({})).await;
    assert_eq!(
        app.get(&format!("/v1/sessions/{id}")).await.status,
        StatusCode::OK
    );
    let service = TestApp::of_service(Kind::Redis).await;
    assert_eq!(service.get("/v1/dead-letters").await.status, StatusCode::OK);
}

#[test]
fn the_readme_gives_the_rules_the_code_checks() {
    // Proves: the ACL rules the README tells external-Redis users to grant are the ones the
    // code defines and checks at connect (for the default key prefix).
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let keys = session_sidecar::contract::Keys::new(session_sidecar::config::DEFAULT_KEY_PREFIX);
    for role in [Role::Sidecar, Role::Server] {
        let line = format!(
            "ACL SETUSER {} on >PASSWORD {}",
            role.user(),
            role.rules(&keys)
        );
        assert!(readme.contains(&line), "the README lacks: {line}");
    }
}
