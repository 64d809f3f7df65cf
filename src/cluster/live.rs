//! The live cluster: kube-runtime watchers feed small in-memory caches (digests, labels,
//! LimitRange specs, promised Secrets), so an allowed review never waits on the API server.
//! Secrets are either watched (`--secrets watch`) or read by name for each review that
//! references them (`--secrets get`, the default: RBAC `get` only), never remembered. What a
//! denial rests on is read again from the API server first ([`ClusterState::read_now`]): a cache
//! that has not seen an object yet never decides that it is missing.

use super::fresh::Fresh;
use super::promises::Promises;
use super::{CacheKind, ChecksumKey, ClusterState, ConfigData, Lookup, NotReady};
use crate::workload::Source;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, LimitRangeSpec, Namespace, ResourceQuota, Secret,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource as KubeResource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How Secrets are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecretsMode {
    /// Fetch referenced Secrets by name (RBAC: `get`), cache digests briefly.
    Get,
    /// Watch all Secrets (RBAC: `list`, `watch`); digests only are kept.
    Watch,
    /// Never read Secrets: references to them are reported as not checked.
    None,
}

/// A cached object's namespace and name.
pub type Key = (String, String);

/// One watch cache: object key (namespace, name) → what policies need of the object.
pub struct Cache<V> {
    resource: CacheKind,
    map: RwLock<HashMap<Key, Arc<V>>>,
    synced: AtomicBool,
    health: Mutex<WatchHealth>,
    observer: Option<Arc<dyn Observer<V>>>,
    /// The API server refuses to list it (RBAC: 403): the feature it serves is left out, and
    /// readiness does not wait for it.
    forbidden: AtomicBool,
    /// The API server does not serve the kind (a CRD not installed): empty, nothing to wait for.
    absent: AtomicBool,
    /// When a refusal was last logged (at most every [`FORBIDDEN_LOG_EVERY`]).
    forbidden_logged: Mutex<Option<Instant>>,
}

/// How often a cache the API server refuses to list is logged again.
pub const FORBIDDEN_LOG_EVERY: Duration = Duration::from_secs(600);

/// True when a watch error is the API server refusing access (403).
fn is_forbidden(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 403,
        watcher::Error::WatchError(status) => status.code == 403,
        _ => false,
    }
}

/// Told of every change a [`Cache`] applies, after it is applied.
pub trait Observer<V>: Send + Sync {
    /// The object at `key` was added (`old` is `None`), changed, or removed (`new` is `None`).
    /// `initial` is set for what the cache's first list brings. Changes that leave the kept
    /// value equal (a workload's status, say) are not reported.
    fn changed(&self, key: &Key, old: Option<&Arc<V>>, new: Option<&Arc<V>>, initial: bool);
}

/// Whether a cache's watch is failing: set by a watch error, cleared by the next event.
///
/// kube-runtime's watcher says nothing when a re-established watch is merely quiet, so a cache
/// also counts as recovered once [`RECOVERED_AFTER`] passes without another error: while the API
/// server cannot be reached, the watcher retries (and fails) at least every [`MAX_BACKOFF`].
#[derive(Debug, Default, Clone, Copy)]
struct WatchHealth {
    failing_since: Option<Instant>,
    last_error: Option<Instant>,
}

/// The longest wait between two watch retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A failing cache with no new error for this long has reconnected.
pub const RECOVERED_AFTER: Duration = Duration::from_secs(12);

