//! Cluster state from manifests (`--cluster-state FILE...`): what `kubectl apply` of those files
//! would have created. Used by the CLI, the tests, and servers run without a cluster.

use super::promises::{Promise, Promises};
use super::{CacheKind, ClusterState, ConfigData, Lookup};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, LimitRangeSpec, Namespace, ResourceQuota, Secret,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A problem in a `--cluster-state` file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML/JSON.
    #[error("{file}: {source}")]
    Syntax {
        file: PathBuf,
        /// The parser's message.
        source: crate::yaml::SyntaxError,
    },
    /// A document of a known kind does not have that kind's shape.
    #[error("{file}: document {document} ({kind}): {message}")]
    Invalid {
        file: PathBuf,
        /// 1-based document index (after `List` expansion).
        document: usize,
        kind: String,
        /// What is wrong.
        message: String,
    },
}

/// A document of a known kind that does not have that kind's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ObjectError {
    pub kind: String,
    /// The failing field's path and what is wrong there.
    pub message: String,
}

type Key = (String, String);

/// Cluster state loaded from manifests.
#[derive(Debug, Default)]
pub struct StaticState {
    files: usize,
    config_maps: HashMap<Key, Arc<ConfigData>>,
    secrets: HashMap<Key, Arc<ConfigData>>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    limit_ranges: BTreeMap<Key, Arc<LimitRangeSpec>>,
    resource_quotas: BTreeMap<Key, Arc<ResourceQuota>>,
    workloads: Vec<Arc<super::workloads::Workload>>,
    /// Secrets promised by the manifests (Certificates, ExternalSecrets, ...), by Secret.
    promises: HashMap<Key, Vec<Promise>>,
    /// Hooks that run before the workloads and may create Secrets, by namespace.
    hooks: HashMap<String, Vec<String>>,
}

impl StaticState {
    /// Loads ConfigMaps, Secrets, Namespaces and LimitRanges from the files; other kinds are
    /// ignored. Objects without a namespace go to `default`, as kubectl would put them.
    pub fn load(files: &[PathBuf]) -> Result<Self, StateError> {
        let mut state = StaticState {
            files: files.len(),
            ..Default::default()
        };
        for file in files {
            let text = std::fs::read_to_string(file).map_err(|source| StateError::Read {
                file: file.clone(),
                source,
            })?;
            state.add_text(file, &text)?;
        }
        Ok(state)
    }

    /// Adds one already-parsed document (a manifest being reviewed, say); other kinds are
    /// ignored. Errors name the kind and the field.
    pub fn add_document(&mut self, doc: Value) -> Result<(), ObjectError> {
        self.add_object(doc)
    }

    /// Adds the objects of one YAML/JSON text.
    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<(), StateError> {
        let docs = crate::yaml::documents(text).map_err(|source| StateError::Syntax {
            file: file.to_owned(),
            source,
        })?;
        for (i, doc) in crate::yaml::flatten_lists(docs).into_iter().enumerate() {
            self.add_object(doc)
                .map_err(|ObjectError { kind, message }| StateError::Invalid {
                    file: file.to_owned(),
                    document: i + 1,
                    kind,
                    message,
                })?;
        }
        Ok(())
    }

    fn add_object(&mut self, doc: Value) -> Result<(), ObjectError> {
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let api_version = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let namespace = || {
            doc.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned()
        };
        if let Some(promiser) = super::promises::kind_of(&doc) {
            let by = super::promises::describe(promiser.kind, &doc);
            for promised in promiser.promised(&doc) {
                self.promises
                    .entry((namespace(), promised.secret))
                    .or_default()
                    .push(Promise {
                        by: by.clone(),
                        keys: promised.keys,
                        hook: false,
                    });
            }
            return Ok(());
        }
        if let Some(hook) = super::promises::hook(&doc) {
            self.hooks.entry(namespace()).or_default().push(hook);
        }
        if let Some(kind) = crate::workload::ROLLING_KINDS.iter().find(|k| **k == kind) {
            let mut doc = doc;
            if doc.pointer("/metadata/namespace").is_none()
                && let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut)
            {
                meta.insert("namespace".into(), Value::String("default".into()));
            }
            if let Some(w) = super::workloads::reduce(kind, &doc) {
                self.workloads.retain(|o| {
                    !(o.kind == w.kind && o.namespace == w.namespace && o.name == w.name)
                });
                self.workloads.push(Arc::new(w));
            }
            return Ok(());
        }
        if api_version != "v1" {
            return Ok(());
        }
        let key = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            (
                meta.namespace.clone().unwrap_or_else(|| "default".into()),
                meta.name.clone().unwrap_or_default(),
            )
        };
        match kind.as_str() {
            "ConfigMap" => {
                let cm: ConfigMap = typed(&kind, doc)?;
                self.config_maps.insert(
                    key(&cm.metadata),
                    Arc::new(ConfigData::from_config_map(&cm)),
                );
            }
            "Secret" => {
                let secret: Secret = typed(&kind, doc)?;
                self.secrets.insert(
                    key(&secret.metadata),
                    Arc::new(ConfigData::from_secret(&secret)),
                );
            }
            "Namespace" => {
                let ns: Namespace = typed(&kind, doc)?;
                let name = ns.metadata.name.unwrap_or_default();
                let mut labels = ns.metadata.labels.unwrap_or_default();
                labels.insert("kubernetes.io/metadata.name".into(), name.clone());
                self.namespaces.insert(name, labels);
            }
            "LimitRange" => {
                let lr: LimitRange = typed(&kind, doc)?;
                // Stored as the apiserver would store it: defaulted.
                let mut spec = lr.spec.unwrap_or_default();
                crate::limitrange::default_spec(&mut spec);
                self.limit_ranges.insert(key(&lr.metadata), Arc::new(spec));
            }
            "ResourceQuota" => {
                let mut quota: ResourceQuota = typed(&kind, doc)?;
                quota.metadata.managed_fields = None;
                self.resource_quotas
                    .insert(key(&quota.metadata), Arc::new(quota));
            }
            _ => {}
        }
        Ok(())
    }
}

