//! One watch cache: a kube-runtime watcher keeps, per object, only what policies need (digests,
//! labels, a LimitRange spec), and says whether it is synced, stale or refused. Every watch
//! cache of [`super::live::LiveState`] and of the workload index runs through
//! [`watch_into`], so they all retry, go stale and recover alike.

use super::CacheKind;
use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource as KubeResource};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
        let health = *self.health.lock();
        match (health.failing_since, health.last_error) {
            (Some(since), Some(last)) if now.saturating_duration_since(last) < RECOVERED_AFTER => {
                Some(now.saturating_duration_since(since))
            }
            _ => None,
        }
    }

    fn record_health(&self, ok: bool) {
        let mut health = self.health.lock();
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
        let map = self.map.read();
        map.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Every entry with its key, in no particular order.
    pub fn entries(&self) -> Vec<(Key, Arc<V>)> {
        let map = self.map.read();
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The entries of `namespace`, sorted by name; `None` until the first list is applied.
    pub fn in_namespace(&self, namespace: &str) -> Option<Vec<Arc<V>>> {
        if !self.is_synced() {
            return None;
        }
        let map = self.map.read();
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
        let map = self.map.read();
        map.values().cloned().collect()
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.map.read().len()
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
                            let map = self.map.read();
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
                    let mut logged = self.forbidden_logged.lock();
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

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, HashMap<Key, Arc<V>>> {
        self.map.write()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ConfigData;
    use k8s_openapi::api::core::v1::ConfigMap;
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
