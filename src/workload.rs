//! Where each workload kind keeps its pod spec, and every ConfigMap/Secret reference in a pod
//! spec: env `valueFrom`, `envFrom` (with its prefix), and configMap/secret/projected volumes
//! (with `items`), for init, regular and ephemeral containers.

use serde_json::{Map, Value};

/// The one table of workload kinds: every kind confgate judges as a pod or a pod template,
/// with what each one is to the rest of confgate. The lists below ([`WORKLOAD_KINDS`],
/// [`ROLLING_KINDS`], [`CONTROLLER_KINDS`], [`STAMPED_BY_DEFAULT`]) and the matches on kinds
/// are derived from it: adding a kind is one variant here (the compiler names every `match`
/// that must say what the new kind does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    ReplicationController,
    Job,
    CronJob,
    /// Argo Rollouts' `Rollout` (`argoproj.io/v1alpha1`): a Deployment with progressive
    /// delivery, whose `spec.template` rolls it (one with `workloadRef` has no template: the
    /// Deployment it names carries it, and rolls it when stamped). Served only where its CRD is
    /// installed.
    Rollout,
}

impl WorkloadKind {
    /// Every kind, in the order lists print them.
    pub const ALL: [WorkloadKind; 9] = [
        WorkloadKind::Pod,
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::ReplicaSet,
        WorkloadKind::ReplicationController,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
        WorkloadKind::Rollout,
    ];

    /// The kind's name, as in `kind:`.
    pub const fn name(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::ReplicationController => "ReplicationController",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::Rollout => "Rollout",
        }
    }

    /// The kind named `kind`, if it is a workload kind.
    pub fn parse(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == kind)
    }

    /// The keys leading to the pod template (`metadata` + `spec`); none for a Pod itself.
    /// `CronJob` in every served version (`batch/v1`, `batch/v1beta1`) nests it in
    /// `jobTemplate`.
    pub const fn template_path(self) -> &'static [&'static str] {
        match self {
            WorkloadKind::Pod => &[],
            WorkloadKind::CronJob => &["spec", "jobTemplate", "spec", "template"],
            WorkloadKind::Deployment
            | WorkloadKind::StatefulSet
            | WorkloadKind::DaemonSet
            | WorkloadKind::ReplicaSet
            | WorkloadKind::ReplicationController
            | WorkloadKind::Job
            | WorkloadKind::Rollout => &["spec", "template"],
        }
    }

    /// It makes other workloads from its template (so what it makes was judged as its
    /// template).
    pub const fn makes_others(self) -> bool {
        !matches!(self, WorkloadKind::Pod)
    }

    /// The rollout controller rolls it when its configuration changes (a CronJob: its next
    /// Job runs with the new configuration).
    pub const fn rolls(self) -> bool {
        matches!(
            self,
            WorkloadKind::Deployment
                | WorkloadKind::StatefulSet
                | WorkloadKind::DaemonSet
                | WorkloadKind::CronJob
                | WorkloadKind::Rollout
        )
    }

    /// `checksum-config` stamps it unless its `kinds` setting says more.
    pub const fn stamped_by_default(self) -> bool {
        matches!(
            self,
            WorkloadKind::Deployment
                | WorkloadKind::StatefulSet
                | WorkloadKind::DaemonSet
                | WorkloadKind::Rollout
        )
    }

    /// Its Pods come from `spec.replicas` (a DaemonSet's from its nodes).
    pub const fn has_replicas(self) -> bool {
        matches!(
            self,
            WorkloadKind::Deployment | WorkloadKind::StatefulSet | WorkloadKind::Rollout
        )
    }

    /// Its API resource (group, version, plural), derived from k8s-openapi's types.
    pub fn api_resource(self) -> kube::core::ApiResource {
        use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
        use k8s_openapi::api::batch::v1::{CronJob, Job};
        use k8s_openapi::api::core::v1::{Pod, ReplicationController};
        use kube::core::ApiResource;
        match self {
            WorkloadKind::Pod => ApiResource::erase::<Pod>(&()),
            WorkloadKind::ReplicationController => ApiResource::erase::<ReplicationController>(&()),
            WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
            WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
            WorkloadKind::ReplicaSet => ApiResource::erase::<ReplicaSet>(&()),
            WorkloadKind::Job => ApiResource::erase::<Job>(&()),
            WorkloadKind::CronJob => ApiResource::erase::<CronJob>(&()),
            WorkloadKind::Rollout => kube::core::ApiResource {
                group: "argoproj.io".into(),
                version: "v1alpha1".into(),
                api_version: "argoproj.io/v1alpha1".into(),
                kind: "Rollout".into(),
                plural: "rollouts".into(),
            },
        }
    }

    /// Its resource as RBAC and errors name it: `deployments`, `rollouts.argoproj.io` (the
    /// plural of [`WorkloadKind::api_resource`], with the group where it is not built in).
    pub const fn resource_name(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "pods",
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::DaemonSet => "daemonsets",
            WorkloadKind::ReplicaSet => "replicasets",
            WorkloadKind::ReplicationController => "replicationcontrollers",
            WorkloadKind::Job => "jobs",
            WorkloadKind::CronJob => "cronjobs",
            WorkloadKind::Rollout => "rollouts.argoproj.io",
        }
    }
}

