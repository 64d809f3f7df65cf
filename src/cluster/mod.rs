//! Cluster state that policies read: ConfigMaps and Secrets (key names and a SHA-256 digest per
//! key, never values), Namespace labels, and LimitRanges.
//!
//! Behind one trait with three implementations: [`live::LiveState`] (kube-runtime watch caches),
//! [`static_state::StaticState`] (manifests given with `--cluster-state`), and [`Standalone`]
//! (no cluster: every lookup is "unknown", and policies say what they could not check).

pub mod cache;
pub mod changes;
pub mod checksum_key;
pub mod fresh;
pub mod layered;
pub mod live;
mod promised;
pub mod promises;
pub mod static_state;
pub mod workloads;

/// How long a judgement may wait for its reads from the API server (Secrets in `get` mode,
/// and the confirmation of what a denial rests on).
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, LimitRangeSpec, Secret};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The minor version of a Kubernetes version string (`1.27`, `v1.33.3`, `1.30+`): what
/// discovery answers and what settings pin.
pub fn minor_version(version: &str) -> Option<u32> {
    let mut parts = version.trim_start_matches('v').split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    (major == 1).then(|| digits.parse().ok()).flatten()
}

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// What is kept of a ConfigMap or Secret: its keys and a SHA-256 of each value, never the
/// values. ConfigMap `data` and `binaryData` (decoded); Secret `data` (decoded), with
/// `stringData` merged over it as the apiserver does on write.
///
/// Stored as one sorted boxed slice: a tenth of a `BTreeMap`'s overhead for the small maps
/// most ConfigMaps are, and still a binary search per lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigData {
    keys: Box<[(Box<str>, Digest)]>,
    /// Who writes keys into this object after it is created (a `kubernetes.io/service-account-token`
    /// Secret is created empty and filled by the token controller): those keys, and by whom.
    filled_by: Option<(&'static str, &'static [&'static str])>,
    /// The object opted out of rolling its readers (`confgate.dev/rollout: "false"` on the
    /// ConfigMap or Secret): its values do not count in checksums.
    unfollowed: bool,
    /// confgate's finalizers on the object and whether it is being deleted (the config guard's
    /// deferred deletion); `None` for the common object that has neither.
    marks: Option<Box<Marks>>,
}

/// The prefix of the config guard's finalizers (`confgate.dev/in-use-<installation>`).
pub const IN_USE_PREFIX: &str = "confgate.dev/in-use";

/// What the config guard needs of an object's life: its `confgate.dev/in-use*` finalizers, and
/// whether its deletion has begun.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    /// The `confgate.dev/in-use*` finalizers it carries.
    pub finalizers: Vec<String>,
    /// It has a deletionTimestamp.
    pub deleting: bool,
}

fn marks_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<Box<Marks>> {
    let finalizers: Vec<String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| f.starts_with(IN_USE_PREFIX))
        .cloned()
        .collect();
    let deleting = meta.deletion_timestamp.is_some();
    (deleting || !finalizers.is_empty()).then(|| {
        Box::new(Marks {
            finalizers,
            deleting,
        })
    })
}

/// The annotation that opts a workload, or a ConfigMap or Secret, out of rollouts.
pub const ROLLOUT_OPT_OUT: &str = "confgate.dev/rollout";

fn opted_out(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ROLLOUT_OPT_OUT))
        .is_some_and(|v| v == "false")
}

/// The keys the token controller writes into a `kubernetes.io/service-account-token` Secret.
const TOKEN_KEYS: &[&str] = &["ca.crt", "namespace", "token"];

