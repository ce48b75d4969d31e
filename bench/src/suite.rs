//! The comparison: one run, one table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::load::{Latency, Target, fixed_rate, max_throughput};

/// Settings of a suite run (the sidecars and Redis are started by `bench/run.sh`).
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    redis_url: String,
    /// A sidecar on Redis with its cache on (the "hit" case and the writer of invalidations).
    #[arg(long)]
    hit: SocketAddr,
    /// A sidecar on the same Redis with its cache off (every lookup reads Redis).
    #[arg(long)]
    miss: SocketAddr,
    /// A second cached sidecar on the same Redis (the reader of invalidations).
    #[arg(long)]
    other: SocketAddr,
    /// A sidecar used only for the memory measurement, and its process id.
    #[arg(long)]
    memory: SocketAddr,
    #[arg(long)]
    memory_pid: u32,
    /// Where this suite starts the bare hyper server.
    #[arg(long)]
    bare: SocketAddr,
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    #[arg(long, default_value_t = 100_000)]
    memory_sessions: usize,
    #[arg(long, default_value_t = 300)]
    trials: usize,
    /// A sidecar used only for the write section (its outbox limit raised: no relay runs).
    #[arg(long)]
    writer: SocketAddr,
    /// The users the write section's creates are spread over.
    #[arg(long, default_value_t = 10_000)]
    write_users: usize,
}

/// A keep-alive HTTP/1.1 client for setup calls.
pub(crate) struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    created: u64,
}

impl Client {
    pub(crate) async fn new(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self {
            sender,
            addr,
            created: 0,
        })
    }

    pub(crate) async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let status = res.status().as_u16();
        Ok((status, res.into_body().collect().await?.to_bytes()))
    }

    pub(crate) async fn create(&mut self, user: &str) -> anyhow::Result<String> {
        // About 1 KiB per session document, like a session with a little conversation state.
        self.created += 1;
        let body = serde_json::json!({"user_id": user, "title": format!("benchmark session {}", self.created), "metadata": {"client": "bench", "pad": "x".repeat(600)}, "data": {"step": 1}});
        let (status, bytes) = self.call("POST", "/v1/sessions", Some(&body)).await?;
        anyhow::ensure!(
            status == 201,
            "create answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let doc: serde_json::Value = serde_json::from_slice(&bytes)?;
        Ok(doc["session_id"].as_str().unwrap_or_default().to_owned())
    }
}

pub(crate) fn ms(us: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let v = us as f64 / 1000.0;
    format!("{v:.3}")
}

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

