//! The workloads that consume configuration, from watch caches (the rollout controller keeps
//! them in step, the config guard protects what they read): Deployments, StatefulSets, DaemonSets
//! and CronJobs from watch caches, each reduced to what the checksum needs (the configuration
//! references of its pod template, and the template's annotations) plus what decides whether
//! it may roll now. Never a value of the configuration itself.

use crate::cluster::CacheKind;
use crate::cluster::cache::{Cache, Key, Observer, watch_into};
use crate::workload::{
    OwnedReference, READ_ANNOTATIONS, Source, WorkloadKind, api_resource, extra_objects, nested,
    references, spec_from_references, sub_path_volumes, template_annotation_owners, template_path,
};
use kube::api::{Api, DynamicObject};
use parking_lot::RwLock;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// How often the index looks for the Rollout CRD while it is not installed.
const DISCOVERY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// One workload, as far as rolling it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet` or `CronJob`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// Its uid (for Events).
    pub uid: String,
    /// The resourceVersion it was seen at: the controller's write is conditional on it, so a
    /// workload written since (its own apply, carrying the new checksum already) is compared
    /// again instead of being patched from a stale copy.
    pub resource_version: String,
    /// The workload opted out (`confgate.dev/rollout: "false"` on the workload).
    pub opted_out: bool,
    /// A paused Deployment.
    pub paused: bool,
    /// Being deleted (a deletionTimestamp).
    pub deleting: bool,
    /// Its last rollout is done: every replica runs the current template and is ready (always
    /// true for a CronJob).
    pub settled: bool,
    /// Where an unfinished rollout stands (a digest of its status counts): when it stops
    /// changing, the rollout is stuck (crash-looping Pods, a bad image, Pods never ready).
    pub progress: u64,
    /// The Deployment controller gave up on its rollout (`Progressing` is `False`:
    /// `ProgressDeadlineExceeded`).
    pub failing: bool,
    /// It runs Pods whose health a rollout can show (a Deployment or StatefulSet with replicas,
    /// a DaemonSet with scheduled Pods); not a CronJob or a workload scaled to zero. Such
    /// workloads are the first wave of a progressive rollout.
    pub shows_health: bool,
    /// The ConfigMaps and Secrets it references, by (kind, name), for the reverse index.
    pub objects: Box<[(Source, Box<str>)]>,
    /// Those of `objects` it references only with `optional: true` (usually none): the config
    /// guard asks "does it need this object?" every second without decoding [`Reduced`].
    optional_only: Box<[(Source, Box<str>)]>,
    /// [`Reduced`], as compact text ([`compact`]).
    reduced: Box<str>,
}

pub mod compact;

pub use compact::Reduced;
use compact::{MAX_ANNOTATION, decode, encode};

impl Workload {
    /// True when it references ConfigMap or Secret `name` (in its own namespace).
    pub fn references(&self, source: Source, name: &str) -> bool {
        self.objects
            .iter()
            .any(|(s, n)| *s == source && **n == *name)
    }

    /// True when it references ConfigMap or Secret `name` at least once without
    /// `optional: true`: its Pods could not start without it.
    pub fn requires(&self, source: Source, name: &str) -> bool {
        self.references(source, name)
            && !self
                .optional_only
                .iter()
                .any(|(s, n)| *s == source && **n == *name)
    }

    /// Bytes of the kept text (for the memory benchmark).
    pub fn kept_bytes(&self) -> usize {
        self.reduced.len()
    }

    /// What the checksum policy reads of the workload.
    pub fn reduced(&self) -> Reduced {
        decode(&self.reduced, &self.objects)
    }

