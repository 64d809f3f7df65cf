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
//! **What changed.** The ConfigMap (and watched Secret) caches report each change with the key
//! digests the object had before; the reverse index of [`Index`] names the workloads
//! that consume it, and only those are compared. Changes are acted on once they have been
//! quiet for `--rollout-coalesce-ms`, so a ConfigMap and the workload applied after it in one
//! operation roll once (by the workload's own write, which the webhook stamped), and the write
//! is conditional on the resourceVersion the index saw.
//!
//! **Storm protection.** A global token bucket (`--rollout-rate-per-minute`, `--rollout-burst`),
//! a minimum interval per workload, and no new roll of a workload whose last rollout has not
//! finished (every replica updated and ready). Paused Deployments and workloads annotated
//! `confgate.dev/rollout: "false"` are left alone; a `checksum-config` policy with
//! `rollout: false` stamps at admission only.

pub mod secret_poll;
mod waves;

use crate::admission::manifest_review;
use crate::cluster::changes::{Changed, ConfigChanges};
use crate::cluster::fresh::{Fresh, View};
use crate::cluster::workloads::{self as index, Index, Workload};
use crate::cluster::{ClusterState, ConfigData, Lookup};
use crate::engine::{Engine, Judging};
use crate::policy::checksum_config::Waves as WaveSettings;
use crate::policy::{Phase, PolicySet};
use crate::workload::{FIELD_MANAGER, Keys, Source, nested, template_annotation, template_path};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use waves::{Admission, ObjectKey, Outcome, WorkloadKey};

/// How the controller paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Rollouts started per minute, cluster-wide, once the burst is spent.
    pub per_minute: u32,
    /// Rollouts that may start at once.
    pub burst: u32,
    /// The least time between two rollouts of one workload.
    pub min_interval: Duration,
    /// How long changes must be quiet before they are acted on (at most twice this in all).
    pub coalesce: Duration,
    /// How often every workload is compared even without a change (held-back rollouts are
    /// retried every 5 s).
    pub resync: Duration,
    /// An unfinished rollout whose status has not moved for this long is stuck, and no longer
    /// holds the next change.
    pub stuck_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            per_minute: 20,
            burst: 5,
            min_interval: Duration::from_secs(60),
            coalesce: Duration::from_millis(400),
            resync: Duration::from_secs(300),
            stuck_after: Duration::from_secs(60),
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
    /// Who owns the Lease (set once it exists).
    pub owners: crate::owners::Owners,
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

/// Whether this replica holds the Lease (see [`crate::controllers::lease`]), for the life of the process.
/// The rollout controller and the audit write only while it holds; every replica serves the
/// webhook. The Lease is created with its owner (`--owner-service-account`) when it can be read,
/// so it goes when confgate is uninstalled.
pub fn leadership(client: Client, election: Election) -> crate::controllers::lease::Leader {
    let store = LazyOwnedLease {
        client,
        election: election.clone(),
        inner: tokio::sync::OnceCell::new(),
    };
    crate::controllers::lease::run(Arc::new(store), election.identity)
}

/// The Lease store, made once its owner could be read (or is not configured).
struct LazyOwnedLease {
    client: Client,
    election: Election,
    inner: tokio::sync::OnceCell<crate::controllers::lease::KubeLease>,
}

impl LazyOwnedLease {
    async fn store(&self) -> Result<&crate::controllers::lease::KubeLease, String> {
        self.inner
            .get_or_try_init(|| async {
                let owner = self
                    .election
                    .owners
                    .namespaced(&self.client)
                    .await
                    .map_err(|e| format!("the Lease's owner cannot be read: {e}"))?;
                Ok(crate::controllers::lease::KubeLease::new(
                    self.client.clone(),
                    &self.election.namespace,
                    &self.election.lease,
                    owner,
                ))
            })
            .await
    }
}

impl crate::controllers::lease::LeaseStore for LazyOwnedLease {
    fn get(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Option<crate::controllers::lease::Record>, String>>
    {
        Box::pin(async move { self.store().await?.get().await })
    }
    fn create(
        &self,
        holder: &str,
    ) -> futures::future::BoxFuture<
        '_,
        Result<crate::controllers::lease::Record, crate::controllers::lease::WriteError>,
    > {
        let holder = holder.to_owned();
        Box::pin(async move {
            let store = self
                .store()
                .await
                .map_err(crate::controllers::lease::WriteError::Failed)?;
            store.create(&holder).await
        })
    }
    fn write(
        &self,
        current: &crate::controllers::lease::Record,
        holder: &str,
    ) -> futures::future::BoxFuture<
        '_,
        Result<crate::controllers::lease::Record, crate::controllers::lease::WriteError>,
    > {
        let (current, holder) = (current.clone(), holder.to_owned());
        Box::pin(async move {
            let store = self
                .store()
                .await
                .map_err(crate::controllers::lease::WriteError::Failed)?;
            store.write(&current, &holder).await
        })
    }
}

/// Runs the controller until the process ends. `changes` says which ConfigMaps (and watched
/// Secrets) changed. Only the replica that holds the Lease (`leader`) writes; the others keep
/// their index and compare everything when they take over.
pub async fn run(
    client: Client,
    judging: Judging,
    index: Arc<Index>,
    changes: Arc<ConfigChanges>,
    settings: Settings,
    leadership: crate::controllers::lease::Leader,
    notifier: crate::notify::Notifier,
) {
    let mut leader = leadership.watch();
    let cluster = judging.cluster.clone();
    while !(index.settled() && cluster.ready().is_ok()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::info!(
        per_minute = settings.per_minute,
        burst = settings.burst,
        workloads = index.len(),
        "rollout controller started: workloads roll when the configuration they consume changes"
    );
    let mut controller = Controller::new(
        client.clone(),
        judging,
        settings,
        leadership,
        changes.clone(),
    );
    controller.notifier = notifier;
    let mut full_due = true;
    let mut last_full = Instant::now();
    loop {
        let leading = *leader.borrow_and_update();
        if leading && (full_due || last_full.elapsed() >= settings.resync) {
            // What changed while this replica was not leading (or confgate was down) is found
            // by comparing every workload: state, not history. Like a change, it waits until
            // changes are quiet first, so a ConfigMap and the workload applied with it
            // (`kubectl apply -f dir/`) are compared together and roll once. Changes recorded
            // meanwhile are kept, so their rollouts still name what changed.
            changes.settle(settings.coalesce).await;
            let changed = changes.take();
            controller.reconcile(&index, &changed, true).await;
            full_due = false;
            last_full = Instant::now();
        } else if leading {
            controller.tend_waves(&index).await;
            controller.retry_held(&index).await;
        }
        tokio::select! {
            // Only a leader takes changes. A standby leaves them pending (at most one per
            // object), so the comparison it makes when it starts leading still names what
            // changed, instead of finding the difference with no change to show for it.
            () = changes.wait(), if leading => {
                changes.settle(settings.coalesce).await;
                let (changed, since) = changes.take_since();
                if *leader.borrow() {
                    controller.since = since;
                    controller.reconcile(&index, &changed, false).await;
                    controller.since = None;
                }
            }
            () = tokio::time::sleep(RETRY) => {}
            result = leader.changed() => {
                if result.is_err() {
                    return;
                }
                full_due = *leader.borrow();
            }
        }
    }
}

/// What a round compares, for its span: up to ten changed objects (`ConfigMap ns/name`).
fn changed_names(changed: &Changed) -> String {
    let mut names: Vec<String> = changed
        .keys()
        .map(|(source, namespace, name)| format!("{} {namespace}/{name}", source.kind()))
        .collect();
    names.sort();
    if names.len() > 10 {
        let more = names.len() - 10;
        names.truncate(10);
        names.push(format!("and {more} more"));
    }
    names.join(", ")
}

/// Whether an unfinished rollout is stuck: given up by its controller, or not moving for
/// `stuck_after`.
pub fn rollout_stuck(failing: bool, stalled: Duration, stuck_after: Duration) -> bool {
    failing || stalled >= stuck_after
}

/// How often held-back rollouts are tried again.
const RETRY: Duration = Duration::from_secs(5);

/// What the controller knows of a workload when deciding whether to write to it now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriteState {
    /// `confgate.dev/rollout: "false"`.
    pub opted_out: bool,
    /// `spec.paused`.
    pub paused: bool,
    /// It has a deletionTimestamp.
    pub deleting: bool,
    /// Its last rollout is done.
    pub settled: bool,
    /// A change broke its last rollout (the next change may be the fix).
    pub broken: bool,
    /// Its unfinished rollout is stuck ([`rollout_stuck`]).
    pub stuck: bool,
    /// How long ago this controller last rolled it.
    pub since_last: Option<Duration>,
    /// Its last writes failed this many times in a row, and the backoff has not passed.
    pub backing_off: Option<u32>,
}

/// Whether a workload may be written now, before the waves and the rate limiter have their say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// On to the waves and the rate limiter.
    Open,
    /// Not now: `(result, why)`, the result being the metric's (`skipped`: never for this
    /// change; `throttled`: tried again).
    Hold(&'static str, &'static str),
}

