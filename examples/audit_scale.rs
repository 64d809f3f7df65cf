//! Measures the background audit's cost: COUNT Deployments shaped like real ones (see
//! `support::deployment`) judged by the shipped policies against cluster state holding their
//! ConfigMaps and Secrets (a tenth of the Deployments read a key their ConfigMap lacks), as the
//! audit judges each listed workload. Objects are made and dropped one page at a time, as
//! the audit lists them; time, findings and resident memory are reported.
//!
//! ```sh
//! cargo run --release --example audit_scale [-- COUNT]
//! ```

mod support;

use confgate::cluster::static_state::StaticState;
use confgate::engine::Engine;
use confgate::policy::{Registry, load_dir};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use support::{deployment, rss_kib};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let set = load_dir(std::path::Path::new("policies"), &Registry::builtin()).expect("policies");
    // What the Deployments read: every key but key-9 of app-{i} for one in ten.
    let mut state = StaticState::default();
    for i in 0..count {
        let keys: serde_json::Map<String, serde_json::Value> = (0..12)
            .filter(|k| !(i % 10 == 0 && *k == 9))
            .map(|k| (format!("key-{k}"), json!(format!("value-{i}-{k}"))))
            .chain(std::iter::once(("app.yaml".to_owned(), json!("a: 1"))))
            .collect();
        let ns = format!("team-{}", i % 200);
        for doc in [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("app-{i}"), "namespace": ns}, "data": keys}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("app-{i}-env"), "namespace": ns}, "data": {"A": "1"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("app-{i}-secret"), "namespace": ns}, "stringData": {"key-1": "s", "key-4": "t"}}),
        ] {
            state.add_document(doc).expect("state");
        }
    }
    let engine = Engine::new(Arc::new(state));
    let before = rss_kib();
    let started = Instant::now();
    let mut findings = 0;
    let mut fresh = confgate::cluster::fresh::Fresh::default();
    let size = confgate::controllers::audit::PAGE as usize;
    let mut page = Vec::with_capacity(size);
    for i in 0..count {
        page.push(deployment(i));
        if page.len() == size || i + 1 == count {
            for object in page.drain(..) {
                findings += confgate::controllers::audit::judge(
                    &engine,
                    &set,
                    "Deployment",
                    object,
                    &mut fresh,
                )
                .await
                .iter()
                .filter(|(_, result, _)| *result != "pass")
                .count();
            }
        }
    }
    let took = started.elapsed();
    println!(
        "{count} Deployments audited by {} policies in {:.2} s ({:.0} µs each): {findings} violations; RSS {:.1} -> {:.1} MiB (peak {:.1} MiB)",
        set.policies.len(),
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / count as f64,
        before as f64 / 1024.0,
        rss_kib() as f64 / 1024.0,
        support::status_kib("self", "VmHWM:") as f64 / 1024.0,
    );
}
