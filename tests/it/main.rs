//! The integration tests, as one test binary (one link instead of one per file): the engine on
//! real fixtures, each policy type, policy files, the HTTP API, TLS, the CLI, the generated
//! webhooks and the deploy manifests. The end-to-end suite on a real control plane is its own
//! binary (`tests/e2e/`). `cargo test --test it NAME` runs some of them.

mod common;
#[path = "../support/otlp.rs"]
mod otlp;

mod architecture;
mod chart;
mod checksum_config;
mod cli;
mod deploy;
mod engine;
mod golden_fixtures;
mod http_api;
mod limitrange_defaults;
mod monitoring;
mod policy_files;
mod readme_examples;
mod reports;
mod require_config_keys;
mod tls;
mod tracing;
mod upstream_limitranger;
mod webhooks;
