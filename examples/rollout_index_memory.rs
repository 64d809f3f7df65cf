//! Measures what the rollout controller's workload index costs in memory: COUNT Deployments shaped
//! like real ones (3 containers with images, args, probes, resources, 12 environment variables of
//! which 4 read ConfigMap/Secret keys, an envFrom, 3 volumes) go through the same watch-cache
//! code and reduction as in a cluster (an initial list), and the process's resident memory is
//! read before and after.
//!
//! ```sh
//! cargo run --release --example rollout_index_memory [-- COUNT]
//! ```

mod support;

use confgate::cluster::Resource;
use confgate::cluster::live::Cache;
use confgate::rollout::index::{Workload, reduce};
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use support::rss_kib;

/// As the server binary: the allocator decides how much of what was freed stays resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn deployment(i: usize) -> Value {
    let container = |c: usize| {
        let env: Vec<Value> = (0..12)
            .map(|e| match e % 3 {
                0 => json!({"name": format!("CFG_{e}"), "valueFrom": {"configMapKeyRef": {"name": format!("app-{i}"), "key": format!("key-{e}")}}}),
                1 if e < 6 => json!({"name": format!("SECRET_{e}"), "valueFrom": {"secretKeyRef": {"name": format!("app-{i}-secret"), "key": format!("key-{e}")}}}),
                _ => json!({"name": format!("PLAIN_{e}"), "value": format!("value-{i}-{e}-with-some-length")}),
            })
            .collect();
        json!({
            "name": format!("c{c}"), "image": format!("registry.example.com/team-{}/service-{i}:1.{c}.0", i % 200),
            "args": ["--port=8080", "--log-format=json", "--config=/etc/app/app.yaml"],
            "env": env,
            "envFrom": [{"configMapRef": {"name": format!("app-{i}-env")}}],
            "ports": [{"containerPort": 8080, "name": "http"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "tmp", "mountPath": "/tmp"}]
        })
    };
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("service-{i}"), "namespace": format!("team-{}", i % 200),
                     "uid": format!("00000000-0000-0000-0000-{i:012}"), "generation": 3,
                     "labels": {"app": format!("service-{i}"), "team": format!("team-{}", i % 200)}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": format!("service-{i}")}},
                 "template": {"metadata": {"labels": {"app": format!("service-{i}")},
                                           "annotations": {"checksum/config": "6417addb97276f2dc1b91d472434df09a4418d1d501f293a3a30270f7421497c"}},
                              "spec": {"containers": [container(0), container(1), container(2)],
                                       "volumes": [{"name": "config", "configMap": {"name": format!("app-{i}"), "items": [{"key": "app.yaml", "path": "app.yaml"}]}},
                                                   {"name": "creds", "secret": {"secretName": format!("app-{i}-secret")}},
                                                   {"name": "tmp", "emptyDir": {}}]}}},
        "status": {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let raw: usize = (0..count.min(100))
        .map(|i| deployment(i).to_string().len())
        .sum::<usize>()
        * count
        / count.min(100);
    let before = rss_kib();
    let cache = Cache::<Workload>::new(Resource::Workloads);
    // Objects arrive and are reduced one at a time, as from a watcher's pages.
    let stream = futures::stream::iter(
        std::iter::once(Ok::<_, kube::runtime::watcher::Error>(Event::Init))
            .chain((0..count).map(|i| {
                Ok(Event::InitApply(
                    serde_json::from_value::<DynamicObject>(deployment(i)).expect("object"),
                ))
            }))
            .chain(std::iter::once(Ok(Event::InitDone))),
    );
    cache
        .clone()
        .follow_with(stream, |o: &DynamicObject| {
            serde_json::to_value(o)
                .ok()
                .and_then(|v| reduce("Deployment", &v))
        })
        .await;
    let after = rss_kib();
    // What one reduced workload holds, as JSON.
    let reduced: usize = cache
        .values()
        .iter()
        .take(100)
        .map(|w| w.object().to_string().len())
        .sum::<usize>()
        / 100;
    println!("a reduced workload is {reduced} bytes as JSON");
    println!(
        "{count} Deployments ({:.1} MiB as JSON): index holds {} workloads, RSS {:.1} -> {:.1} MiB (+{:.1} MiB)",
        raw as f64 / 1048576.0,
        cache.len(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / 1024.0
    );
}