/// The names of the kinds of the table that `keep`.
fn kind_names(keep: fn(WorkloadKind) -> bool) -> Vec<&'static str> {
    WorkloadKind::ALL
        .into_iter()
        .filter(|k| keep(*k))
        .map(WorkloadKind::name)
        .collect()
}

/// Kinds that are, or carry, a pod template.
pub static WORKLOAD_KINDS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| kind_names(|_| true));

/// The kinds the rollout controller rolls.
pub static ROLLING_KINDS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| kind_names(WorkloadKind::rolls));

/// Workload kinds that carry a pod template and make other workloads from it.
pub static CONTROLLER_KINDS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| kind_names(WorkloadKind::makes_others));

/// The kinds `checksum-config` stamps unless told more.
pub static STAMPED_BY_DEFAULT: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| kind_names(WorkloadKind::stamped_by_default));

/// The API resource of each kind confgate judges, watches or writes: the workload kinds of
/// [`WorkloadKind`] and the configuration they read. Every one is namespaced; `CronJob` is
/// `batch/v1` (webhook rules match every version, so `batch/v1beta1` on old clusters too).
pub fn api_resource(kind: &str) -> Option<kube::core::ApiResource> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::core::ApiResource;
    match kind {
        "ConfigMap" => Some(ApiResource::erase::<ConfigMap>(&())),
        "Secret" => Some(ApiResource::erase::<Secret>(&())),
        other => WorkloadKind::parse(other).map(WorkloadKind::api_resource),
    }
}

/// The keys leading to the pod template of a kind ([`WorkloadKind::template_path`]).
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    WorkloadKind::parse(kind).map(WorkloadKind::template_path)
}

/// `leaf` under the keys of `path`, outermost first: `nested(["spec", "template"], v)` is
/// `{"spec": {"template": v}}`.
pub fn nested<I>(path: I, leaf: Value) -> Value
where
    I: IntoIterator,
    I::Item: AsRef<str>,
    I::IntoIter: DoubleEndedIterator,
{
    path.into_iter().rev().fold(leaf, |inner, key| {
        let mut outer = serde_json::Map::new();
        outer.insert(key.as_ref().to_owned(), inner);
        Value::Object(outer)
    })
}

/// The value at `path` (object keys) below `value`. A fixed path of keys, so no JSON Pointer is
/// parsed and unescaped per request.
fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn at_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(key))
}

/// The pod spec of an object of `kind`, if the kind has one and the object carries it.
pub fn pod_spec<'a>(kind: &str, object: &'a Value) -> Option<&'a Value> {
    at(object, template_path(kind)?)?
        .get("spec")
        .filter(|s| s.is_object())
}

/// [`pod_spec`], to edit.
pub fn pod_spec_mut<'a>(kind: &str, object: &'a mut Value) -> Option<&'a mut Value> {
    at_mut(object, template_path(kind)?)?
        .get_mut("spec")
        .filter(|s| s.is_object())
}

