//! The live cluster: kube-runtime watchers feed small in-memory caches (digests, labels,
//! LimitRange specs, promised Secrets), so an allowed review never waits on the API server.
//! Secrets are either watched (`--secrets watch`) or read by name for each review that
//! references them (`--secrets get`, the default: RBAC `get` only), never remembered. What a
//! denial rests on is read again from the API server first ([`ClusterState::read_now`]): a cache
//! that has not seen an object yet never decides that it is missing.

use super::READ_TIMEOUT;
use super::cache::{Cache, watch_into};
use super::changes::{ChangeFeed, ConfigChanges};
use super::checksum_key::{KeySecret, read_or_create_key};
use super::fresh::Fresh;
use super::promises::Promises;
use super::{CacheKind, ChecksumKey, ClusterState, ConfigData, Lookup, NotReady};
use crate::workload::Source;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, LimitRangeSpec, Namespace, ResourceQuota, Secret,
};

use kube::{Api, Client, Resource as KubeResource, ResourceExt};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
                Some(Arc::new(ChangeFeed(
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
                Some(Arc::new(ChangeFeed(Source::Secret, config_changes.clone()))),
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
        *state.checksum_key.write() = value;
        state.key_attempted.store(true, Ordering::Release);
        if loaded || !key.create {
            return;
        }
        drop(state);
        tokio::time::sleep(Duration::from_secs(5)).await;
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
        self.checksum_key.read().clone()
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
                let readers = index.required_readers(source, &namespace, &name);
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