async fn wait_for(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{addr} did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("setting up: {} sessions of about 1 KiB", args.sessions);
    let mut hit = Client::new(args.hit).await?;
    let mut ids = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        ids.push(hit.create(&format!("bench-user-{i}")).await?);
    }
    let paths: Arc<Vec<String>> =
        Arc::new(ids.iter().map(|id| format!("/v1/sessions/{id}")).collect());
    let (_, doc) = hit.call("GET", &paths[0], None).await?;
    let body_file = std::env::temp_dir().join("session-bench-body.json");
    std::fs::write(&body_file, &doc)?;
    let mut bare = std::process::Command::new(std::env::current_exe()?)
        .args([
            "bare",
            "--listen",
            &args.bare.to_string(),
            "--body-file",
            &body_file.to_string_lossy(),
        ])
        .spawn()?;
    wait_for(args.bare).await?;
    let mut redis = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Arc<Vec<String>> = Arc::new(
        (0..args.sessions)
            .map(|i| format!("bench:doc:{i}"))
            .collect(),
    );
    for key in keys.iter() {
        redis::cmd("SET")
            .arg(key)
            .arg(doc.as_ref())
            .query_async::<()>(&mut redis)
            .await?;
    }
    for path in paths.iter() {
        hit.call("GET", path, None).await?; // warm the cache
    }

    let targets = [
        (
            "bare hyper",
            Target::Http {
                addr: args.bare,
                paths: paths.clone(),
            },
        ),
        (
            "sidecar hit",
            Target::Http {
                addr: args.hit,
                paths: paths.clone(),
            },
        ),
        (
            "sidecar miss",
            Target::Http {
                addr: args.miss,
                paths: paths.clone(),
            },
        ),
        (
            "Redis GET",
            Target::Redis {
                url: args.redis_url.clone(),
                keys,
            },
        ),
    ];
    let (warmup, run_for) = (Duration::from_secs(2), Duration::from_secs(args.seconds));
    let mut rows: Vec<(&str, Latency, f64)> = Vec::new();
    for (name, target) in &targets {
        println!(
            "measuring {name}: {} req/s for {} s, then closed-loop maximum",
            args.rate, args.seconds
        );
        let latency = fixed_rate(target, args.rate, warmup, run_for, args.connections).await?;
        let max = max_throughput(target, Duration::from_secs(5), args.connections).await?;
        rows.push((name, latency, max));
    }
    let _ = bare.kill();
    let _ = bare.wait();

    println!("measuring invalidation delay: {} trials", args.trials);
    let (p50_inv, p99_inv, max_inv, stale) = invalidation(&args).await?;
    println!("measuring memory: {} cached sessions", args.memory_sessions);
    let (payload, rss_before, rss_after, entries, cache_bytes) = memory(&args).await?;
    let writes = crate::writes::measure(
        args.writer,
        None,
        &args.redis_url,
        args.write_users,
        args.connections,
        Duration::from_secs(args.seconds),
    )
    .await?;

    println!();
    println!("| target | p50 ms | p99 ms | p99.9 ms | max ms | requests | errors | max req/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, l, max) in &rows {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {max:.0} |",
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            l.requests,
            l.errors
        );
    }
    let (bare_l, hit_l, miss_l, redis_l) = (rows[0].1, rows[1].1, rows[2].1, rows[3].1);
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    println!();
    println!("| check | measured | target | met |");
    println!("|---|---|---|---|");
    let check = |name: &str, measured: String, target: &str, met: bool| {
        println!(
            "| {name} | {measured} | {target} | {} |",
            if met { "yes" } else { "NO" }
        );
    };
    let r = ratio(hit_l.p99, bare_l.p99);
    check("hit p99 / bare p99", format!("{r:.2}"), "<= 1.5", r <= 1.5);
    let r = ratio(hit_l.p50, bare_l.p50);
    check("hit p50 / bare p50", format!("{r:.2}"), "<= 1.3", r <= 1.3);
    let r = rows[1].2 / rows[0].2.max(1.0);
    check(
        "hit max throughput / bare",
        format!("{:.0} %", r * 100.0),
        ">= 70 %",
        r >= 0.7,
    );
    let budget = bare_l.p99 + redis_l.p99 + 500;
    check(
        "miss p99 vs bare p99 + Redis p99 + 0.5 ms",
        format!("{} ms vs {} ms", ms(miss_l.p99), ms(budget)),
        "<=",
        miss_l.p99 <= budget,
    );
    let r = ratio(miss_l.p99, bare_l.p99 + redis_l.p99);
    check(
        "miss p99 / (Redis GET p99 + bare p99)",
        format!("{r:.2}"),
        "(ratio)",
        true,
    );
    check(
        "invalidation p50 / p99 / max",
        format!("{} / {} / {} ms", ms(p50_inv), ms(p99_inv), ms(max_inv)),
        "p99 <= 10 ms",
        p99_inv <= 10_000,
    );
    check(
        "stale reads after invalidation",
        stale.to_string(),
        "0",
        stale == 0,
    );
    let growth = rss_after.saturating_sub(rss_before) * 1024;
    let r = growth as f64 / payload.max(1) as f64;
    check(
        "memory: RSS growth / cached payload",
        format!(
            "{:.2} ({} MiB for {} MiB; {entries} entries, cache counts {} MiB)",
            r,
            growth >> 20,
            payload >> 20,
            cache_bytes >> 20
        ),
        "<= 1.5",
        r <= 1.5,
    );
    println!(
        "\nRSS of the memory sidecar: {} MiB before filling the cache, {} MiB after",
        rss_before >> 10,
        rss_after >> 10
    );
    crate::writes::print(&writes, args.connections, args.write_users);
    Ok(())
}