    /// The workload rebuilt from [`Reduced`]: kind, name, labels, the template's annotations,
    /// `managedFields` for the annotations other managers own, and a pod spec with exactly its
    /// references. What the webhook would compute for the full object, the engine computes for
    /// this one.
    pub fn object(&self) -> Value {
        let reduced = self.reduced();
        let refs: Vec<_> = reduced
            .references
            .iter()
            .map(OwnedReference::borrow)
            .collect();
        let path = template_path(self.kind).unwrap_or_default();
        let annotations: Map<String, Value> = reduced
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut spec = spec_from_references(&refs);
        if !reduced.sub_path.is_empty() {
            // Which volumes are mounted with subPath is all the checksum needs of the mounts.
            let mounts: Vec<Value> = reduced
                .sub_path
                .iter()
                .map(|v| json!({"name": v, "mountPath": format!("/{v}"), "subPath": v}))
                .collect();
            if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
                containers
                    .push(json!({"name": "confgate-sub-path-mounts", "volumeMounts": mounts}));
            } else {
                spec["containers"] =
                    json!([{"name": "confgate-sub-path-mounts", "volumeMounts": mounts}]);
            }
        }
        let template = nested(
            path.iter(),
            json!({
                "metadata": {"annotations": annotations},
                "spec": spec,
            }),
        );
        let managed: Vec<Value> = reduced
            .owners
            .iter()
            .flat_map(|(key, managers)| {
                let fields = nested(
                    path.iter()
                        .chain(&["metadata", "annotations"])
                        .map(|segment| format!("f:{segment}")),
                    json!({ format!("f:{key}"): {} }),
                );
                managers.iter().map(move |m| {
                    json!({"manager": m, "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": fields.clone()})
                })
            })
            .collect();
        let labels: Map<String, Value> = reduced
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut object = json!({
            "apiVersion": api_resource(self.kind).map(|r| r.api_version).unwrap_or_default(),
            "kind": self.kind,
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": labels},
        });
        if !managed.is_empty() {
            object["metadata"]["managedFields"] = Value::Array(managed);
        }
        if !reduced.metadata.is_empty() {
            object["metadata"]["annotations"] = reduced
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<Map<String, Value>>()
                .into();
        }
        if let (Some(target), Value::Object(source)) = (object.as_object_mut(), template) {
            target.extend(source);
        }
        object
    }
}

/// The annotation on a workload that keeps the controller away from it.
pub const OPT_OUT: &str = crate::cluster::ROLLOUT_OPT_OUT;

/// Runs `watch` once the API server serves `resource` (a CRD's kind, such as Argo Rollouts'
/// Rollout), looking every [`DISCOVERY_EVERY`]; until then the cache is empty and counts as
/// settled (nothing to wait for), so readiness never waits for a kind the cluster lacks.
async fn when_served(
    client: kube::Client,
    resource: kube::core::ApiResource,
    cache: Arc<Cache<Workload>>,
    watch: impl std::future::Future<Output = ()>,
) {
    loop {
        match crate::cluster::serves(&client, &resource.api_version, &resource.plural).await {
            Ok(true) => break,
            Ok(false) | Err(kube::Error::Api(_)) => cache.set_absent(true),
            Err(error) => {
                tracing::debug!(%error, api_version = %resource.api_version, "discovery failed");
            }
        }
        tokio::time::sleep(DISCOVERY_EVERY).await;
    }
    tracing::info!(kind = %resource.kind, api_version = %resource.api_version, "served: its workloads are indexed and rolled");
    cache.set_absent(false);
    watch.await;
}