impl ConfigData {
    /// From (key, value bytes) pairs; a later duplicate key wins.
    pub fn from_values<'a>(values: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut keys: Vec<(Box<str>, Digest)> = values
            .into_iter()
            .map(|(k, v)| (Box::from(k), sha256(v)))
            .collect();
        keys.reverse();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys.dedup_by(|later, earlier| later.0 == earlier.0);
        Self {
            keys: keys.into_boxed_slice(),
            filled_by: None,
            unfollowed: false,
            marks: None,
        }
    }

    /// Digests a ConfigMap's `data` and `binaryData`.
    pub fn from_config_map(cm: &ConfigMap) -> Self {
        let data = cm
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_bytes()));
        let binary = cm
            .binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.0.as_slice()));
        let mut digested = Self::from_values(data.chain(binary));
        digested.unfollowed = opted_out(&cm.metadata);
        digested.marks = marks_of(&cm.metadata);
        digested
    }

    /// Digests a Secret's `data` (and `stringData`, which only manifests carry). The values are
    /// dropped as soon as they are hashed.
    pub fn from_secret(secret: &Secret) -> Self {
        let data = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.0.as_slice()));
        let string_data = secret
            .string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_bytes()));
        let mut digested = Self::from_values(data.chain(string_data));
        digested.unfollowed = opted_out(&secret.metadata);
        digested.marks = marks_of(&secret.metadata);
        if secret.type_.as_deref() == Some("kubernetes.io/service-account-token") {
            digested.filled_by = Some(("the token controller", TOKEN_KEYS));
        }
        digested
    }

    /// The config guard's finalizers on the object, and whether it is being deleted.
    pub fn marks(&self) -> Marks {
        self.marks.as_deref().cloned().unwrap_or_default()
    }

    /// True when the object opted out of rolling its readers (`confgate.dev/rollout: "false"`).
    pub fn unfollowed(&self) -> bool {
        self.unfollowed
    }

    /// A digest of what its readers see (key names and value digests, and whether it is
    /// followed): equal for two versions of the object exactly when no reader's checksum could
    /// tell them apart. The rollout controller's waves are per (object, fingerprint).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.keys.hash(&mut hasher);
        self.unfollowed.hash(&mut hasher);
        hasher.finish()
    }

    /// Who will write `key`, when a controller fills this object after its creation (the token
    /// controller fills a service-account-token Secret): a reader of such a key waits for it.
    pub fn filled_later(&self, key: &str) -> Option<&'static str> {
        self.filled_by
            .filter(|(_, keys)| keys.contains(&key))
            .map(|(who, _)| who)
    }

    /// The digest of `key`'s value.
    pub fn get(&self, key: &str) -> Option<&Digest> {
        self.keys
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &self.keys[i].1)
    }

    /// True when the object has `key`.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Key names, sorted.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| &**k)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the object has no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The per-installation key that makes the Secret part of a checksum unguessable: a checksum
/// line for a Secret key carries HMAC-SHA256(key, SHA-256 of the value) instead of the bare
/// SHA-256, so someone who can read a Deployment and its ConfigMaps cannot test guesses of a
/// Secret's value against its `checksum/config` offline. Kept in a Secret confgate owns.
#[derive(Clone)]
pub struct ChecksumKey(ring::hmac::Key);

impl ChecksumKey {
    /// The number of key bytes.
    pub const LEN: usize = 32;

    /// From key bytes (at least 16).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= 16).then(|| Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes)))
    }

    /// A new random key's bytes.
    pub fn generate() -> Result<[u8; Self::LEN], String> {
        let mut bytes = [0u8; Self::LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "the system random number generator failed".to_owned())?;
        Ok(bytes)
    }

    /// HMAC-SHA256 of a value's digest.
    pub fn keyed(&self, digest: &Digest) -> Digest {
        let tag = ring::hmac::sign(&self.0, digest);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl std::fmt::Debug for ChecksumKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChecksumKey(..)")
    }
}

/// SHA-256 of bytes.
pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// The answer to "does this ConfigMap/Secret exist?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// It exists; here are its keys.
    Found(Arc<ConfigData>),
    /// It does not exist.
    Missing,
    /// Cannot be known (no cluster, cache not synced, Secrets not readable): says why.
    Unknown(String),
}

/// Whether the API server serves resource `plural` in `api_version` (discovery); a group or
/// version it does not serve at all (404) is `false`, other failures are errors.
pub async fn serves(client: &kube::Client, api_version: &str, plural: &str) -> kube::Result<bool> {
    match client.list_api_group_resources(api_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == plural)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(error) => Err(error),
    }
}

/// Which objects a cache holds, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheKind {
    ConfigMaps,
    Secrets,
    Namespaces,
    LimitRanges,
    ResourceQuotas,
    /// Deployments, StatefulSets, DaemonSets and CronJobs (the rollout controller's index).
    Workloads,
    /// The objects that promise Secrets (Certificates, ExternalSecrets, ...).
    Promisers,
}

