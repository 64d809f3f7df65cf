//! confgate: a Kubernetes admission webhook server that keeps workload configuration honest.
//!
//! Layers, outside in: [`server`] (axum + rustls) and the CLI parse and answer; [`engine`] runs
//! [`policy`] implementations against an [`admission::Review`] and the [`cluster`] state.

pub mod admission;
pub mod background;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod controllers;
pub mod engine;
pub mod events;
pub mod limitrange;
pub mod metrics;
pub mod notify;
pub mod owners;
pub mod policy;
pub mod quantity;
pub mod server;
pub mod telemetry;
pub mod webhooks;
pub mod workload;
pub mod yaml;
