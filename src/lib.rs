//! confgate: a Kubernetes admission webhook server that keeps workload configuration honest.
//!
//! Layers, outside in: [`server`] (axum + rustls) and the CLI parse and answer; [`engine`] runs
//! [`policy`] implementations against an [`admission::Review`] and the [`cluster`] state.

pub mod admission;
pub mod cluster;
pub mod engine;
pub mod policy;
pub mod yaml;