impl CacheKind {
    /// The API resource name.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::ConfigMaps => "configmaps",
            CacheKind::Secrets => "secrets",
            CacheKind::Namespaces => "namespaces",
            CacheKind::LimitRanges => "limitranges",
            CacheKind::ResourceQuotas => "resourcequotas",
            CacheKind::Workloads => "workloads",
            CacheKind::Promisers => "promisers",
        }
    }

    /// `ConfigMap`, `LimitRange`, ...: the kind a cache holds, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            CacheKind::ConfigMaps => "ConfigMap",
            CacheKind::Secrets => "Secret",
            CacheKind::Namespaces => "Namespace",
            CacheKind::LimitRanges => "LimitRange",
            CacheKind::ResourceQuotas => "ResourceQuota",
            CacheKind::Workloads => "workload",
            CacheKind::Promisers => "Secret promiser",
        }
    }
}

/// Why cluster state cannot answer yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// These watch caches have not finished their first list.
    #[error("waiting for caches to sync: {}", .0.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "))]
    CachesSyncing(Vec<CacheKind>),
    /// The first attempt to read (or create) the checksum key is not done.
    #[error("loading the checksum key")]
    LoadingChecksumKey,
    /// The first attempt to read the cluster's version is not done.
    #[error("reading the cluster's version")]
    ReadingVersion,
    /// Discovery has not yet looked for the kinds that promise Secrets.
    #[error("looking for the kinds that promise Secrets")]
    FindingPromisers,
}

/// Read access to the cluster for policies. Every method answers from memory.
pub trait ClusterState: Send + Sync {
    /// A short description for logs and `/readyz` ("standalone", "static: 4 files", "live").
    fn describe(&self) -> String;

    /// True when there is no cluster at all (policies then warn about what they could not check).
    fn is_standalone(&self) -> bool {
        false
    }

    /// A ConfigMap by namespace and name.
    fn config_map(&self, namespace: &str, name: &str) -> Lookup;

    /// A Secret by namespace and name (digests only).
    fn secret(&self, namespace: &str, name: &str) -> Lookup;

    /// A ConfigMap or Secret by kind, namespace and name.
    fn lookup(&self, source: crate::workload::Source, namespace: &str, name: &str) -> Lookup {
        match source {
            crate::workload::Source::ConfigMap => self.config_map(namespace, name),
            crate::workload::Source::Secret => self.secret(namespace, name),
        }
    }

    /// The labels of a namespace; `None` when unknown.
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;

    /// The LimitRanges of a namespace (sorted by name); `None` when unknown.
    fn limit_ranges(&self, namespace: &str) -> Option<Vec<Arc<LimitRangeSpec>>>;

    /// The ResourceQuotas of a namespace (sorted by name, with their status); `None` when
    /// unknown.
    fn resource_quotas(
        &self,
        _namespace: &str,
    ) -> Option<Vec<Arc<k8s_openapi::api::core::v1::ResourceQuota>>> {
        None
    }

    /// The minor version of the cluster's Kubernetes (from discovery); `None` when not known
    /// (no cluster, or not asked yet).
    fn server_minor_version(&self) -> Option<u32> {
        None
    }

    /// `Err(why)` while the state is not usable yet (caches not synced).
    fn ready(&self) -> Result<(), NotReady> {
        Ok(())
    }

    /// Per watch cache, how long it has been cut off from the API server (`None`: healthy).
    /// A stale cache still answers, from the last state it saw.
    fn staleness(&self) -> Vec<(CacheKind, Option<std::time::Duration>)> {
        Vec::new()
    }

    /// ConfigMaps and Secrets whose deletion waits for the live workloads that read them (the
    /// config guard's finalizer), each with those readers (`deployment ns/web`).
    fn deferred_deletions(&self) -> Vec<(crate::workload::Source, String, String, Vec<String>)> {
        Vec::new()
    }

