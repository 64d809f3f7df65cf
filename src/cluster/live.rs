//! The live cluster: kube-runtime watchers feed small in-memory caches (digests, labels,
//! LimitRange specs), so no request ever waits on the API server. Secrets are either watched
//! (`--secrets watch`) or fetched by name when a request references them (`--secrets get`, the
//! default: RBAC `get` only) and remembered for a short while.

use super::{ClusterState, ConfigData, Lookup, Resource};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, LimitRangeSpec, Namespace, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource as KubeResource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
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

type Key = (String, String);

/// One watch cache: object key → what policies need of it.
struct Cache<V> {
    resource: Resource,
    map: RwLock<HashMap<Key, Arc<V>>>,
    synced: AtomicBool,
}

impl<V> Cache<V> {
    fn new(resource: Resource) -> Arc<Self> {
        Arc::new(Self {
            resource,
            map: RwLock::new(HashMap::new()),
            synced: AtomicBool::new(false),
        })
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Arc<V>> {
        let map = self
            .map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Arc<V>>> {
        self.map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Short-lived results of on-demand Secret reads.
type SecretCache = RwLock<HashMap<Key, (Instant, Lookup)>>;

/// Cluster state from watch caches.
pub struct LiveState {
    client: Client,
    config_maps: Arc<Cache<ConfigData>>,
    namespaces: Arc<Cache<BTreeMap<String, String>>>,
    limit_ranges: Arc<Cache<LimitRangeSpec>>,
    secrets_mode: SecretsMode,
    watched_secrets: Arc<Cache<ConfigData>>,
    fetched_secrets: SecretCache,
}

/// How long an on-demand Secret read is reused.
const SECRET_TTL: Duration = Duration::from_secs(30);
/// How long a request may wait for on-demand Secret reads.
const SECRET_FETCH_TIMEOUT: Duration = Duration::from_secs(2);

impl LiveState {
    /// Starts the watchers on the current Tokio runtime. The caches fill in the background;
    /// [`ClusterState::ready`] says when they have synced.
    pub fn start(client: Client, secrets_mode: SecretsMode) -> Arc<Self> {
        let state = Arc::new(Self {
            client: client.clone(),
            config_maps: Cache::new(Resource::ConfigMaps),
            namespaces: Cache::new(Resource::Namespaces),
            limit_ranges: Cache::new(Resource::LimitRanges),
            secrets_mode,
            watched_secrets: Cache::new(Resource::Secrets),
            fetched_secrets: RwLock::new(HashMap::new()),
        });
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
        if secrets_mode == SecretsMode::Watch {
            tokio::spawn(run_watch(
                Api::<Secret>::all(client),
                state.watched_secrets.clone(),
                ConfigData::from_secret,
            ));
        }
        state
    }

    fn caches_synced(&self) -> Vec<(Resource, bool)> {
        let mut out = vec![
            (
                Resource::ConfigMaps,
                self.config_maps.synced.load(Ordering::Acquire),
            ),
            (
                Resource::Namespaces,
                self.namespaces.synced.load(Ordering::Acquire),
            ),
            (
                Resource::LimitRanges,
                self.limit_ranges.synced.load(Ordering::Acquire),
            ),
        ];
        if self.secrets_mode == SecretsMode::Watch {
            out.push((
                Resource::Secrets,
                self.watched_secrets.synced.load(Ordering::Acquire),
            ));
        }
        out
    }

    fn unsynced(&self, cache_synced: bool, resource: Resource) -> Option<Lookup> {
        (!cache_synced)
            .then(|| Lookup::Unknown(format!("{} cache not synced yet", resource.as_str())))
    }

    async fn fetch_secret(&self, namespace: &str, name: &str) -> Lookup {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(SECRET_FETCH_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(Some(secret))) => Lookup::Found(Arc::new(ConfigData::from_secret(&secret))),
            Ok(Ok(None)) => Lookup::Missing,
            Ok(Err(e)) => Lookup::Unknown(format!("cannot read secret: {e}")),
            Err(_) => Lookup::Unknown("reading the secret timed out".into()),
        }
    }
}

/// Runs one watcher forever (with kube's default backoff), keeping `cache` in step. A relist
/// (`Init` … `InitDone`) replaces the cache atomically, so deletions missed while disconnected
/// disappear too.
async fn run_watch<K, V>(api: Api<K>, cache: Arc<Cache<V>>, convert: fn(&K) -> V)
where
    K: KubeResource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    V: Send + Sync + 'static,
{
    let stream = watcher(api).default_backoff();
    futures::pin_mut!(stream);
    let mut relist: Option<HashMap<Key, Arc<V>>> = None;
    let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
    loop {
        match stream.try_next().await {
            Ok(Some(Event::Init)) => relist = Some(HashMap::new()),
            Ok(Some(Event::InitApply(o))) => {
                if let Some(buffer) = relist.as_mut() {
                    buffer.insert(key(&o), Arc::new(convert(&o)));
                }
            }
            Ok(Some(Event::InitDone)) => {
                if let Some(buffer) = relist.take() {
                    *cache.write() = buffer;
                }
                if !cache.synced.swap(true, Ordering::AcqRel) {
                    tracing::info!(
                        resource = cache.resource.as_str(),
                        objects = cache.len(),
                        "cache synced"
                    );
                }
            }
            Ok(Some(Event::Apply(o))) => {
                cache.write().insert(key(&o), Arc::new(convert(&o)));
            }
            Ok(Some(Event::Delete(o))) => {
                cache.write().remove(&key(&o));
            }
            Ok(None) => {
                tracing::error!(resource = cache.resource.as_str(), "watch stream ended");
                return;
            }
            Err(e) => {
                tracing::warn!(resource = cache.resource.as_str(), error = %e, "watch error; retrying")
            }
        }
    }
}

fn watcher<K>(api: Api<K>) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: KubeResource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default()).boxed()
}

impl ClusterState for LiveState {
    fn describe(&self) -> String {
        let secrets = match self.secrets_mode {
            SecretsMode::Get => "secrets read on demand",
            SecretsMode::Watch => "secrets watched",
            SecretsMode::None => "secrets not read",
        };
        format!("live cluster ({secrets})")
    }