/// The decision, in order: what the workload says (opted out, paused, being deleted), an
/// unfinished rollout (unless stuck, or broken by a change: the next one may be the fix), the
/// minimum interval between two rollouts (a broken workload does not wait), and the backoff
/// after failed writes (checked before the rate limiter: a write that keeps failing spends no
/// token, so it never starves the others).
pub fn gate(state: &WriteState, min_interval: Duration) -> Gate {
    if state.opted_out {
        Gate::Hold("skipped", "opted out (confgate.dev/rollout: \"false\")")
    } else if state.paused {
        Gate::Hold("skipped", "paused")
    } else if state.deleting {
        Gate::Hold("skipped", "being deleted")
    } else if !state.settled && !state.broken && !state.stuck {
        Gate::Hold("throttled", "its last rollout has not finished")
    } else if !state.broken && state.since_last.is_some_and(|ago| ago < min_interval) {
        Gate::Hold(
            "throttled",
            "rolled less than --rollout-min-interval-seconds ago",
        )
    } else if state.backing_off.is_some() {
        Gate::Hold("throttled", "backing off after failed writes")
    } else {
        Gate::Open
    }
}

/// How many rollout writes are in flight at once.
const PARALLEL_WRITES: usize = 16;

/// A rollout to write.
struct Write {
    workload: Arc<Workload>,
    stamps: Vec<Stamp>,
    /// What changed, as `configmap app-config: LOG_LEVEL` (empty: found by comparison).
    what: Vec<String>,
}

impl Write {
    fn changed(&self) -> String {
        if self.what.is_empty() {
            "changed while confgate was not watching".to_owned()
        } else {
            self.what.join("; ")
        }
    }
}

/// One annotation to write: key, the value it has, the value it should have, and how the
/// policy that stamps it rolls a change's readers (in waves, or all at once).
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    pub annotation: String,
    pub current: String,
    pub desired: String,
    pub waves: Option<WaveSettings>,
}

/// `checksum/config 1f2e3d4c5b6a -> 9ab0c1d2e3f4`: the annotation, and the first 12
/// characters of each value, for logs and Events.
impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |s: &str| s.chars().take(12).collect::<String>();
        write!(
            f,
            "{} {} -> {}",
            self.annotation,
            short(&self.current),
            short(&self.desired)
        )
    }
}

/// Where the controller's writes go: the API server ([`KubeWriter`]), or a test's fake. Reads
/// (the first wave's status and Pods) stay on the client; every write goes through here.
pub trait Writer: Send + Sync {
    /// Writes `stamps` to `w`: a merge patch of those template annotations, field manager
    /// `confgate`, conditional on the resourceVersion the index saw. Returns the API server's
    /// time of the write (from `managedFields`), which tells the Pods of this rollout from
    /// older ones.
    fn patch<'a>(
        &'a self,
        w: &'a Workload,
        stamps: &'a [Stamp],
    ) -> futures::future::BoxFuture<'a, kube::Result<Option<String>>>;

    /// Publishes an Event of the rollout controller (action `Rollout`).
    fn publish<'a>(
        &'a self,
        on: crate::events::On<'a>,
        type_: EventType,
        reason: &'a str,
        note: String,
    ) -> futures::future::BoxFuture<'a, kube::Result<()>>;
}

/// The API server, through a client and an Event recorder.
pub struct KubeWriter {
    client: Client,
    recorder: Recorder,
}

impl KubeWriter {
    pub fn new(client: Client) -> Self {
        Self {
            recorder: crate::events::recorder(client.clone()),
            client,
        }
    }
}

impl Writer for KubeWriter {
    fn patch<'a>(
        &'a self,
        w: &'a Workload,
        stamps: &'a [Stamp],
    ) -> futures::future::BoxFuture<'a, kube::Result<Option<String>>> {
        Box::pin(async move {
            let Some(resource) = crate::workload::api_resource(w.kind) else {
                return Ok(None);
            };
            let annotations: serde_json::Map<String, Value> = stamps
                .iter()
                .map(|s| (s.annotation.clone(), Value::String(s.desired.clone())))
                .collect();
            let mut body = nested(
                template_path(w.kind).unwrap_or_default().iter(),
                json!({"metadata": {"annotations": annotations}}),
            );
            body["metadata"] = json!({"resourceVersion": w.resource_version});
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &w.namespace, &resource);
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            let written = api.patch(&w.name, &params, &Patch::Merge(&body)).await?;
            Ok(written
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .filter(|f| f.manager.as_deref() == Some(FIELD_MANAGER))
                .find_map(|f| f.time.as_ref())
                .map(|t| t.0.to_string()))
        })
    }

    fn publish<'a>(
        &'a self,
        on: crate::events::On<'a>,
        type_: EventType,
        reason: &'a str,
        note: String,
    ) -> futures::future::BoxFuture<'a, kube::Result<()>> {
        Box::pin(crate::events::publish(
            &self.recorder,
            on,
            type_,
            reason,
            "Rollout",
            note,
        ))
    }
}