impl<V: Send + Sync + 'static> Cache<V> {
    /// An empty, unsynced cache.
    pub fn new(resource: CacheKind) -> Arc<Self> {
        Self::observed(resource, None)
    }

    /// An empty, unsynced cache that tells `observer` of every change it applies.
    pub fn observed(resource: CacheKind, observer: Option<Arc<dyn Observer<V>>>) -> Arc<Self> {
        Arc::new(Self {
            resource,
            map: RwLock::new(HashMap::new()),
            synced: AtomicBool::new(false),
            health: Mutex::new(WatchHealth::default()),
            observer,
            forbidden: AtomicBool::new(false),
            absent: AtomicBool::new(false),
            forbidden_logged: Mutex::new(None),
        })
    }

    /// How long the cache has been cut off from the API server (its watch failing), if it is:
    /// lookups are then answered from the last state seen.
    pub fn stale_for(&self, now: Instant) -> Option<Duration> {
        let health = *self.health.lock().unwrap_or_else(|p| p.into_inner());
        match (health.failing_since, health.last_error) {
            (Some(since), Some(last)) if now.saturating_duration_since(last) < RECOVERED_AFTER => {
                Some(now.saturating_duration_since(since))
            }
            _ => None,
        }
    }

    fn record_health(&self, ok: bool) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            if health.failing_since.take().is_some() {
                tracing::info!(resource = self.resource.as_str(), "watch recovered");
            }
            health.last_error = None;
        } else {
            let now = Instant::now();
            health.failing_since.get_or_insert(now);
            health.last_error = Some(now);
        }
    }

    /// The entry for an object.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<V>> {
        let map = self
            .map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Every entry with its key, in no particular order.
    pub fn entries(&self) -> Vec<(Key, Arc<V>)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The entries of `namespace`, sorted by name; `None` until the first list is applied.
    pub fn in_namespace(&self, namespace: &str) -> Option<Vec<Arc<V>>> {
        if !self.is_synced() {
            return None;
        }
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<(&String, &Arc<V>)> = map
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|((_, name), value)| (name, value))
            .collect();
        found.sort_by(|a, b| a.0.cmp(b.0));
        Some(found.into_iter().map(|(_, value)| value.clone()).collect())
    }

    /// Every entry, in no particular order.
    pub fn values(&self) -> Vec<Arc<V>> {
        let map = self
            .map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.values().cloned().collect()
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the first full list has been applied.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// True while the API server refuses to list it (RBAC).
    pub fn is_forbidden(&self) -> bool {
        self.forbidden.load(Ordering::Acquire)
    }

    /// Synced, refused, or not served: nothing to wait for either way.
    pub fn is_settled(&self) -> bool {
        self.is_synced() || self.is_forbidden() || self.absent.load(Ordering::Acquire)
    }

    /// Records whether the API server serves the kind at all (a CRD's).
    pub fn set_absent(&self, absent: bool) {
        self.absent.store(absent, Ordering::Release);
    }

    /// Applies watcher events until the stream ends, keeping only `convert(object)` of each
    /// object. A relist (`Init` … `InitDone`) replaces the cache atomically, so deletions missed
    /// while disconnected disappear too. Errors are logged; kube's backoff retries.
    pub async fn follow<K, S>(self: Arc<Self>, events: S, convert: fn(&K) -> V)
    where
        V: PartialEq,
        K: KubeResource,
        S: futures::Stream<Item = Result<Event<K>, watcher::Error>>,
    {
        self.follow_with(events, move |o| Some(convert(o))).await;
    }

    /// [`Cache::follow`], keeping only the objects `convert` keeps (`None`: not cached).
    pub async fn follow_with<K, S>(self: Arc<Self>, events: S, convert: impl Fn(&K) -> Option<V>)
    where
        V: PartialEq,
        K: KubeResource,
        S: futures::Stream<Item = Result<Event<K>, watcher::Error>>,
    {
        futures::pin_mut!(events);
        let mut relist: Option<HashMap<Key, Arc<V>>> = None;
        let key = |o: &K| {
            (
                o.meta().namespace.clone().unwrap_or_default(),
                o.meta().name.clone().unwrap_or_default(),
            )
        };
        while let Some(event) = events.next().await {
            self.record_health(event.is_ok());
            if event.is_ok() && self.forbidden.swap(false, Ordering::AcqRel) {
                tracing::info!(
                    resource = self.resource.as_str(),
                    "access granted: following it again"
                );
            }
            match event {
                Ok(Event::Init) => relist = Some(HashMap::new()),
                Ok(Event::InitApply(o)) => {
                    if let (Some(buffer), Some(value)) = (relist.as_mut(), convert(&o)) {
                        buffer.insert(key(&o), Arc::new(value));
                    }
                }
                Ok(Event::InitDone) => {
                    let initial = !self.is_synced();
                    if let Some(buffer) = relist.take() {
                        let old = std::mem::replace(&mut *self.write(), buffer);
                        if let Some(observer) = &self.observer {
                            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
                            for (key, value) in map.iter() {
                                let before = old.get(key);
                                if before.is_none_or(|b| b != value) {
                                    observer.changed(key, before, Some(value), initial);
                                }
                            }
                            for (key, value) in &old {
                                if !map.contains_key(key) {
                                    observer.changed(key, Some(value), None, initial);
                                }
                            }
                        }
                    }
                    if !self.synced.swap(true, Ordering::AcqRel) {
                        tracing::info!(
                            resource = self.resource.as_str(),
                            objects = self.len(),
                            "cache synced"
                        );
                    }
                }
                Ok(Event::Apply(o)) => {
                    let key = key(&o);
                    let new = convert(&o).map(Arc::new);
                    let old = match &new {
                        Some(value) => self.write().insert(key.clone(), value.clone()),
                        None => self.write().remove(&key),
                    };
                    if let Some(observer) = &self.observer
                        && old != new
                    {
                        observer.changed(&key, old.as_ref(), new.as_ref(), false);
                    }
                }
                Ok(Event::Delete(o)) => {
                    let key = key(&o);
                    let old = self.write().remove(&key);
                    if let (Some(observer), Some(old)) = (&self.observer, old) {
                        observer.changed(&key, Some(&old), None, false);
                    }
                }
                Err(e) if is_forbidden(&e) => {
                    self.forbidden.store(true, Ordering::Release);
                    let mut logged = self
                        .forbidden_logged
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if logged.is_none_or(|at| at.elapsed() >= FORBIDDEN_LOG_EVERY) {
                        *logged = Some(Instant::now());
                        tracing::warn!(resource = self.resource.as_str(), error = %e, "the API server refuses to list it (RBAC): what needs it is left out until access is granted (checked every few seconds; logged again in 10 minutes)");
                    }
                }
                Err(e) => {
                    tracing::warn!(resource = self.resource.as_str(), error = %e, "watch error; retrying")
                }
            }
        }
        tracing::error!(resource = self.resource.as_str(), "watch stream ended");
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Arc<V>>> {
        self.map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Cluster state from watch caches.
pub struct LiveState {
    client: Client,
    config_maps: Arc<Cache<ConfigData>>,
    namespaces: Arc<Cache<BTreeMap<String, String>>>,
    limit_ranges: Arc<Cache<LimitRangeSpec>>,
    /// ResourceQuotas with their status (`quota-fit`): small objects, kept whole but for
    /// `managedFields`.
    resource_quotas: Arc<Cache<ResourceQuota>>,
    secrets_mode: SecretsMode,
    watched_secrets: Arc<Cache<ConfigData>>,
    /// The kinds that promise Secrets whose CRDs are served, each with its watch cache.
    promises: Arc<super::promised::Followed>,
    config_changes: Arc<ConfigChanges>,
    checksum_key: RwLock<Result<Option<Arc<ChecksumKey>>, String>>,
    /// Deployments, StatefulSets, DaemonSets and CronJobs and what they reference (the rollout
    /// controller and `protect-config-keys`); `None` when not watched.
    workloads: Option<Arc<super::workloads::Index>>,
    /// The first attempt to load the key is done (readiness waits for it, not for success: a
    /// key that cannot be read only keeps Secret-consuming checksums from being updated).
    key_attempted: AtomicBool,
    /// The apiserver's minor version, from discovery (0 until known).
    minor_version: AtomicU32,
    /// The first attempt to read the version is done (readiness waits for it, so policies
    /// that follow the cluster's release judge the first request as they will the rest).
    version_attempted: AtomicBool,
}

/// Where a live cluster's [`ChecksumKey`] is kept: a Secret confgate owns, in its own namespace.
#[derive(Debug, Clone)]
pub struct KeySecret {
    /// confgate's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// Create it (with a random key) when it does not exist; otherwise only read it.
    pub create: bool,
    /// Who owns it when confgate creates it.
    pub owners: crate::owners::Owners,
}

/// The data key of the key Secret.
const KEY_FIELD: &str = "key";

/// Which ConfigMaps (and watched Secrets) changed since the rollout controller last looked,
/// each with its keys' digests from before the first of those changes (`None`: it did not
/// exist), so the controller can name the keys that changed. Changes between two looks merge.
#[derive(Default)]
pub struct ConfigChanges {
    pending: Mutex<Changed>,
    /// When the oldest pending change was recorded.
    since: Mutex<Option<Instant>>,
    notify: tokio::sync::Notify,
    recorded: std::sync::atomic::AtomicU64,
}

/// Changed objects, by (kind, namespace, name), with the digests they had before.
pub type Changed = HashMap<(Source, String, String), Option<Arc<ConfigData>>>;

impl ConfigChanges {
    /// Waits until something changed (returns at once when a change is pending).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if !self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
            notified.await;
        }
    }

    /// How many changes have been recorded so far (to tell when a burst has ended).
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Acquire)
    }

    /// Whether a change of this object is recorded and not yet taken.
    pub fn pending(&self, source: Source, namespace: &str, name: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&(source, namespace.to_owned(), name.to_owned()))
    }

    /// Takes what changed since the last call.
    pub fn take(&self) -> Changed {
        self.take_since().0
    }

    /// Takes what changed, with when the oldest of it was recorded (for the change-to-write
    /// latency).
    pub fn take_since(&self) -> (Changed, Option<Instant>) {
        let changed = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let since = self.since.lock().unwrap_or_else(|p| p.into_inner()).take();
        (changed, since)
    }

    /// Records a change (as a watch cache does).
    pub fn record(&self, source: Source, key: &Key, old: Option<&Arc<ConfigData>>) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((source, key.0.clone(), key.1.clone()))
            .or_insert_with(|| old.cloned());
        self.since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
        self.recorded.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// Feeds one cache's changes into [`ConfigChanges`]. The first list is not a change: the