/// Sets `metadata.annotations[key]` of the pod template of an object of `kind` (the Pod itself
/// for a Pod), creating `metadata` and `annotations` when absent. Returns false when the object
/// has no pod template.
pub fn set_template_annotation(kind: &str, object: &mut Value, key: &str, value: &str) -> bool {
    let Some(path) = template_path(kind) else {
        return false;
    };
    let Some(template) = at_mut(object, path).and_then(Value::as_object_mut) else {
        return false;
    };
    let Some(metadata) = entry_object(template, "metadata") else {
        return false;
    };
    let Some(annotations) = entry_object(metadata, "annotations") else {
        return false;
    };
    annotations.insert(key.to_owned(), Value::String(value.to_owned()));
    true
}

/// `metadata.annotations[key]` of the pod template.
pub fn template_annotation<'a>(kind: &str, object: &'a Value, key: &str) -> Option<&'a str> {
    at(object, template_path(kind)?)?
        .get("metadata")?
        .get("annotations")?
        .get(key)?
        .as_str()
}

/// Which list a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// `initContainers`.
    Init,
    /// `containers`.
    Regular,
    /// `ephemeralContainers`.
    Ephemeral,
}

impl ContainerKind {
    /// The pod spec field holding this list.
    pub fn field(self) -> &'static str {
        match self {
            ContainerKind::Init => "initContainers",
            ContainerKind::Regular => "containers",
            ContainerKind::Ephemeral => "ephemeralContainers",
        }
    }

    /// How messages name such a container.
    pub fn noun(self) -> &'static str {
        match self {
            ContainerKind::Init => "init container",
            ContainerKind::Regular => "container",
            ContainerKind::Ephemeral => "ephemeral container",
        }
    }
}

/// One container of a pod spec.
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    /// `name`.
    pub name: &'a str,
    /// Which list it is in.
    pub kind: ContainerKind,
    /// The container object.
    pub value: &'a Value,
}

/// How many containers (init, regular, ephemeral) the pod spec of `object` has; 0 when it is
/// not a workload. Counted without building anything, before any policy runs.
pub fn container_count(kind: &str, object: &Value) -> usize {
    pod_spec(kind, object).map_or(0, |spec| {
        [
            ContainerKind::Init,
            ContainerKind::Regular,
            ContainerKind::Ephemeral,
        ]
        .iter()
        .filter_map(|k| spec.get(k.field()).and_then(Value::as_array))
        .map(Vec::len)
        .sum()
    })
}

/// Every container: init containers, then containers, then ephemeral containers.
pub fn containers(spec: &Value) -> Vec<Container<'_>> {
    let mut out = Vec::new();
    for kind in [
        ContainerKind::Init,
        ContainerKind::Regular,
        ContainerKind::Ephemeral,
    ] {
        for value in spec
            .get(kind.field())
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = value
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            out.push(Container { name, kind, value });
        }
    }
    out
}

/// ConfigMap or Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    ConfigMap,
    Secret,
}

impl Source {
    /// `configmap` or `secret`, as messages and the checksum encoding spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ConfigMap => "configmap",
            Source::Secret => "secret",
        }
    }

    /// `ConfigMap` or `Secret`: the object's kind.
    pub fn kind(self) -> &'static str {
        match self {
            Source::ConfigMap => "ConfigMap",
            Source::Secret => "Secret",
        }
    }
}

/// Which keys of the object a reference uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys<'a> {
    /// Every key (`envFrom`, a volume without `items`).
    All,
    /// These keys (`configMapKeyRef.key`, volume `items[].key`).
    Named(Vec<&'a str>),
}

/// Where in the pod spec a reference is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site<'a> {
    /// `env[].valueFrom.configMapKeyRef|secretKeyRef` of a container.
    Env {
        container: &'a str,
        /// Its list.
        kind: ContainerKind,
        /// The variable name.
        var: &'a str,
    },
    /// `envFrom[]` of a container.
    EnvFrom {
        container: &'a str,
        /// Its list.
        kind: ContainerKind,
        /// `prefix` ("" when absent).
        prefix: &'a str,
    },
    /// `volumes[].configMap|secret`, or a source of `volumes[].projected`.
    Volume {
        /// The volume name.
        volume: &'a str,
        /// True inside `projected.sources`.
        projected: bool,
    },
}

impl Site<'_> {
    /// The container the reference belongs to (volumes belong to the pod).
    pub fn container(&self) -> Option<(&str, ContainerKind)> {
        match *self {
            Site::Env {
                container, kind, ..
            }
            | Site::EnvFrom {
                container, kind, ..
            } => Some((container, kind)),
            Site::Volume { .. } => None,
        }
    }
}

