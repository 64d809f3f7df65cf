//! Measures what the rollout controller's workload index costs in memory, with the ConfigMap
//! cache beside it: COUNT ConfigMaps (10 keys of 1 KiB) and COUNT Deployments shaped like real
//! ones (3 containers with images, args, probes, resources, 12 environment variables of which 4
//! read ConfigMap/Secret keys, an envFrom, 3 volumes) go through the same watch-cache code,
//! reduction and reverse index as in a cluster (an initial list each), and the process's
//! resident memory is read before, between and after.
//!
//! ```sh
//! cargo run --release --example rollout_index_memory [-- COUNT]
//! ```

mod support;

use confgate::cluster::cache::Cache;
use confgate::cluster::workloads::{Index, reduce};
use confgate::cluster::{CacheKind, ConfigData};
use confgate::workload::Source;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use support::{deployment, rss_kib};

/// As the server binary (the allocator decides how much of what was freed stays resident),
/// counting the bytes live, to tell what is kept from what the allocator keeps.
#[global_allocator]
static ALLOCATOR: Counting = Counting(mimalloc::MiMalloc);

struct Counting(mimalloc::MiMalloc);

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

fn live_mib() -> f64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1048576.0
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
    let live_before = live_mib();
    let config_maps = Cache::<ConfigData>::new(CacheKind::ConfigMaps);
    let listed = (0..count).map(|i| {
        let data = (0..10)
            .map(|k| {
                let seed = format!("{i:08}-{k:04}-");
                (
                    format!("key-{k}"),
                    seed.chars().cycle().take(1024).collect(),
                )
            })
            .collect();
        Ok(Event::InitApply(ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("app-{i}")),
                namespace: Some(format!("team-{}", i % 200)),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }))
    });
    config_maps
        .clone()
        .follow(
            futures::stream::iter(
                std::iter::once(Ok(Event::Init))
                    .chain(listed)
                    .chain(std::iter::once(Ok(Event::InitDone))),
            ),
            ConfigData::from_config_map,
        )
        .await;
    let between = rss_kib();
    let live_between = live_mib();
    let index = Index::detached();
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
    index
        .cache("Deployment")
        .expect("Deployment cache")
        .clone()
        .follow_with(stream, |o: &DynamicObject| {
            serde_json::to_value(o)
                .ok()
                .and_then(|v| reduce("Deployment", &v))
        })
        .await;
    // The allocator returns freed pages after a short delay: what stays is what the index holds.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = rss_kib();
    println!(
        "live heap: ConfigMaps {:.1} MiB, index {:.1} MiB",
        live_between - live_before,
        live_mib() - live_between
    );

    let consumers = index.consumers(Source::ConfigMap, "team-7", "app-7").len();
    // What one reduced workload holds, as rebuilt for the engine.
    let rebuilt: usize = index
        .all()
        .iter()
        .take(100)
        .map(|w| w.object().to_string().len())
        .sum::<usize>()
        / 100;
    let kept: usize = index
        .all()
        .iter()
        .take(100)
        .map(|w| w.kept_bytes())
        .sum::<usize>()
        / 100;
    println!("a workload keeps {kept} bytes of compact text");
    if std::env::var_os("SHOW").is_some() {
        println!(
            "{}",
            serde_json::to_string(&index.all()[0].reduced()).unwrap_or_default()
        );
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{count} ConfigMaps (10 keys x 1 KiB): RSS {:.1} -> {:.1} MiB (+{:.1} MiB)",
        mib(before),
        mib(between),
        mib(between.saturating_sub(before))
    );
    println!(
        "{count} Deployments ({:.1} MiB as JSON; one rebuilt for the engine: {rebuilt} bytes): index holds {} workloads ({consumers} consume team-7/app-7), RSS {:.1} -> {:.1} MiB (+{:.1} MiB)",
        raw as f64 / 1048576.0,
        index.len(),
        mib(between),
        mib(after),
        mib(after.saturating_sub(between))
    );
    println!(
        "both: +{:.1} MiB above idle",
        mib(after.saturating_sub(before))
    );
}
