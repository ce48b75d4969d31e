//! The write section: creates, message appends and ends per second over many users, and what
//! each costs Redis: calls to Redis per write (reads and commits, from the sidecar's own
//! `session_redis_command_duration_seconds` counts), the scripts' microseconds per write (from
//! `INFO commandstats`), and the Redis main thread's CPU per write (from `INFO cpu`). Beside
//! them, Redis's own `EVALSHA` of a trivial script on as many connections: the ceiling of any
//! design that makes one script call per write.
//!
//! Each phase is a closed loop (every connection sends its next write when the last one is
//! answered), so the rate is the sustained maximum and the latency is that of a saturated server.
//! Message appends run twice: to each user's current session (written by this sidecar, so known
//! to its hints: an application writing to its own session), then round-robin over every
//! session created (mostly unknown: another pod's sessions). With a second sidecar whose users
//! may hold 3 active sessions (end-oldest), creates over fewer users run past that cap: each
//! but the first three of a user's ends its oldest active session in the same call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::load::{histogram, micros};
use crate::suite::{Client, ms};

/// Settings of `session-bench writes` (Redis and the sidecar are started by `bench/run.sh writes`).
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    redis_url: String,
    /// The sidecar to write through (its outbox limit raised: no relay runs).
    #[arg(long)]
    writer: SocketAddr,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// The users the creates are spread over.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// A sidecar whose users may hold 3 active sessions, ending the oldest (`bench/run.sh`
    /// starts it so): creates past the cap are measured through it.
    #[arg(long)]
    capped_writer: Option<SocketAddr>,
}

/// The users creates past the cap are spread over: in a phase each makes far more than 3.
const CAPPED_USERS: usize = 1_000;

/// The write section alone.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(args.seconds);
    let rows = measure(
        args.writer,
        args.capped_writer,
        &args.redis_url,
        args.users,
        args.connections,
        seconds,
    )
    .await?;
    print(&rows, args.connections, args.users);
    Ok(())
}

/// The measured figures of one phase.
pub struct Row {
    pub name: &'static str,
    pub writes: u64,
    pub errors: u64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Calls to Redis per write: the sidecar's reads and commits (for the trivial script, its
    /// script calls).
    pub calls: f64,
    /// Microseconds Redis spent inside those calls, per write.
    pub script_us: f64,
    /// Microseconds of the Redis main thread's CPU (user + system), per write.
    pub cpu_us: f64,
}

/// The commands that run a script, as `INFO commandstats` names them.
const SCRIPT_COMMANDS: [&str; 6] = [
    "evalsha",
    "evalsha_ro",
    "eval",
    "eval_ro",
    "fcall",
    "fcall_ro",
];

/// The counters read before and after a phase.
#[derive(Default, Clone, Copy)]
struct Counters {
    /// The sidecar's reads and commits (0 without a sidecar).
    sidecar_calls: u64,
    script_calls: u64,
    script_usec: u64,
    cpu_us: f64,
}

async fn counters(
    redis: &mut redis::aio::MultiplexedConnection,
    sidecar: Option<SocketAddr>,
) -> anyhow::Result<Counters> {
    let sidecar_calls = match sidecar {
        Some(addr) => calls_to_redis(addr).await?,
        None => 0,
    };
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .arg("cpu")
        .query_async(redis)
        .await?;
    let mut out = Counters {
        sidecar_calls,
        ..Counters::default()
    };
    let (mut main_thread, mut whole) = (0.0, 0.0);
    for line in info.lines() {
        if let Some((name, stats)) = line.split_once(':') {
            if let Some(command) = name.strip_prefix("cmdstat_")
                && SCRIPT_COMMANDS.contains(&command)
            {
                for field in stats.split(',') {
                    match field.split_once('=') {
                        Some(("calls", v)) => out.script_calls += v.parse::<u64>()?,
                        Some(("usec", v)) => out.script_usec += v.parse::<u64>()?,
                        _ => {}
                    }
                }
            }
            match name {
                "used_cpu_user_main_thread" | "used_cpu_sys_main_thread" => {
                    main_thread += stats.trim().parse::<f64>()? * 1e6;
                }
                "used_cpu_user" | "used_cpu_sys" => whole += stats.trim().parse::<f64>()? * 1e6,
                _ => {}
            }
        }
    }
    // Redis before 7.0 reports the whole process only.
    out.cpu_us = if main_thread > 0.0 {
        main_thread
    } else {
        whole
    };
    Ok(out)
}

