//! What one judgement read from the API server itself, at that moment, and the view of the
//! cluster that puts those reads over the caches.
//!
//! Watch caches lag behind the API server (by milliseconds usually, by the length of an outage
//! at worst), so a cache saying "missing" is never enough to deny: the engine reads what the
//! denial rests on now ([`super::ClusterState::read_now`]) and judges again with the reads in a
//! [`View`]. Secrets in `--secrets get` mode are read the same way for every judgement, before
//! it; nothing read here outlives the judgement (an audit scan shares one [`Fresh`] across the
//! workloads of one scan).

use super::promises::{Promise, Promises};
use super::{CacheKind, ChecksumKey, ClusterState, Lookup, NotReady};
use crate::workload::Source;
use k8s_openapi::api::core::v1::LimitRangeSpec;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The Secrets a namespace is promised, as listed now: (Secret name, promise).
pub type Listed = Result<Vec<(String, Promise)>, String>;

/// Objects and promises read now, for one judgement.
#[derive(Debug, Default, Clone)]
pub struct Fresh {
    objects: HashMap<(Source, String, String), Lookup>,
    promises: HashMap<String, Listed>,
}

impl Fresh {
    /// Records what a read of `source` `namespace/name` answered.
    pub fn insert(&mut self, source: Source, namespace: &str, name: &str, lookup: Lookup) {
        self.objects
            .insert((source, namespace.to_owned(), name.to_owned()), lookup);
    }

    /// What a read answered, if one was made.
    pub fn get(&self, source: Source, namespace: &str, name: &str) -> Option<&Lookup> {
        self.objects
            .get(&(source, namespace.to_owned(), name.to_owned()))
    }

    /// Records the promises of `namespace` as listed now.
    pub fn set_promises(&mut self, namespace: &str, listed: Listed) {
        self.promises.insert(namespace.to_owned(), listed);
    }

    /// True when the promises of `namespace` were listed.
    pub fn has_promises(&self, namespace: &str) -> bool {
        self.promises.contains_key(namespace)
    }

    /// Adds `other`'s reads (they win).
    pub fn merge(&mut self, other: Fresh) {
        self.objects.extend(other.objects);
        self.promises.extend(other.promises);
    }

    /// Drops the failed reads of `source`: the caches answer for them instead.
    pub fn forget_failed(&mut self, source: Source) {
        self.objects
            .retain(|(s, _, _), lookup| *s != source || !matches!(lookup, Lookup::Unknown(_)));
    }

    /// How many objects were read.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True when nothing was read.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.promises.is_empty()
    }

    /// How many reads failed (their answer is "unknown").
    pub fn failed(&self) -> usize {
        let objects = self
            .objects
            .values()
            .filter(|l| matches!(l, Lookup::Unknown(_)))
            .count();
        objects + self.promises.values().filter(|p| p.is_err()).count()
    }

    /// The promises for `namespace/secret`, if the namespace was listed.
    fn promises_for(&self, namespace: &str, secret: &str) -> Option<Promises> {
        Some(match self.promises.get(namespace)? {
            Ok(listed) => Promises::Known(
                listed
                    .iter()
                    .filter(|(name, _)| name == secret)
                    .map(|(_, p)| p.clone())
                    .collect(),
            ),
            Err(why) => Promises::Unknown(why.clone()),
        })
    }
}

/// `base` with `fresh` over it: a lookup that was read now answers from the read.
pub struct View<'a> {
    base: &'a dyn ClusterState,
    fresh: &'a Fresh,
}

impl<'a> View<'a> {
    /// `fresh` over `base`.
    pub fn new(base: &'a dyn ClusterState, fresh: &'a Fresh) -> Self {
        Self { base, fresh }
    }
}