/// controller compares every workload when it starts.
struct Recorder(Source, Arc<ConfigChanges>);

impl Observer<ConfigData> for Recorder {
    fn changed(
        &self,
        key: &Key,
        old: Option<&Arc<ConfigData>>,
        _new: Option<&Arc<ConfigData>>,
        initial: bool,
    ) {
        if !initial {
            self.1.record(self.0, key, old);
        }
    }
}

/// How long a judgement may wait for its reads from the API server (Secrets in `get` mode,
/// and the confirmation of what a denial rests on).
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

impl LiveState {
    /// Starts the watchers on the current Tokio runtime. The caches fill in the background;
    /// [`ClusterState::ready`] says when they have synced.
    /// `workloads`: also watch the workloads (RBAC: list/watch of Deployments, StatefulSets,
    /// DaemonSets, CronJobs).
    pub fn start(
        client: Client,
        secrets_mode: SecretsMode,
        key: KeySecret,
        workloads: bool,
    ) -> Arc<Self> {
        let config_changes = Arc::new(ConfigChanges::default());
        let state = Arc::new(Self {
            client: client.clone(),
            config_maps: Cache::observed(
                CacheKind::ConfigMaps,
                Some(Arc::new(Recorder(
                    Source::ConfigMap,
                    config_changes.clone(),
                ))),
            ),
            namespaces: Cache::new(CacheKind::Namespaces),
            limit_ranges: Cache::new(CacheKind::LimitRanges),
            resource_quotas: Cache::new(CacheKind::ResourceQuotas),
            secrets_mode,
            watched_secrets: Cache::observed(
                CacheKind::Secrets,
                Some(Arc::new(Recorder(Source::Secret, config_changes.clone()))),
            ),
            promises: super::promised::Followed::new(),
            config_changes,
            checksum_key: RwLock::new(Err("the checksum key is not loaded yet".into())),
            key_attempted: AtomicBool::new(secrets_mode == SecretsMode::None),
            workloads: workloads.then(|| super::workloads::Index::start(client.clone())),
            minor_version: AtomicU32::new(0),
            version_attempted: AtomicBool::new(false),
        });
        tokio::spawn(discover_version(client.clone(), Arc::downgrade(&state)));
        tokio::spawn(super::promised::follow(
            client.clone(),
            Arc::downgrade(&state.promises),
        ));
        if secrets_mode != SecretsMode::None {
            tokio::spawn(load_key(client.clone(), Arc::downgrade(&state), key));
        }
        tokio::spawn(run_watch(
            Api::<ConfigMap>::all(client.clone()),
            state.config_maps.clone(),
            ConfigData::from_config_map,
        ));
        tokio::spawn(run_watch(
            Api::<Namespace>::all(client.clone()),
            state.namespaces.clone(),
            |ns: &Namespace| {
                let mut labels = ns.labels().clone();
                labels.insert("kubernetes.io/metadata.name".into(), ns.name_any());
                labels
            },
        ));
        tokio::spawn(run_watch(
            Api::<LimitRange>::all(client.clone()),
            state.limit_ranges.clone(),
            |lr: &LimitRange| lr.spec.clone().unwrap_or_default(),
        ));
        tokio::spawn(run_watch(
            Api::<ResourceQuota>::all(client.clone()),
            state.resource_quotas.clone(),
            |quota: &ResourceQuota| {
                let mut quota = quota.clone();
                quota.metadata.managed_fields = None;
                quota
            },
        ));
        if secrets_mode == SecretsMode::Watch {
            tokio::spawn(run_watch(
                Api::<Secret>::all(client),
                state.watched_secrets.clone(),
                ConfigData::from_secret,
            ));
        }
        state
    }