/// The reduced workload, or `None` for an object without a pod template.
pub fn reduce(kind: &'static str, object: &Value) -> Option<Workload> {
    let path = template_path(kind)?;
    let template = path.iter().try_fold(object, |v, key| v.get(*key))?;
    let spec = template.get("spec")?;
    let metadata = object.get("metadata")?;
    let text = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let pairs = |v: Option<&Value>| -> Vec<(String, String)> {
        v.and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect()
    };
    // A checksum is short; long values (some tools keep JSON in template annotations) are not.
    let mut annotations = pairs(template.pointer("/metadata/annotations"));
    annotations.retain(|(_, v)| v.len() <= MAX_ANNOTATION && !v.chars().any(char::is_control));
    let owners = annotations
        .iter()
        .filter_map(|(key, _)| {
            let managers =
                template_annotation_owners(kind, object.pointer("/metadata/managedFields"), key);
            (!managers.is_empty()).then(|| {
                (
                    key.clone(),
                    managers.into_iter().map(str::to_owned).collect(),
                )
            })
        })
        .collect();
    let refs = references(spec);
    let extras = extra_objects(Some(metadata));
    let mut objects: Vec<(Source, Box<str>)> = refs
        .iter()
        .map(|r| (r.source, r.name))
        .chain(extras.iter().copied())
        .map(|(source, name)| (source, Box::from(name)))
        .collect();
    objects.sort();
    objects.dedup();
    // Named dependencies (extras) are never required.
    let optional_only: Vec<(Source, Box<str>)> = objects
        .iter()
        .filter(|(source, name)| {
            refs.iter()
                .filter(|r| r.source == *source && r.name == &**name)
                .all(|r| r.optional)
        })
        .cloned()
        .collect();
    let mut read = pairs(metadata.get("annotations"));
    read.retain(|(k, v)| READ_ANNOTATIONS.contains(&k.as_str()) && v.len() <= MAX_ANNOTATION * 16);
    let reduced = Reduced {
        labels: pairs(metadata.get("labels")),
        annotations,
        owners,
        references: refs.iter().map(OwnedReference::from).collect(),
        metadata: read,
        sub_path: sub_path_volumes(spec)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    Some(Workload {
        kind,
        namespace: text(metadata, "/namespace"),
        name: text(metadata, "/name"),
        uid: text(metadata, "/uid"),
        resource_version: text(metadata, "/resourceVersion"),
        opted_out: metadata
            .pointer(&format!("/annotations/{}", OPT_OUT.replace('/', "~1")))
            .and_then(Value::as_str)
            == Some("false"),
        paused: object.pointer("/spec/paused").and_then(Value::as_bool) == Some(true),
        deleting: metadata.get("deletionTimestamp").is_some(),
        settled: settled(kind, object),
        progress: progress(object),
        failing: failing(object),
        shows_health: shows_health(kind, object),
        reduced: encode(&reduced, &objects),
        objects: objects.into_boxed_slice(),
        optional_only: optional_only.into_boxed_slice(),
    })
}

/// Whether the workload's controller gave up on its rollout: a Deployment's `Progressing` is
/// `False` (`ProgressDeadlineExceeded`), an Argo Rollout is `Degraded`.
pub fn failing(object: &Value) -> bool {
    object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Progressing")
                && c.get("status").and_then(Value::as_str) == Some("False")
        })
        || object.pointer("/status/phase").and_then(Value::as_str) == Some("Degraded")
}

/// Whether the workload runs Pods, so that its rollout can show whether they are healthy.
pub fn shows_health(kind: &str, object: &Value) -> bool {
    let number = |p: &str| object.pointer(p).and_then(Value::as_i64);
    match WorkloadKind::parse(kind) {
        Some(k) if k.has_replicas() => number("/spec/replicas").unwrap_or(1) > 0,
        Some(WorkloadKind::DaemonSet) => number("/status/desiredNumberScheduled").unwrap_or(0) > 0,
        _ => false,
    }
}

/// A digest of the status counts that move while a rollout progresses (and of the generation).
fn progress(object: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    object
        .pointer("/metadata/generation")
        .map(Value::to_string)
        .hash(&mut hasher);
    object
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .hash(&mut hasher);
    for field in [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "currentReplicas",
        "updatedNumberScheduled",
        "numberReady",
        "numberAvailable",
    ] {
        object
            .pointer(&format!("/status/{field}"))
            .and_then(Value::as_i64)
            .hash(&mut hasher);
    }
    hasher.finish()
}

