//! Cluster state in two layers: objects of the reviewed input first (as if the whole stream
//! were applied), then another state (manifests given with `--cluster-state`, or nothing).
//! Used by `confgate review` to judge a rendered chart or kustomize overlay as a unit.

use super::ChecksumKey;
use super::fresh::Fresh;
use super::promises::Promises;
use super::static_state::StaticState;
use super::{CacheKind, ClusterState, Lookup};
use crate::workload::Source;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::LimitRangeSpec;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The input's own objects over `fallback`.
pub struct Layered {
    local: StaticState,
    fallback: Arc<dyn ClusterState>,
}

impl Layered {
    /// `local` (objects of the reviewed input) over `fallback`.
    pub fn new(local: StaticState, fallback: Arc<dyn ClusterState>) -> Self {
        Self { local, fallback }
    }
}

/// Nothing but the reviewed input is known: an object that is not in it is "not checked",
/// never "missing".
#[derive(Debug, Default, Clone, Copy)]
pub struct InputOnly;

const NOT_GIVEN: &str =
    "not in the reviewed input (give --cluster-state FILE to check it against the cluster)";

impl ClusterState for InputOnly {
    fn describe(&self) -> String {
        "the reviewed input only".into()
    }
    fn config_map(&self, _: &str, _: &str) -> Lookup {
        Lookup::Unknown(NOT_GIVEN.into())
    }
    fn secret(&self, _: &str, _: &str) -> Lookup {
        Lookup::Unknown(NOT_GIVEN.into())
    }
    fn namespace_labels(&self, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }
    fn limit_ranges(&self, _: &str) -> Option<Vec<Arc<LimitRangeSpec>>> {
        None
    }
    fn why_unknown(&self, cache: CacheKind) -> String {
        format!(
            "the reviewed input has no {} for it (give --cluster-state FILE to check it against the cluster)",
            cache.noun()
        )
    }
}

impl ClusterState for Layered {
    fn describe(&self) -> String {
        format!("the reviewed input over {}", self.fallback.describe())
    }
    fn config_map(&self, namespace: &str, name: &str) -> Lookup {
        match self.local.config_map(namespace, name) {
            Lookup::Found(data) => Lookup::Found(data),
            _ => self.fallback.config_map(namespace, name),
        }
    }
    fn secret(&self, namespace: &str, name: &str) -> Lookup {
        match self.local.secret(namespace, name) {
            Lookup::Found(data) => Lookup::Found(data),
            _ => self.fallback.secret(namespace, name),
        }
    }
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.local
            .namespace_labels(namespace)
            .or_else(|| self.fallback.namespace_labels(namespace))
    }
    fn limit_ranges(&self, namespace: &str) -> Option<Vec<Arc<LimitRangeSpec>>> {
        let local = self.local.limit_ranges(namespace).unwrap_or_default();
        match self.fallback.limit_ranges(namespace) {
            Some(mut known) => {
                known.extend(local);
                Some(known)
            }
            None if local.is_empty() => None,
            None => Some(local),
        }
    }
    fn resource_quotas(
        &self,
        namespace: &str,
    ) -> Option<Vec<Arc<k8s_openapi::api::core::v1::ResourceQuota>>> {
        let local = self.local.resource_quotas(namespace).unwrap_or_default();
        match self.fallback.resource_quotas(namespace) {
            Some(mut known) => {
                // The input's own quota of a name replaces the cluster's.
                known.retain(|q| !local.iter().any(|l| l.metadata.name == q.metadata.name));
                known.extend(local);
                Some(known)
            }
            None if local.is_empty() => None,
            None => Some(local),
        }
    }
    fn counts(&self) -> Vec<(CacheKind, usize)> {
        self.local.counts()
    }
    fn secret_promises(&self, namespace: &str, name: &str) -> Promises {
        match (
            self.local.secret_promises(namespace, name),
            self.fallback.secret_promises(namespace, name),
        ) {
            (Promises::Known(mut local), Promises::Known(known)) => {
                local.extend(known);
                Promises::Known(local)
            }
            (Promises::Known(local), Promises::Unknown(_)) if !local.is_empty() => {
                Promises::Known(local)
            }
            (_, unknown) => unknown,
        }
    }
    fn lags(&self) -> bool {
        self.fallback.lags()
    }
    fn reads_secrets_on_demand(&self) -> bool {
        self.fallback.reads_secrets_on_demand()
    }
    fn why_unknown(&self, cache: CacheKind) -> String {
        self.fallback.why_unknown(cache)
    }
    fn read_now<'a>(
        &'a self,
        namespace: &'a str,
        wanted: Vec<(Source, String)>,
        promises: bool,
    ) -> BoxFuture<'a, Fresh> {
        // The input's own objects are what it will apply: they are not read from the cluster.
        let (local, rest): (Vec<_>, Vec<_>) = wanted.into_iter().partition(|(source, name)| {
            matches!(
                self.local.lookup(*source, namespace, name),
                Lookup::Found(_)
            )
        });
        Box::pin(async move {
            let mut fresh = self.fallback.read_now(namespace, rest, promises).await;
            for (source, name) in local {
                fresh.insert(
                    source,
                    namespace,
                    &name,
                    self.local.lookup(source, namespace, &name),
                );
            }
            fresh
        })
    }
    fn server_minor_version(&self) -> Option<u32> {
        self.fallback.server_minor_version()
    }
    fn checksum_key(&self) -> Result<Option<Arc<ChecksumKey>>, String> {
        self.fallback.checksum_key()
    }
    fn consumers(
        &self,
        source: crate::workload::Source,
        namespace: &str,
        name: &str,
    ) -> Option<Vec<Arc<super::workloads::Workload>>> {
        // The input's workloads, then the cluster's that the input does not replace.
        let mut found = self
            .local
            .consumers(source, namespace, name)
            .unwrap_or_default();
        let known = self.fallback.consumers(source, namespace, name);
        if known.is_none() && found.is_empty() {
            return None;
        }
        for w in known.into_iter().flatten() {
            if !found.iter().any(|f| f.kind == w.kind && f.name == w.name) {
                found.push(w);
            }
        }
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_input_counts_first_and_unknown_objects_are_not_checked() {
        let mut local = StaticState::default();
        local
            .add_text(
                Path::new("input"),
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app, namespace: shop}\ndata: {A: x}\n",
            )
            .unwrap();
        let layered = Layered::new(local, Arc::new(InputOnly));
        assert!(matches!(
            layered.config_map("shop", "app"),
            Lookup::Found(_)
        ));
        assert_eq!(
            layered.config_map("shop", "other"),
            Lookup::Unknown(NOT_GIVEN.into())
        );
        assert_eq!(layered.limit_ranges("shop"), None);
    }
}
