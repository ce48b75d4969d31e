//! A patch or a memory merge of a session the process does not know is merged in Redis, on the
//! JSON text (`commit.lua`). Over random objects, Redis must write what the engine writes: the
//! same bytes (compact, members in key order, numbers as their text), and refuse a result past
//! the size limit exactly where the engine's would pass it.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value};
use session_sidecar::testing::{Commit, CommitOutcome, Guard, NamedBy, WriteOp, merged};

use crate::harness::{Kind, TestApp};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]{0,2}",
        any::<String>(),
        Just("\"q\" \\b\\ / \u{0}\u{1f}\t\n é 中 🦀".to_owned()),
        Just("a\n".to_owned()), // escaped, and ordered by its bytes, not its escape
        Just("a\u{7f}".to_owned()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        // Numbers as a client writes them, kept as their text.
        "-?[0-9]{1,30}(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?"
            .prop_map(|n| serde_json::from_str(&n).unwrap_or(Value::Null)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(text(), value(), 0..6).prop_map(|m| m.into_iter().collect())
}

/// A patch that also names some of the target's own keys (to merge into or remove).
fn target_and_patch() -> impl Strategy<Value = (Map<String, Value>, Map<String, Value>)> {
    (object(), object()).prop_flat_map(|(target, patch)| {
        let mut keys: Vec<String> = target.keys().cloned().collect();
        if keys.is_empty() {
            keys.push(String::new());
        }
        let shared = prop::collection::vec((prop::sample::select(keys), value()), 0..4);
        (Just(target), Just(patch), shared).prop_map(|(target, mut patch, shared)| {
            patch.extend(shared);
            (target, patch)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_merges_any_patch_as_the_engine_does() {
    let app = TestApp::new(Kind::Redis).await;
    let (memory, doc) = (
        app.sessions.keys().memory(0, "merged"),
        app.sessions.keys().session(0, "merged"),
    );
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 1024,
        ..Config::default()
    });
    let result = tokio::task::block_in_place(|| {
        let run = runner.run(&target_and_patch(), |(target, patch)| {
            let expected = merged(&target, &patch);
            let (target, patch) = (
                Value::Object(target).to_string(),
                Value::Object(patch).to_string(),
            );
            let size = expected.len() as u64;
            let at_field = NamedBy::Field(doc.clone(), "data".into());
            handle.block_on(async {
                // Where the object is held, and the write that puts it there.
                let in_memory = (
                    NamedBy::Value(memory.clone()),
                    WriteOp::Set(memory.clone(), target.clone()),
                );
                let in_field = (
                    at_field.clone(),
                    WriteOp::HSet(doc.clone(), vec![("data".into(), target.clone())]),
                );
                for ((at, put), max, applies) in [
                    (in_memory.clone(), size, true),
                    (in_field, size, true),
                    (in_memory, size - 1, false),
                ] {
                    let setup = Commit {
                        writes: vec![put],
                        ..Commit::default()
                    };
                    app.backend.commit(setup).await.unwrap();
                    let commit = Commit {
                        guards: vec![Guard::MergedWithin(at.clone(), patch.clone(), max)],
                        writes: vec![WriteOp::MergeJson(at, patch.clone())],
                        ..Commit::default()
                    };
                    match app.backend.commit(commit).await.unwrap() {
                        CommitOutcome::Applied(applied) => {
                            prop_assert!(applies, "applied past the limit");
                            prop_assert_eq!(applied.merged.as_deref(), Some(expected.as_str()));
                        }
                        other => prop_assert!(!applies, "refused within the limit: {other:?}"),
                    }
                }
                Ok(())
            })
        });
        run.map_err(|failure| failure.to_string())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