/// One reference from a pod spec to a ConfigMap or Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    /// ConfigMap or Secret.
    pub source: Source,
    /// The object's name (in the pod's namespace).
    pub name: &'a str,
    /// The keys used.
    pub keys: Keys<'a>,
    /// `optional: true`: a missing object or key is not an error for the kubelet.
    pub optional: bool,
    /// Where it is.
    pub site: Site<'a>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn optional(v: &Value) -> bool {
    v.get("optional").and_then(Value::as_bool).unwrap_or(false)
}

fn item_keys(v: &Value) -> Keys<'_> {
    match v.get("items").and_then(Value::as_array) {
        Some(items) if !items.is_empty() => {
            Keys::Named(items.iter().map(|i| str_at(i, "key")).collect())
        }
        _ => Keys::All,
    }
}

/// Every reference in a pod spec, containers first (in [`containers`] order), then volumes.
pub fn references(spec: &Value) -> Vec<Reference<'_>> {
    let mut out = Vec::new();
    for c in containers(spec) {
        for env in c
            .value
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let var = str_at(env, "name");
            let site = Site::Env {
                container: c.name,
                kind: c.kind,
                var,
            };
            for (field, source) in [
                ("configMapKeyRef", Source::ConfigMap),
                ("secretKeyRef", Source::Secret),
            ] {
                if let Some(r) = env.get("valueFrom").and_then(|v| v.get(field)) {
                    out.push(Reference {
                        source,
                        name: str_at(r, "name"),
                        keys: Keys::Named(vec![str_at(r, "key")]),
                        optional: optional(r),
                        site,
                    });
                }
            }
        }
        for from in c
            .value
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let site = Site::EnvFrom {
                container: c.name,
                kind: c.kind,
                prefix: str_at(from, "prefix"),
            };
            for (field, source) in [
                ("configMapRef", Source::ConfigMap),
                ("secretRef", Source::Secret),
            ] {
                if let Some(r) = from.get(field) {
                    out.push(Reference {
                        source,
                        name: str_at(r, "name"),
                        keys: Keys::All,
                        optional: optional(r),
                        site,
                    });
                }
            }
        }
    }
    for volume in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_at(volume, "name");
        let site = Site::Volume {
            volume: name,
            projected: false,
        };
        if let Some(cm) = volume.get("configMap") {
            out.push(Reference {
                source: Source::ConfigMap,
                name: str_at(cm, "name"),
                keys: item_keys(cm),
                optional: optional(cm),
                site,
            });
        }
        if let Some(secret) = volume.get("secret") {
            out.push(Reference {
                source: Source::Secret,
                name: str_at(secret, "secretName"),
                keys: item_keys(secret),
                optional: optional(secret),
                site,
            });
        }
        let sources = volume
            .pointer("/projected/sources")
            .and_then(Value::as_array);
        for projected in sources.into_iter().flatten() {
            let site = Site::Volume {
                volume: name,
                projected: true,
            };
            for (field, source) in [("configMap", Source::ConfigMap), ("secret", Source::Secret)] {
                if let Some(r) = projected.get(field) {
                    out.push(Reference {
                        source,
                        name: str_at(r, "name"),
                        keys: item_keys(r),
                        optional: optional(r),
                        site,
                    });
                }
            }
        }
    }
    out
}