/// Two sidecars on one Redis: delete through one, time until the other answers 404.
async fn invalidation(args: &Args) -> anyhow::Result<(u64, u64, u64, u64)> {
    let (mut writer, mut reader) = (Client::new(args.hit).await?, Client::new(args.other).await?);
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut stale = 0;
    for t in 0..args.trials {
        let user = format!("inval-{t}");
        let id = writer.create(&user).await?;
        writer.create(&user).await?; // so `id` is not current and may be deleted
        let path = format!("/v1/sessions/{id}");
        tokio::time::sleep(Duration::from_millis(5)).await; // the creates' own invalidations pass
        reader.call("GET", &path, None).await?;
        anyhow::ensure!(
            reader.call("GET", &path, None).await?.0 == 200,
            "not cached"
        );
        let started = Instant::now();
        let (status, _) = writer.call("DELETE", &path, None).await?;
        anyhow::ensure!(status == 204, "delete answered {status}");
        while reader.call("GET", &path, None).await?.0 != 404 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(5),
                "no invalidation within 5 s"
            );
        }
        hist.record(crate::load::micros(started))?;
        for _ in 0..10 {
            if reader.call("GET", &path, None).await?.0 != 404 {
                stale += 1;
            }
        }
    }
    Ok((
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
        stale,
    ))
}

/// Fills the memory sidecar's cache with `memory_sessions` sessions; returns the payload bytes,
/// RSS (KiB) before and after, and the cache's own count of entries and bytes.
async fn memory(args: &Args) -> anyhow::Result<(u64, u64, u64, u64, u64)> {
    let workers = 16;
    let per = args.memory_sessions.div_ceil(workers);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let addr = args.memory;
        set.spawn(async move {
            let mut c = Client::new(addr).await?;
            let mut ids = Vec::new();
            for i in 0..per {
                ids.push(c.create(&format!("mem-{w}-{i}")).await?);
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = set.join_next().await {
        ids.extend(r??);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // late invalidations of the creates
    let mut probe = Client::new(args.memory).await?;
    probe.call("GET", "/metrics", None).await?;
    let before = rss_kib(args.memory_pid)?;
    let ids = Arc::new(ids);
    let payload = lookup_all(args.memory, &ids, workers).await?;
    let after = rss_kib(args.memory_pid)?;
    // A second pass hits only: growth here would be churn, not cached data.
    lookup_all(args.memory, &ids, workers).await?;
    let again = rss_kib(args.memory_pid)?;
    println!(
        "memory sidecar RSS: {before} KiB before, {after} KiB after filling, {again} KiB after a second pass of hits"
    );
    let (_, metrics) = probe.call("GET", "/metrics", None).await?;
    let text = String::from_utf8_lossy(&metrics);
    let gauge = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        payload,
        before,
        after,
        gauge("session_cache_entries"),
        gauge("session_cache_bytes"),
    ))
}

/// Looks every id up once over `workers` connections; returns the bytes received.
async fn lookup_all(
    addr: SocketAddr,
    ids: &Arc<Vec<String>>,
    workers: usize,
) -> anyhow::Result<u64> {
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let ids = ids.clone();
        set.spawn(async move {
            let mut c = Client::new(addr).await?;
            let mut bytes = 0u64;
            for id in ids.iter().skip(w).step_by(workers) {
                let (status, body) = c.call("GET", &format!("/v1/sessions/{id}"), None).await?;
                anyhow::ensure!(status == 200, "lookup answered {status}");
                bytes += body.len() as u64;
            }
            anyhow::Ok(bytes)
        });
    }
    let mut payload = 0;
    while let Some(r) = set.join_next().await {
        payload += r??;
    }
    Ok(payload)
}
