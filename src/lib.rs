//! confgate: a Kubernetes admission webhook server that keeps workload configuration honest.
//!
//! Layers, outside in: [`server`] (axum + rustls) and the CLI parse and answer; [`engine`] runs
//! [`policy`] implementations against an [`admission::Review`] and the [`cluster`] state.

pub mod admission;
pub mod audit;
pub mod background;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod engine;
pub mod events;
pub mod followup;
pub mod lease;
pub mod limitrange;
pub mod metrics;
pub mod notify;
pub mod owners;
pub mod policy;
pub mod protection;
pub mod quantity;
pub mod rollout;
pub mod server;
pub mod telemetry;
pub mod webhooks;
pub mod workload;
pub mod yaml;
