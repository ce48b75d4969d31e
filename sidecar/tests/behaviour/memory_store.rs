//! The embedded store under churn: keys with a time to live (rate-limit counters, leases)
//! expire on the engine's clock and are freed when due even if nobody reads them again, ended
//! sessions are expired by the sweeper, so the number of keys stays flat round after round.

use std::sync::Arc;

use serde_json::json;
use session_sidecar::testing::MemoryBackend;
use session_sidecar::testing::{Clock, ManualClock, SystemClock};
use session_sidecar::testing::{relay_once, sweep_once};

use crate::harness::TestApp;

const USERS: usize = 40;
const ROUNDS: usize = 12;
const WINDOW_MS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_frees_what_expires_and_stays_flat_under_churn() {
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let store = Arc::new(MemoryBackend::with_clock(clock.clone()));
    let app = TestApp::on_memory(store.clone(), clock.clone(), |p| {
        // Three creations per user and minute: every round uses the whole allowance, so a
        // counter that did not expire on the engine's clock would refuse the next round.
        p.create_rate_limit = Some(3);
        p.create_rate_window_ms = WINDOW_MS;
        p.default_ttl_ms = 120_000;
        p.ended_retention_ms = 60_000;
        p.events_max_len = 1_000;
    })
    .await;
    let mut counts = Vec::new();
    for round in 0..ROUNDS {
        for user in 0..USERS {
            let user = format!("u{user}");
            let ids = [
                app.create_id(&user, json!({"title": format!("r{round}a")}))
                    .await,
                app.create_id(&user, json!({"title": format!("r{round}b")}))
                    .await,
                app.create_id(&user, json!({})).await,
            ];
            app.end(&ids[0], json!({"performer_id": user})).await;
            app.delete(&format!("/v1/sessions/{}", ids[1])).await;
            // One user also leaves a rate-limit counter nobody reads again.
            if user == "u0" {
                app.create_id(&format!("once{round}"), json!({})).await;
            }
        }
        // Past every window, TTL and retention: what is left is what stays.
        clock.advance_ms(120_000 + 60_000 + 1);
        while sweep_once(&app.background).await.unwrap() > 0 {}
        while relay_once(&app.background, "churn").await.unwrap() > 0 {}
        let keys = store.keys();
        let transient: Vec<&String> = keys
            .iter()
            .filter(|k| k.contains(":rl:") || k.ends_with("-lock"))
            .collect();
        assert!(
            transient.is_empty(),
            "due keys freed without a read: {transient:?}"
        );
        counts.push(keys.len());
    }
    println!("keys after each round: {counts:?}");
    // Each one-off user leaves only its version counter; everything else is flat.
    for (round, pair) in counts.windows(2).enumerate() {
        assert!(
            pair[1] <= pair[0] + 1,
            "round {}: {} keys after {}",
            round + 1,
            pair[1],
            pair[0]
        );
    }
    assert!(counts[ROUNDS - 1] <= counts[1] + ROUNDS, "{counts:?}");
}