    /// The ConfigMap cache (the config guard's controller reads its marks).
    pub fn config_map_cache(&self) -> Arc<Cache<ConfigData>> {
        self.config_maps.clone()
    }

    /// The Secret cache, when Secrets are watched.
    pub fn secret_cache(&self) -> Option<Arc<Cache<ConfigData>>> {
        (self.secrets_mode == SecretsMode::Watch).then(|| self.watched_secrets.clone())
    }

    /// The workload index, when watched.
    pub fn workloads(&self) -> Option<Arc<super::workloads::Index>> {
        self.workloads.clone()
    }

    /// The changes to cached ConfigMaps (and watched Secrets), for the rollout controller.
    pub fn config_changes(&self) -> Arc<ConfigChanges> {
        self.config_changes.clone()
    }

    /// Each cache, and whether readiness may stop waiting for it (synced, or refused by RBAC:
    /// a refused cache leaves its feature out instead of keeping confgate unready for good).
    fn caches_synced(&self) -> Vec<(CacheKind, bool)> {
        let mut out = vec![
            (CacheKind::ConfigMaps, self.config_maps.is_settled()),
            (CacheKind::Namespaces, self.namespaces.is_settled()),
            (CacheKind::LimitRanges, self.limit_ranges.is_settled()),
            (CacheKind::ResourceQuotas, self.resource_quotas.is_settled()),
        ];
        if self.secrets_mode == SecretsMode::Watch {
            out.push((CacheKind::Secrets, self.watched_secrets.is_settled()));
        }
        out
    }

