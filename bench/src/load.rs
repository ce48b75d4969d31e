//! The load generator: open loop at a fixed rate, latency counted from when each request was
//! *due*, so a slow answer that delays the requests behind it is charged to the server
//! (no coordinated omission). Requests that go out late only because the 1 ms timer woke late
//! are measured from their real send time: that delay is the generator's, not the server's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What to load.
#[derive(Clone)]
pub enum Target {
    /// `GET` each path in turn on an HTTP server.
    Http {
        addr: SocketAddr,
        paths: Arc<Vec<String>>,
    },
    /// `GET` each key in turn on Redis.
    Redis { url: String, keys: Arc<Vec<String>> },
}

/// One connection of a worker.
enum Conn {
    Http(
        http1::SendRequest<Empty<Bytes>>,
        SocketAddr,
        Arc<Vec<String>>,
    ),
    Redis(redis::aio::MultiplexedConnection, Arc<Vec<String>>),
}

impl Target {
    async fn connect(&self) -> anyhow::Result<Conn> {
        Ok(match self {
            Target::Http { addr, paths } => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                Conn::Http(sender, *addr, paths.clone())
            }
            Target::Redis { url, keys } => {
                let conn = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                Conn::Redis(conn, keys.clone())
            }
        })
    }
}

impl Conn {
    /// Sends request number `i`; `Ok(false)` for an unexpected answer.
    async fn send(&mut self, i: u64) -> anyhow::Result<bool> {
        match self {
            Conn::Http(sender, addr, paths) => {
                let path = &paths[usize::try_from(i).unwrap_or(0) % paths.len()];
                let req = hyper::Request::get(path.as_str())
                    .header("host", addr.to_string())
                    .body(Empty::new())?;
                sender.ready().await?;
                let response = sender.send_request(req).await?;
                let ok = response.status() == hyper::StatusCode::OK;
                response.into_body().collect().await?;
                Ok(ok)
            }
            Conn::Redis(conn, keys) => {
                let key = &keys[usize::try_from(i).unwrap_or(0) % keys.len()];
                let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await?;
                Ok(value.is_some())
            }
        }
    }
}

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub requests: u64,
    pub errors: u64,
}

/// Whole microseconds since `since`, at least 1 (the histograms' lowest value).
pub(crate) fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// 1 µs to 60 s with 3 significant digits.
#[allow(clippy::expect_used)] // constant, valid bounds
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs `rate` requests per second for `warmup + duration` over `connections` connections and
/// reports the latency of the requests due after the warmup.
pub async fn fixed_rate(
    target: &Target,
    rate: u64,
    warmup: Duration,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<Latency> {
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now() + Duration::from_millis(100);
    let (measure_from, end) = (start + warmup, start + warmup + duration);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let mut conn = target.connect().await?;
        let next = next.clone();
        workers.spawn(async move {
            let (mut hist, mut errors) = (histogram(), 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
                if due >= end {
                    break;
                }
                let backlogged = Instant::now() > due;
                if !backlogged {
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = Instant::now();
                let ok = conn.send(i).await.unwrap_or(false);
                let since = if backlogged { due } else { sent };
                if due >= measure_from {
                    let _ = hist.record(micros(since));
                    errors += u64::from(!ok);
                }
            }
            (hist, errors)
        });
    }
    let (mut total, mut errors) = (histogram(), 0);
    while let Some(done) = workers.join_next().await {
        let (hist, e) = done?;
        total.add(hist)?;
        errors += e;
    }
    Ok(Latency {
        p50: total.value_at_quantile(0.5),
        p99: total.value_at_quantile(0.99),
        p999: total.value_at_quantile(0.999),
        max: total.max(),
        requests: total.len(),
        errors,
    })
}

/// Closed loop: every connection sends its next request as soon as the last one is answered;
/// returns the sustained requests per second after a one-second warmup.
pub async fn max_throughput(
    target: &Target,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + duration;
    let counted = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..connections {
        let mut conn = target.connect().await?;
        let counted = counted.clone();
        workers.spawn(async move {
            let mut i = w as u64;
            while Instant::now() < end {
                let ok = conn.send(i).await.unwrap_or(false);
                if ok && Instant::now() >= start {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    #[allow(clippy::cast_precision_loss)]
    let rps = counted.load(Ordering::Relaxed) as f64 / duration.as_secs_f64();
    Ok(rps)
}