/// The reads and commits the sidecar at `addr` has sent to Redis, each one call, from its
/// metrics (the count of `session_redis_command_duration_seconds` by `op`).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
async fn calls_to_redis(addr: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = Client::new(addr)
        .await?
        .call("GET", "/metrics", None)
        .await?;
    anyhow::ensure!(status == 200, "GET /metrics answered {status}");
    let text = String::from_utf8(body.to_vec())?;
    let calls = text
        .lines()
        .filter(|l| l.starts_with("session_redis_command_duration_seconds_count{"))
        .filter(|l| l.contains("op=\"read\"") || l.contains("op=\"commit\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    Ok(calls as u64)
}

/// What each request of a phase sends.
#[derive(Clone, Copy)]
enum Write {
    /// A new session of one of `users` users (each user's previous one stops being current).
    Create { users: usize },
    /// A message appended to the session each user created last, still current: this sidecar
    /// wrote it, so its hints know it (what an application writing to its own session does).
    MessageToCurrent,
    /// A message appended to a session created before.
    Message,
    /// A session created before is ended.
    End,
    /// A new session of one of `users` users, through a sidecar whose users may hold 3 active
    /// sessions: past that, the user's oldest active session is ended.
    CreatePastCap { users: usize },
}

impl Write {
    fn name(self) -> &'static str {
        match self {
            Write::Create { .. } => "create",
            Write::MessageToCurrent => "message append, current session",
            Write::Message => "message append",
            Write::End => "end",
            Write::CreatePastCap { .. } => "create past the active cap (end-oldest)",
        }
    }

    /// What the users a phase creates for are named after: those past the cap are others (a
    /// title of theirs is then never one another phase gave them).
    fn users_named(self) -> &'static str {
        match self {
            Write::CreatePastCap { .. } => "capped",
            _ => "writer",
        }
    }

    /// Request `i`: method, path, body and the status that means it worked. `None` when the
    /// phase has used every session it may write to.
    fn request(
        self,
        i: usize,
        ids: &[String],
    ) -> Option<(&'static str, String, serde_json::Value, u16)> {
        Some(match self {
            Write::Create { users } | Write::CreatePastCap { users } => (
                "POST",
                "/v1/sessions".to_owned(),
                json!({"user_id": format!("{}-{}", self.users_named(), i % users), "title": format!("write {i}"),
                       "metadata": {"client": "bench"}, "data": {"step": 1}}),
                201,
            ),
            Write::Message | Write::MessageToCurrent => (
                "POST",
                format!("/v1/sessions/{}/messages", ids.get(i % ids.len().max(1))?),
                json!({"role": "user", "content": "How do I reset my password?", "tokens": 9, "cost": 0.0001}),
                201,
            ),
            Write::End => (
                "POST",
                format!("/v1/sessions/{}/end", ids.get(i)?),
                json!({"performer_id": "bench"}),
                200,
            ),
        })
    }
}

/// What the workers of one phase measured.
struct Measured {
    hist: Histogram<u64>,
    errors: u64,
    elapsed: Duration,
}

/// Runs `write` on `connections` keep-alive connections for `duration` (or until it runs out of
/// sessions); created session ids are added to `created`, each with its request's number.
async fn http_phase(
    addr: SocketAddr,
    write: Write,
    ids: Arc<Vec<String>>,
    created: Arc<Mutex<Vec<(usize, String)>>>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let end = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let mut client = Client::new(addr).await?;
        let (next, ids, created) = (next.clone(), ids.clone(), created.clone());
        workers.spawn(async move {
            let (mut hist, mut errors, mut mine) = (histogram(), 0u64, Vec::new());
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((method, path, body, expected)) = write.request(i, &ids) else {
                    break;
                };
                let sent = Instant::now();
                let (status, bytes) = client.call(method, &path, Some(&body)).await?;
                hist.record(micros(sent))?;
                if status != expected {
                    errors += 1;
                    continue;
                }
                if let Write::Create { .. } = write {
                    let doc: serde_json::Value = serde_json::from_slice(&bytes)?;
                    mine.push((i, doc["session_id"].as_str().unwrap_or_default().to_owned()));
                }
            }
            if let Ok(mut all) = created.lock() {
                all.extend(mine);
            }
            anyhow::Ok((hist, errors))
        });
    }
    gather(workers, started).await
}

/// Redis's own `EVALSHA` of `return 1` on `connections` connections for `duration`.
async fn trivial_script_phase(
    url: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let client = redis::Client::open(url)?;
    let mut setup = client.get_multiplexed_async_connection().await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 1")
        .query_async(&mut setup)
        .await?;
    let started = Instant::now();
    let end = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        // One connection each, as each HTTP connection of the sidecar phases is one client.
        let mut conn = client.get_multiplexed_async_connection().await?;
        let sha = sha.clone();
        workers.spawn(async move {
            let (mut hist, mut errors) = (histogram(), 0u64);
            while Instant::now() < end {
                let sent = Instant::now();
                let reply: redis::RedisResult<i64> = redis::cmd("EVALSHA")
                    .arg(&sha)
                    .arg(0)
                    .query_async(&mut conn)
                    .await;
                hist.record(micros(sent))?;
                errors += u64::from(reply.ok() != Some(1));
            }
            anyhow::Ok((hist, errors))
        });
    }
    gather(workers, started).await
}