/// The object at `map[key]`, created (or replacing a non-object) when needed. Always `Some`;
/// an `Option` only so that no code path can panic.
pub fn entry_object<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let slot = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_table_agrees_with_k8s_openapi_and_derives_every_list() {
        for kind in WorkloadKind::ALL {
            assert_eq!(WorkloadKind::parse(kind.name()), Some(kind));
            let resource = kind.api_resource();
            assert_eq!(resource.kind, kind.name());
            assert!(
                kind.resource_name().starts_with(&resource.plural),
                "{}",
                kind.name()
            );
            assert_eq!(template_path(kind.name()), Some(kind.template_path()));
        }
        assert_eq!(WorkloadKind::parse("ConfigMap"), None);
        assert_eq!(
            *ROLLING_KINDS,
            [
                "Deployment",
                "StatefulSet",
                "DaemonSet",
                "CronJob",
                "Rollout"
            ]
        );
        assert_eq!(
            *STAMPED_BY_DEFAULT,
            ["Deployment", "StatefulSet", "DaemonSet", "Rollout"]
        );
        assert_eq!(CONTROLLER_KINDS.len(), WORKLOAD_KINDS.len() - 1);
        assert_eq!(
            api_resource("Secret").map(|r| r.plural),
            Some("secrets".into())
        );
    }
    use serde_json::json;

    #[test]
    fn finds_every_reference_kind() {
        let spec = json!({
            "initContainers": [{"name": "init", "envFrom": [{"configMapRef": {"name": "a"}, "prefix": "P_"}]}],
            "containers": [{"name": "web", "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "a", "key": "x"}}},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s", "key": "y", "optional": true}}},
                {"name": "Z", "value": "literal"}]}],
            "volumes": [
                {"name": "v1", "configMap": {"name": "a", "items": [{"key": "k", "path": "p"}]}},
                {"name": "v2", "secret": {"secretName": "s"}},
                {"name": "v3", "projected": {"sources": [{"configMap": {"name": "b"}}, {"downwardAPI": {}}]}}]
        });
        let refs = references(&spec);
        let summary: Vec<(Source, &str, Keys, bool)> = refs
            .iter()
            .map(|r| (r.source, r.name, r.keys.clone(), r.optional))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Source::ConfigMap, "a", Keys::All, false),
                (Source::ConfigMap, "a", Keys::Named(vec!["x"]), false),
                (Source::Secret, "s", Keys::Named(vec!["y"]), true),
                (Source::ConfigMap, "a", Keys::Named(vec!["k"]), false),
                (Source::Secret, "s", Keys::All, false),
                (Source::ConfigMap, "b", Keys::All, false),
            ]
        );
        assert_eq!(
            refs[0].site,
            Site::EnvFrom {
                container: "init",
                kind: ContainerKind::Init,
                prefix: "P_"
            }
        );
        assert_eq!(
            refs[5].site,
            Site::Volume {
                volume: "v3",
                projected: true
            }
        );
    }

    #[test]
    fn locates_pod_specs_by_kind() {
        let cron =
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}});
        assert!(pod_spec("CronJob", &cron).is_some());
        assert!(pod_spec("Deployment", &cron).is_none());
        assert!(pod_spec("Service", &cron).is_none());
        assert!(pod_spec("Pod", &json!({"spec": {}})).is_some());
    }
}

/// The field manager confgate writes with (the rollout controller's patches).
pub const FIELD_MANAGER: &str = "confgate";

/// A workload annotation naming ConfigMaps (comma-separated, its own namespace) whose changes
/// roll it although its pod spec does not reference them (like Wave's `extra-configmaps` and
/// Reloader's explicit lists). Every key counts; a missing one counts as missing, never denies.
pub const EXTRA_CONFIGMAPS: &str = "confgate.dev/extra-configmaps";
/// The same for Secrets.
pub const EXTRA_SECRETS: &str = "confgate.dev/extra-secrets";
/// A workload annotation, `"true"` or `"false"`: its app reloads the files it mounts from
/// ConfigMaps and Secrets (the kubelet updates them in place, except with `subPath`), so
/// volume-mounted references are left out of its checksum. Overrides the policy's
/// `mountedFilesReload`.
pub const MOUNTED_FILES_RELOAD: &str = "confgate.dev/mounted-files-reload";

/// The workload annotations confgate reads (kept by the workload index).
pub const READ_ANNOTATIONS: [&str; 3] = [EXTRA_CONFIGMAPS, EXTRA_SECRETS, MOUNTED_FILES_RELOAD];

/// The objects a workload names in [`EXTRA_CONFIGMAPS`] and [`EXTRA_SECRETS`], in order, once
/// each (names trimmed, empty entries ignored).
pub fn extra_objects(metadata: Option<&Value>) -> Vec<(Source, &str)> {
    let mut out: Vec<(Source, &str)> = Vec::new();
    for (annotation, source) in [
        (EXTRA_CONFIGMAPS, Source::ConfigMap),
        (EXTRA_SECRETS, Source::Secret),
    ] {
        let names = metadata
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(annotation))
            .and_then(Value::as_str)
            .unwrap_or_default();
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !out.contains(&(source, name)) {
                out.push((source, name));
            }
        }
    }
    out
}

