//! `session-operator`: the Kubernetes operator for `SessionService`.
//!
//! The controller, the CRD and the offline `render` command are tracked as their own issue; this
//! binary exists so the workspace has its final shape. It answers `--help` and `--version` only.

use clap::Parser;

/// Command line of the operator.
#[derive(Debug, Parser)]
#[command(
    name = "session-operator",
    version,
    about = "Kubernetes operator for the SessionService custom resource (controller not yet built)"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("session-operator: the controller is not built yet; see the project's open issues");
    std::process::exit(2);
}
