//! The workloads the rollout controller keeps in step: Deployments, StatefulSets, DaemonSets
//! and CronJobs from watch caches, each reduced to what the checksum needs (the configuration
//! references of its pod template, and the template's annotations) plus what decides whether
//! it may roll now. Never a value of the configuration itself.

use crate::cluster::Resource;
use crate::cluster::live::Cache;
use crate::workload::template_path;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The kinds that roll (CronJob: its next Job runs with the new configuration).
pub const KINDS: [&str; 4] = ["Deployment", "StatefulSet", "DaemonSet", "CronJob"];

/// One workload, as far as rolling it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet` or `CronJob`.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid (for Events).
    pub uid: String,
    /// The workload opted out (`confgate.dev/rollout: "false"` on the workload).
    pub opted_out: bool,
    /// A paused Deployment.
    pub paused: bool,
    /// Its last rollout is done: every replica runs the current template and is ready (always
    /// true for a CronJob).
    pub settled: bool,
    /// The workload reduced to its kind, name, labels, template annotations and the
    /// ConfigMap/Secret references of its pod spec (what the checksum policy reads), kept as
    /// JSON text: a tree of small allocations per workload cost 50 KB of resident memory each
    /// (`examples/rollout_index_memory.rs`), the text a tenth of that.
    object: Box<str>,
}

impl Workload {
    /// The reduced workload (see the field).
    pub fn object(&self) -> Value {
        serde_json::from_str(&self.object).unwrap_or_default()
    }
}

/// The annotation on a workload that keeps the controller away from it.
pub const OPT_OUT: &str = "confgate.dev/rollout";

/// `apiVersion` and resource of each kind.
pub fn api_resource(kind: &str) -> Option<ApiResource> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    use k8s_openapi::api::batch::v1::CronJob;
    Some(match kind {
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        "DaemonSet" => ApiResource::erase::<DaemonSet>(&()),
        "CronJob" => ApiResource::erase::<CronJob>(&()),
        _ => return None,
    })
}

/// The reduced workload, or `None` for an object without a pod template.
pub fn reduce(kind: &'static str, object: &Value) -> Option<Workload> {
    let path = template_path(kind)?;
    let mut template = object;
    for key in path {
        template = template.get(*key)?;
    }
    let spec = template.get("spec")?;
    let metadata = object.get("metadata")?;
    let text = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut reduced_spec = Map::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(containers) = spec.get(list).and_then(Value::as_array) else {
            continue;
        };
        let kept: Vec<Value> = containers
            .iter()
            .map(|c| {
                let env: Vec<Value> = c
                    .get("env")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|e| e.get("valueFrom").is_some())
                    .cloned()
                    .collect();
                json!({"name": c.get("name"), "env": env, "envFrom": c.get("envFrom").cloned().unwrap_or(json!([]))})
            })
            .collect();
        reduced_spec.insert(list.to_owned(), Value::Array(kept));
    }
    let volumes: Vec<Value> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| {
            v.get("configMap").is_some()
                || v.get("secret").is_some()
                || v.get("projected").is_some()
        })
        .cloned()
        .collect();
    reduced_spec.insert("volumes".into(), Value::Array(volumes));
    let mut reduced_template = json!({
        "metadata": {"annotations": template.pointer("/metadata/annotations").cloned().unwrap_or(json!({}))},
        "spec": Value::Object(reduced_spec),
    });
    for key in path.iter().rev() {
        reduced_template = json!({ *key: reduced_template });
    }
    // Listed objects carry no apiVersion/kind (only watched ones do): from the kind.
    let mut reduced = json!({
        "apiVersion": api_resource(kind)?.api_version,
        "kind": kind,
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "labels": metadata.get("labels").cloned().unwrap_or(json!({})),
        },
    });
    if let (Some(target), Some(source)) = (reduced.as_object_mut(), reduced_template.as_object()) {
        target.extend(source.clone());
    }
    Some(Workload {
        kind,
        namespace: text(metadata, "/namespace"),
        name: text(metadata, "/name"),
        uid: text(metadata, "/uid"),
        opted_out: metadata
            .pointer(&format!("/annotations/{}", OPT_OUT.replace('/', "~1")))
            .and_then(Value::as_str)
            == Some("false"),
        paused: object.pointer("/spec/paused").and_then(Value::as_bool) == Some(true),
        settled: settled(kind, object),
        object: reduced.to_string().into_boxed_str(),
    })
}