/// The volumes some container mounts with `subPath`/`subPathExpr` (the kubelet never updates
/// those files in place).
pub fn sub_path_volumes(spec: &Value) -> std::collections::BTreeSet<&str> {
    containers(spec)
        .into_iter()
        .flat_map(|c| {
            c.value
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter(|m| m.get("subPath").is_some() || m.get("subPathExpr").is_some())
        .map(|m| str_at(m, "name"))
        .collect()
}

/// The field managers other than confgate that own `metadata.annotations[key]` of the pod
/// template, from the object's `managedFields`: a manifest (a Helm chart's `sha256sum`, a
/// kubectl-applied file) that sets the annotation itself. What a mutating webhook adds is owned
/// by no one (the apiserver records ownership before admission), so confgate's own stamp never
/// shows here; its controller's patches are owned by [`FIELD_MANAGER`].
///
/// `managed_fields` is the object's `metadata.managedFields`.
pub fn template_annotation_owners<'a>(
    kind: &str,
    managed_fields: Option<&'a Value>,
    key: &str,
) -> Vec<&'a str> {
    let Some(path) = template_path(kind) else {
        return Vec::new();
    };
    let field = format!("f:{key}");
    managed_fields
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let manager = entry.get("manager").and_then(Value::as_str)?;
            let mut fields = entry.get("fieldsV1")?;
            for segment in path.iter().chain(&["metadata", "annotations"]) {
                fields = fields.get(format!("f:{segment}"))?;
            }
            (manager != FIELD_MANAGER && fields.get(&field).is_some()).then_some(manager)
        })
        .collect()
}

/// A [`Reference`] that owns its strings, kept by the rollout controller's index. Serialised
/// as a JSON array (`["configmap","app",["A"],false,["env","web","container","A"]]`), the
/// compact form the index stores.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnedReference(
    /// `configmap` or `secret`.
    pub String,
    /// The object's name.
    pub String,
    /// The keys used; `None`: every key.
    pub Option<Vec<String>>,
    /// `optional: true`.
    pub bool,
    /// Where: `["env", container, list, var]`, `["envFrom", container, list, prefix]` or
    /// `["volume", name, "projected" | ""]`.
    pub Vec<String>,
);

fn container_kind(field: &str) -> ContainerKind {
    match field {
        "initContainers" => ContainerKind::Init,
        "ephemeralContainers" => ContainerKind::Ephemeral,
        _ => ContainerKind::Regular,
    }
}

impl From<&Reference<'_>> for OwnedReference {
    fn from(r: &Reference<'_>) -> Self {
        let site = match r.site {
            Site::Env {
                container,
                kind,
                var,
            } => vec!["env", container, kind.field(), var],
            Site::EnvFrom {
                container,
                kind,
                prefix,
            } => vec!["envFrom", container, kind.field(), prefix],
            Site::Volume { volume, projected } => {
                vec!["volume", volume, if projected { "projected" } else { "" }]
            }
        };
        OwnedReference(
            r.source.as_str().to_owned(),
            r.name.to_owned(),
            match &r.keys {
                Keys::All => None,
                Keys::Named(keys) => Some(keys.iter().map(|k| (*k).to_owned()).collect()),
            },
            r.optional,
            site.into_iter().map(str::to_owned).collect(),
        )
    }
}

impl OwnedReference {
    /// ConfigMap or Secret.
    pub fn source(&self) -> Source {
        if self.0 == "secret" {
            Source::Secret
        } else {
            Source::ConfigMap
        }
    }

    /// The reference, borrowed.
    pub fn borrow(&self) -> Reference<'_> {
        let part = |i: usize| self.4.get(i).map(String::as_str).unwrap_or_default();
        let site = match part(0) {
            "env" => Site::Env {
                container: part(1),
                kind: container_kind(part(2)),
                var: part(3),
            },
            "envFrom" => Site::EnvFrom {
                container: part(1),
                kind: container_kind(part(2)),
                prefix: part(3),
            },
            _ => Site::Volume {
                volume: part(1),
                projected: part(2) == "projected",
            },
        };
        Reference {
            source: self.source(),
            name: &self.1,
            keys: match &self.2 {
                None => Keys::All,
                Some(keys) => Keys::Named(keys.iter().map(String::as_str).collect()),
            },
            optional: self.3,
            site,
        }
    }
}

