//! Entry point: parse the configuration, set up JSON logs, serve until SIGTERM or Ctrl-C.

use clap::Parser;

/// mimalloc: in the benchmark glibc's malloc and free took a tenth of the hot path's CPU, and
/// its per-thread arenas grew the cache's memory well past the payload it holds.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use session_sidecar::config::{Config, LogFormat};
use tokio::sync::watch;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let runtime = match config.threads() {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    if let Err(problems) = config.validate() {
        for problem in &problems {
            eprintln!("configuration error: {problem}");
        }
        std::process::exit(2);
    }
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received, draining");
        let _ = tx.send(true);
    });
    session_sidecar::run(config, rx).await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