/// Whether the workload's last rollout is done: the controller has seen the current spec and
/// every replica runs it, ready. Rolling again before that only piles up ReplicaSets.
fn settled(kind: &str, object: &Value) -> bool {
    let number = |p: &str| object.pointer(p).and_then(Value::as_i64);
    let observed = number("/status/observedGeneration").unwrap_or(0)
        >= number("/metadata/generation").unwrap_or(0);
    match kind {
        "Deployment" | "StatefulSet" => {
            let wanted = number("/spec/replicas").unwrap_or(1);
            observed
                && number("/status/updatedReplicas").unwrap_or(0) >= wanted
                && number("/status/readyReplicas").unwrap_or(0) >= wanted
        }
        "DaemonSet" => {
            let wanted = number("/status/desiredNumberScheduled").unwrap_or(0);
            observed
                && number("/status/updatedNumberScheduled").unwrap_or(0) >= wanted
                && number("/status/numberReady").unwrap_or(0) >= wanted
        }
        _ => true,
    }
}

/// The watch caches of the rolling kinds.
pub struct Index {
    caches: Vec<Arc<Cache<Workload>>>,
}

impl Index {
    /// Starts one watcher per kind on the current runtime. Their changes do not wake the
    /// controller (status updates are constant); a new or edited workload is stamped by the
    /// webhook, and one held back is retried at the next resync.
    pub fn start(client: kube::Client) -> Arc<Self> {
        let mut caches = Vec::new();
        for kind in KINDS {
            let Some(resource) = api_resource(kind) else {
                continue;
            };
            let cache = Cache::new(Resource::Workloads);
            caches.push(cache.clone());
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            tokio::spawn(async move {
                let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
                cache
                    .follow_with(events, move |o: &DynamicObject| {
                        serde_json::to_value(o).ok().and_then(|v| reduce(kind, &v))
                    })
                    .await;
            });
        }
        Arc::new(Self { caches })
    }

    /// True once every kind has been listed.
    pub fn synced(&self) -> bool {
        self.caches.iter().all(|c| c.is_synced())
    }

    /// Every workload, in no particular order.
    pub fn all(&self) -> Vec<Arc<Workload>> {
        self.caches.iter().flat_map(|c| c.values()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_a_listed_workload_to_its_references_and_annotations() {
        // As a list returns it: no apiVersion, no kind.
        let listed = json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "generation": 2,
                         "annotations": {"confgate.dev/rollout": "false"}},
            "spec": {"replicas": 2, "paused": true, "template": {
                "metadata": {"annotations": {"checksum/config": "abc"}},
                "spec": {
                    "containers": [{"name": "web", "image": "big:1", "args": ["--x"],
                        "env": [{"name": "PLAIN", "value": "v"},
                                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "A"}}}],
                        "envFrom": [{"secretRef": {"name": "s"}}]}],
                    "volumes": [{"name": "c", "configMap": {"name": "cfg"}}, {"name": "tmp", "emptyDir": {}}]}}},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "readyReplicas": 1}
        });
        let w = reduce("Deployment", &listed).unwrap();
        assert_eq!(
            (w.namespace.as_str(), w.name.as_str(), w.uid.as_str()),
            ("shop", "web", "u1")
        );
        assert!(w.opted_out && w.paused);
        assert!(!w.settled, "one of two replicas ready");
        assert_eq!(
            w.object(),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "shop", "labels": {}},
                "spec": {"template": {
                    "metadata": {"annotations": {"checksum/config": "abc"}},
                    "spec": {
                        "containers": [{"name": "web",
                            "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "A"}}}],
                            "envFrom": [{"secretRef": {"name": "s"}}]}],
                        "volumes": [{"name": "c", "configMap": {"name": "cfg"}}]}}}
            })
        );
        // A CronJob's template is in its jobTemplate, and it is always free to change.
        let cron = json!({"metadata": {"name": "c", "namespace": "shop"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}});
        let w = reduce("CronJob", &cron).unwrap();
        assert!(w.settled);
        assert_eq!(w.object()["apiVersion"], "batch/v1");
        assert!(
            w.object()
                .pointer("/spec/jobTemplate/spec/template/spec")
                .is_some()
        );
    }
}