/// A pod spec holding exactly `refs` (the inverse of [`references`]: `references` of the result
/// equals `refs`, given in `references` order), so the policies that read references judge
/// a reduced workload as they judge the full one.
pub fn spec_from_references(refs: &[Reference<'_>]) -> Value {
    use serde_json::{Map, json};
    let optional = |v: &mut Value, r: &Reference| {
        if r.optional {
            v["optional"] = Value::Bool(true);
        }
    };
    let items = |v: &mut Value, keys: &Keys| {
        if let Keys::Named(keys) = keys {
            v["items"] = keys.iter().map(|k| json!({"key": k, "path": k})).collect();
        }
    };
    // Containers by (list, name) and volumes by name, in order of first appearance.
    let mut containers: Vec<(ContainerKind, &str, Vec<Value>, Vec<Value>)> = Vec::new();
    let mut volumes: Vec<(&str, Value)> = Vec::new();
    for r in refs {
        let (field_cm, field_secret) = match r.site {
            Site::Env { .. } => ("configMapKeyRef", "secretKeyRef"),
            Site::EnvFrom { .. } => ("configMapRef", "secretRef"),
            Site::Volume { .. } => ("configMap", "secret"),
        };
        let field = match r.source {
            Source::ConfigMap => field_cm,
            Source::Secret => field_secret,
        };
        if let Some((name, kind)) = r.site.container() {
            let at = match containers
                .iter()
                .position(|(k, n, _, _)| *k == kind && *n == name)
            {
                Some(at) => at,
                None => {
                    containers.push((kind, name, Vec::new(), Vec::new()));
                    containers.len() - 1
                }
            };
            let entry = &mut containers[at];
            match r.site {
                Site::Env { var, .. } => {
                    let key = match &r.keys {
                        Keys::Named(keys) => keys.first().copied().unwrap_or_default(),
                        Keys::All => "",
                    };
                    let mut source = json!({"name": r.name, "key": key});
                    optional(&mut source, r);
                    entry
                        .2
                        .push(json!({"name": var, "valueFrom": {field: source}}));
                }
                Site::EnvFrom { prefix, .. } => {
                    let mut source = json!({"name": r.name});
                    optional(&mut source, r);
                    let mut from = json!({ field: source });
                    if !prefix.is_empty() {
                        from["prefix"] = Value::String(prefix.to_owned());
                    }
                    entry.3.push(from);
                }
                Site::Volume { .. } => {}
            }
        } else if let Site::Volume { volume, projected } = r.site {
            let mut source = if r.source == Source::Secret && !projected {
                json!({"secretName": r.name})
            } else {
                json!({"name": r.name})
            };
            optional(&mut source, r);
            items(&mut source, &r.keys);
            match volumes.iter_mut().find(|(n, _)| *n == volume) {
                Some((_, v)) if projected => {
                    if let Some(sources) = v
                        .pointer_mut("/projected/sources")
                        .and_then(Value::as_array_mut)
                    {
                        sources.push(json!({ field: source }));
                    }
                }
                Some((_, v)) => v[field] = source,
                None if projected => volumes.push((
                    volume,
                    json!({"name": volume, "projected": {"sources": [{ field: source }]}}),
                )),
                None => volumes.push((volume, json!({"name": volume, field: source}))),
            }
        }
    }
    let mut spec = Map::new();
    for kind in [
        ContainerKind::Init,
        ContainerKind::Regular,
        ContainerKind::Ephemeral,
    ] {
        let list: Vec<Value> = containers
            .iter()
            .filter(|(k, _, _, _)| *k == kind)
            .map(|(_, name, env, env_from)| json!({"name": name, "env": env, "envFrom": env_from}))
            .collect();
        if !list.is_empty() || kind == ContainerKind::Regular {
            spec.insert(kind.field().to_owned(), Value::Array(list));
        }
    }
    spec.insert(
        "volumes".into(),
        volumes.into_iter().map(|(_, v)| v).collect(),
    );
    Value::Object(spec)
}
