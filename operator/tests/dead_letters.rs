//! `session-operator dead-letters` and `status --url` against a real session service (the
//! sidecar binary's server mode on a real Redis): poison events written to the events stream
//! are set aside by its consumer, and the command lists, shows, replays and discards them with
//! a service token it signs from the SessionService's JWT Secret, read from the API server
//! (the tests' fake; the end-to-end suite runs the same command against a real one).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::time::{Duration, Instant};

use apiserver::FakeApiServer;
use common::prometheus::Sidecar;
use common::redis_server::RedisServer;
use kube::ResourceExt;
use serde_json::{Value, json};
use session_operator::testing::dead_letters::{self, Action, Options};
use session_operator::testing::status_report::{self, Output};

const SECRET: &str = "a-test-signing-key-of-32-bytes!!";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_replayed_and_discarded_from_the_command_line() {
    let ss = common::example("sessionservice-standalone.yaml");
    let (namespace, name) = (ss.namespace().unwrap(), ss.name_any());
    let redis = RedisServer::start();
    let url = redis.url();
    let server = Sidecar::start(
        &name,
        &[
            "--mode",
            "server",
            "--redis-url",
            &url,
            "--jwt-secret",
            SECRET,
            "--key-prefix",
            "shop",
        ],
    )
    .await;

    let (client, fake) = FakeApiServer::start();
    fake.insert(
        &format!("/apis/sessions.io/v1alpha1/namespaces/{namespace}/sessionservices/{name}"),
        serde_json::to_value(&ss).unwrap(),
    );
    fake.insert(
        &format!("/api/v1/namespaces/{namespace}/secrets/{name}-jwt"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": format!("{name}-jwt"), "namespace": namespace},
               "data": {"jwt-secret": data_encoding::BASE64.encode(SECRET.as_bytes())}}),
    );
    let base = format!("http://127.0.0.1:{}", server.api);
    let run = |action: Action, output: Output| {
        let options = Options {
            name: name.clone(),
            namespace: Some(namespace.clone()),
            url: base.clone(),
            output,
            action,
        };
        let client = client.clone();
        async move { dead_letters::run(&client, &options).await }
    };

    assert_eq!(
        run(Action::List, Output::Text).await.unwrap(),
        format!("No dead letters in {namespace}/{name}.\n")
    );
    // Two poison entries on the events stream the consumer reads.
    let stream = "shop:{events}:stream";
    redis.cli(&["XADD", stream, "*", "garbage", "x"]);
    let envelope = json!({"event_id": "9b2f6a3e-54c1-4d8e-9a77-1f0c2d3e4b5a",
        "event_type": "auth.user.renamed.v1", "timestamp": "2026-12-01T10:00:00.000Z",
        "source": "auth", "payload": {"user_id": "u1"}});
    redis.cli(&[
        "XADD",
        stream,
        "*",
        "event_id",
        "9b2f6a3e-54c1-4d8e-9a77-1f0c2d3e4b5a",
        "event_type",
        "auth.user.renamed.v1",
        "envelope",
        &envelope.to_string(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let letters = loop {
        let answer = run(Action::List, Output::Json).await.unwrap();
        let letters: Vec<Value> = serde_json::from_str(&answer).unwrap();
        if letters.len() == 2 {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer did not set both aside: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: Vec<String> = letters
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    let screen = run(Action::List, Output::Text).await.unwrap();
    println!("{screen}");
    for expected in [
        "2 dead letter(s) in",
        "malformed",
        "unknown_type",
        "auth.user.renamed.v1",
        "is not an event type",
    ] {
        assert!(screen.contains(expected), "{expected}: {screen}");
    }
    let shown = run(Action::Show { id: ids[0].clone() }, Output::Text)
        .await
        .unwrap();
    assert!(shown.contains(r#""garbage": "x""#), "{shown}");

    // The status screen counts them when it can reach the service.
    let status = status_report::Options {
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        prometheus: None,
        url: Some(base.clone()),
        output: Output::Text,
        webhook_configuration: "session-operator".to_owned(),
        webhook_secret: "session-operator-webhook-tls".to_owned(),
    };
    let report = status_report::gather(&client, &status).await.unwrap();
    let text = status_report::text(&report);
    assert!(text.contains("Dead letters: 2 (oldest"), "{text}");

    // A malformed entry cannot be replayed: it stays, and the command says why.
    let refused = run(
        Action::Replay {
            id: Some(ids[0].clone()),
            all: false,
        },
        Output::Text,
    )
    .await;
    let message = format!("{:#}", refused.unwrap_err());
    assert!(message.contains("answered 400"), "{message}");
    let all = run(
        Action::Replay {
            id: None,
            all: true,
        },
        Output::Text,
    )
    .await
    .unwrap();
    assert!(
        all.starts_with("Replayed 0 dead letter(s)") && all.contains("2 still fail and stay"),
        "{all}"
    );
    for id in &ids {
        let discarded = run(Action::Discard { id: id.clone() }, Output::Text)
            .await
            .unwrap();
        assert!(
            discarded.starts_with(&format!("Discarded dead letter {id}")),
            "{discarded}"
        );
    }
    assert!(
        run(Action::List, Output::Text)
            .await
            .unwrap()
            .starts_with("No dead letters")
    );
    let missing = run(Action::Show { id: ids[0].clone() }, Output::Text)
        .await
        .unwrap_err();
    assert!(
        format!("{missing:#}").contains("answered 404"),
        "{missing:#}"
    );

    // A wrong signing key is refused by the service, in words.
    fake.insert(
        &format!("/api/v1/namespaces/{namespace}/secrets/{name}-jwt"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": format!("{name}-jwt"), "namespace": namespace},
               "data": {"jwt-secret": data_encoding::BASE64.encode(b"another key entirely, 32 bytes..")}}),
    );
    let unauthorized = run(Action::List, Output::Text).await.unwrap_err();
    assert!(
        format!("{unauthorized:#}").contains("answered 401"),
        "{unauthorized:#}"
    );
    server.stop().await;
}