fn typed<T: DeserializeOwned>(kind: &str, doc: Value) -> Result<T, ObjectError> {
    serde_path_to_error::deserialize(doc).map_err(|e| ObjectError {
        kind: kind.to_owned(),
        message: format!("{}: {}", e.path(), e.inner()),
    })
}

fn lookup(map: &HashMap<Key, Arc<ConfigData>>, namespace: &str, name: &str) -> Lookup {
    match map.get(&(namespace.to_owned(), name.to_owned())) {
        Some(data) => Lookup::Found(data.clone()),
        None => Lookup::Missing,
    }
}

impl ClusterState for StaticState {
    fn consumers(
        &self,
        source: crate::workload::Source,
        namespace: &str,
        name: &str,
    ) -> Option<Vec<Arc<super::workloads::Workload>>> {
        Some(
            self.workloads
                .iter()
                .filter(|w| w.namespace == namespace && w.references(source, name))
                .cloned()
                .collect(),
        )
    }

    fn describe(&self) -> String {
        format!("static: {} file(s)", self.files)
    }
    fn secret_promises(&self, namespace: &str, name: &str) -> Promises {
        let key = (namespace.to_owned(), name.to_owned());
        let promised = self.promises.get(&key).into_iter().flatten().cloned();
        let hooks = self
            .hooks
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|hook| Promise {
                by: hook.clone(),
                keys: None,
                hook: true,
            });
        Promises::Known(promised.chain(hooks).collect())
    }
    fn config_map(&self, namespace: &str, name: &str) -> Lookup {
        lookup(&self.config_maps, namespace, name)
    }
    fn secret(&self, namespace: &str, name: &str) -> Lookup {
        lookup(&self.secrets, namespace, name)
    }
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces.get(namespace).cloned()
    }
    fn limit_ranges(&self, namespace: &str) -> Option<Vec<Arc<LimitRangeSpec>>> {
        Some(in_namespace(&self.limit_ranges, namespace))
    }
    fn resource_quotas(&self, namespace: &str) -> Option<Vec<Arc<ResourceQuota>>> {
        Some(in_namespace(&self.resource_quotas, namespace))
    }
    fn counts(&self) -> Vec<(CacheKind, usize)> {
        vec![
            (CacheKind::ConfigMaps, self.config_maps.len()),
            (CacheKind::Secrets, self.secrets.len()),
            (CacheKind::Namespaces, self.namespaces.len()),
            (CacheKind::LimitRanges, self.limit_ranges.len()),
            (CacheKind::ResourceQuotas, self.resource_quotas.len()),
        ]
    }
}

/// The objects of `namespace`, sorted by name (the map's order).
fn in_namespace<V>(map: &BTreeMap<Key, Arc<V>>, namespace: &str) -> Vec<Arc<V>> {
    map.iter()
        .filter(|((ns, _), _)| ns == namespace)
        .map(|(_, v)| v.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config, namespace: shop}
data: {LOG_LEVEL: info}
binaryData: {blob: aGVsbG8=}
---
apiVersion: v1
kind: Secret
metadata: {name: app-secret, namespace: shop}
stringData: {API_KEY: s3cr3t}
data: {OTHER: eHl6enk=}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: payments}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
"#;

    fn state() -> StaticState {
        let mut s = StaticState::default();
        s.add_text(Path::new("state.yaml"), STATE).unwrap();
        s
    }

    #[test]
    fn keeps_keys_and_digests_of_decoded_values() {
        let s = state();
        let Lookup::Found(cm) = s.config_map("shop", "app-config") else {
            panic!("configmap missing")
        };
        assert_eq!(cm.get("blob"), Some(&super::super::sha256(b"hello")));
        let Lookup::Found(secret) = s.secret("shop", "app-secret") else {
            panic!("secret missing")
        };
        assert_eq!(
            secret.get("API_KEY"),
            Some(&super::super::sha256(b"s3cr3t"))
        );
        assert_eq!(secret.get("OTHER"), Some(&super::super::sha256(b"xyzzy")));
        assert_eq!(s.config_map("shop", "nope"), Lookup::Missing);
        assert_eq!(s.config_map("other", "app-config"), Lookup::Missing);
    }

    #[test]
    fn namespaces_get_their_name_label() {
        let labels = state().namespace_labels("shop").unwrap();
        assert_eq!(labels["team"], "payments");
        assert_eq!(labels["kubernetes.io/metadata.name"], "shop");
    }

    #[test]
    fn reports_invalid_objects_with_file_and_document() {
        let mut s = StaticState::default();
        let err = s
            .add_text(
                Path::new("bad.yaml"),
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: [1]\n",
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("bad.yaml: document 1 (ConfigMap): data"),
            "{err}"
        );
    }
}