async fn gather(
    mut workers: tokio::task::JoinSet<anyhow::Result<(Histogram<u64>, u64)>>,
    started: Instant,
) -> anyhow::Result<Measured> {
    let (mut hist, mut errors) = (histogram(), 0);
    while let Some(done) = workers.join_next().await {
        let (h, e) = done??;
        hist.add(h)?;
        errors += e;
    }
    Ok(Measured {
        hist,
        errors,
        elapsed: started.elapsed(),
    })
}

#[allow(clippy::cast_precision_loss)]
fn row(name: &'static str, m: &Measured, before: Counters, after: Counters) -> Row {
    let writes = m.hist.len();
    let per = |total: f64| total / writes.max(1) as f64;
    Row {
        name,
        writes,
        errors: m.errors,
        per_second: writes as f64 / m.elapsed.as_secs_f64(),
        p50_us: m.hist.value_at_quantile(0.5),
        p99_us: m.hist.value_at_quantile(0.99),
        calls: per(if after.sidecar_calls > 0 {
            (after.sidecar_calls - before.sidecar_calls) as f64
        } else {
            (after.script_calls - before.script_calls) as f64
        }),
        script_us: per((after.script_usec - before.script_usec) as f64),
        cpu_us: per(after.cpu_us - before.cpu_us),
    }
}

/// Runs every phase against the sidecar at `addr` (creates past the cap against `capped`) and
/// Redis at `url`.
pub async fn measure(
    addr: SocketAddr,
    capped: Option<SocketAddr>,
    url: &str,
    users: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Row>> {
    let mut redis = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let created = Arc::new(Mutex::new(Vec::new()));
    let mut rows = Vec::new();
    let (mut all, mut current) = (Arc::new(Vec::new()), Arc::new(Vec::new()));
    let phases = [
        (addr, Write::Create { users }),
        (addr, Write::MessageToCurrent),
        (addr, Write::Message),
        (addr, Write::End),
    ];
    let past_cap = capped.map(|capped| {
        let users = CAPPED_USERS;
        (capped, Write::CreatePastCap { users })
    });
    for (addr, write) in phases.into_iter().chain(past_cap) {
        println!(
            "measuring writes: {} for {} s",
            write.name(),
            duration.as_secs()
        );
        let ids = match write {
            Write::MessageToCurrent => current.clone(),
            _ => all.clone(),
        };
        let before = counters(&mut redis, Some(addr)).await?;
        let m = http_phase(addr, write, ids, created.clone(), connections, duration).await?;
        let after = counters(&mut redis, Some(addr)).await?;
        rows.push(row(write.name(), &m, before, after));
        if let Write::Create { .. } = write {
            let mut numbered = created.lock().map(|ids| ids.clone()).unwrap_or_default();
            anyhow::ensure!(!numbered.is_empty(), "no session was created");
            numbered.sort_unstable();
            let ids: Vec<String> = numbered.into_iter().map(|(_, id)| id).collect();
            // Creates cycle through the users, so the last `users` are each user's last one.
            current = Arc::new(ids[ids.len().saturating_sub(users)..].to_vec());
            all = Arc::new(ids);
        }
    }
    println!(
        "measuring Redis EVALSHA of a trivial script for {} s",
        duration.as_secs()
    );
    let before = counters(&mut redis, None).await?;
    let m = trivial_script_phase(url, connections, duration).await?;
    let after = counters(&mut redis, None).await?;
    rows.push(row("Redis EVALSHA `return 1`", &m, before, after));
    Ok(rows)
}

/// The write section's table, and the create rate as a share of the one-script-call ceiling.
#[allow(clippy::cast_precision_loss)]
pub fn print(rows: &[Row], connections: usize, users: usize) {
    println!(
        "\nWrites, closed loop on {connections} connections (creates over {users} users; Redis CPU is its main thread's):"
    );
    println!(
        "| write | per second | p50 ms | p99 ms | writes | errors | calls to Redis / write | script µs / write | Redis CPU µs / write |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {:.2} | {:.1} | {:.1} |",
            r.name,
            r.per_second,
            ms(r.p50_us),
            ms(r.p99_us),
            r.writes,
            r.errors,
            r.calls,
            r.script_us,
            r.cpu_us
        );
    }
    if let (Some(create), Some(limit)) = (rows.first(), rows.last()) {
        println!(
            "creates per second of Redis CPU: {:.0} (the trivial script: {:.0})",
            1e6 / create.cpu_us.max(0.001),
            1e6 / limit.cpu_us.max(0.001)
        );
    }
}
