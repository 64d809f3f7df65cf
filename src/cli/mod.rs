//! The command line: `serve`, `review`, `certs`.

pub mod certs;
pub mod review;
pub mod serve;
pub mod webhooks;

use clap::{Parser, Subcommand};

/// confgate: a Kubernetes admission webhook server that keeps workload configuration honest.
#[derive(Debug, Parser)]
#[command(name = "confgate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admission webhooks over HTTPS.
    Serve(serve::ServeArgs),
    /// Run the policies offline on an AdmissionReview or plain manifests.
    Review(review::ReviewArgs),
    /// Generate a CA and a serving certificate for the webhook Service.
    Certs(certs::CertsArgs),
    /// Print the webhook registration generated from the policy files.
    Webhooks(webhooks::WebhooksArgs),
}