/// Whether the workload's last rollout is done: the controller has seen the current spec and
/// every replica runs it, ready. Rolling again before that only piles up ReplicaSets.
pub fn settled(kind: &str, object: &Value) -> bool {
    let number = |p: &str| object.pointer(p).and_then(Value::as_i64);
    // Argo Rollouts writes observedGeneration as a string.
    let observed_generation = object.pointer("/status/observedGeneration").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    let observed = observed_generation.unwrap_or(0) >= number("/metadata/generation").unwrap_or(0);
    let Some(kind) = WorkloadKind::parse(kind) else {
        return true;
    };
    match kind {
        // Argo Rollouts says it itself: `Healthy` once every step is done and every replica
        // is available; `Progressing`, `Paused` (a canary step waiting) and `Degraded` are not.
        WorkloadKind::Rollout => match object.pointer("/status/phase").and_then(Value::as_str) {
            Some(phase) => observed && phase == "Healthy",
            None => {
                let wanted = number("/spec/replicas").unwrap_or(1);
                observed
                    && number("/status/updatedReplicas").unwrap_or(0) >= wanted
                    && number("/status/availableReplicas").unwrap_or(0) >= wanted
            }
        },
        // As `kubectl rollout status`: every replica updated and ready, and no old replica left
        // (while the old Pods still run, they count as ready but the rollout is not done).
        WorkloadKind::Deployment | WorkloadKind::StatefulSet => {
            let wanted = number("/spec/replicas").unwrap_or(1);
            let updated = number("/status/updatedReplicas").unwrap_or(0);
            let revisions = object.pointer("/status/updateRevision")
                == object.pointer("/status/currentRevision");
            observed
                && updated >= wanted
                && number("/status/readyReplicas").unwrap_or(0) >= wanted
                && number("/status/replicas").unwrap_or(0) <= updated
                && (kind == WorkloadKind::Deployment || revisions)
        }
        WorkloadKind::DaemonSet => {
            let wanted = number("/status/desiredNumberScheduled").unwrap_or(0);
            observed
                && number("/status/updatedNumberScheduled").unwrap_or(0) >= wanted
                && number("/status/numberReady").unwrap_or(0) >= wanted
        }
        // Not rolled by the controller: nothing to wait for.
        WorkloadKind::Pod
        | WorkloadKind::ReplicaSet
        | WorkloadKind::ReplicationController
        | WorkloadKind::Job
        | WorkloadKind::CronJob => true,
    }
}

