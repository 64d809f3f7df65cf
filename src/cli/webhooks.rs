//! `confgate webhooks`: print the MutatingWebhookConfiguration and ValidatingWebhookConfiguration
//! generated from the policy files.

use crate::policy::{Registry, load_dir};
use crate::webhooks::{Options, Target, generate, to_yaml};
use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `confgate webhooks`.
#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// Directory of policy files.
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
    /// PEM file of the CA that signed the serving certificate (the caBundle).
    #[arg(long, conflicts_with = "inject_ca_from")]
    pub ca_bundle: Option<PathBuf>,
    /// `namespace/certificate` for cert-manager's CA injector, instead of --ca-bundle.
    #[arg(long)]
    pub inject_ca_from: Option<String>,
    /// The confgate Service.
    #[arg(long, default_value = "confgate")]
    pub service: String,
    /// The namespace confgate runs in (excluded from every webhook).
    #[arg(long, default_value = "confgate-system")]
    pub namespace: String,
    /// Reach confgate at this URL (`https://host:port`) instead of the Service.
    #[arg(long)]
    pub url: Option<String>,
    /// timeoutSeconds of every webhook (1 to 30).
    #[arg(long, default_value_t = 5)]
    pub timeout_seconds: i32,
    /// metadata.name of both configurations.
    #[arg(long, default_value = "confgate")]
    pub name: String,
    /// The cluster's Kubernetes version (`1.27`, `v1.33.3`): before 1.28 no matchConditions are
    /// emitted (the server applies the same rules itself).
    #[arg(long, default_value = "1.28")]
    pub kubernetes_version: String,
}

/// Prints the two configurations as YAML.
pub fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    let set = load_dir(&args.policies, &Registry::builtin())?;
    let ca_bundle = match &args.ca_bundle {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    if ca_bundle.is_none() && args.inject_ca_from.is_none() {
        anyhow::bail!(
            "give --ca-bundle FILE, or --inject-ca-from NAMESPACE/CERTIFICATE with cert-manager"
        );
    }
    let target = match args.url {
        Some(url) => Target::Url(url),
        None => Target::Service {
            name: args.service,
            namespace: args.namespace.clone(),
        },
    };
    let options = Options {
        name: args.name,
        target,
        own_namespace: args.namespace,
        ca_bundle,
        inject_ca_from: args.inject_ca_from,
        timeout_seconds: args.timeout_seconds,
        match_conditions: crate::webhooks::minor_version(&args.kubernetes_version).ok_or_else(
            || {
                anyhow::anyhow!(
                    "--kubernetes-version {:?}: expected MAJOR.MINOR, e.g. 1.30",
                    args.kubernetes_version
                )
            },
        )? >= crate::webhooks::MATCH_CONDITIONS_SINCE,
    };
    let (mutating, validating) = generate(&set, &options)?;
    print!("{}", to_yaml(&mutating, &validating)?);
    Ok(())
}
