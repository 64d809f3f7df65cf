//! `confgate audit`: the background audit, once, against the cluster of the current kubeconfig
//! context: every Deployment, StatefulSet, DaemonSet and CronJob judged by the validating
//! policies. Exit code 0 when nothing is wrong, 1 when a violation was found, 2 when the audit
//! could not run.

use crate::engine::Engine;
use crate::policy::{Registry, load_dir};
use std::path::PathBuf;
use std::process::ExitCode;

/// `confgate audit` arguments.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Directory of policy files.
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
    /// `table` (default) or `json`.
    #[arg(short = 'o', long = "output", default_value = "table")]
    pub output: Format,
    /// confgate's checksum key Secret (`NAMESPACE/NAME`), read when it can be.
    #[arg(long, default_value = "confgate-system/confgate-checksum-key")]
    pub checksum_key_secret: String,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per violation, aligned.
    Table,
    /// The findings as JSON.
    Json,
}

/// Runs the audit and prints what it found.
pub fn run(args: AuditArgs) -> ExitCode {
    match audit(&args) {
        Ok((text, clean)) => {
            print!("{text}");
            if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(message) => {
            eprintln!("confgate audit: {message}");
            ExitCode::from(2)
        }
    }
}

fn audit(args: &AuditArgs) -> Result<(String, bool), String> {
    let set = load_dir(&args.policies, &Registry::builtin())
        .map_err(|e| format!("loading policies from {}: {e}", args.policies.display()))?;
    let (runtime, state) = super::review::live_state(&args.checksum_key_secret, true)?;
    let audit = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("cannot configure a Kubernetes client: {e}"))?;
        let engine = Engine::new(state);
        crate::controllers::audit::scan(&client, &engine, &set)
            .await
            .map_err(|e| format!("listing workloads: {e}"))
    })?;
    let text = match args.output {
        Format::Table => crate::controllers::audit::table(&audit),
        Format::Json => serde_json::to_string_pretty(&audit).map_err(|e| e.to_string())? + "\n",
    };
    Ok((text, audit.findings.is_empty()))
}