struct Controller {
    /// For reads (a first wave's status and Pods).
    client: Client,
    judging: Judging,
    /// Every write.
    writer: Arc<dyn Writer>,
    limiter: TokenBucket,
    last: HashMap<WorkloadKey, Instant>,
    /// Workloads that should roll but were held back, with what changed for them and why they
    /// wait: `throttled` (rate, interval, unfinished rollout), `wave_waiting` (the first wave
    /// of a change they read is rolling), `wave_failed` (it failed).
    held: HashMap<WorkloadKey, (Vec<String>, &'static str)>,
    /// The changes rolling in waves ([`waves`]).
    waves: waves::Waves,
    /// A wave passed since the held workloads were last tried: those waiting for it are tried.
    released: bool,
    /// Workloads held because their configuration is incomplete, with what is missing (an
    /// Event and an info line when it first is, or changes).
    missing: HashMap<WorkloadKey, String>,
    /// Workloads whose writes failed: how many times in a row, and when to try again.
    failing: HashMap<WorkloadKey, (u32, Instant)>,
    /// Unfinished rollouts: where each stood when first seen so, and since when.
    progress: HashMap<WorkloadKey, (u64, Instant)>,
    settings: Settings,
    /// Checked before every write: a replica that lost the Lease (or froze past its renewal
    /// deadline) writes nothing.
    leadership: crate::controllers::lease::Leader,
    /// When the change being acted on was first recorded (the change-to-write latency).
    since: Option<Instant>,
    /// Where rollouts, holds and failures are announced (`--notify-secret`).
    notifier: crate::notify::Notifier,
    /// Writes planned in the current round: at most `--rollout-burst` go out together, even
    /// when the bucket refilled while the round was planned.
    planned: u32,
    /// The changes not yet acted on: a comparison of every workload leaves a workload whose
    /// configuration changed meanwhile to the change's own round.
    changes: Arc<ConfigChanges>,
}

impl Controller {
    fn new(
        client: Client,
        judging: Judging,
        settings: Settings,
        leadership: crate::controllers::lease::Leader,
        changes: Arc<ConfigChanges>,
    ) -> Self {
        Self {
            changes,
            writer: Arc::new(KubeWriter::new(client.clone())),
            client,
            judging,
            limiter: TokenBucket::new(&settings),
            last: HashMap::new(),
            held: HashMap::new(),
            waves: waves::Waves::default(),
            released: false,
            missing: HashMap::new(),
            failing: HashMap::new(),
            progress: HashMap::new(),
            settings,
            leadership,
            since: None,
            notifier: crate::notify::Notifier::off(),
            planned: 0,
        }
    }

