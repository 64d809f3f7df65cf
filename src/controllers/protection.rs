//! The config guard's controller: deferred deletion of configuration that live workloads read,
//! the way Kubernetes protects a PersistentVolumeClaim in use (`kubernetes.io/pvc-protection`).
//!
//! A ConfigMap (and, with `--protect-secrets`, a Secret) that a live Deployment, StatefulSet,
//! DaemonSet or CronJob reads without `optional: true` carries this installation's finalizer
//! `confgate.dev/in-use-<installation>`. Deleting it is accepted (`kubectl delete -f dir/` in any
//! order, GitOps prune, namespace deletion all go through) and completes as soon as the last
//! reader is gone: the controller removes the finalizer then, within a second of seeing it.
//! Meanwhile the object is still there for the Pods that read it.
//!
//! Marks are only where they protect a reader: removed as soon as none reads the object, when
//! the policy stops covering its namespace or is not `action: Deny`, and after a restart for
//! whatever changed while confgate was down. Uninstalling runs `confgate release` (a Helm
//! pre-delete hook; by hand before `kubectl delete -k`), which stops the marking through the
//! rollout Lease (`confgate.dev/protection: released`) and removes every mark.
//!
//! Only the leader writes. The decision ([`decide`]) is a pure function; the API calls are in
//! [`run`]'s loop.

use crate::cluster::cache::{Cache, Key};
use crate::cluster::workloads::Index;
use crate::cluster::{ConfigData, IN_USE_PREFIX};
use crate::engine::Judging;
use crate::policy::{Action, MatchInput};
use crate::workload::Source;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::admission::Operation;
use kube::runtime::events::EventType;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the objects' marks are compared with their readers.
const EVERY: Duration = Duration::from_secs(1);
/// How often the Lease is read for the release annotation.
const RELEASE_EVERY: Duration = Duration::from_secs(5);
/// The Lease annotation that stops the marking (set by `confgate release`).
pub const RELEASED: &str = "confgate.dev/protection";

/// This installation's finalizer: `confgate.dev/in-use-` and ten hex digits of the SHA-256 of
/// its instance (`<lease namespace>.<lease name>`), so two installations never remove each
/// other's marks.
pub fn finalizer(instance: &str) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(instance.as_bytes());
    format!("{IN_USE_PREFIX}-{}", &hex::encode(digest)[..10])
}

/// What to do with one object's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Add this installation's finalizer.
    Mark,
    /// Remove it.
    Unmark,
}

/// The change to make to an object: marked while a live workload reads it, its namespace is
/// guarded, and the guard is not released; never marked anew once its deletion has begun (the
/// API server refuses new finalizers then).
pub fn decide(
    marked: bool,
    deleting: bool,
    read: bool,
    guarded: bool,
    released: bool,
) -> Option<Change> {
    let wanted = read && guarded && !released;
    match (marked, wanted) {
        (false, true) if !deleting => Some(Change::Mark),
        (true, false) => Some(Change::Unmark),
        _ => None,
    }
}

/// What the controller runs with.
pub struct Guard {
    /// The finalizer ([`finalizer`]).
    pub finalizer: String,
    /// The Lease whose annotation releases the guard: namespace and name.
    pub lease: (String, String),
    /// The caches whose objects are guarded: ConfigMaps, and Secrets with `--protect-secrets`.
    pub caches: Vec<(Source, Arc<Cache<ConfigData>>)>,
}

/// Runs the controller until the process ends.
pub async fn run(
    client: Client,
    judging: Judging,
    index: Arc<Index>,
    guard: Guard,
    leader: crate::controllers::lease::Leader,
) {
    let recorder = crate::events::recorder(client.clone());
    let mut state = State::default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &guard.lease.0);
    loop {
        tokio::time::sleep(EVERY).await;
        if !leader.holds() || !index.settled() || judging.cluster.ready().is_err() {
            continue;
        }
        if state
            .release_checked
            .is_none_or(|at| at.elapsed() >= RELEASE_EVERY)
        {
            state.release_checked = Some(Instant::now());
            state.released = match leases.get_opt(&guard.lease.1).await {
                Ok(lease) => lease
                    .and_then(|l| l.metadata.annotations)
                    .and_then(|a| a.get(RELEASED).cloned())
                    .is_some_and(|v| v == "released"),
                Err(_) => state.released,
            };
        }
        let mut deferred = 0;
        // Whether the policy guards a namespace, once per tick (not per object).
        let mut guarded_in: HashMap<(Source, String), bool> = HashMap::new();
        for (source, cache) in &guard.caches {
            for (key, data) in cache.entries() {
                let marks = data.marks();
                let marked = marks.finalizers.contains(&guard.finalizer);
                let readers = index.required_readers(*source, &key.0, &key.1);
                let guarded = *guarded_in
                    .entry((*source, key.0.clone()))
                    .or_insert_with(|| guards(&judging, *source, &key.0));
                if marks.deleting && marked && !readers.is_empty() {
                    deferred += 1;
                    if state.evented.insert((*source, key.clone())) {
                        deferred_event(&recorder, *source, &key, &readers).await;
                    }
                }
                let Some(change) = decide(
                    marked,
                    marks.deleting,
                    !readers.is_empty(),
                    guarded,
                    state.released,
                ) else {
                    continue;
                };
                if state.backing_off(*source, &key) {
                    continue;
                }
                if !leader.holds() {
                    break;
                }
                let result = patch(&client, *source, &key, &guard.finalizer, change).await;
                state.record(*source, &key, change, result);
            }
        }
        state.evented.retain(|(source, key)| {
            guard
                .caches
                .iter()
                .any(|(s, c)| s == source && c.get(&key.0, &key.1).is_some())
        });
        judging.metrics.set_deletions_deferred(deferred);
    }
}