    /// The caches the API server refuses to list, by resource name.
    fn refused(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = [
            (CacheKind::ConfigMaps, &self.config_maps),
            (CacheKind::Secrets, &self.watched_secrets),
        ]
        .into_iter()
        .filter(|(_, cache)| cache.is_forbidden())
        .map(|(kind, _)| kind.as_str())
        .collect();
        if self.namespaces.is_forbidden() {
            out.push(CacheKind::Namespaces.as_str());
        }
        if self.limit_ranges.is_forbidden() {
            out.push(CacheKind::LimitRanges.as_str());
        }
        if self.resource_quotas.is_forbidden() {
            out.push(CacheKind::ResourceQuotas.as_str());
        }
        if let Some(index) = &self.workloads {
            out.extend(index.forbidden());
        }
        out
    }

    fn unsynced(&self, cache_synced: bool, resource: CacheKind) -> Option<Lookup> {
        let forbidden = match resource {
            CacheKind::ConfigMaps => self.config_maps.is_forbidden(),
            CacheKind::Secrets => self.watched_secrets.is_forbidden(),
            _ => false,
        };
        if forbidden {
            return Some(Lookup::Unknown(format!(
                "confgate may not list {} (RBAC)",
                resource.as_str()
            )));
        }
        (!cache_synced)
            .then(|| Lookup::Unknown(format!("{} cache not synced yet", resource.as_str())))
    }

    /// Reads one ConfigMap or Secret from the API server now (digests only are kept).
    async fn read(&self, source: Source, namespace: &str, name: &str) -> Lookup {
        let read = async {
            match source {
                Source::ConfigMap => {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                    api.get_opt(name)
                        .await
                        .map(|o| o.map(|cm| ConfigData::from_config_map(&cm)))
                }
                Source::Secret => {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                    api.get_opt(name)
                        .await
                        .map(|o| o.map(|secret| ConfigData::from_secret(&secret)))
                }
            }
        };
        match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(Some(data))) => Lookup::Found(Arc::new(data)),
            Ok(Ok(None)) => Lookup::Missing,
            Ok(Err(e)) => Lookup::Unknown(format!("cannot read the {}: {e}", source.as_str())),
            Err(_) => Lookup::Unknown(format!("reading the {} timed out", source.as_str())),
        }
    }
}