    /// Compares the workloads that consume what `changed` names (every workload when `all`)
    /// with the annotations they should have, and rolls those that differ.
    #[tracing::instrument(
        name = "rollout",
        skip_all,
        fields(full = all, changed = %changed_names(changed), writes = tracing::field::Empty)
    )]
    async fn reconcile(&mut self, index: &Index, changed: &Changed, all: bool) {
        let set = self.judging.policies.current();
        if !set
            .policies
            .iter()
            .any(|p| !p.policy.rollout_annotations().is_empty())
        {
            return;
        }
        let engine = Engine::new(self.judging.cluster.clone());
        // Each workload once, with the changed keys it consumes.
        let mut candidates: HashMap<WorkloadKey, (Arc<Workload>, Vec<String>)> = HashMap::new();
        if all {
            for w in index.all() {
                candidates.insert(key(&w), (w, Vec::new()));
            }
        }
        let base = engine.cluster();
        // Secrets read on demand (`--secrets get`) are not in a cache: read what changed now.
        let mut fresh = Fresh::default();
        for (source, namespace, name) in changed.keys() {
            if matches!(base.lookup(*source, namespace, name), Lookup::Unknown(_)) {
                fresh.merge(
                    base.read_now(namespace, vec![(*source, name.clone())], false)
                        .await,
                );
            }
        }
        let cluster = View::new(base.as_ref(), &fresh);
        for ((source, namespace, name), before) in changed {
            let after = match cluster.lookup(*source, namespace, name) {
                Lookup::Found(data) => Some(data),
                _ => None,
            };
            let consumers = index.consumers(*source, namespace, name);
            let object: ObjectKey = (*source, namespace.clone(), name.clone());
            match &after {
                // A change with more than one reader rolls in waves (a wave of one is its
                // reader's own rollout).
                Some(data) if consumers.len() > 1 => {
                    if self.waves.begin(object.clone(), data.fingerprint()) {
                        tracing::debug!(
                            object = waves::label(&object),
                            readers = consumers.len(),
                            "a change rolls in waves"
                        );
                    }
                }
                _ => self.waves.end(&object),
            }
            for w in consumers {
                let what = changed_keys(&w, *source, name, before.as_deref(), after.as_deref());
                candidates
                    .entry(key(&w))
                    .or_insert_with(|| (w.clone(), Vec::new()))
                    .1
                    .extend(what);
            }
        }
        if candidates.len() > 1 || !changed.is_empty() {
            tracing::debug!(
                workloads = candidates.len(),
                changed = changed.len(),
                "comparing"
            );
        }
        let mut writes = Vec::new();
        for (k, w, what) in self.first_wave_first(candidates) {
            let mut what = what;
            if what.is_empty()
                && let Some((earlier, _)) = self.held.get(&k)
            {
                what = earlier.clone();
            }
            writes.extend(self.plan(&engine, &set, index, w, what, all).await);
        }
        tracing::Span::current().record("writes", writes.len());
        self.write_all(writes).await;
        self.report_held();
    }

    /// The candidates in the order they are planned, which decides the first wave of a change:
    /// a workload whose rollout a change broke first (the next change may be its fix), then
    /// workloads that run Pods (they can show whether the change is healthy), then by
    /// namespace, kind and name.
    fn first_wave_first(
        &self,
        candidates: HashMap<WorkloadKey, (Arc<Workload>, Vec<String>)>,
    ) -> Vec<(WorkloadKey, Arc<Workload>, Vec<String>)> {
        let mut ordered: Vec<(WorkloadKey, Arc<Workload>, Vec<String>)> = candidates
            .into_iter()
            .map(|(k, (w, what))| (k, w, what))
            .collect();
        ordered.sort_by(|a, b| {
            let rank = |(k, w, _): &(WorkloadKey, Arc<Workload>, Vec<String>)| {
                (
                    !self.waves.broken(k),
                    !w.shows_health,
                    k.1.clone(),
                    k.0,
                    k.2.clone(),
                )
            };
            rank(a).cmp(&rank(b))
        });
        ordered
    }

    /// True when `w`'s unfinished rollout is stuck: the Deployment controller gave up on it, or
    /// its status has not moved for `--rollout-stuck-seconds`. A stuck rollout does not hold the
    /// next change: that change may be the fix (a crash-looping config), and holding it would
    /// keep the workload broken until someone makes the Pods ready by other means.
    fn stuck(&mut self, w: &Workload, k: &WorkloadKey) -> bool {
        let now = Instant::now();
        let (progress, since) = *self
            .progress
            .entry(k.clone())
            .and_modify(|seen| {
                if seen.0 != w.progress {
                    *seen = (w.progress, now);
                }
            })
            .or_insert((w.progress, now));
        let stuck = rollout_stuck(
            w.failing,
            now.saturating_duration_since(since),
            self.settings.stuck_after,
        );
        if stuck {
            tracing::debug!(kind = w.kind, namespace = %w.namespace, name = %w.name, progress, stalled_s = now.saturating_duration_since(since).as_secs(), failing = w.failing, "its last rollout is stuck: the change is rolled anyway");
        }
        stuck
    }

    /// The held rollouts by reason, for the gauge.
    fn report_held(&self) {
        let metrics = &self.judging.metrics;
        for reason in ["throttled", "wave_waiting", "wave_failed"] {
            let count = self.held.values().filter(|(_, r)| *r == reason).count();
            metrics.set_rollouts_held(reason, count);
        }
        metrics.set_rollouts_held("config_missing", self.missing.len());
        let now = Instant::now();
        let backing_off = self
            .failing
            .values()
            .filter(|(_, next)| *next > now)
            .count();
        metrics.set_rollouts_held("failing_writes", backing_off);
    }

    /// Tries the held-back workloads again: those throttled, and those waiting for a first
    /// wave once one has passed. Those held by a failed wave wait for the next change of the
    /// object, which compares them anyway.
    async fn retry_held(&mut self, index: &Index) {
        self.held
            .retain(|(kind, namespace, name), _| index.get(kind, namespace, name).is_some());
        let released = std::mem::take(&mut self.released);
        let due: Vec<WorkloadKey> = self
            .held
            .iter()
            .filter(|(_, (_, reason))| {
                *reason == "throttled" || (released && *reason == "wave_waiting")
            })
            .map(|(k, _)| k.clone())
            .collect();
        if due.is_empty() {
            self.report_held();
            return;
        }
        let set = self.judging.policies.current();
        let engine = Engine::new(self.judging.cluster.clone());
        let mut writes = Vec::new();
        let mut candidates = HashMap::new();
        for k in due {
            if let (Some((what, _)), Some(w)) = (self.held.remove(&k), index.get(k.0, &k.1, &k.2)) {
                candidates.insert(k, (w, what));
            }
        }
        // A round of its own in a trace: the rollouts held back (throttled, or waiting for a
        // first wave) that are now due.
        let round = tracing::info_span!(
            "rollout",
            full = false,
            changed = "held back",
            writes = tracing::field::Empty
        );
        let plan_and_write = async {
            for (_, w, what) in self.first_wave_first(candidates) {
                writes.extend(self.plan(&engine, &set, index, w, what, false).await);
            }
            tracing::Span::current().record("writes", writes.len());
            self.write_all(writes).await;
        };
        tracing::Instrument::instrument(plan_and_write, round).await;
        self.report_held();
    }

    /// Judges the first waves in flight from their workloads and Pods read now, and says what
    /// finished: a wave that passed releases the readers waiting for it; one that failed is
    /// announced on the object and the canary (Warning Events, a log line, a metric).
    async fn tend_waves(&mut self, index: &Index) {
        for (k, _, server_time) in self.waves.watched() {
            if index.get(k.0, &k.1, &k.2).is_none() {
                // Gone: the readers waiting for it are tried again, and one takes its place.
                self.waves.forget(&k);
                self.released = true;
                continue;
            }
            let Some(health) = self.health(&k, server_time.as_deref()).await else {
                continue;
            };
            for outcome in self.waves.observe(&k, &health, Instant::now()) {
                self.announce(index, outcome).await;
            }
        }
        self.report_held();
    }

    /// What canary `k` shows now: its status and its Pods read from the API server (a read
    /// that fails judges nothing this time).
    async fn health(&self, k: &WorkloadKey, since: Option<&str>) -> Option<waves::Health> {
        let resource = crate::workload::api_resource(k.0)?;
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &k.1, &resource);
        let object = match api.get(&k.2).await {
            Ok(object) => serde_json::to_value(object).ok()?,
            Err(error) => {
                tracing::debug!(%error, workload = waves::workload_label(k), "cannot read a first-wave workload");
                return None;
            }
        };
        let mut health = waves::workload_health(k.0, &object);
        let selector = object
            .pointer("/spec/selector")
            .cloned()
            .and_then(|s| {
                serde_json::from_value::<
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
                >(s)
                .ok()
            })
            .and_then(|s| kube::core::Selector::try_from(s).ok());
        if let Some(selector) = selector {
            let pods: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(self.client.clone(), &k.1);
            let params = kube::api::ListParams::default().labels(&selector.to_string());
            match pods.list(&params).await {
                Ok(list) => {
                    let pods: Vec<Value> = list
                        .items
                        .iter()
                        .filter_map(|p| serde_json::to_value(p).ok())
                        .collect();
                    waves::pods_health(&mut health, &pods, since);
                }
                Err(error) => {
                    // Without Pods (RBAC), status, progress deadline and timeout still judge.
                    tracing::debug!(%error, "cannot list the Pods of a first-wave workload");
                }
            }
        }
        Some(health)
    }

    /// Says how a first wave finished.
    async fn announce(&mut self, index: &Index, outcome: Outcome) {
        match outcome {
            Outcome::Passed(object) => {
                self.judging.metrics.rollout_wave("passed");
                tracing::info!(
                    object = waves::label(&object),
                    "the first wave is healthy: the other readers roll"
                );
                self.notifier.send(
                    crate::notify::Kind::WavePassed,
                    format!(
                        "{}: the first wave is healthy; the other readers roll",
                        waves::label(&object)
                    ),
                );
                self.released = true;
            }
            Outcome::Failed {
                object,
                workload,
                why,
            } => {
                self.judging.metrics.rollout_wave("failed");
                let readers = index.consumers(object.0, &object.1, &object.2);
                let others = readers.len().saturating_sub(1);
                // Those waiting for this wave are now held by its failure.
                for r in &readers {
                    if let Some((_, reason)) = self.held.get_mut(&key(r))
                        && *reason == "wave_waiting"
                    {
                        *reason = "wave_failed";
                    }
                }
                tracing::warn!(
                    object = waves::label(&object),
                    workload = waves::workload_label(&workload),
                    %why,
                    held = others,
                    "the first wave of a configuration change failed: the change is held for the other readers"
                );
                let on_object = format!(
                    "this change broke the first reader rolled ({}: {why}); it is held for the {others} other readers until {} is edited again",
                    waves::workload_label(&workload),
                    waves::label(&object)
                );
                self.notifier.send(
                    crate::notify::Kind::WaveFailed,
                    format!("{}: {on_object}", waves::label(&object)),
                );
                let on = crate::events::On {
                    kind: object.0.kind(),
                    namespace: &object.1,
                    name: &object.2,
                    uid: "",
                };
                self.publish(on, EventType::Warning, "RolloutHalted", on_object)
                    .await;
                let on_workload = format!(
                    "its rollout for the change of {} failed: {why}; the change is held for the {others} other readers until {} is edited again",
                    waves::label(&object),
                    waves::label(&object)
                );
                let uid = index
                    .get(workload.0, &workload.1, &workload.2)
                    .map(|w| w.uid.clone())
                    .unwrap_or_default();
                let on = crate::events::On {
                    kind: workload.0,
                    namespace: &workload.1,
                    name: &workload.2,
                    uid: &uid,
                };
                self.publish(on, EventType::Warning, "ConfigRolloutFailed", on_workload)
                    .await;
            }
        }
    }

    /// Publishes an Event of the rollout controller (action `Rollout`); a failure is logged.
    async fn publish(
        &self,
        on: crate::events::On<'_>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        if let Err(error) = self.writer.publish(on, type_, reason, note).await {
            tracing::warn!(%error, reason, "cannot publish an Event");
        }
    }

    /// What to write to `w`, if anything may be written now; what is held back is counted
    /// and remembered for the retry. `begin`: a comparison of every workload, where the
    /// changes it finds (made while this replica was not leading) begin their waves.
    async fn plan(
        &mut self,
        engine: &Engine,
        set: &PolicySet,
        index: &Index,
        w: Arc<Workload>,
        what: Vec<String>,
        begin: bool,
    ) -> Option<Write> {
        let metrics = self.judging.metrics.clone();
        let k = key(&w);
        let mut fresh = Fresh::default();
        let stamps = match desired(engine, set, &w, &mut fresh).await {
            Ok(stamps) => {
                self.missing.remove(&k);
                stamps
            }
            Err(missing) => {
                metrics.rollout("held");
                // Said (info line, Event) when a change of its configuration is what would
                // have rolled it, once per distinct problem; a periodic comparison of a
                // workload that has been broken for long is quiet (the audit reports it).
                if what.is_empty() {
                    tracing::debug!(kind = w.kind, namespace = %w.namespace, name = %w.name, %missing, "rollout held");
                } else if self.missing.get(&k) != Some(&missing) {
                    tracing::info!(kind = w.kind, namespace = %w.namespace, name = %w.name, %missing, "rollout held: its new Pods could not start");
                    self.notifier.send(
                        crate::notify::Kind::Held,
                        format!(
                            "{} not rolled: its new Pods could not start: {missing}",
                            waves::workload_label(&k)
                        ),
                    );
                    self.held_event(&w, &missing).await;
                    self.missing.insert(k, missing);
                }
                return None;
            }
        };
        if stamps.is_empty() {
            // Already right (its own write carried the new checksum), or not ours to roll.
            if !what.is_empty() {
                metrics.rollout("coalesced");
                self.waves.carried(&k, Instant::now());
            }
            self.held.remove(&k);
            return None;
        }
        if what.is_empty() && changed_meanwhile(&w, &self.changes) {
            // Nothing this round knows of changed what it reads, but another object it reads
            // has a change recorded since the round began (during a comparison of every
            // workload; or during a round of an object whose change it does not read, such as
            // the config guard marking a ConfigMap): that change's own round compares it again
            // after the quiet wait, so a ConfigMap and the workload applied right after it
            // (`kubectl apply -f dir/`) still roll once, and the rollout names what changed.
            tracing::debug!(kind = w.kind, namespace = %w.namespace, name = %w.name, "its configuration changed during the comparison: compared in the change's round");
            return None;
        }
        if w.settled {
            self.progress.remove(&k);
        }
        // A workload a change broke gets the next change at once: it may be the fix.
        let broken = self.waves.broken(&k);
        let now = Instant::now();
        let state = WriteState {
            opted_out: w.opted_out,
            paused: w.paused,
            deleting: w.deleting,
            settled: w.settled,
            broken,
            stuck: !w.settled && !broken && self.stuck(&w, &k),
            since_last: self
                .last
                .get(&k)
                .map(|at| now.saturating_duration_since(*at)),
            backing_off: self
                .failing
                .get(&k)
                .filter(|(_, next)| *next > now)
                .map(|(failures, _)| *failures),
        };
        let held = if let Gate::Hold(result, why) = gate(&state, self.settings.min_interval) {
            Some((result, why))
        } else if let Some(wait) = self.wave_hold(engine, &fresh, index, &w, &stamps, begin) {
            metrics.rollout("held");
            self.held.insert(k, (what, wait));
            return None;
        } else if self.planned >= self.settings.burst.max(1) || !self.limiter.take() {
            Some(("throttled", "over --rollout-rate-per-minute"))
        } else {
            None
        };
        if let Some((result, why)) = held {
            metrics.rollout(result);
            tracing::debug!(kind = w.kind, namespace = %w.namespace, name = %w.name, why, "rollout held");
            if result == "throttled" {
                self.held.insert(k, (what, "throttled"));
            }
            return None;
        }
        self.planned += 1;
        Some(Write {
            workload: w,
            stamps,
            what,
        })
    }

    /// Whether a change in flight holds `w` (`wave_waiting`, `wave_failed`); joins `w` to the
    /// first wave of the changes it reads that still need canaries.
    fn wave_hold(
        &mut self,
        engine: &Engine,
        fresh: &Fresh,
        index: &Index,
        w: &Workload,
        stamps: &[Stamp],
        begin: bool,
    ) -> Option<&'static str> {
        let settings = stamps.iter().find_map(|s| s.waves)?;
        // What the checksum was computed from (Secrets read on demand are in `fresh`).
        let cluster = View::new(engine.cluster().as_ref(), fresh);
        let mut objects: Vec<(ObjectKey, u64)> = Vec::new();
        for (source, name) in &w.objects {
            if let Lookup::Found(data) = cluster.lookup(*source, &w.namespace, name) {
                let object: ObjectKey = (*source, w.namespace.clone(), name.to_string());
                let fingerprint = data.fingerprint();
                if begin
                    && !self.waves.knows(&object, fingerprint)
                    && index.consumers(*source, &w.namespace, name).len() > 1
                {
                    self.waves.begin(object.clone(), fingerprint);
                }
                objects.push((object, fingerprint));
            }
        }
        let k = key(w);
        match self.waves.admit(&k, &objects, &settings) {
            Admission::Go => None,
            Admission::Canary(changes) => {
                let changes: Vec<String> = changes.iter().map(waves::label).collect();
                tracing::info!(kind = w.kind, namespace = %w.namespace, name = %w.name, changes = ?changes, "rolling as the first wave of a change; its other readers wait until it is healthy");
                None
            }
            Admission::Wait(object) => {
                tracing::debug!(kind = w.kind, namespace = %w.namespace, name = %w.name, change = waves::label(&object), "rollout waits for the first wave of the change");
                Some("wave_waiting")
            }
            Admission::Halted(object, canary, why) => {
                if self.held.get(&k).map(|(_, r)| *r) != Some("wave_failed") {
                    tracing::info!(kind = w.kind, namespace = %w.namespace, name = %w.name, change = waves::label(&object), first_wave = waves::workload_label(&canary), %why, "rollout held: the first wave of this change failed");
                }
                Some("wave_failed")
            }
        }
    }

    /// Writes the planned rollouts, [`PARALLEL_WRITES`] at a time (each is a round trip through
    /// the apiserver and its webhooks), then records how each went.
    async fn write_all(&mut self, writes: Vec<Write>) {
        use futures::StreamExt;
        self.planned = 0;
        if !writes.is_empty() && !self.leadership.holds() {
            // Lost the Lease (or froze past its renewal deadline) since deciding: the next
            // leader compares everything when it starts leading.
            tracing::info!(
                writes = writes.len(),
                "not writing: this replica no longer holds the Lease"
            );
            return;
        }
        let this = &*self;
        let results: Vec<(Write, kube::Result<Option<String>>)> = futures::stream::iter(writes)
            .map(|write| async move {
                let span = tracing::info_span!(
                    "rollout.write",
                    kind = write.workload.kind,
                    k8s.namespace.name = %write.workload.namespace,
                    name = %write.workload.name,
                );
                let result = tracing::Instrument::instrument(
                    this.writer.patch(&write.workload, &write.stamps),
                    span,
                )
                .await;
                let w = &write.workload;
                if result.is_ok() {
                    this.judging.metrics.rollout("triggered");
                    tracing::info!(
                        kind = w.kind,
                        namespace = %w.namespace,
                        name = %w.name,
                        changed = write.changed(),
                        stamps = ?write.stamps.iter().map(Stamp::to_string).collect::<Vec<_>>(),
                        "configuration changed: rolling"
                    );
                    this.notifier.send(
                        crate::notify::Kind::Rolled,
                        format!(
                            "{} rolled: {}",
                            waves::workload_label(&key(w)),
                            write.changed()
                        ),
                    );
                    this.event(w, &write.stamps, &write.changed()).await;
                }
                (write, result)
            })
            .buffer_unordered(PARALLEL_WRITES)
            .collect()
            .await;
        let metrics = self.judging.metrics.clone();
        for (write, result) in results {
            let w = &write.workload;
            let k = key(w);
            match result {
                Ok(server_time) => {
                    self.waves.written(&k, Instant::now(), server_time);
                    self.last.insert(k.clone(), Instant::now());
                    self.held.remove(&k);
                    self.failing.remove(&k);
                    if let Some(since) = self.since {
                        metrics.observe_change_to_write(since.elapsed());
                    }
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    // Written since the index saw it (its own apply, usually carrying the new
                    // checksum): compared again from the fresh copy.
                    tracing::debug!(kind = w.kind, namespace = %w.namespace, name = %w.name, "changed since seen; comparing again");
                    self.held.insert(k, (write.what, "throttled"));
                }
                Err(error) => {
                    metrics.rollout("failed");
                    let failures = self.failing.get(&k).map_or(0, |(n, _)| *n) + 1;
                    let wait = super::failed_write_backoff(failures);
                    tracing::warn!(kind = w.kind, namespace = %w.namespace, name = %w.name, %error, failures, retry_in_s = wait.as_secs(), "rollout failed; retrying later");
                    if failures == 1 {
                        self.notifier.send(
                            crate::notify::Kind::WriteFailed,
                            format!(
                                "{} not rolled: the write failed: {error}",
                                waves::workload_label(&k)
                            ),
                        );
                    }
                    self.failing
                        .insert(k.clone(), (failures, Instant::now() + wait));
                    self.held.insert(k, (write.what, "throttled"));
                }
            }
        }
    }

    /// A Warning `RolloutHeld` Event on the workload naming what its new Pods would miss.
    async fn held_event(&self, w: &Workload, missing: &str) {
        let note = format!(
            "not rolled: its new Pods could not start: {missing}; it rolls once the configuration is whole again"
        );
        self.publish(on(w), EventType::Warning, "RolloutHeld", note)
            .await;
    }

    /// A `ConfigChanged` Event on the workload, so `kubectl describe` says why it rolled.
    async fn event(&self, w: &Workload, stamps: &[Stamp], changed: &str) {
        let stamped = stamps
            .iter()
            .map(Stamp::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let note = format!("the configuration it consumes changed ({changed}); rolling: {stamped}");
        self.publish(on(w), EventType::Normal, "ConfigChanged", note)
            .await;
    }
}

