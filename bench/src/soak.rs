//! The soak: a steady fixed-rate load against one sidecar for a bounded time, with latency
//! percentiles per interval and the sidecar's resident memory, which must stop growing once its
//! cache is full (the session set is larger than the cache, so it evicts all along).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::load::{Target, fixed_rate};
use crate::suite::{Client, rss_kib};

/// Settings of a soak run.
#[derive(clap::Args)]
pub struct Args {
    /// The sidecar under test and its process id.
    #[arg(long)]
    target: SocketAddr,
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    #[arg(long, default_value_t = 30)]
    interval_seconds: u64,
    /// Sessions to spread the lookups over (more than the cache holds).
    #[arg(long, default_value_t = 30_000)]
    sessions: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("creating {} sessions", args.sessions);
    let mut client = Client::new(args.target).await?;
    let mut paths = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        paths.push(format!(
            "/v1/sessions/{}",
            client.create(&format!("soak-{i}")).await?
        ));
    }
    // A fixed shuffle, so lookups do not walk the ids in creation order.
    let n = paths.len();
    for i in 0..n {
        paths.swap(i, (i * 7919 + 13) % n);
    }
    let target = Target::Http {
        addr: args.target,
        paths: Arc::new(paths),
    };
    let intervals = (args.minutes * 60).div_ceil(args.interval_seconds.max(1));
    println!("| minute | p50 ms | p99 ms | p99.9 ms | max ms | errors | RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    let mut rss = Vec::new();
    for i in 0..intervals {
        let l = fixed_rate(
            &target,
            args.rate,
            Duration::ZERO,
            Duration::from_secs(args.interval_seconds),
            32,
        )
        .await?;
        let now = rss_kib(args.pid)? / 1024;
        rss.push(now);
        #[allow(clippy::cast_precision_loss)]
        let minute = (i + 1) as f64 * args.interval_seconds as f64 / 60.0;
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "| {minute:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {now} |",
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            l.errors
        );
    }
    let half = rss.len() / 2;
    let (first, last) = (
        rss.get(half).copied().unwrap_or(0),
        rss.last().copied().unwrap_or(0),
    );
    println!(
        "\nRSS {first} MiB at half time, {last} MiB at the end: {}",
        if last <= first + first / 10 {
            "flat (within 10 %)"
        } else {
            "GROWING"
        }
    );
    Ok(())
}
