//! The command line: `serve`, `review`, `test`, `audit`, `certs`, `webhooks`, `release`.

pub mod audit;
pub mod certs;
pub mod policy_test;
pub mod release;
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
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admission webhooks over HTTPS.
    Serve(Box<serve::ServeArgs>),
    /// Run the policies offline on an AdmissionReview or plain manifests.
    Review(review::ReviewArgs),
    /// Run policy test files (kind: Test) and check their expected results.
    Test(policy_test::TestArgs),
    /// Judge the workloads already in the cluster (current kubeconfig context) by the policies.
    Audit(audit::AuditArgs),
    /// Generate a CA and a serving certificate for the webhook Service.
    Certs(certs::CertsArgs),
    /// Print the webhook registration generated from the policy files.
    Webhooks(webhooks::WebhooksArgs),
    /// Take the config guard's marks (finalizers) off every ConfigMap and Secret, for
    /// uninstalling: stops the running replicas from marking first.
    Release(release::ReleaseArgs),
}