    /// The resources the API server refuses to let confgate list (RBAC): their features are
    /// left out, and readiness does not wait for them.
    fn forbidden(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Object counts per cache, for metrics.
    fn counts(&self) -> Vec<(CacheKind, usize)> {
        Vec::new()
    }

    /// The workloads (Deployments, StatefulSets, DaemonSets, CronJobs) that reference
    /// ConfigMap or Secret `namespace/name`; `None` when not known (no workload index).
    fn consumers(
        &self,
        _source: crate::workload::Source,
        _namespace: &str,
        _name: &str,
    ) -> Option<Vec<Arc<workloads::Workload>>> {
        None
    }

    /// The key for the Secret part of checksums: `Ok(None)` when there is none (offline
    /// states: the bare SHA-256 is used), `Err(why)` while a live cluster's key is not loaded.
    fn checksum_key(&self) -> Result<Option<Arc<ChecksumKey>>, String> {
        Ok(None)
    }

    /// Who promises Secret `namespace/name` (see [`promises`]): a cert-manager `Certificate`,
    /// an `ExternalSecret`, ... in the namespace, or a hook of the reviewed input.
    fn secret_promises(&self, _namespace: &str, _name: &str) -> promises::Promises {
        promises::Promises::none()
    }

    /// True when lookups are answered from watch caches that may lag behind the API server: a
    /// "missing" that would decide a denial is then read again ([`ClusterState::read_now`]).
    fn lags(&self) -> bool {
        false
    }

    /// True when Secrets are not cached but read for each judgement (`--secrets get`): the
    /// engine reads the ones a review references before judging it.
    fn reads_secrets_on_demand(&self) -> bool {
        false
    }

    /// Why what `cache` holds is not known (for "not checked" messages): a cache that has not
    /// synced, no cluster, or an input that does not carry it.
    fn why_unknown(&self, cache: CacheKind) -> String {
        format!("the {} cache is not synced", cache.noun())
    }

    /// Reads `wanted` ConfigMaps and Secrets of `namespace` from the API server now, and with
    /// `promises` the Secrets the namespace is promised; bounded in time (a read that fails or
    /// times out answers "unknown"). States that answer exactly from memory answer from it.
    fn read_now<'a>(
        &'a self,
        namespace: &'a str,
        wanted: Vec<(crate::workload::Source, String)>,
        promises: bool,
    ) -> BoxFuture<'a, fresh::Fresh> {
        let mut fresh = fresh::Fresh::default();
        for (source, name) in wanted {
            let lookup = self.lookup(source, namespace, &name);
            fresh.insert(source, namespace, &name, lookup);
        }
        let _ = promises;
        Box::pin(std::future::ready(fresh))
    }
}

/// No cluster: nothing can be looked up.
#[derive(Debug, Default, Clone, Copy)]
pub struct Standalone;

const NO_CLUSTER: &str = "no cluster connection (standalone mode)";

impl ClusterState for Standalone {
    fn describe(&self) -> String {
        "standalone: no cluster; references to ConfigMaps, Secrets and LimitRanges are not checked"
            .into()
    }
    fn is_standalone(&self) -> bool {
        true
    }
    fn config_map(&self, _: &str, _: &str) -> Lookup {
        Lookup::Unknown(NO_CLUSTER.into())
    }
    fn secret(&self, _: &str, _: &str) -> Lookup {
        Lookup::Unknown(NO_CLUSTER.into())
    }
    fn namespace_labels(&self, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }
    fn limit_ranges(&self, _: &str) -> Option<Vec<Arc<LimitRangeSpec>>> {
        None
    }
    fn why_unknown(&self, _: CacheKind) -> String {
        NO_CLUSTER.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_account_token_secret_is_filled_by_the_token_controller() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ci-token", "annotations": {"kubernetes.io/service-account.name": "ci"}},
            "type": "kubernetes.io/service-account-token"
        }))
        .unwrap();
        let data = ConfigData::from_secret(&secret);
        assert_eq!(data.filled_later("token"), Some("the token controller"));
        assert_eq!(data.filled_later("password"), None);
        let opaque = ConfigData::from_secret(&Secret::default());
        assert_eq!(opaque.filled_later("token"), None);
    }

    #[test]
    fn later_values_win_and_keys_stay_sorted() {
        let data = ConfigData::from_values([("b", &b"1"[..]), ("a", b"2"), ("b", b"3")]);
        assert_eq!(data.key_names().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(data.get("b"), Some(&sha256(b"3")));
        assert!(!data.has("c"));
        assert_eq!(data.len(), 2);
    }
}
