//! Promised Secrets in a live cluster: a watch cache per promiser kind ([`super::promises`])
//! whose CRD the API server serves, found by discovery at start and every minute after (a
//! cert-manager installed after confgate is followed within a minute; one uninstalled is let
//! go). RBAC: `list`/`watch` on the promiser resources; a kind that cannot be listed leaves its
//! promises unknown, so a missing Secret in that case is "not checked", never denied.

use super::CacheKind;
use super::cache::{Cache, watch_into};
use super::fresh::Listed;
use super::promises::{PROMISERS, Promise, Promised, PromiserKind, Promises};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often discovery looks for promiser CRDs.
const DISCOVERY_EVERY: Duration = Duration::from_secs(60);

/// What one promiser object promises.
#[derive(Debug, PartialEq)]
struct Entry {
    namespace: String,
    /// `Certificate "web"`.
    by: String,
    promised: Vec<Promised>,
}

struct Kind {
    kind: &'static PromiserKind,
    resource: ApiResource,
    cache: Arc<Cache<Entry>>,
    task: tokio::task::JoinHandle<()>,
}

/// The promiser kinds followed in a live cluster.
#[derive(Default)]
pub struct Followed {
    kinds: RwLock<Vec<Kind>>,
    /// The first discovery is done (until then nothing is known of promises).
    discovered: AtomicBool,
}

impl Followed {
    /// Nothing followed yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// True once the first discovery has run.
    pub fn discovered(&self) -> bool {
        self.discovered.load(Ordering::Acquire)
    }

    /// The resources followed (`certificates.cert-manager.io`), sorted.
    pub fn names(&self) -> Vec<String> {
        let kinds = self.kinds.read();
        let mut names: Vec<String> = kinds.iter().map(|k| k.kind.resource()).collect();
        names.sort();
        names
    }

    /// Who promises Secret `namespace/name`, from the watch caches.
    pub fn promises(&self, namespace: &str, name: &str) -> Promises {
        if !self.discovered() {
            return Promises::Unknown(
                "the kinds that promise Secrets are not discovered yet".into(),
            );
        }
        let kinds = self.kinds.read();
        let mut found = Vec::new();
        for kind in kinds.iter() {
            if !kind.cache.is_synced() {
                return Promises::Unknown(format!(
                    "the watch of {} has not synced (RBAC: list, watch)",
                    kind.kind.resource()
                ));
            }
            for entry in kind.cache.values() {
                if entry.namespace == namespace {
                    found.extend(promises_of(&entry.by, &entry.promised, name));
                }
            }
        }
        Promises::Known(found)
    }

    /// Lists every followed kind in `namespace` now: the promises as they are, not as the
    /// caches last saw them.
    pub async fn list_now(&self, client: &Client, namespace: &str) -> Listed {
        let kinds: Vec<(&'static PromiserKind, ApiResource)> = {
            let kinds = self.kinds.read();
            kinds.iter().map(|k| (k.kind, k.resource.clone())).collect()
        };
        let lists = kinds.iter().map(|(kind, resource)| async move {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
            let listed =
                tokio::time::timeout(super::READ_TIMEOUT, api.list(&ListParams::default())).await;
            match listed {
                Ok(Ok(list)) => Ok(list
                    .items
                    .iter()
                    .flat_map(|o| {
                        let entry = entry(kind, o);
                        entry
                            .promised
                            .into_iter()
                            .map(move |p| {
                                let promise = Promise {
                                    by: entry.by.clone(),
                                    keys: p.keys,
                                    hook: false,
                                };
                                (p.secret, promise)
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()),
                Ok(Err(e)) => Err(format!("cannot list {}: {e}", kind.resource())),
                Err(_) => Err(format!("listing {} timed out", kind.resource())),
            }
        });
        let mut all = Vec::new();
        for listed in futures::future::join_all(lists).await {
            all.extend(listed?);
        }
        Ok(all)
    }

    fn follows(&self, kind: &PromiserKind) -> bool {
        let kinds = self.kinds.read();
        kinds.iter().any(|k| std::ptr::eq(k.kind, kind))
    }
}

fn promises_of(by: &str, promised: &[Promised], secret: &str) -> Vec<Promise> {
    promised
        .iter()
        .filter(|p| p.secret == secret)
        .map(|p| Promise {
            by: by.to_owned(),
            keys: p.keys.clone(),
            hook: false,
        })
        .collect()
}

fn entry(kind: &PromiserKind, object: &DynamicObject) -> Entry {
    let value = serde_json::to_value(object).unwrap_or_default();
    Entry {
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        by: super::promises::describe(kind.kind, &value),
        promised: kind.promised(&value),
    }
}

/// Finds the promiser kinds the API server serves, at start and every [`DISCOVERY_EVERY`],
/// starting a watch for each new one and stopping the watch of each that went away.
pub async fn follow(client: Client, followed: Weak<Followed>) {
    loop {
        let mut served = Vec::new();
        let mut unsure = Vec::new();
        for kind in PROMISERS {
            match served_version(&client, kind).await {
                Ok(Some(resource)) => served.push((kind, resource)),
                Ok(None) => {}
                Err(()) => unsure.push(kind),
            }
        }
        let Some(this) = followed.upgrade() else {
            return;
        };
        {
            let mut kinds = this.kinds.write();
            kinds.retain(|k| {
                let keep = served.iter().any(|(kind, _)| std::ptr::eq(k.kind, *kind))
                    || unsure.iter().any(|kind| std::ptr::eq(k.kind, *kind));
                if !keep {
                    tracing::info!(resource = %k.kind.resource(), "no longer served: its promised Secrets are not followed");
                    k.task.abort();
                }
                keep
            });
        }
        for (kind, resource) in served {
            if this.follows(kind) {
                continue;
            }
            let cache = Cache::new(CacheKind::Promisers);
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let task = tokio::spawn(watch_into(api, cache.clone(), move |o: &DynamicObject| {
                Some(entry(kind, o))
            }));
            tracing::info!(resource = %kind.resource(), version = %resource.version, "following the Secrets it promises");
            this.kinds.write().push(Kind {
                kind,
                resource,
                cache,
                task,
            });
        }
        this.discovered.store(true, Ordering::Release);
        drop(this);
        tokio::time::sleep(DISCOVERY_EVERY).await;
    }
}

/// The first version of `kind` (in its preference order) that the API server serves;
/// `Err` when discovery itself failed (the API server is not reachable, say).
async fn served_version(client: &Client, kind: &PromiserKind) -> Result<Option<ApiResource>, ()> {
    for version in kind.versions {
        let api_version = format!("{}/{version}", kind.group);
        match super::serves(client, &api_version, kind.plural).await {
            Ok(false) => continue,
            Ok(true) => {
                return Ok(Some(ApiResource {
                    group: kind.group.to_owned(),
                    version: (*version).to_owned(),
                    api_version,
                    kind: kind.kind.to_owned(),
                    plural: kind.plural.to_owned(),
                }));
            }
            Err(error) => {
                tracing::debug!(%api_version, %error, "discovery failed");
                return Err(());
            }
        }
    }
    Ok(None)
}

impl Drop for Followed {
    fn drop(&mut self) {
        let kinds = self.kinds.get_mut();
        for kind in kinds.iter() {
            kind.task.abort();
        }
    }
}