#[derive(Default)]
struct State {
    released: bool,
    release_checked: Option<Instant>,
    /// Objects whose deferred deletion has been announced with an Event.
    evented: HashSet<(Source, Key)>,
    /// Objects whose last writes failed: how many in a row, and when to try again.
    failing: HashMap<(Source, Key), (u32, Instant)>,
}

impl State {
    fn backing_off(&self, source: Source, key: &Key) -> bool {
        self.failing
            .get(&(source, key.clone()))
            .is_some_and(|(_, next)| *next > Instant::now())
    }

    fn record(&mut self, source: Source, key: &Key, change: Change, result: kube::Result<()>) {
        let id = (source, key.clone());
        match result {
            Ok(()) => {
                self.failing.remove(&id);
                tracing::info!(kind = source.as_str(), namespace = %key.0, name = %key.1, ?change, "config guard");
            }
            // Gone meanwhile: nothing left to guard.
            Err(kube::Error::Api(status)) if status.code == 404 => {
                self.failing.remove(&id);
            }
            Err(error) => {
                let failures = self.failing.get(&id).map_or(0, |(n, _)| *n) + 1;
                let wait = super::failed_write_backoff(failures);
                tracing::warn!(kind = source.as_str(), namespace = %key.0, name = %key.1, ?change, %error, failures, retry_in_s = wait.as_secs(), "config guard: cannot write the mark");
                self.failing.insert(id, (failures, Instant::now() + wait));
            }
        }
    }
}

/// True when a `protect-config-keys` policy with `action: Deny` covers deletions of `source`
/// objects in `namespace`.
fn guards(judging: &Judging, source: Source, namespace: &str) -> bool {
    let kind = source.kind();
    let set = judging.policies.current();
    set.policies.iter().any(|p| {
        p.type_name == "protect-config-keys"
            && p.action == Action::Deny
            && p.matcher
                .check(
                    &MatchInput {
                        kind,
                        operation: &Operation::Delete,
                        namespace,
                        objects: [None, None],
                    },
                    |ns| judging.cluster.namespace_labels(ns),
                )
                .is_ok()
    })
}

/// Adds or removes `finalizer` (a strategic merge patch: the finalizers list merges).
pub async fn patch(
    client: &Client,
    source: Source,
    key: &Key,
    finalizer: &str,
    change: Change,
) -> kube::Result<()> {
    let body = match change {
        Change::Mark => json!({"metadata": {"finalizers": [finalizer]}}),
        Change::Unmark => json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [finalizer]}}),
    };
    let params = PatchParams {
        field_manager: Some(crate::workload::FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match source {
        Source::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &key.0);
            api.patch(&key.1, &params, &Patch::Strategic(&body))
                .await
                .map(drop)
        }
        Source::Secret => {
            let api: Api<Secret> = Api::namespaced(client.clone(), &key.0);
            api.patch(&key.1, &params, &Patch::Strategic(&body))
                .await
                .map(drop)
        }
    }
}

async fn deferred_event(
    recorder: &kube::runtime::events::Recorder,
    source: Source,
    key: &Key,
    readers: &[String],
) {
    let kind = source.kind();
    let on = crate::events::On {
        kind,
        namespace: &key.0,
        name: &key.1,
        uid: "",
    };
    let note = format!(
        "deletion deferred: read by {}; it is deleted as soon as none of them reads it",
        readers.join(", ")
    );
    tracing::info!(kind, namespace = %key.0, name = %key.1, readers = %readers.join(", "), "deletion deferred while live workloads read it");
    if let Err(error) = crate::events::publish(
        recorder,
        on,
        EventType::Normal,
        "DeletionDeferred",
        "Delete",
        note,
    )
    .await
    {
        tracing::warn!(%error, "cannot publish the DeletionDeferred Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_follow_the_readers_and_never_block_once_nobody_reads() {
        use Change::*;
        // (marked, deleting, read, guarded, released) -> change
        let table = [
            ((false, false, true, true, false), Some(Mark)),
            ((true, false, true, true, false), None),
            // The last reader went: the mark goes, whether or not the object is being deleted.
            ((true, false, false, true, false), Some(Unmark)),
            ((true, true, false, true, false), Some(Unmark)),
            // Deletion waits while it is read.
            ((true, true, true, true, false), None),
            // A deleting object cannot be marked anew.
            ((false, true, true, true, false), None),
            // Not guarded (Warn/Audit, another namespace) or released: no mark anywhere.
            ((true, false, true, false, false), Some(Unmark)),
            ((false, false, true, false, false), None),
            ((true, true, true, true, true), Some(Unmark)),
            ((false, false, true, true, true), None),
        ];
        for ((marked, deleting, read, guarded, released), change) in table {
            assert_eq!(
                decide(marked, deleting, read, guarded, released),
                change,
                "marked {marked}, deleting {deleting}, read {read}, guarded {guarded}, released {released}"
            );
        }
    }

    #[test]
    fn each_installation_has_its_own_finalizer() {
        let a = finalizer("confgate-system.confgate-rollout");
        assert_eq!(a.len(), "confgate.dev/in-use-".len() + 10);
        assert!(a.starts_with("confgate.dev/in-use-"));
        assert_ne!(a, finalizer("team-a.confgate-rollout"));
    }
}
