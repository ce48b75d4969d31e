//! `session-bench`: measures the sidecar against a bare hyper server and Redis itself, side by
//! side in one run, with a load generator that does not suffer from coordinated omission.
//!
//! `bench/run.sh` starts Redis and the sidecars and calls `session-bench suite`; see the README.

mod bare;
mod load;
mod soak;
mod suite;
mod writes;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "session-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A bare hyper server answering every request with the bytes of a file.
    Bare {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        body_file: std::path::PathBuf,
    },
    /// The whole comparison; prints one table.
    Suite(suite::Args),
    /// Closed-loop requests per second of `GET path` on one HTTP server.
    Throughput {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// The write section of the suite alone.
    Writes(writes::Args),
    /// A bounded steady load with latency and memory over time.
    Soak(soak::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the generator must not take both cores from the servers it measures.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Bare { listen, body_file } => {
                bare::serve(listen, std::fs::read(body_file)?).await
            }
            Command::Suite(args) => suite::run(args).await,
            Command::Writes(args) => writes::run(args).await,
            Command::Throughput {
                addr,
                path,
                seconds,
                connections,
            } => {
                let target = load::Target::Http {
                    addr,
                    paths: std::sync::Arc::new(vec![path]),
                };
                let duration = std::time::Duration::from_secs(seconds);
                let rps = load::max_throughput(&target, duration, connections).await?;
                println!("{rps:.0}");
                Ok(())
            }
            Command::Soak(args) => soak::run(args).await,
        }
    })
}
