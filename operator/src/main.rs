//! `session-operator`: `run` the controller, print the `crd`, `render` a SessionService or
//! `inject` a manifest offline, or show a SessionService's `status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use session_operator::cli::render::{self, Secrets};
use session_operator::crd::SessionService;

#[derive(Parser)]
#[command(
    version,
    about = "Kubernetes operator for the SessionService custom resource"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (in-cluster configuration, or `KUBECONFIG`), with leader election.
    Run(Box<session_operator::cli::run::Options>),
    /// Print the SessionService CustomResourceDefinition as YAML.
    Crd,
    /// Print every object the operator would apply for the SessionServices in a file, as
    /// multi-document YAML, without a cluster. Generated passwords are fresh each time.
    Render {
        /// A file of SessionService manifests (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for manifests that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Add the sidecar to every Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and
    /// CronJob of a multi-document manifest, as the admission webhook would, and print it.
    Inject {
        /// A manifest file (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The SessionService whose sidecar to inject.
        #[arg(long)]
        session_service: String,
        /// A file holding that SessionService, for its sidecar, Redis and policy settings;
        /// without it the defaults of an empty spec apply.
        #[arg(long)]
        session_service_file: Option<PathBuf>,
    },
    /// What a person on call needs about SessionServices, in one screen: conditions with their
    /// ages, the Redis topology, replicas, the webhook certificate and (with `--prometheus`)
    /// the SLIs and burn rates. Installed as `kubectl-sessions`, it is `kubectl sessions status`.
    Status(session_operator::cli::status::Options),
    /// The inbound events a session service set aside: list, show, replay (one or all) and
    /// discard them through its API. As a kubectl plugin: `kubectl sessions dead-letters`.
    DeadLetters(session_operator::cli::dead_letters::Options),
    /// Write the Grafana dashboards as JSON files into a directory: the operator's own
    /// (`session-operator.json`, what the chart ships) and those of each SessionService in the
    /// given files (`<name>-slo.json`, `<name>-hot-path.json`, `<name>-redis.json`).
    Dashboards {
        /// The directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Files of SessionService manifests.
        files: Vec<PathBuf>,
        /// Namespace for manifests that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

/// Writes the operator's dashboard and those of the SessionServices in `files` into `out`.
fn write_dashboards(out: &Path, files: &[PathBuf], namespace: &str) -> anyhow::Result<()> {
    let mut dashboards = vec![("session-operator.json".to_owned(), render::for_operator())];
    for file in files {
        for ss in render::parse(&read(file)?, namespace)? {
            dashboards.extend(render::for_service(&ss));
        }
    }
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    for (file, dashboard) in dashboards {
        let path = out.join(file);
        std::fs::write(&path, serde_json::to_string_pretty(&dashboard)? + "\n")
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The named SessionService from a file, or one with the default spec.
fn session_service(name: &str, file: Option<&PathBuf>) -> anyhow::Result<SessionService> {
    let Some(file) = file else {
        return Ok(SessionService::new(name, Default::default()));
    };
    render::parse(&read(file)?, "default")?
        .into_iter()
        .find(|ss| ss.metadata.name.as_deref() == Some(name))
        .ok_or_else(|| anyhow::anyhow!("{} holds no SessionService named {name}", file.display()))
}

/// The client of the command-line tools: the kubeconfig's (or the pod's) credentials.
async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("could not reach the Kubernetes API (KUBECONFIG or in-cluster): {e}")
    })
}

async fn status(options: &session_operator::cli::status::Options) -> anyhow::Result<()> {
    use session_operator::cli::status::{Output, gather, text};
    let client = kube_client().await?;
    let report = gather(&client, options).await?;
    match options.output {
        Output::Text => print!("{}", text(&report)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    use anyhow::Context;
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(options) => {
            session_operator::cli::run::init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| {
                    let result = runtime.block_on(session_operator::cli::run::run(*options));
                    // A blocking call still running (a DNS lookup) must not hold up the exit.
                    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
                    result
                })
        }
        Command::Dashboards {
            out,
            files,
            namespace,
        } => write_dashboards(&out, &files, &namespace),
        Command::Crd => render::to_yaml(&SessionService::crd()).map(|text| print!("{text}")),
        Command::Render { file, namespace } => read(&file).and_then(|text| {
            let mut objects = Vec::new();
            for ss in render::parse(&text, &namespace)? {
                objects.extend(render::objects(&ss, &Secrets::generate())?);
            }
            print!("{}", render::to_yaml_documents(&objects)?);
            Ok(())
        }),
        Command::Inject {
            file,
            session_service: name,
            session_service_file,
        } => read(&file).and_then(|text| {
            let ss = session_service(&name, session_service_file.as_ref())?;
            let documents = render::from_yaml_documents(&text)?;
            let injected =
                render::inject_documents(documents, &ss, &render::Capabilities::latest())?;
            print!("{}", render::to_yaml_documents(&injected)?);
            Ok(())
        }),
        Command::Status(options) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(status(&options))),
        Command::DeadLetters(options) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                runtime.block_on(async {
                    let client = kube_client().await?;
                    print!(
                        "{}",
                        session_operator::cli::dead_letters::run(&client, &options).await?
                    );
                    Ok(())
                })
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("session-operator: {error:#}");
            ExitCode::from(2)
        }
    }
}
