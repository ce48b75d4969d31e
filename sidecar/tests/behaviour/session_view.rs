//! The event of a change made without reading the session (an end, from a process that does
//! not know the session) carries the session as the store leaves it: Redis's script writes its
//! API form. Over random documents, that form must be the engine's, value for value: strings
//! with quotes, escapes and any Unicode, times up to the year 9999, counters up to 2^64 - 1.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use session_sidecar::testing::{
    Commit, DocKey, Envelope, Record, SessionEvent, Status, WriteOp, api_form, stored_fields,
};

use crate::harness::{Kind, TestApp};

/// The last year RFC 3339 writes with four digits.
const YEAR_9999_MS: i64 = 253_402_300_799_999;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_-]{1,12}",
        any::<String>(),
        Just("\"quoted\" \\back\\slash/ \u{0}\u{1f}\t\n é 中 🦀".to_owned()),
    ]
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        text(),
        prop_oneof![
            text().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(json!({"nested": [1, 2.5, null, "x"]})),
        ],
        0..4,
    )
    .prop_map(|m| m.into_iter().collect())
}

fn time() -> impl Strategy<Value = i64> {
    prop_oneof![0..=YEAR_9999_MS, 1_600_000_000_000..1_900_000_000_000_i64]
}

fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0_u64), 0..1_000_000_u64, any::<u64>()]
}

prop_compose! {
    fn record()(
        ids in (text(), text(), prop::option::of(text()), prop::option::of(text()), prop::option::of(text())),
        ending in (prop::option::of(time()), prop::option::of(text()), prop::option::of(text())),
        status in prop_oneof![Just(Status::Active), Just(Status::Ended), Just(Status::Expired)],
        current in any::<bool>(),
        objects in (object(), object()),
        times in (time(), time(), time(), prop::option::of(time())),
        version in any::<u64>(),
        messages_by_role in [0..1_u64 << 40, 0..1_u64 << 40, 0..1_u64 << 40, 0..1_u64 << 40],
        totals in (counter(), counter()),
    ) -> Record {
        let (session_id, user_id, org_id, title, case_id) = ids;
        let (ended_ms, end_reason, performer_id) = ending;
        let (created_ms, updated_ms, expires_ms, last_message_ms) = times;
        Record {
            session_id, user_id, org_id, title, case_id, status, current,
            metadata: objects.0, data: objects.1,
            created_ms, updated_ms, expires_ms, ended_ms, end_reason, performer_id,
            version, messages_by_role,
            tokens_total: totals.0, cost_micros: totals.1,
            last_message_ms,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_writes_the_api_form_of_any_session_into_its_event() {
    let app = TestApp::new(Kind::Redis).await;
    let keys = app.sessions.keys().clone();
    let (doc, outbox) = (keys.session(0, "viewed"), keys.outbox(0));
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 1024,
        ..Config::default()
    });
    let result = tokio::task::block_in_place(|| {
        let run = runner.run(&record(), |record| {
            let (fields, tail) = Envelope {
                event_id: "e".into(),
                event_type: "session.ended.v1".into(),
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                source: "session-service".into(),
                correlation_id: None,
                performer_id: None,
                payload: Value::Null,
            }
            .into_stream_fields_around_payload();
            let commit = Commit {
                writes: vec![
                    WriteOp::Del(outbox.clone()),
                    WriteOp::Del(doc.clone()),
                    WriteOp::HSet(doc.clone(), stored_fields(&record)),
                    WriteOp::AppendSessionEvent(SessionEvent {
                        stream: outbox.clone(),
                        fields,
                        session: DocKey::Given(doc.clone()),
                        tail,
                    }),
                ],
                ..Commit::default()
            };
            handle.block_on(async {
                app.backend.commit(commit).await.unwrap();
                let events = app.outbox().await;
                prop_assert_eq!(events.len(), 1);
                prop_assert_eq!(&events[0].payload, &api_form(&record));
                Ok(())
            })
        });
        run.map_err(|failure| failure.to_string())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