impl ClusterState for View<'_> {
    fn describe(&self) -> String {
        self.base.describe()
    }
    fn is_standalone(&self) -> bool {
        self.base.is_standalone()
    }
    fn config_map(&self, namespace: &str, name: &str) -> Lookup {
        match self.fresh.get(Source::ConfigMap, namespace, name) {
            Some(read) => read.clone(),
            None => self.base.config_map(namespace, name),
        }
    }
    fn secret(&self, namespace: &str, name: &str) -> Lookup {
        match self.fresh.get(Source::Secret, namespace, name) {
            Some(read) => read.clone(),
            None => self.base.secret(namespace, name),
        }
    }
    fn secret_promises(&self, namespace: &str, name: &str) -> Promises {
        let base = self.base.secret_promises(namespace, name);
        match (self.fresh.promises_for(namespace, name), base) {
            (None, base) => base,
            // Hooks of a reviewed input are not in the cluster: keep them beside the listing.
            (Some(Promises::Known(mut listed)), Promises::Known(base)) => {
                listed.extend(base.into_iter().filter(|p| p.hook));
                Promises::Known(listed)
            }
            (Some(listed), _) => listed,
        }
    }
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.base.namespace_labels(namespace)
    }
    fn limit_ranges(&self, namespace: &str) -> Option<Vec<Arc<LimitRangeSpec>>> {
        self.base.limit_ranges(namespace)
    }
    fn resource_quotas(
        &self,
        namespace: &str,
    ) -> Option<Vec<Arc<k8s_openapi::api::core::v1::ResourceQuota>>> {
        self.base.resource_quotas(namespace)
    }
    fn server_minor_version(&self) -> Option<u32> {
        self.base.server_minor_version()
    }
    fn ready(&self) -> Result<(), NotReady> {
        self.base.ready()
    }
    fn staleness(&self) -> Vec<(CacheKind, Option<std::time::Duration>)> {
        self.base.staleness()
    }
    fn counts(&self) -> Vec<(CacheKind, usize)> {
        self.base.counts()
    }
    fn forbidden(&self) -> Vec<&'static str> {
        self.base.forbidden()
    }
    fn deferred_deletions(&self) -> Vec<(Source, String, String, Vec<String>)> {
        self.base.deferred_deletions()
    }
    fn consumers(
        &self,
        source: Source,
        namespace: &str,
        name: &str,
    ) -> Option<Vec<Arc<super::workloads::Workload>>> {
        self.base.consumers(source, namespace, name)
    }
    fn checksum_key(&self) -> Result<Option<Arc<ChecksumKey>>, String> {
        self.base.checksum_key()
    }
    fn lags(&self) -> bool {
        self.base.lags()
    }
    fn reads_secrets_on_demand(&self) -> bool {
        self.base.reads_secrets_on_demand()
    }
    fn why_unknown(&self, cache: CacheKind) -> String {
        self.base.why_unknown(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::static_state::StaticState;
    use std::path::Path;

    #[test]
    fn reads_made_now_win_over_the_cache_and_the_rest_comes_from_it() {
        let mut cache = StaticState::default();
        cache
            .add_text(
                Path::new("state.yaml"),
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: old, namespace: ns}\n",
            )
            .unwrap();
        let mut fresh = Fresh::default();
        fresh.insert(Source::ConfigMap, "ns", "old", Lookup::Missing);
        fresh.insert(
            Source::Secret,
            "ns",
            "new",
            Lookup::Found(Arc::new(Default::default())),
        );
        let view = View::new(&cache, &fresh);
        assert_eq!(view.config_map("ns", "old"), Lookup::Missing);
        assert!(matches!(view.secret("ns", "new"), Lookup::Found(_)));
        assert_eq!(view.secret("ns", "other"), Lookup::Missing);
        assert_eq!(fresh.failed(), 0);
    }

    #[test]
    fn listed_promises_answer_for_their_namespace_only() {
        let cache = StaticState::default();
        let mut fresh = Fresh::default();
        let promise = Promise {
            by: "Certificate \"web\"".into(),
            keys: None,
            hook: false,
        };
        fresh.set_promises("ns", Ok(vec![("web-tls".into(), promise.clone())]));
        fresh.set_promises("down", Err("timed out".into()));
        let view = View::new(&cache, &fresh);
        assert_eq!(
            view.secret_promises("ns", "web-tls"),
            Promises::Known(vec![promise])
        );
        assert_eq!(view.secret_promises("ns", "other"), Promises::none());
        assert_eq!(
            view.secret_promises("down", "x"),
            Promises::Unknown("timed out".into())
        );
        assert_eq!(view.secret_promises("elsewhere", "x"), Promises::none());
        assert_eq!(fresh.failed(), 1);
    }
}
