//! Redis Cluster day 2 under live load: two real `session-sidecar` processes serve creates,
//! reads and ends through every step the operator's cluster manager takes — scale-out 3 → 6
//! masters and back, a rolling restart of every node, a full restart with new IPs — and
//! afterwards every acknowledged write is still there. Prints, per step, the requests, the
//! failures, the unavailability window and the latency.
//!
//! The sidecars resolve the nodes' announced DNS names through a hosts file the test controls
//! (bind-mounted over `/etc/hosts` in a private mount namespace with `unshare`), so a node
//! restarted on a new address is found under its old name, as in Kubernetes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_cluster::{Cluster, SHARDS, access, heal, roll, shape};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use session_operator::testing::cluster::{Phase, converge_once};
use tokio::net::TcpStream;

/// Requests per second the load aims at (over both sidecars).
const RATE: u64 = 2_000;
const WORKERS: u64 = 16;

/// The sidecar under load: `SESSION_SIDECAR_BIN` (for example a release build, to measure at
/// the full rate), else the one built with this test.
fn sidecar_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SESSION_SIDECAR_BIN") {
        return PathBuf::from(bin);
    }
    // target/<profile>/deps/cluster_load-… → target/<profile>/session-sidecar
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("session-sidecar");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test --workspace` builds it",
        bin.display()
    );
    bin
}

struct Sidecar {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn start(cluster: &Cluster, hosts: &std::path::Path, addr: SocketAddr) -> Self {
        let seeds = (0..3)
            .map(|i| {
                format!(
                    "redis://sidecar:test-sidecar-password@{}:{}",
                    cluster.host(i),
                    cluster.port
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let child = Command::new("unshare")
            .args([
                "-m",
                "sh",
                "-c",
                "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
            ])
            .arg(hosts)
            .arg(sidecar_binary())
            .args(["--listen", &addr.to_string(), "--redis-url", &seeds])
            .args(["--redis-cluster", "--shard-count", &SHARDS.to_string()])
            .args(["--create-rate-limit", "0", "--log-format", "text"])
            .env(
                "RUST_LOG",
                std::env::var("SIDECAR_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            // Logs (stdout) reach the test's output only when asked for with SIDECAR_LOG.
            .stdout(if std::env::var_os("SIDECAR_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux) runs the sidecar in its own mount namespace");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the sidecar did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }
}

/// One HTTP/1.1 connection that reconnects after an error.
struct Client {
    addr: SocketAddr,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().unwrap();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((
                status,
                serde_json::from_slice(&bytes.to_bytes()).unwrap_or(Value::Null),
            ))
        })
        .await;
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err("no answer within 5 s".to_owned())
            }
        }
    }
}

/// One request as the load saw it.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    latency: Duration,
    ok: bool,
}

/// The status an acknowledged session must have when read back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Active,
    /// The end was acknowledged.
    Ended,
    /// An end was sent and failed (a timeout or 503): it may or may not have been applied.
    Either,
}

/// What the load wrote and what it saw.
#[derive(Default)]
struct Record {
    samples: Vec<Sample>,
    /// Acknowledged creates: (session id, user, what its status must be).
    sessions: Vec<(String, String, Expect)>,
    failures: Vec<String>,
}

async fn worker(
    addr: SocketAddr,
    id: u64,
    start: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
    record: Arc<Mutex<Record>>,
) {
    let mut client = Client { addr, sender: None };
    let interval = Duration::from_micros(1_000_000 * WORKERS / RATE);
    let mut next = Instant::now();
    let mut n = 0u64;
    let mut last: Option<(String, String)> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        next += interval;
        tokio::time::sleep_until(next.into()).await;
        n += 1;
        let sent = Instant::now();
        let (what, expected, result) = match (&last, n % 5) {
            (Some((sid, _)), 0) => {
                let r = client
                    .call(
                        "POST",
                        &format!("/v1/sessions/{sid}/end"),
                        Some(json!({"performer_id": "system"})),
                    )
                    .await;
                ("end", 200, r)
            }
            (Some((sid, _)), 1 | 3) => (
                "get",
                200,
                client
                    .call("GET", &format!("/v1/sessions/{sid}"), None)
                    .await,
            ),
            _ => {
                let user = format!("load-{id}-{n}");
                (
                    "create",
                    201,
                    client
                        .call("POST", "/v1/sessions", Some(json!({"user_id": user})))
                        .await,
                )
            }
        };
        let latency = sent.elapsed();
        let ok = matches!(&result, Ok((status, _)) if *status == expected);
        let mut r = record.lock().unwrap();
        r.samples.push(Sample {
            at: sent - start,
            latency,
            ok,
        });
        match (what, &result) {
            ("create", Ok((201, body))) => {
                let sid = body["session_id"].as_str().unwrap().to_owned();
                let user = body["user_id"].as_str().unwrap().to_owned();
                r.sessions.push((sid.clone(), user.clone(), Expect::Active));
                last = Some((sid, user));
            }
            ("end", result) => {
                let outcome = if matches!(result, Ok((200, _))) {
                    Expect::Ended
                } else {
                    Expect::Either
                };
                if let Some((sid, _)) = last.take()
                    && let Some(s) = r.sessions.iter_mut().rev().find(|s| s.0 == sid)
                {
                    s.2 = outcome;
                }
            }
            _ => {}
        }
        if !ok && r.failures.len() < 20 {
            r.failures.push(format!("{what}: {result:?}"));
        }
    }
}

/// Runs the operator's work on a thread of its own, as the operator is a process of its own:
/// sharing the test's runtime with the load would delay its commands behind the load's tasks
/// and stretch every slot move.
fn as_operator<F: std::future::Future + Send>(work: F) -> F::Output
where
    F::Output: Send,
{
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(work)
                })
                .join()
                .unwrap()
        })
    })
}

/// A named interval of the run.
struct Step {
    name: String,
    from: Duration,
    to: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Prints one line per step; returns (name, requests, failed requests, unavailability window).
fn summarize(steps: &[Step], samples: &[Sample]) -> Vec<(String, usize, usize, Duration)> {
    let mut out = Vec::new();
    for step in steps {
        let inside: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at >= step.from && s.at < step.to)
            .collect();
        let failed: Vec<&&Sample> = inside.iter().filter(|s| !s.ok).collect();
        let window = match (failed.first(), failed.last()) {
            (Some(a), Some(b)) => b.at + b.latency - a.at,
            _ => Duration::ZERO,
        };
        let mut latencies: Vec<Duration> = inside.iter().map(|s| s.latency).collect();
        latencies.sort();
        let seconds = (step.to - step.from).as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rate = inside.len() as f64 / seconds.max(0.001);
        println!(
            "{:<28} {:>6.1} s {:>6} requests ({:>5.0}/s) {:>5} failed, unavailable {:>6.2} s, p50 {:>7.2} ms, p99 {:>7.2} ms, max {:>7.1} ms",
            step.name,
            seconds,
            inside.len(),
            rate,
            failed.len(),
            window.as_secs_f64(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
        out.push((step.name.clone(), inside.len(), failed.len(), window));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_keep_serving_through_scaling_rolling_restarts_and_a_full_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let mut cluster = Cluster::start(21, 6);
    cluster.hosts = Some(hosts.clone());
    cluster.write_hosts();
    let three = shape(3, 1);
    heal(&cluster, &three, "bootstrap").await;

    let sidecars: Vec<Sidecar> = (0..2)
        .map(|i| {
            let port = common::free_cluster_port();
            Sidecar::start(
                &cluster,
                &hosts,
                format!("127.0.21.{}:{port}", 200 + i).parse().unwrap(),
            )
        })
        .collect();
    let start = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let addr = sidecars[usize::try_from(w).unwrap() % sidecars.len()].addr;
        workers.push(tokio::spawn(worker(
            addr,
            w,
            start,
            stop.clone(),
            record.clone(),
        )));
    }
    let mut steps = Vec::new();
    let mut mark = |name: &str, from: Duration| {
        steps.push(Step {
            name: name.to_owned(),
            from,
            to: start.elapsed(),
        });
    };

    let t = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    mark("steady (3 masters)", t);

    let t = start.elapsed();
    cluster.add(6);
    as_operator(heal(&cluster, &shape(6, 1), "scale-out 3 -> 6 under load"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    mark("scale-out 3 -> 6 masters", t);

    let t = start.elapsed();
    let report = as_operator(heal(&cluster, &three, "scale-in 6 -> 3 under load"));
    assert_eq!(report.plan.hold_pods, 6);
    for i in 6..12 {
        cluster.nodes[i].stop();
    }
    cluster.nodes.truncate(6);
    cluster.write_hosts();
    as_operator(heal(&cluster, &three, "after the StatefulSet shrank"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    mark("scale-in 6 -> 3 masters", t);

    let t = start.elapsed();
    for node in &mut cluster.nodes {
        node.outdated = true;
    }
    let (restarts, failovers) = as_operator(roll(&mut cluster, &three, 1));
    println!("rolling restart: {restarts} restarts, {failovers} failovers");
    tokio::time::sleep(Duration::from_secs(1)).await;
    mark("rolling restart of 6 nodes", t);

    let t = start.elapsed();
    for node in &mut cluster.nodes {
        node.stop();
    }
    for i in 0..6 {
        cluster.restart_on(i, 2);
    }
    let last_started = Instant::now();
    let report = as_operator(heal(
        &cluster,
        &three,
        "full restart with new IPs under load",
    ));
    let healed = last_started.elapsed();
    println!(
        "full restart: cluster_state ok {:.1} s after the last node started",
        healed.as_secs_f64()
    );
    assert!(healed < Duration::from_secs(30), "{}", report.plan.message);
    // The sidecars reconnect and their breakers close again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    mark("full restart, new IPs", t);

    // Both sidecars serve again by themselves (no restart).
    for sidecar in &sidecars {
        let mut client = Client {
            addr: sidecar.addr,
            sender: None,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let probe = client
                .call(
                    "POST",
                    "/v1/sessions",
                    Some(json!({"user_id": "recovery-probe"})),
                )
                .await;
            if matches!(probe, Ok((201, _))) {
                break;
            }
            if Instant::now() > deadline {
                let ready = client.call("GET", "/readyz", None).await;
                let metrics = client.call("GET", "/metrics", None).await;
                panic!(
                    "sidecar {} does not serve 15 s after the full restart: {probe:?}; /readyz: {ready:?}; metrics: {metrics:?}",
                    sidecar.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let record = std::mem::take(&mut *record.lock().unwrap());
    let results = summarize(&steps, &record.samples);
    for failure in &record.failures {
        println!("  failure: {failure}");
    }

    // Every acknowledged write is there, read back through both sidecars in parallel.
    let sessions = Arc::new(record.sessions.clone());
    let mut readers = Vec::new();
    for r in 0..8usize {
        let (sessions, addr) = (sessions.clone(), sidecars[r % 2].addr);
        readers.push(tokio::spawn(async move {
            let mut client = Client { addr, sender: None };
            let mut lost = Vec::new();
            for (sid, user, expect) in sessions.iter().skip(r).step_by(8) {
                let path = format!("/v1/sessions/{sid}");
                let mut answer = client.call("GET", &path, None).await;
                for _ in 0..3 {
                    if answer.is_ok() {
                        break;
                    }
                    answer = client.call("GET", &path, None).await;
                }
                let (status, body) = answer.unwrap_or_else(|e| panic!("reading {sid} back: {e}"));
                let status_ok = match expect {
                    Expect::Active => body["status"] == "active",
                    Expect::Ended => body["status"] == "ended",
                    Expect::Either => body["status"] == "active" || body["status"] == "ended",
                };
                if status != 200 || body["user_id"] != user.as_str() || !status_ok {
                    lost.push(format!("{sid}: {status} {body}"));
                }
            }
            lost
        }));
    }
    let mut lost = Vec::new();
    for r in readers {
        lost.extend(r.await.unwrap());
    }
    println!(
        "acknowledged writes: {} sessions ({} ended), lost {}",
        record.sessions.len(),
        record
            .sessions
            .iter()
            .filter(|s| s.2 == Expect::Ended)
            .count(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, first: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    for (name, requests, failed, window) in &results {
        if name.starts_with("steady") {
            assert_eq!(*failed, 0, "{name}");
        }
        // Moving slots and rolling pods aim at zero failed requests (what almost every run
        // prints); on this two-core machine, saturated by the load, twelve Redis nodes, two
        // debug sidecars and the operator, one run in about ten saw one burst of 1 s timeouts
        // during a slot move. Fail on anything beyond such a burst.
        if name.starts_with("scale") || name.starts_with("rolling") {
            assert!(
                *failed * 200 <= *requests && *window <= Duration::from_secs(2),
                "{name}: {failed} of {requests} requests failed over {window:?}"
            );
        }
    }
    let final_state = converge_once(&cluster.members(), &[], &access(), &three).await;
    assert_eq!(final_state.plan.phase, Phase::Ready);
}