/// The watch caches of the rolling kinds, and the reverse index: ConfigMap/Secret → the
/// workloads that reference it.
pub struct Index {
    caches: Vec<(&'static str, Arc<Cache<Workload>>)>,
    reverse: Arc<Reverse>,
}

/// ConfigMap/Secret → the workloads referencing it, kept in step by the workload caches (an
/// [`Observer`]). Keyed by a hash of (kind, namespace, name) with the workloads' kinds and
/// names (a multiset): a third of the memory of keeping the names twice. A collision only adds
/// candidates, which [`Index::consumers`] drops by checking what each workload references.
#[derive(Default)]
struct Reverse {
    map: RwLock<HashMap<u64, Vec<Consumer>>>,
}

/// A consuming workload's kind and name (its namespace is the object's).
type Consumer = (&'static str, Box<str>);

fn object_hash(source: Source, namespace: &str, name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (source, namespace, name).hash(&mut hasher);
    hasher.finish()
}

impl Observer<Workload> for Reverse {
    fn changed(
        &self,
        key: &Key,
        old: Option<&Arc<Workload>>,
        new: Option<&Arc<Workload>>,
        _initial: bool,
    ) {
        let objects = |w: Option<&Arc<Workload>>| w.map(|w| w.objects.clone()).unwrap_or_default();
        let (before, after) = (objects(old), objects(new));
        if before == after {
            return;
        }
        let Some(kind) = new.or(old).map(|w| w.kind) else {
            return;
        };
        let (namespace, name) = key;
        let mut map = self.map.write();
        for (source, object) in before.iter() {
            let hash = object_hash(*source, namespace, object);
            if let Some(users) = map.get_mut(&hash) {
                if let Some(at) = users.iter().position(|(k, n)| *k == kind && **n == **name) {
                    users.swap_remove(at);
                }
                if users.is_empty() {
                    map.remove(&hash);
                }
            }
        }
        for (source, object) in after.iter() {
            map.entry(object_hash(*source, namespace, object))
                .or_default()
                .push((kind, name.as_str().into()));
        }
    }
}

impl Index {
    /// Starts one watcher per kind on the current runtime, through the same watch loop as the
    /// other caches ([`watch_into`]: retries capped at 5 s, staleness tracked). Their changes
    /// do not wake the rollout controller (status updates are constant); a new or edited
    /// workload is stamped by the webhook.
    pub fn start(client: kube::Client) -> Arc<Self> {
        let index = Self::detached();
        for (kind, cache) in &index.caches {
            let (kind, cache) = (*kind, cache.clone());
            let Some(resource) = api_resource(kind) else {
                continue;
            };
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let watch = watch_into(api, cache.clone(), move |o: &DynamicObject| {
                serde_json::to_value(o).ok().and_then(|v| reduce(kind, &v))
            });
            if WorkloadKind::parse(kind) == Some(WorkloadKind::Rollout) {
                tokio::spawn(when_served(client.clone(), resource, cache, watch));
            } else {
                tokio::spawn(watch);
            }
        }
        index
    }

    /// An index fed by hand (benchmarks and tests): `follow` each cache.
    pub fn detached() -> Arc<Self> {
        let reverse = Arc::new(Reverse::default());
        let caches = crate::workload::ROLLING_KINDS
            .iter()
            .map(|kind| {
                (
                    *kind,
                    Cache::observed(
                        CacheKind::Workloads,
                        Some(reverse.clone() as Arc<dyn Observer<Workload>>),
                    ),
                )
            })
            .collect();
        Arc::new(Self { caches, reverse })
    }

    /// The cache of `kind`.
    pub fn cache(&self, kind: &str) -> Option<&Arc<Cache<Workload>>> {
        self.caches.iter().find(|(k, _)| *k == kind).map(|(_, c)| c)
    }

    /// True once every kind has been listed.
    pub fn synced(&self) -> bool {
        self.caches.iter().all(|(_, c)| c.is_synced())
    }

    /// True once every kind has been listed or refused (RBAC): a kind confgate may not list is
    /// left out of the index, and readiness does not wait for it.
    pub fn settled(&self) -> bool {
        self.caches.iter().all(|(_, c)| c.is_settled())
    }

    /// The resources of the kinds the API server refuses to list.
    pub fn forbidden(&self) -> Vec<&'static str> {
        self.caches
            .iter()
            .filter(|(_, c)| c.is_forbidden())
            .filter_map(|(kind, _)| WorkloadKind::parse(kind).map(WorkloadKind::resource_name))
            .collect()
    }

    /// Every workload, in no particular order.
    pub fn all(&self) -> Vec<Arc<Workload>> {
        self.caches.iter().flat_map(|(_, c)| c.values()).collect()
    }

    /// Number of workloads held.
    pub fn len(&self) -> usize {
        self.caches.iter().map(|(_, c)| c.len()).sum()
    }

    /// True when no workload is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live workloads that read ConfigMap/Secret `namespace/name` without `optional:
    /// true`, as `deployment ns/web`: those its deletion would break.
    pub fn required_readers(&self, source: Source, namespace: &str, name: &str) -> Vec<String> {
        self.consumers(source, namespace, name)
            .into_iter()
            .filter(|w| !w.deleting && w.requires(source, name))
            .map(|w| format!("{} {}/{}", w.kind.to_lowercase(), w.namespace, w.name))
            .collect()
    }

    /// The workloads that reference ConfigMap/Secret `namespace/name`.
    pub fn consumers(&self, source: Source, namespace: &str, name: &str) -> Vec<Arc<Workload>> {
        let users: Vec<Consumer> = self
            .reverse
            .map
            .read()
            .get(&object_hash(source, namespace, name))
            .cloned()
            .unwrap_or_default();
        let mut found: Vec<Arc<Workload>> = users
            .into_iter()
            .filter_map(|(kind, workload)| self.cache(kind)?.get(namespace, &workload))
            .filter(|w| w.references(source, name))
            .collect();
        found.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        found.dedup_by(|a, b| a.kind == b.kind && a.name == b.name);
        found
    }

    /// The workload `kind` `namespace/name`, as last seen.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Arc<Workload>> {
        self.cache(kind)?.get(namespace, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::checksum_config::{ChecksumConfig, DEFAULT_ANNOTATION, OWN_ANNOTATION};
    use crate::policy::testing::{cluster, mutate};
    use crate::workload::pod_spec;

    #[test]
    fn a_workload_requires_what_it_reads_at_least_once_without_optional() {
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "both", "key": "A", "optional": true}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "both", "key": "B"}}},
                {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "maybe", "key": "C", "optional": true}}}]}]}}}});
        let w = reduce("Deployment", &object).unwrap();
        assert!(w.requires(Source::ConfigMap, "both"));
        assert!(!w.requires(Source::ConfigMap, "maybe"));
        assert!(w.references(Source::ConfigMap, "maybe"));
        assert!(!w.requires(Source::Secret, "both"));
    }

    /// Every kind of reference, as a list returns it (no apiVersion, no kind).
    fn listed() -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "generation": 2,
                         "resourceVersion": "42", "labels": {"app": "web"},
                         "annotations": {"confgate.dev/rollout": "false"}},
            "spec": {"replicas": 2, "paused": true, "template": {
                "metadata": {"annotations": {"checksum/config": "abc", "other": "x"}},
                "spec": {
                    "initContainers": [{"name": "proxy", "restartPolicy": "Always",
                        "envFrom": [{"prefix": "P_", "configMapRef": {"name": "proxy", "optional": true}}]}],
                    "containers": [{"name": "web", "image": "big:1", "args": ["--x"],
                        "env": [{"name": "PLAIN", "value": "v"},
                                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "A"}}},
                                {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token", "optional": true}}}],
                        "envFrom": [{"secretRef": {"name": "s"}}]},
                        {"name": "plain", "image": "x"}],
                    "volumes": [
                        {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "B", "path": "b.txt"}]}},
                        {"name": "whole", "secret": {"secretName": "tls", "optional": true}},
                        {"name": "p", "projected": {"sources": [
                            {"configMap": {"name": "cfg"}},
                            {"secret": {"name": "s", "items": [{"key": "ca", "path": "ca"}]}},
                            {"serviceAccountToken": {"path": "t"}}]}},
                        {"name": "tmp", "emptyDir": {}}]}}},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "readyReplicas": 1}
        })
    }

    #[test]
    fn keeps_what_decides_a_rollout() {
        let w = reduce("Deployment", &listed()).unwrap();
        assert_eq!(
            (
                w.namespace.as_str(),
                w.name.as_str(),
                w.uid.as_str(),
                w.resource_version.as_str()
            ),
            ("shop", "web", "u1", "42")
        );
        assert!(w.opted_out && w.paused && !w.deleting);
        assert!(!w.settled, "one of two replicas ready");
        assert_eq!(
            w.objects.as_ref(),
            &[
                (Source::ConfigMap, "cfg".into()),
                (Source::ConfigMap, "proxy".into()),
                (Source::Secret, "s".into()),
                (Source::Secret, "tls".into()),
            ]
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

    #[test]
    fn the_rebuilt_workload_has_exactly_the_references_and_annotations() {
        let full = listed();
        let w = reduce("Deployment", &full).unwrap();
        let rebuilt = w.object();
        assert_eq!(rebuilt["apiVersion"], "apps/v1");
        assert_eq!(rebuilt["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(
            rebuilt["spec"]["template"]["metadata"]["annotations"],
            json!({"checksum/config": "abc", "other": "x"})
        );
        assert_eq!(
            references(pod_spec("Deployment", &rebuilt).unwrap()),
            references(pod_spec("Deployment", &full).unwrap())
        );
    }

    #[test]
    fn the_checksum_of_the_rebuilt_workload_is_the_webhooks() {
        let state = cluster(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: shop}\ndata: {A: '1', B: '2'}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: proxy, namespace: shop}\ndata: {X: '1'}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: shop}\ndata: {token: YQ==, ca: Yg==}\n",
        );
        let policy = ChecksumConfig::from_settings(json!({})).unwrap();
        let mut full = listed();
        full["apiVersion"] = json!("apps/v1");
        full["kind"] = json!("Deployment");
        let annotations = |o: &Value| o["spec"]["template"]["metadata"]["annotations"].clone();
        let (from_full, _) = mutate(&policy, full.clone(), &state);
        let (from_reduced, _) = mutate(
            &policy,
            reduce("Deployment", &full).unwrap().object(),
            &state,
        );
        assert_ne!(annotations(&from_full)[DEFAULT_ANNOTATION], "abc");
        assert_eq!(annotations(&from_full), annotations(&from_reduced));
        // A chart that sets checksum/config itself: confgate's goes to its own annotation, in
        // the full object and in the reduced one alike.
        full["metadata"]["managedFields"] = json!([{"manager": "helm", "operation": "Update",
            "fieldsV1": {"f:spec": {"f:template": {"f:metadata": {"f:annotations": {"f:checksum/config": {}}}}}}}]);
        let (from_full, out) = mutate(&policy, full.clone(), &state);
        let (from_reduced, _) = mutate(
            &policy,
            reduce("Deployment", &full).unwrap().object(),
            &state,
        );
        assert_eq!(annotations(&from_full)[DEFAULT_ANNOTATION], "abc");
        assert!(annotations(&from_full)[OWN_ANNOTATION].is_string());
        assert_eq!(annotations(&from_full), annotations(&from_reduced));
        assert_eq!(
            out.warnings,
            vec![format!(
                "checksum/config is managed by \"helm\" (the manifest sets it); confgate leaves it alone and stamps {OWN_ANNOTATION} instead"
            )]
        );
    }

    #[test]
    fn named_dependencies_and_reloaded_files_count_alike_in_the_rebuilt_workload() {
        let state = cluster(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: shop}\ndata: {A: '1', B: '2'}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: proxy, namespace: shop}\ndata: {X: '1'}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: flags, namespace: shop}\ndata: {F: '1'}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: shop}\ndata: {token: YQ==, ca: Yg==}\n",
        );
        let annotations = |o: &Value| o["spec"]["template"]["metadata"]["annotations"].clone();
        let mut full = listed();
        full["apiVersion"] = json!("apps/v1");
        full["kind"] = json!("Deployment");
        full["metadata"]["annotations"] = json!({
            "confgate.dev/extra-configmaps": " flags, ,cfg ",
            "confgate.dev/extra-secrets": "vault-token",
            "unrelated": "kept out"});
        let w = reduce("Deployment", &full).unwrap();
        // Named dependencies are indexed (their changes find the workload), never required.
        assert!(
            w.references(Source::ConfigMap, "flags") && !w.requires(Source::ConfigMap, "flags")
        );
        assert!(w.references(Source::Secret, "vault-token"));
        assert_eq!(
            w.object()["metadata"]["annotations"],
            json!({"confgate.dev/extra-configmaps": " flags, ,cfg ", "confgate.dev/extra-secrets": "vault-token"})
        );
        for settings in [json!({}), json!({"mountedFilesReload": true})] {
            let policy = ChecksumConfig::from_settings(settings.clone()).unwrap();
            let (from_full, _) = mutate(&policy, full.clone(), &state);
            let (from_reduced, _) = mutate(&policy, w.object(), &state);
            assert_eq!(
                annotations(&from_full),
                annotations(&from_reduced),
                "{settings}"
            );
        }
        // A named ConfigMap's change changes the checksum; with reloaded files, a mounted one's
        // does not, unless it is mounted with subPath.
        let stamp = |full: &Value, settings: Value, state: &str| {
            let policy = ChecksumConfig::from_settings(settings).unwrap();
            annotations(&mutate(&policy, full.clone(), &cluster(state)).0)[DEFAULT_ANNOTATION]
                .clone()
        };
        let base = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: shop}\ndata: {A: '1', B: '2'}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: shop}\ndata: {token: YQ==, ca: Yg==}\n";
        let with = |flags: &str| {
            format!(
                "{base}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: flags, namespace: shop}}\ndata: {{F: '{flags}'}}\n"
            )
        };
        assert_ne!(
            stamp(&full, json!({}), &with("1")),
            stamp(&full, json!({}), &with("2"))
        );
        let cfg = |b: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg, namespace: shop}}\ndata: {{A: '1', B: '{b}'}}\n"
            )
        };
        let mut mounted = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "m", "namespace": "shop"},
            "spec": {"template": {"spec": {
                "containers": [{"name": "app", "volumeMounts": [{"name": "conf", "mountPath": "/etc/app"}]}],
                "volumes": [{"name": "conf", "configMap": {"name": "cfg"}}]}}}});
        let reload = json!({"mountedFilesReload": true});
        assert_eq!(
            stamp(&mounted, reload.clone(), &cfg("2")),
            stamp(&mounted, reload.clone(), &cfg("3"))
        );
        assert_ne!(
            stamp(&mounted, json!({}), &cfg("2")),
            stamp(&mounted, json!({}), &cfg("3"))
        );
        // The workload's own annotation wins over the policy's setting.
        mounted["metadata"]["annotations"] = json!({"confgate.dev/mounted-files-reload": "false"});
        assert_ne!(
            stamp(&mounted, reload.clone(), &cfg("2")),
            stamp(&mounted, reload.clone(), &cfg("3"))
        );
        mounted["metadata"]["annotations"] = json!({});
        mounted["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["subPath"] =
            json!("app.yaml");
        assert_ne!(
            stamp(&mounted, reload.clone(), &cfg("2")),
            stamp(&mounted, reload.clone(), &cfg("3"))
        );
        let w = reduce("Deployment", &mounted).unwrap();
        let policy = ChecksumConfig::from_settings(reload).unwrap();
        assert_eq!(
            annotations(&mutate(&policy, mounted.clone(), &cluster(&cfg("2"))).0),
            annotations(&mutate(&policy, w.object(), &cluster(&cfg("2"))).0)
        );
    }

    #[tokio::test]
    async fn the_reverse_index_follows_the_workloads() {
        use kube::runtime::watcher::Event;
        let index = Index::detached();
        let deployment = |name: &str, config: &str| {
            let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"template": {"spec": {"containers": [{"name": "c",
                    "envFrom": [{"configMapRef": {"name": config}}]}]}}}});
            d["metadata"]["resourceVersion"] = json!("1");
            serde_json::from_value::<DynamicObject>(d).unwrap()
        };
        let events = futures::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(deployment("a", "cfg"))),
            Ok(Event::InitApply(deployment("b", "cfg"))),
            Ok(Event::InitDone),
            // b moves to another ConfigMap; a goes away.
            Ok(Event::Apply(deployment("b", "other"))),
            Ok(Event::Delete(deployment("a", "cfg"))),
            Ok(Event::Apply(deployment("c", "cfg"))),
        ]);
        index
            .cache("Deployment")
            .unwrap()
            .clone()
            .follow_with(events, |o: &DynamicObject| {
                serde_json::to_value(o)
                    .ok()
                    .and_then(|v| reduce("Deployment", &v))
            })
            .await;
        let names = |config: &str| {
            let mut names: Vec<String> = index
                .consumers(Source::ConfigMap, "shop", config)
                .iter()
                .map(|w| w.name.clone())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names("cfg"), vec!["c"]);
        assert_eq!(names("other"), vec!["b"]);
        assert!(names("none").is_empty());
        assert!(index.consumers(Source::Secret, "shop", "cfg").is_empty());
        assert_eq!(index.len(), 2);
    }
}