/// The workload an Event is about.
fn on(w: &Workload) -> crate::events::On<'_> {
    crate::events::On {
        kind: w.kind,
        namespace: &w.namespace,
        name: &w.name,
        uid: &w.uid,
    }
}

fn key(w: &Workload) -> WorkloadKey {
    (w.kind, w.namespace.clone(), w.name.clone())
}

/// What `w` consumes of `source` `name` that differs between `before` and `after`, as
/// `configmap app-config: LOG_LEVEL, PORT` (`created`, `deleted`). Key names only.
fn changed_keys(
    w: &Workload,
    source: Source,
    name: &str,
    before: Option<&ConfigData>,
    after: Option<&ConfigData>,
) -> Option<String> {
    let label = format!("{} {name}", source.as_str());
    let (before, after) = match (before, after) {
        (None, None) => return None,
        (None, Some(_)) => return Some(format!("{label}: created")),
        (Some(_), None) => return Some(format!("{label}: deleted")),
        (Some(b), Some(a)) => (b, a),
    };
    let reduced = w.reduced();
    let mut all = false;
    let mut matched = false;
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for r in &reduced.references {
        let r = r.borrow();
        if r.source != source || r.name != name {
            continue;
        }
        matched = true;
        match r.keys {
            Keys::All => all = true,
            Keys::Named(k) => keys.extend(k),
        }
    }
    // Named only as an extra dependency (no pod-spec reference): every key counts.
    if all || (!matched && w.references(source, name)) {
        keys.extend(before.key_names());
        keys.extend(after.key_names());
    }
    let differing: Vec<&str> = keys
        .into_iter()
        .filter(|k| before.get(k) != after.get(k))
        .collect();
    (!differing.is_empty()).then(|| format!("{label}: {}", differing.join(", ")))
}

