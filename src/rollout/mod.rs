//! The rollout controller: when the configuration a workload consumes changes, write that
//! workload's pod-template checksum annotation through the apiserver, so it rolls without
//! anyone re-applying it (`kubectl apply`, Helm and Argo CD send nothing for an unchanged
//! manifest, so the webhook alone never sees the change).
//!
//! **State, not history.** The annotation a workload should have is computed by the
//! `checksum-config` policy itself (the engine's mutate on the workload, so there is one
//! definition of the checksum, and the webhook computes the same value on the controller's
//! write) and compared with the one it has. Nothing is remembered across restarts: a restart
//! rolls nothing whose configuration did not change, and a change made while confgate was down
//! rolls as soon as its caches have synced. A workload that has never been stamped is left for
//! its next write (stamping it would roll it for no change).
//!
//! **Storm protection.** A global token bucket (`--rollout-rate-per-minute`, `--rollout-burst`),
//! a minimum interval per workload, and no new roll of a workload whose last rollout has not
//! finished (every replica updated and ready). Paused Deployments and workloads annotated
//! `confgate.dev/rollout: "false"` are left alone; a `checksum-config` policy with
//! `rollout: false` stamps at admission only. Changes arriving together coalesce.

pub mod index;

use crate::admission::{review_from_value, wrap_manifest};
use crate::engine::Engine;
use crate::policy::{Endpoint, PolicySet};
use crate::server::AppState;
use crate::workload::{template_annotation, template_path};
use index::{Index, Workload};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the controller paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Rollouts started per minute, cluster-wide, once the burst is spent.
    pub per_minute: u32,
    /// Rollouts that may start at once.
    pub burst: u32,
    /// The least time between two rollouts of one workload.
    pub min_interval: Duration,
    /// How long to let changes that arrive together settle before acting on them.
    pub coalesce: Duration,
    /// How often every workload is compared even without a change (throttled and unfinished
    /// rollouts are retried then).
    pub resync: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            per_minute: 20,
            burst: 5,
            min_interval: Duration::from_secs(60),
            coalesce: Duration::from_secs(1),
            resync: Duration::from_secs(15),
        }
    }
}

/// A token bucket: `burst` at once, then `per_minute`.
struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(settings: &Settings) -> Self {
        Self {
            tokens: f64::from(settings.burst.max(1)),
            capacity: f64::from(settings.burst.max(1)),
            per_second: f64::from(settings.per_minute) / 60.0,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second)
            .min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Which Lease elects the one replica that writes (every replica keeps serving the webhook).
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's namespace (confgate's own).
    pub namespace: String,
    /// The Lease's name.
    pub lease: String,
    /// This replica's identity: its Pod name, or unique per process.
    pub identity: String,
}

impl Election {
    /// The identity of this process: `POD_NAME` (Downward API) when set, otherwise the host
    /// name, the process id and the start time, unique per process.
    pub fn identity() -> String {
        std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            format!("{}-{}-{nanos:x}", host.trim(), std::process::id())
        })
    }
}

