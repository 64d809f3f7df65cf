//! Measures what the live ConfigMap cache costs in memory: 10,000 ConfigMaps of about 10 KB
//! (10 keys of 1 KB) go through the same watch-cache code as in a cluster (an initial list, as a
//! watcher delivers it), and the process's resident memory is read before and after.
//!
//! ```sh
//! cargo run --release --example cache_memory [-- COUNT KEYS VALUE_BYTES]
//! ```

mod support;

use confgate::cluster::cache::Cache;
use confgate::cluster::{CacheKind, ConfigData};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use support::rss_kib;

fn config_map(i: usize, keys: usize, value_bytes: usize) -> ConfigMap {
    let data = (0..keys)
        .map(|k| {
            let seed = format!("{i:08}-{k:04}-");
            let value: String = seed.chars().cycle().take(value_bytes).collect();
            (format!("key-{k:02}.properties"), value)
        })
        .collect();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("config-{i:05}")),
            namespace: Some(format!("team-{:03}", i % 200)),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (count, keys, value_bytes) = (
        args.first().copied().unwrap_or(10_000),
        args.get(1).copied().unwrap_or(10),
        args.get(2).copied().unwrap_or(1024),
    );
    let before = rss_kib();
    let cache = Cache::<ConfigData>::new(CacheKind::ConfigMaps);
    // One initial list, as a watcher delivers it; each object is built lazily and dropped once
    // digested, as the watcher's deserialised objects are.
    let listed = (0..count).map(|i| Ok(Event::InitApply(config_map(i, keys, value_bytes))));
    let events = std::iter::once(Ok(Event::Init))
        .chain(listed)
        .chain(std::iter::once(Ok(Event::InitDone)));
    cache
        .clone()
        .follow(futures::stream::iter(events), ConfigData::from_config_map)
        .await;
    let after = rss_kib();
    let raw_mib = (count * keys * value_bytes) as f64 / (1024.0 * 1024.0);
    println!(
        "configmaps: {}  keys each: {keys}  value bytes: {value_bytes}  (raw data {raw_mib:.1} MiB)",
        cache.len()
    );
    println!(
        "RSS before: {:.1} MiB  after: {:.1} MiB  cache cost: {:.1} MiB",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 / 1024.0
    );
}