/// Asks discovery for the apiserver's version until it answers, retrying every 5 s (policies
/// whose judgement differs between Kubernetes releases follow it).
async fn discover_version(client: Client, state: std::sync::Weak<LiveState>) {
    loop {
        let result = client.apiserver_version().await;
        let Some(live) = state.upgrade() else {
            return;
        };
        match result {
            Ok(info) => {
                let version = format!("{}.{}", info.major, info.minor);
                match crate::cluster::minor_version(&version) {
                    Some(minor) => {
                        live.minor_version.store(minor, Ordering::Release);
                        tracing::info!(version = %info.git_version, "the cluster's Kubernetes version");
                    }
                    None => {
                        tracing::warn!(%version, "the cluster's version is not understood: judging as the newest release")
                    }
                }
                live.version_attempted.store(true, Ordering::Release);
                return;
            }
            Err(error) => {
                live.version_attempted.store(true, Ordering::Release);
                drop(live);
                tracing::warn!(%error, "could not read the cluster's version (judging as the newest release meanwhile); retrying in 5s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Reads (or creates) the checksum key Secret until it succeeds, retrying every 5 s.
async fn load_key(client: Client, state: std::sync::Weak<LiveState>, key: KeySecret) {
    let api: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
    loop {
        let result = read_or_create_key(&client, &api, &key).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let secret = format!("{}/{}", key.namespace, key.name);
        let loaded = result.is_ok();
        let value = match result {
            Ok(loaded) => {
                tracing::info!(%secret, "checksum key loaded");
                Ok(Some(Arc::new(loaded)))
            }
            // Read-only (`confgate review --cluster`): go on without it; the caller says so.
            Err(why) if !key.create => {
                tracing::debug!(%secret, why, "no checksum key");
                Ok(None)
            }
            Err(why) => {
                tracing::warn!(%secret, why, "cannot load the checksum key; retrying (checksums of workloads that use Secrets are not updated meanwhile)");
                Err(format!(
                    "the checksum key Secret {secret} cannot be loaded: {why}"
                ))
            }
        };
        *state
            .checksum_key
            .write()
            .unwrap_or_else(|p| p.into_inner()) = value;
        state.key_attempted.store(true, Ordering::Release);
        if loaded || !key.create {
            return;
        }
        drop(state);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn read_or_create_key(
    client: &Client,
    api: &Api<Secret>,
    key: &KeySecret,
) -> Result<ChecksumKey, String> {
    let parse = |secret: &Secret| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(KEY_FIELD))
            .and_then(|v| ChecksumKey::new(&v.0))
            .ok_or_else(|| format!("it has no data.{KEY_FIELD} of at least 16 bytes"))
    };
    match api.get_opt(&key.name).await {
        Ok(Some(secret)) => return parse(&secret),
        Ok(None) if !key.create => return Err("it does not exist".into()),
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }
    let bytes = ChecksumKey::generate()?;
    let owner = key
        .owners
        .namespaced(client)
        .await
        .map_err(|e| e.to_string())?;
    let secret = crate::owners::own_secret(
        &key.name,
        "HMAC key for the Secret part of checksum/config; deleting it changes the checksum of every workload that uses a Secret (they roll once)",
        "Opaque",
        [(KEY_FIELD, bytes.to_vec())],
        owner,
    );
    match crate::owners::create_once(api, &secret).await {
        Ok(stored) => parse(&stored),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs one watcher forever, keeping `cache` in step.
async fn run_watch<K, V>(api: Api<K>, cache: Arc<Cache<V>>, convert: fn(&K) -> V)
where
    K: KubeResource + Clone + DeserializeOwned + Debug + Send + 'static,
    V: PartialEq + Send + Sync + 'static,
{
    watch_into(api, cache, move |o| Some(convert(o))).await;
}

/// Runs one watcher forever, keeping in `cache` what `convert` keeps of each object (`None`:
/// not cached). Every watch cache runs through here, so they all retry alike.
pub async fn watch_into<K, V>(
    api: Api<K>,
    cache: Arc<Cache<V>>,
    convert: impl Fn(&K) -> Option<V> + Send,
) where
    K: KubeResource + Clone + DeserializeOwned + Debug + Send + 'static,
    V: PartialEq + Send + Sync + 'static,
{
    // kube's default backoff grows to 30 s; a cache cut off from the API server should notice
    // its return within seconds, and a failing watch must keep failing visibly (see
    // `WatchHealth`), so retries are capped at MAX_BACKOFF.
    let backoff = ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(MAX_BACKOFF)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(60),
    );
    let events = watcher::watcher(api, watcher::Config::default()).backoff(backoff);
    cache.follow_with(events, convert).await;
}

impl ClusterState for LiveState {
    fn describe(&self) -> String {
        let secrets = match self.secrets_mode {
            SecretsMode::Get => "secrets read on demand",
            SecretsMode::Watch => "secrets watched",
            SecretsMode::None => "secrets not read",
        };
        let forbidden = self.refused();
        let forbidden = if forbidden.is_empty() {
            String::new()
        } else {
            format!(
                "; not permitted to list (left out): {}",
                forbidden.join(", ")
            )
        };
        let promised = self.promises.names();
        let promised = if promised.is_empty() {
            "no kind that promises Secrets is served".to_owned()
        } else {
            format!("promised Secrets followed: {}", promised.join(", "))
        };
        format!("live cluster ({secrets}; {promised}{forbidden})")
    }

    fn config_map(&self, namespace: &str, name: &str) -> Lookup {
        if let Some(unknown) = self.unsynced(self.config_maps.is_synced(), CacheKind::ConfigMaps) {
            return unknown;
        }
        self.config_maps
            .get(namespace, name)
            .map_or(Lookup::Missing, Lookup::Found)
    }

    fn secret(&self, namespace: &str, name: &str) -> Lookup {
        match self.secrets_mode {
            SecretsMode::None => Lookup::Unknown("secrets are not read (--secrets none)".into()),
            SecretsMode::Watch => {
                if let Some(unknown) =
                    self.unsynced(self.watched_secrets.is_synced(), CacheKind::Secrets)
                {
                    return unknown;
                }
                self.watched_secrets
                    .get(namespace, name)
                    .map_or(Lookup::Missing, Lookup::Found)
            }
            // Read for each judgement (`read_now`), never from memory.
            SecretsMode::Get => Lookup::Unknown("the secret was not read".into()),
        }
    }

    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces
            .get("", namespace)
            .map(|labels| (*labels).clone())
    }

    fn server_minor_version(&self) -> Option<u32> {
        Some(self.minor_version.load(Ordering::Acquire)).filter(|m| *m > 0)
    }
    fn limit_ranges(&self, namespace: &str) -> Option<Vec<Arc<LimitRangeSpec>>> {
        self.limit_ranges.in_namespace(namespace)
    }

    fn resource_quotas(&self, namespace: &str) -> Option<Vec<Arc<ResourceQuota>>> {
        self.resource_quotas.in_namespace(namespace)
    }

    fn consumers(
        &self,
        source: Source,
        namespace: &str,
        name: &str,
    ) -> Option<Vec<Arc<super::workloads::Workload>>> {
        let index = self.workloads.as_ref().filter(|w| w.settled())?;
        Some(index.consumers(source, namespace, name))
    }

    fn checksum_key(&self) -> Result<Option<Arc<ChecksumKey>>, String> {
        if self.secrets_mode == SecretsMode::None {
            return Ok(None);
        }
        self.checksum_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn ready(&self) -> Result<(), NotReady> {
        let mut pending: Vec<CacheKind> = self
            .caches_synced()
            .into_iter()
            .filter(|(_, synced)| !synced)
            .map(|(kind, _)| kind)
            .collect();
        if pending.is_empty() && self.workloads.as_ref().is_some_and(|w| !w.settled()) {
            pending.push(CacheKind::Workloads);
        }
        if !pending.is_empty() {
            return Err(NotReady::CachesSyncing(pending));
        }
        if !self.key_attempted.load(Ordering::Acquire) {
            return Err(NotReady::LoadingChecksumKey);
        }
        if !self.version_attempted.load(Ordering::Acquire) {
            return Err(NotReady::ReadingVersion);
        }
        if !self.promises.discovered() {
            return Err(NotReady::FindingPromisers);
        }
        Ok(())
    }

    fn staleness(&self) -> Vec<(CacheKind, Option<Duration>)> {
        let now = Instant::now();
        let mut out = vec![
            (CacheKind::ConfigMaps, self.config_maps.stale_for(now)),
            (CacheKind::Namespaces, self.namespaces.stale_for(now)),
            (CacheKind::LimitRanges, self.limit_ranges.stale_for(now)),
            (
                CacheKind::ResourceQuotas,
                self.resource_quotas.stale_for(now),
            ),
        ];
        if self.secrets_mode == SecretsMode::Watch {
            out.push((CacheKind::Secrets, self.watched_secrets.stale_for(now)));
        }
        out
    }

    fn counts(&self) -> Vec<(CacheKind, usize)> {
        let secrets = match self.secrets_mode {
            SecretsMode::Watch => self.watched_secrets.len(),
            _ => 0,
        };
        vec![
            (CacheKind::ConfigMaps, self.config_maps.len()),
            (CacheKind::Secrets, secrets),
            (CacheKind::Namespaces, self.namespaces.len()),
            (CacheKind::LimitRanges, self.limit_ranges.len()),
            (CacheKind::ResourceQuotas, self.resource_quotas.len()),
        ]
    }

    fn secret_promises(&self, namespace: &str, name: &str) -> Promises {
        self.promises.promises(namespace, name)
    }

    fn lags(&self) -> bool {
        true
    }

    fn forbidden(&self) -> Vec<&'static str> {
        self.refused()
    }

    fn deferred_deletions(&self) -> Vec<(Source, String, String, Vec<String>)> {
        let Some(index) = self.workloads.as_ref().filter(|w| w.settled()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (source, cache) in [
            (Source::ConfigMap, &self.config_maps),
            (Source::Secret, &self.watched_secrets),
        ] {
            for ((namespace, name), data) in cache.entries() {
                let marks = data.marks();
                if !marks.deleting || marks.finalizers.is_empty() {
                    continue;
                }
                let readers =
                    crate::protection::readers(index, source, &(namespace.clone(), name.clone()));
                if !readers.is_empty() {
                    out.push((source, namespace, name, readers));
                }
            }
        }
        out.sort();
        out
    }

    fn reads_secrets_on_demand(&self) -> bool {
        self.secrets_mode == SecretsMode::Get
    }

    fn read_now<'a>(
        &'a self,
        namespace: &'a str,
        wanted: Vec<(Source, String)>,
        promises: bool,
    ) -> BoxFuture<'a, Fresh> {
        Box::pin(async move {
            let mut fresh = Fresh::default();
            let reads = wanted
                .iter()
                .filter(|(source, _)| {
                    *source == Source::ConfigMap || self.secrets_mode != SecretsMode::None
                })
                .map(|(source, name)| async move {
                    (*source, name, self.read(*source, namespace, name).await)
                });
            let listed = async {
                if promises {
                    Some(self.promises.list_now(&self.client, namespace).await)
                } else {
                    None
                }
            };
            let (reads, listed) = futures::join!(futures::future::join_all(reads), listed);
            for (source, name, lookup) in reads {
                fresh.insert(source, namespace, name, lookup);
            }
            if let Some(listed) = listed {
                fresh.set_promises(namespace, listed);
            }
            fresh
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(name: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            data: Some([("K".to_owned(), value.to_owned())].into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_watch_error_marks_the_cache_stale_until_an_event_or_a_quiet_spell() {
        let cache = Cache::<ConfigData>::new(CacheKind::ConfigMaps);
        let error = || -> Result<Event<ConfigMap>, watcher::Error> {
            Err(watcher::Error::NoResourceVersion)
        };
        cache
            .clone()
            .follow(
                futures::stream::iter(vec![Ok(Event::Init), Ok(Event::InitDone)]),
                ConfigData::from_config_map,
            )
            .await;
        assert_eq!(cache.stale_for(Instant::now()), None);
        cache
            .clone()
            .follow(
                futures::stream::iter(vec![error(), error()]),
                ConfigData::from_config_map,
            )
            .await;
        let now = Instant::now();
        assert!(cache.stale_for(now).is_some());
        // No further error for RECOVERED_AFTER: the watcher, retrying at least every
        // MAX_BACKOFF, has reconnected.
        assert_eq!(cache.stale_for(now + RECOVERED_AFTER), None);
        cache
            .clone()
            .follow(
                futures::stream::iter(vec![Ok(Event::Apply(cm("a", "1")))]),
                ConfigData::from_config_map,
            )
            .await;
        assert_eq!(cache.stale_for(Instant::now()), None);
        assert_eq!(
            cache.get("ns", "a").and_then(|d| d.get("K").copied()),
            Some(crate::cluster::sha256(b"1"))
        );
    }

    #[tokio::test]
    async fn a_cache_the_api_server_refuses_is_settled_for_readiness_until_access_is_granted() {
        let cache = Cache::<ConfigData>::new(CacheKind::ConfigMaps);
        let refused = || -> Result<Event<ConfigMap>, watcher::Error> {
            Err(watcher::Error::InitialListFailed(kube::Error::Api(
                Box::new(
                    kube::core::Status::failure("configmaps is forbidden", "Forbidden")
                        .with_code(403),
                ),
            )))
        };
        cache
            .clone()
            .follow(
                futures::stream::iter(vec![refused(), refused()]),
                ConfigData::from_config_map,
            )
            .await;
        assert_eq!(
            (cache.is_synced(), cache.is_forbidden(), cache.is_settled()),
            (false, true, true)
        );
        // A refusal of another kind (the API server is down) is not a refusal of access.
        let down = Cache::<ConfigData>::new(CacheKind::ConfigMaps);
        down.clone()
            .follow(
                futures::stream::iter(vec![Err::<Event<ConfigMap>, _>(
                    watcher::Error::NoResourceVersion,
                )]),
                ConfigData::from_config_map,
            )
            .await;
        assert!(!down.is_settled());
        // Granted: the next list brings it back.
        cache
            .clone()
            .follow(
                futures::stream::iter(vec![Ok(Event::Init), Ok(Event::InitDone)]),
                ConfigData::from_config_map,
            )
            .await;
        assert_eq!((cache.is_synced(), cache.is_forbidden()), (true, false));
    }

    #[tokio::test]
    async fn follows_applies_deletes_and_relists() {
        let cache = Cache::<ConfigData>::new(CacheKind::ConfigMaps);
        let mut events: Vec<Result<Event<ConfigMap>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(cm("a", "1"))),
            Ok(Event::InitApply(cm("b", "1"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(cm("a", "2"))),
            Ok(Event::Delete(cm("b", "1"))),
            Ok(Event::Apply(cm("c", "1"))),
            // Reconnect: the relist no longer has `c` (deleted while disconnected).
            Ok(Event::Init),
            Ok(Event::InitApply(cm("a", "3"))),
            Ok(Event::InitDone),
        ];
        let mut states = Vec::new();
        // Apply in two steps to look at the cache between them.
        let relist = events.split_off(7);
        cache
            .clone()
            .follow(futures::stream::iter(events), ConfigData::from_config_map)
            .await;
        states.push((
            cache.is_synced(),
            cache.len(),
            cache.get("ns", "a").and_then(|d| d.get("K").copied()),
        ));
        cache
            .clone()
            .follow(futures::stream::iter(relist), ConfigData::from_config_map)
            .await;
        states.push((
            cache.is_synced(),
            cache.len(),
            cache.get("ns", "a").and_then(|d| d.get("K").copied()),
        ));
        assert_eq!(
            states,
            vec![
                (true, 2, Some(crate::cluster::sha256(b"2"))),
                (true, 1, Some(crate::cluster::sha256(b"3")))
            ]
        );
        assert!(cache.get("ns", "c").is_none());
    }
}