/// Leadership of the Lease, as a channel that says whether this replica holds it now. Retries
/// until the Lease can be used (RBAC, namespace); meanwhile this replica does not lead.
async fn elect(client: &Client, election: &Election) -> tokio::sync::watch::Receiver<bool> {
    loop {
        let built = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &election.lease)
            .with_namespace(&election.namespace)
            .with_identity(&election.identity)
            .with_duration(15)
            .with_grace(5)
            .with_field_manager("confgate")
            .build()
            .await;
        match built {
            Ok(manager) => return manager.watch().await.0,
            Err(error) => {
                tracing::warn!(%error, lease = %election.lease, namespace = %election.namespace, "cannot use the leader-election Lease; retrying (no rollouts meanwhile)");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Runs the controller until the process ends. `changed` is signalled on every change of the
/// cached ConfigMaps (and watched Secrets). Only the replica that holds the Lease writes.
pub async fn run(
    client: Client,
    state: Arc<AppState>,
    changed: Arc<tokio::sync::Notify>,
    settings: Settings,
    election: Election,
) {
    let index = Index::start(client.clone());
    let cluster = state.admission.engine.cluster().clone();
    while !(index.synced() && cluster.ready().is_ok()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::info!(
        per_minute = settings.per_minute,
        burst = settings.burst,
        "rollout controller started: workloads roll when the configuration they consume changes"
    );
    let client_for_lease = client.clone();
    let mut controller = Controller {
        client: client.clone(),
        state,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "confgate".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        limiter: TokenBucket::new(&settings),
        last: HashMap::new(),
        settings,
    };
    let mut leader = elect(&client_for_lease, &election).await;
    loop {
        let leading = *leader.borrow_and_update();
        if leading {
            controller.reconcile(&index).await;
        }
        tokio::select! {
            () = changed.notified() => tokio::time::sleep(settings.coalesce).await,
            () = tokio::time::sleep(settings.resync) => {}
            result = leader.changed() => {
                match result {
                    Ok(()) => tracing::info!(
                        leading = *leader.borrow(),
                        identity = %election.identity,
                        "rollout leadership changed"
                    ),
                    // The lease task ended: elect again.
                    Err(_) => leader = elect(&client_for_lease, &election).await,
                }
            }
        }
    }
}

struct Controller {
    client: Client,
    state: Arc<AppState>,
    recorder: Recorder,
    limiter: TokenBucket,
    last: HashMap<(&'static str, String, String), Instant>,
    settings: Settings,
}

impl Controller {
    async fn reconcile(&mut self, index: &Index) {
        let set = self.state.admission.policies.load_full();
        let rolling: Vec<(String, String)> = set
            .policies
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.policy.rollout_annotation()?.to_owned())))
            .collect();
        if rolling.is_empty() {
            return;
        }
        let engine = Engine::new(self.state.admission.engine.cluster().clone());
        for workload in index.all() {
            let object = workload.object();
            for (policy, annotation) in &rolling {
                let Some(current) = template_annotation(workload.kind, &object, annotation) else {
                    continue;
                };
                let desired = desired(&engine, &set, &workload, &object, policy, annotation).await;
                tracing::debug!(kind = workload.kind, namespace = %workload.namespace, name = %workload.name, current, desired = ?desired, "compared");
                let Some(desired) = desired else {
                    continue;
                };
                if desired != current {
                    self.roll(&workload, annotation, current, &desired).await;
                }
            }
        }
    }

    async fn roll(&mut self, w: &Workload, annotation: &str, current: &str, desired: &str) {
        let metrics = &self.state.admission.metrics;
        let key = (w.kind, w.namespace.clone(), w.name.clone());
        let held = if w.opted_out {
            Some(("skipped", "opted out (confgate.dev/rollout: \"false\")"))
        } else if w.paused {
            Some(("skipped", "paused"))
        } else if !w.settled {
            Some(("throttled", "its last rollout has not finished"))
        } else if self
            .last
            .get(&key)
            .is_some_and(|at| at.elapsed() < self.settings.min_interval)
        {
            Some((
                "throttled",
                "rolled less than --rollout-min-interval-seconds ago",
            ))
        } else if !self.limiter.take() {
            Some(("throttled", "over --rollout-rate-per-minute"))
        } else {
            None
        };
        if let Some((result, why)) = held {
            metrics.rollout(result);
            tracing::debug!(kind = w.kind, namespace = %w.namespace, name = %w.name, why, "rollout held");
            return;
        }
        match self.patch(w, annotation, desired).await {
            Ok(()) => {
                self.last.insert(key, Instant::now());
                metrics.rollout("triggered");
                tracing::info!(
                    kind = w.kind,
                    namespace = %w.namespace,
                    name = %w.name,
                    annotation,
                    from = current,
                    to = desired,
                    "configuration changed: rolling"
                );
                self.event(w, annotation, current, desired).await;
            }
            Err(error) => {
                metrics.rollout("failed");
                tracing::warn!(kind = w.kind, namespace = %w.namespace, name = %w.name, %error, "rollout failed; retrying at the next resync");
            }
        }
    }

    /// Writes the annotation (a merge patch of that one key, field manager `confgate`). The
    /// mutating webhook computes the same value on this write, so it adds nothing.
    async fn patch(&self, w: &Workload, annotation: &str, value: &str) -> kube::Result<()> {
        let Some(resource) = index::api_resource(w.kind) else {
            return Ok(());
        };
        let mut body = json!({"metadata": {"annotations": {annotation: value}}});
        for key in template_path(w.kind).unwrap_or_default().iter().rev() {
            body = json!({ *key: body });
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &w.namespace, &resource);
        let params = PatchParams {
            field_manager: Some("confgate".into()),
            ..PatchParams::default()
        };
        api.patch(&w.name, &params, &Patch::Merge(&body))
            .await
            .map(drop)
    }

    /// A `ConfigChanged` Event on the workload, so `kubectl describe` says why it rolled.
    async fn event(&self, w: &Workload, annotation: &str, from: &str, to: &str) {
        let reference = ObjectReference {
            api_version: index::api_resource(w.kind).map(|r| r.api_version),
            kind: Some(w.kind.to_owned()),
            name: Some(w.name.clone()),
            namespace: Some(w.namespace.clone()),
            uid: Some(w.uid.clone()),
            ..ObjectReference::default()
        };
        let short = |s: &str| s.chars().take(12).collect::<String>();
        let event = Event {
            type_: EventType::Normal,
            reason: "ConfigChanged".into(),
            note: Some(format!(
                "the configuration it consumes changed: {annotation} {} -> {}; rolling",
                short(from),
                short(to)
            )),
            action: "Rollout".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, "cannot publish the ConfigChanged event");
        }
    }
}

/// The annotation `policy` gives the workload now, when it can say (every referenced object
/// readable) and the policy applies to it. Secrets read on demand are fetched first, as the
/// webhook does for a request (and kept for 30 s).
async fn desired(
    engine: &Engine,
    set: &PolicySet,
    w: &Workload,
    object: &Value,
    policy: &str,
    annotation: &str,
) -> Option<String> {
    let review = review_from_value(wrap_manifest(object.clone(), 1).ok()?).ok()?;
    let cluster = engine.cluster();
    if cluster.wants_secret_prefetch() {
        let names = crate::workload::secret_names(&review);
        if !names.is_empty() {
            cluster.prefetch_secrets(&w.namespace, names).await;
        }
    }
    let decision = engine
        .evaluate(set, &review, Endpoint::Mutate, Some(policy))
        .ok()?;
    // Unchanged, not computable now (an object could not be read), or a required object is
    // missing: rolling into a configuration that is not there only makes Pods that cannot
    // start (the old ones keep running). The warnings say which.
    if decision.patch.0.is_empty() || !decision.warnings.is_empty() {
        tracing::debug!(kind = w.kind, namespace = %w.namespace, name = %w.name, warnings = ?decision.warnings, "no new annotation");
        return None;
    }
    let mut patched: Value = review.object?;
    json_patch::patch(&mut patched, &decision.patch).ok()?;
    template_annotation(w.kind, &patched, annotation).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_gives_its_burst_then_waits_for_the_rate() {
        let settings = Settings {
            per_minute: 0,
            burst: 3,
            ..Settings::default()
        };
        let mut bucket = TokenBucket::new(&settings);
        let taken: Vec<bool> = (0..5).map(|_| bucket.take()).collect();
        assert_eq!(taken, vec![true, true, true, false, false]);
        // Refilled at the rate: a minute's worth of 60 per minute is back to the burst.
        let mut bucket = TokenBucket::new(&Settings {
            per_minute: 60,
            burst: 2,
            ..Settings::default()
        });
        assert!(bucket.take() && bucket.take() && !bucket.take());
        bucket.at -= Duration::from_secs(60);
        assert!(bucket.take() && bucket.take() && !bucket.take());
    }
}