/// The annotations the workload's rolling policies give it now and that differ from what it
/// has, when the policy applies to it and it carries the annotation already (a workload never
/// stamped is left for its next write: stamping it now would roll it for no change). `Err`
/// names what is missing when there is something to roll but the new Pods could not start
/// ([`missing`]). Secrets read on demand are read first, as the webhook reads them.
async fn desired(
    engine: &Engine,
    set: &PolicySet,
    w: &Workload,
    fresh: &mut Fresh,
) -> Result<Vec<Stamp>, String> {
    let rolling: Vec<(&str, Vec<&str>, Option<WaveSettings>)> = set
        .policies
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.policy.rollout_annotations(),
                p.policy.rollout_waves(),
            )
        })
        .filter(|(_, a, _)| !a.is_empty())
        .collect();
    let object = w.object();
    let Ok(review) = manifest_review(object.clone(), 1) else {
        return Ok(Vec::new());
    };
    *fresh = engine.read_ahead(&review, &Fresh::default()).await;
    let fresh = &*fresh;
    let cluster = View::new(engine.cluster().as_ref(), fresh);
    let mut stamps = Vec::new();
    for (policy, annotations, waves) in rolling {
        let Ok(decision) = engine.evaluate_with(set, &review, Phase::Mutate, Some(policy), fresh)
        else {
            continue;
        };
        if decision.patch.0.is_empty() {
            continue;
        }
        let mut patched = object.clone();
        if json_patch::patch(&mut patched, &decision.patch).is_err() {
            continue;
        }
        for annotation in annotations {
            let (Some(current), Some(desired)) = (
                template_annotation(w.kind, &object, annotation),
                template_annotation(w.kind, &patched, annotation),
            ) else {
                continue;
            };
            if current != desired && !stamps.iter().any(|s: &Stamp| s.annotation == annotation) {
                stamps.push(Stamp {
                    annotation: annotation.to_owned(),
                    current: current.to_owned(),
                    desired: desired.to_owned(),
                    waves,
                });
            }
        }
    }
    // Held only when there is something to roll: a workload no rolling policy of this
    // installation stamps is none of its business, however broken.
    if !stamps.is_empty()
        && let Some(missing) = missing(&cluster, w, &w.reduced())
    {
        return Err(missing);
    }
    Ok(stamps)
}