    fn config_map(&self, namespace: &str, name: &str) -> Lookup {
        if let Some(unknown) = self.unsynced(
            self.config_maps.synced.load(Ordering::Acquire),
            Resource::ConfigMaps,
        ) {
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
                if let Some(unknown) = self.unsynced(
                    self.watched_secrets.synced.load(Ordering::Acquire),
                    Resource::Secrets,
                ) {
                    return unknown;
                }
                self.watched_secrets
                    .get(namespace, name)
                    .map_or(Lookup::Missing, Lookup::Found)
            }
            SecretsMode::Get => {
                let cache = self
                    .fetched_secrets
                    .read()
                    .unwrap_or_else(|p| p.into_inner());
                match cache.get(&(namespace.to_owned(), name.to_owned())) {
                    Some((_, lookup)) => lookup.clone(),
                    None => Lookup::Unknown("secret was not fetched".into()),
                }
            }
        }
    }

    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces
            .get("", namespace)
            .map(|labels| (*labels).clone())
    }

    fn limit_ranges(&self, namespace: &str) -> Option<Vec<Arc<LimitRangeSpec>>> {
        if !self.limit_ranges.synced.load(Ordering::Acquire) {
            return None;
        }
        let map = self
            .limit_ranges
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<(&String, &Arc<LimitRangeSpec>)> = map
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|((_, name), spec)| (name, spec))
            .collect();
        found.sort_by(|a, b| a.0.cmp(b.0));
        Some(found.into_iter().map(|(_, spec)| spec.clone()).collect())
    }

    fn ready(&self) -> Result<(), String> {
        let pending: Vec<&str> = self
            .caches_synced()
            .into_iter()
            .filter(|(_, synced)| !synced)
            .map(|(r, _)| r.as_str())
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "waiting for caches to sync: {}",
                pending.join(", ")
            ))
        }
    }

    fn counts(&self) -> Vec<(Resource, usize)> {
        let secrets = match self.secrets_mode {
            SecretsMode::Watch => self.watched_secrets.len(),
            _ => self.fetched_secrets.read().map(|m| m.len()).unwrap_or(0),
        };
        vec![
            (Resource::ConfigMaps, self.config_maps.len()),
            (Resource::Secrets, secrets),
            (Resource::Namespaces, self.namespaces.len()),
            (Resource::LimitRanges, self.limit_ranges.len()),
        ]
    }

    fn prefetch_secrets<'a>(&'a self, namespace: &'a str, names: Vec<String>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if self.secrets_mode != SecretsMode::Get || names.is_empty() {
                return;
            }
            let now = Instant::now();
            let stale: Vec<String> = {
                let cache = self
                    .fetched_secrets
                    .read()
                    .unwrap_or_else(|p| p.into_inner());
                names
                    .into_iter()
                    .filter(|n| {
                        cache
                            .get(&(namespace.to_owned(), n.clone()))
                            .is_none_or(|(at, _)| now.duration_since(*at) > SECRET_TTL)
                    })
                    .collect()
            };
            let fetched =
                futures::future::join_all(stale.iter().map(|n| self.fetch_secret(namespace, n)))
                    .await;
            let mut cache = self
                .fetched_secrets
                .write()
                .unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, (at, _)| now.duration_since(*at) <= SECRET_TTL);
            for (name, lookup) in stale.into_iter().zip(fetched) {
                cache.insert((namespace.to_owned(), name), (now, lookup));
            }
        })
    }
}