/// What keeps the workload's new Pods from starting, if anything: a referenced object without
/// `optional: true` that is missing, or a key it reads by name (`configMapKeyRef`,
/// `secretKeyRef`, volume `items`) that the object lacks; or an object that cannot be read.
/// Rolling into it only makes Pods that cannot start while the old ones keep running, so the
/// rollout is held until the configuration is whole again (its next change rolls it).
fn missing(cluster: &dyn ClusterState, w: &Workload, reduced: &index::Reduced) -> Option<String> {
    let mut problems: Vec<String> = Vec::new();
    for r in reduced.references.iter().filter(|r| !r.3) {
        let object = format!("{} \"{}/{}\"", r.0, w.namespace, r.1);
        let found = match cluster.lookup(r.source(), &w.namespace, &r.1) {
            Lookup::Found(data) => {
                r.2.iter()
                    .flatten()
                    .filter(|k| !data.has(k))
                    .map(|key| format!("{object} has no key \"{key}\""))
                    .collect()
            }
            Lookup::Missing => vec![format!("{object} does not exist")],
            Lookup::Unknown(why) => vec![format!("{object} cannot be read ({why})")],
        };
        for problem in found {
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Whether an object `w` reads has a change recorded and not yet acted on.
fn changed_meanwhile(w: &Workload, changes: &ConfigChanges) -> bool {
    w.objects
        .iter()
        .any(|(source, name)| changes.pending(*source, &w.namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(env: Value, volumes: Value) -> Workload {
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u", "resourceVersion": "1"},
            "spec": {"template": {"metadata": {"annotations": {"checksum/config": "x"}},
                "spec": {"containers": [{"name": "web", "env": env}], "volumes": volumes}}}});
        index::reduce("Deployment", &object).expect("a workload")
    }

    /// A [`Writer`] that answers each workload's write as told and keeps what it was asked.
    #[derive(Default)]
    struct FakeWriter {
        answers: HashMap<String, u16>,
        patched: std::sync::Mutex<Vec<String>>,
        events: std::sync::Mutex<Vec<(String, String)>>,
    }

    impl Writer for FakeWriter {
        fn patch<'a>(
            &'a self,
            w: &'a Workload,
            _stamps: &'a [Stamp],
        ) -> futures::future::BoxFuture<'a, kube::Result<Option<String>>> {
            self.patched.lock().unwrap().push(w.name.clone());
            let code = self.answers.get(&w.name).copied().unwrap_or(200);
            Box::pin(async move {
                if code == 200 {
                    return Ok(Some("2026-12-07T00:00:00Z".into()));
                }
                Err(kube::Error::Api(
                    kube::core::Status::failure("refused", "Refused")
                        .with_code(code)
                        .boxed(),
                ))
            })
        }

        fn publish<'a>(
            &'a self,
            on: crate::events::On<'a>,
            _type: EventType,
            reason: &'a str,
            _note: String,
        ) -> futures::future::BoxFuture<'a, kube::Result<()>> {
            self.events
                .lock()
                .unwrap()
                .push((on.name.to_owned(), reason.to_owned()));
            Box::pin(async { Ok(()) })
        }
    }

    /// A client whose every request fails: the writes under test never reach it.
    fn offline_client() -> Client {
        let service = tower::service_fn(|_: axum::http::Request<kube::client::Body>| async {
            Err::<axum::http::Response<kube::client::Body>, _>(std::io::Error::other("offline"))
        });
        Client::new(service, "default")
    }

    fn named(name: &str) -> Arc<Workload> {
        let mut w = web(json!([]), json!([]));
        w.name = name.to_owned();
        Arc::new(w)
    }

    #[tokio::test]
    async fn written_conflicting_and_failing_writes_are_each_remembered_as_such() {
        let judging = Judging {
            cluster: Arc::new(crate::cluster::Standalone),
            policies: Arc::new(crate::policy::PolicyStore::new(PolicySet::default())),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        };
        let mut controller = Controller::new(
            offline_client(),
            judging,
            Settings::default(),
            crate::controllers::lease::Leader::always(),
            Arc::new(ConfigChanges::default()),
        );
        let fake = Arc::new(FakeWriter {
            answers: HashMap::from([("web".to_owned(), 409), ("api".to_owned(), 500)]),
            ..FakeWriter::default()
        });
        controller.writer = fake.clone();
        let stamp = Stamp {
            annotation: "checksum/config".into(),
            current: "a".into(),
            desired: "b".into(),
            waves: None,
        };
        let write = |name: &str| Write {
            workload: named(name),
            stamps: vec![stamp.clone()],
            what: vec!["configmap app-config: LOG_LEVEL".into()],
        };
        controller
            .write_all(vec![write("db"), write("web"), write("api")])
            .await;
        let k = |name: &str| ("Deployment", "shop".to_owned(), name.to_owned());
        // Written: remembered for the minimum interval, and said in an Event.
        assert!(controller.last.contains_key(&k("db")));
        assert_eq!(
            *fake.events.lock().unwrap(),
            vec![("db".to_owned(), "ConfigChanged".to_owned())]
        );
        // Changed since seen (409): compared again next round, what changed kept; no backoff.
        assert_eq!(
            controller.held.get(&k("web")),
            Some(&(
                vec!["configmap app-config: LOG_LEVEL".to_owned()],
                "throttled"
            ))
        );
        assert!(!controller.failing.contains_key(&k("web")));
        // Refused (500): backing off, the failures counted.
        assert_eq!(controller.failing.get(&k("api")).map(|(n, _)| *n), Some(1));
        assert!(controller.held.contains_key(&k("api")));
        assert!(!controller.last.contains_key(&k("api")));
        // Once more: the count grows (and with it the wait).
        controller.write_all(vec![write("api")]).await;
        assert_eq!(controller.failing.get(&k("api")).map(|(n, _)| *n), Some(2));
        // A replica that lost the Lease writes nothing.
        controller.leadership = crate::controllers::lease::Leader::never();
        controller.write_all(vec![write("db")]).await;
        assert_eq!(fake.patched.lock().unwrap().len(), 4);
    }

    #[test]
    fn the_gate_holds_skips_and_throttles_in_order() {
        let min = Duration::from_secs(60);
        let ready = WriteState {
            settled: true,
            ..WriteState::default()
        };
        let secs = |s| Some(Duration::from_secs(s));
        let unfinished = "its last rollout has not finished";
        let recent = "rolled less than --rollout-min-interval-seconds ago";
        let failing = "backing off after failed writes";
        // (state, decision)
        let table = [
            (ready, Gate::Open),
            (
                WriteState {
                    opted_out: true,
                    ..ready
                },
                Gate::Hold("skipped", "opted out (confgate.dev/rollout: \"false\")"),
            ),
            (
                WriteState {
                    paused: true,
                    ..ready
                },
                Gate::Hold("skipped", "paused"),
            ),
            (
                WriteState {
                    deleting: true,
                    ..ready
                },
                Gate::Hold("skipped", "being deleted"),
            ),
            // Skipped before anything else: an opted-out workload is never throttled.
            (
                WriteState {
                    opted_out: true,
                    settled: false,
                    backing_off: Some(3),
                    ..ready
                },
                Gate::Hold("skipped", "opted out (confgate.dev/rollout: \"false\")"),
            ),
            // An unfinished rollout holds, unless it is stuck or a change broke it.
            (
                WriteState {
                    settled: false,
                    ..ready
                },
                Gate::Hold("throttled", unfinished),
            ),
            (
                WriteState {
                    settled: false,
                    stuck: true,
                    ..ready
                },
                Gate::Open,
            ),
            (
                WriteState {
                    settled: false,
                    broken: true,
                    ..ready
                },
                Gate::Open,
            ),
            // The minimum interval, which a broken workload does not wait for.
            (
                WriteState {
                    since_last: secs(59),
                    ..ready
                },
                Gate::Hold("throttled", recent),
            ),
            (
                WriteState {
                    since_last: secs(60),
                    ..ready
                },
                Gate::Open,
            ),
            (
                WriteState {
                    since_last: secs(1),
                    broken: true,
                    ..ready
                },
                Gate::Open,
            ),
            // Backing off after failed writes, broken or not.
            (
                WriteState {
                    backing_off: Some(1),
                    ..ready
                },
                Gate::Hold("throttled", failing),
            ),
            (
                WriteState {
                    backing_off: Some(2),
                    broken: true,
                    settled: false,
                    ..ready
                },
                Gate::Hold("throttled", failing),
            ),
        ];
        for (state, expected) in table {
            assert_eq!(gate(&state, min), expected, "{state:?}");
        }
    }

    #[test]
    fn an_unfinished_rollout_holds_the_next_change_only_while_it_moves() {
        let after = Duration::from_secs(60);
        // (the controller gave up, stalled for) -> stuck
        let table = [
            (false, 0, false),
            (false, 59, false),
            (false, 60, true),
            (true, 0, true),
        ];
        for (failing, stalled, stuck) in table {
            assert_eq!(
                rollout_stuck(failing, Duration::from_secs(stalled), after),
                stuck,
                "failing {failing}, stalled {stalled}s"
            );
        }
    }

    #[test]
    fn a_change_not_yet_acted_on_is_seen_for_the_workloads_that_read_it() {
        let w = web(
            json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "A"}}}]),
            json!([{"name": "tls", "secret": {"secretName": "web-tls"}}]),
        );
        let changes = ConfigChanges::default();
        assert!(!changed_meanwhile(&w, &changes));
        // Another namespace's `app`, and an object `web` does not read: not its change.
        changes.record(Source::ConfigMap, &("other".into(), "app".into()), None);
        changes.record(Source::ConfigMap, &("shop".into(), "unread".into()), None);
        assert!(!changed_meanwhile(&w, &changes));
        changes.record(Source::Secret, &("shop".into(), "web-tls".into()), None);
        assert!(changed_meanwhile(&w, &changes));
        // Taken (its round began): no longer pending.
        assert_eq!(changes.take().len(), 3);
        assert!(!changed_meanwhile(&w, &changes));
        changes.record(Source::ConfigMap, &("shop".into(), "app".into()), None);
        assert!(changed_meanwhile(&w, &changes));
    }

    #[test]
    fn a_rollout_is_held_while_a_required_object_or_key_is_missing() {
        let state = crate::policy::testing::cluster(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app, namespace: shop}\ndata: {A: '1', f.yaml: x}\n",
        );
        let held = |env: Value, volumes: Value| {
            let w = web(env, volumes);
            missing(&state, &w, &w.reduced())
        };
        let key = |name: &str, key: &str, optional: bool| json!([{"name": "V", "valueFrom": {"configMapKeyRef": {"name": name, "key": key, "optional": optional}}}]);
        assert_eq!(held(key("app", "A", false), json!([])), None);
        assert_eq!(
            held(key("app", "B", false), json!([])),
            Some(r#"configmap "shop/app" has no key "B""#.into())
        );
        assert_eq!(held(key("app", "B", true), json!([])), None);
        assert_eq!(
            held(key("gone", "A", false), json!([])),
            Some(r#"configmap "shop/gone" does not exist"#.into())
        );
        let items = |key: &str| json!([{"name": "files", "configMap": {"name": "app", "items": [{"key": key, "path": "p"}]}}]);
        assert_eq!(held(json!([]), items("f.yaml")), None);
        assert_eq!(
            held(json!([]), items("g.yaml")),
            Some(r#"configmap "shop/app" has no key "g.yaml""#.into())
        );
    }

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
