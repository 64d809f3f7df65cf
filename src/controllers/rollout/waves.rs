//! Progressive config rollouts: the readers of one change of a ConfigMap or Secret roll in
//! waves, so that one bad edit of a shared object takes down one workload, not all of them.
//!
//! A change is an (object, [`fingerprint`](crate::cluster::ConfigData::fingerprint)) pair. Its
//! first `firstWave` readers roll (the canaries, chosen among workloads that run Pods); the
//! others wait until every canary is healthy: its rollout done as `kubectl rollout status`
//! says, every replica available, staying so for `settleSeconds`, and no container of a Pod
//! created by the rollout restarting or stuck in a failing state. A canary that fails (a crash
//! loop, `CreateContainerConfigError`, the Deployment controller's progress deadline, or not
//! healthy within `timeoutSeconds`) halts the change: every other reader is held until the
//! object is edited again, and that edit starts a new wave with the failed canary first (it is
//! broken anyway, and the fix reaches it first).
//!
//! This file is the decision, pure and table-tested: [`Waves`] is the state of every change in
//! flight, [`judge`] turns what a canary shows ([`Health`], read by the controller) into a
//! [`Verdict`]. The controller does the reads and writes.

use crate::policy::checksum_config::Waves as WaveSettings;
use crate::workload::Source;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// (kind, namespace, name) of a workload.
pub type WorkloadKey = (&'static str, String, String);

/// (kind, namespace, name) of a ConfigMap or Secret.
pub type ObjectKey = (Source, String, String);

/// `configmap shop/app-config`: an object as logs and Events name it.
pub fn label(object: &ObjectKey) -> String {
    format!("{} {}/{}", object.0.as_str(), object.1, object.2)
}

/// `deployment shop/web`.
pub fn workload_label(w: &WorkloadKey) -> String {
    format!("{} {}/{}", w.0.to_lowercase(), w.1, w.2)
}

/// Where one change stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// The canaries are rolling; the other readers wait.
    Canarying,
    /// Every canary was healthy: the rest roll (paced as usual).
    Passed,
    /// A canary failed: the rest are held until the object changes again.
    Failed {
        /// The canary that failed.
        workload: WorkloadKey,
        /// What it showed.
        why: String,
    },
}

/// A workload of the first wave.
#[derive(Debug, Clone)]
pub struct Canary {
    /// Which workload.
    pub workload: WorkloadKey,
    /// When its rollout was written (by this clock) and, when known, the API server's time of
    /// the write (`managedFields`), which tells the Pods of the rollout from older ones.
    pub written: Option<(Instant, Option<String>)>,
    /// Since when it has been healthy without a break.
    pub healthy_since: Option<Instant>,
    /// Judged healthy for the settle time.
    pub passed: bool,
}

/// One change in flight.
#[derive(Debug, Clone)]
struct Wave {
    fingerprint: u64,
    canaries: Vec<Canary>,
    phase: Phase,
    settings: Option<WaveSettings>,
}

/// What a reader of changes in flight may do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Roll (no change in flight holds it, or it is a canary already).
    Go,
    /// Roll as a canary of these changes.
    Canary(Vec<ObjectKey>),
    /// Wait for the canaries of this change.
    Wait(ObjectKey),
    /// Held: this change failed in its first wave (the canary, and what it showed).
    Halted(ObjectKey, WorkloadKey, String),
}

/// What a canary shows, read from the workload and its Pods.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Its rollout is done (every replica updated and ready, no old replica left).
    pub settled: bool,
    /// Every replica is available (ready for `minReadySeconds`).
    pub available: bool,
    /// The Deployment controller gave up on the rollout (`ProgressDeadlineExceeded`).
    pub failing: bool,
    /// It runs Pods at all (a workload scaled to zero shows nothing, and passes when settled).
    pub shows_health: bool,
    /// A Pod of the rollout that cannot run: which, and why.
    pub broken_pod: Option<String>,
    /// A Pod of the rollout whose containers restarted: which, and how often.
    pub restarted_pod: Option<String>,
}

/// What a canary's health means for its change.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not yet healthy for long enough, and not failed.
    Pending,
    /// Healthy for `settleSeconds`.
    Healthy,
    /// Failed, with what it showed.
    Failed(String),
}

/// Judges one canary: `written` is when its rollout was written, `healthy_since` when it was
/// first seen healthy without a break since (updated here), `now` the clock.
pub fn judge(
    health: &Health,
    written: Instant,
    healthy_since: &mut Option<Instant>,
    now: Instant,
    settings: &WaveSettings,
) -> Verdict {
    if let Some(pod) = &health.broken_pod {
        return Verdict::Failed(pod.clone());
    }
    if settings.fail_on_restarts
        && let Some(pod) = &health.restarted_pod
    {
        return Verdict::Failed(pod.clone());
    }
    if health.failing {
        return Verdict::Failed(
            "its progress deadline was exceeded (ProgressDeadlineExceeded)".into(),
        );
    }
    let healthy = health.settled && health.available;
    if !healthy {
        *healthy_since = None;
        let waited = now.saturating_duration_since(written);
        if waited >= Duration::from_secs(settings.timeout_seconds) {
            return Verdict::Failed(format!(
                "not healthy {}s after its rollout began (timeoutSeconds)",
                settings.timeout_seconds
            ));
        }
        return Verdict::Pending;
    }
    if !health.shows_health {
        return Verdict::Healthy;
    }
    let since = *healthy_since.get_or_insert(now);
    if now.saturating_duration_since(since) >= Duration::from_secs(settings.settle_seconds) {
        Verdict::Healthy
    } else {
        Verdict::Pending
    }
}

/// A change's first wave finished.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every canary was healthy: the rest may roll.
    Passed(ObjectKey),
    /// A canary failed: the rest are held.
    Failed {
        /// The changed object.
        object: ObjectKey,
        /// The canary that failed.
        workload: WorkloadKey,
        /// What it showed.
        why: String,
    },
}

/// Every change in flight, and the workloads whose rollout a change broke.
#[derive(Debug, Default)]
pub struct Waves {
    waves: HashMap<ObjectKey, Wave>,
    /// Canaries that failed, until they are rolled again: they are rolled first by the next
    /// change (it may be the fix), and their unfinished rollout holds nothing.
    broken: HashSet<WorkloadKey>,
}

impl Waves {
    /// A change of `object` to `fingerprint` was seen: a new wave begins, unless this very
    /// change is in flight already. True when one began.
    pub fn begin(&mut self, object: ObjectKey, fingerprint: u64) -> bool {
        if self
            .waves
            .get(&object)
            .is_some_and(|w| w.fingerprint == fingerprint)
        {
            return false;
        }
        self.waves.insert(
            object,
            Wave {
                fingerprint,
                canaries: Vec::new(),
                phase: Phase::Canarying,
                settings: None,
            },
        );
        true
    }

    /// The object is gone: its wave with it.
    pub fn end(&mut self, object: &ObjectKey) {
        self.waves.remove(object);
    }

    /// Whether a change of `object` to `fingerprint` is known (in flight, passed or failed).
    pub fn knows(&self, object: &ObjectKey, fingerprint: u64) -> bool {
        self.waves
            .get(object)
            .is_some_and(|w| w.fingerprint == fingerprint)
    }

    /// Whether `w` is a canary whose rollout failed and that has not been rolled since.
    pub fn broken(&self, w: &WorkloadKey) -> bool {
        self.broken.contains(w)
    }

    /// May workload `w`, which reads `objects` (each with its fingerprint now), roll? Changes
    /// that are not in flight (no wave, or a wave of another version) do not hold it. When the
    /// answer is [`Admission::Canary`], `w` has joined those waves.
    pub fn admit(
        &mut self,
        w: &WorkloadKey,
        objects: &[(ObjectKey, u64)],
        settings: &WaveSettings,
    ) -> Admission {
        let mut joins = Vec::new();
        for (object, fingerprint) in objects {
            let Some(wave) = self.waves.get(object) else {
                continue;
            };
            if wave.fingerprint != *fingerprint {
                continue;
            }
            let canary = wave.canaries.iter().any(|c| c.workload == *w);
            match &wave.phase {
                Phase::Passed => {}
                Phase::Failed { .. } if canary => {}
                Phase::Failed { workload, why } => {
                    return Admission::Halted(object.clone(), workload.clone(), why.clone());
                }
                Phase::Canarying if canary => {}
                Phase::Canarying => {
                    let first = wave.settings.map_or(settings.first_wave, |s| s.first_wave);
                    if wave.canaries.len() >= first as usize {
                        return Admission::Wait(object.clone());
                    }
                    joins.push(object.clone());
                }
            }
        }
        if joins.is_empty() {
            return Admission::Go;
        }
        for object in &joins {
            if let Some(wave) = self.waves.get_mut(object) {
                wave.settings.get_or_insert(*settings);
                wave.canaries.push(Canary {
                    workload: w.clone(),
                    written: None,
                    healthy_since: None,
                    passed: false,
                });
            }
        }
        Admission::Canary(joins)
    }

    /// `w`'s rollout was written: its canaries start being judged, and it is no longer broken.
    pub fn written(&mut self, w: &WorkloadKey, at: Instant, server_time: Option<String>) {
        self.broken.remove(w);
        self.start_judging(w, at, server_time);
    }

    /// `w` was to roll as a canary, but its own write carried the change (a workload applied
    /// with its ConfigMap): its rollout is under way, and is judged like a written one.
    pub fn carried(&mut self, w: &WorkloadKey, at: Instant) {
        self.start_judging(w, at, None);
    }

    /// Marks `w`'s canaries, in waves still canarying, as rolling since `at`.
    fn start_judging(&mut self, w: &WorkloadKey, at: Instant, server_time: Option<String>) {
        for wave in self.waves.values_mut() {
            if wave.phase != Phase::Canarying {
                continue;
            }
            for canary in &mut wave.canaries {
                if canary.workload == *w && canary.written.is_none() {
                    canary.written = Some((at, server_time.clone()));
                }
            }
        }
    }

    /// The canaries to judge now: written, in waves still canarying, each once, with the
    /// settings of its wave and the API server's time of its write.
    pub fn watched(&self) -> Vec<(WorkloadKey, WaveSettings, Option<String>)> {
        let mut out: Vec<(WorkloadKey, WaveSettings, Option<String>)> = Vec::new();
        for wave in self.waves.values() {
            if wave.phase != Phase::Canarying {
                continue;
            }
            for canary in &wave.canaries {
                if let (Some((_, server)), Some(settings)) = (&canary.written, wave.settings)
                    && !out.iter().any(|(k, ..)| *k == canary.workload)
                {
                    out.push((canary.workload.clone(), settings, server.clone()));
                }
            }
        }
        out
    }

    /// A canary is gone (deleted, or no longer reads the object): its waves choose another.
    pub fn forget(&mut self, w: &WorkloadKey) {
        for wave in self.waves.values_mut() {
            if wave.phase == Phase::Canarying {
                wave.canaries.retain(|c| c.workload != *w);
            }
        }
    }

    /// Records what canary `w` shows now, and returns the waves that finished because of it.
    pub fn observe(&mut self, w: &WorkloadKey, health: &Health, now: Instant) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for (object, wave) in &mut self.waves {
            if wave.phase != Phase::Canarying {
                continue;
            }
            let Some(settings) = wave.settings else {
                continue;
            };
            let mut failed = None;
            for canary in &mut wave.canaries {
                if canary.workload != *w {
                    continue;
                }
                let Some((written, _)) = canary.written else {
                    continue;
                };
                match judge(health, written, &mut canary.healthy_since, now, &settings) {
                    Verdict::Failed(why) => failed = Some(why),
                    Verdict::Healthy => canary.passed = true,
                    Verdict::Pending => canary.passed = false,
                }
            }
            if let Some(why) = failed {
                self.broken.insert(w.clone());
                wave.phase = Phase::Failed {
                    workload: w.clone(),
                    why: why.clone(),
                };
                outcomes.push(Outcome::Failed {
                    object: object.clone(),
                    workload: w.clone(),
                    why,
                });
                continue;
            }
            let all_healthy = !wave.canaries.is_empty() && wave.canaries.iter().all(|c| c.passed);
            if all_healthy {
                wave.phase = Phase::Passed;
                wave.canaries.clear();
                outcomes.push(Outcome::Passed(object.clone()));
            }
        }
        outcomes
    }
}

/// What a Deployment, StatefulSet or DaemonSet shows (its status), apart from its Pods.
pub fn workload_health(kind: &str, object: &Value) -> Health {
    use crate::cluster::workloads::{failing, settled, shows_health};
    let number = |p: &str| object.pointer(p).and_then(Value::as_i64);
    use crate::workload::WorkloadKind;
    let available = match WorkloadKind::parse(kind) {
        Some(k) if k.has_replicas() => {
            number("/status/availableReplicas").unwrap_or(0)
                >= number("/spec/replicas").unwrap_or(1)
        }
        Some(WorkloadKind::DaemonSet) => {
            number("/status/numberAvailable").unwrap_or(0)
                >= number("/status/desiredNumberScheduled").unwrap_or(0)
        }
        _ => true,
    };
    Health {
        settled: settled(kind, object),
        failing: failing(object),
        shows_health: shows_health(kind, object),
        available,
        broken_pod: None,
        restarted_pod: None,
    }
}

/// Container states that mean a Pod cannot run (the kubelet's waiting reasons).
const FAILING_STATES: [&str; 7] = [
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
];

/// Adds to `health` what the workload's Pods show: only Pods created at or after `since` (the
/// API server's time of the rollout's write, RFC 3339) count, so an old Pod's restarts are not
/// blamed on the change. Without `since`, every Pod counts.
pub fn pods_health(health: &mut Health, pods: &[Value], since: Option<&str>) {
    for pod in pods {
        let created = pod
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // RFC 3339 in UTC with seconds ("2026-12-07T02:33:43Z") compares as text.
        if since.is_some_and(|since| created < since) {
            continue;
        }
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if pod.pointer("/status/phase").and_then(Value::as_str) == Some("Failed") {
            health
                .broken_pod
                .get_or_insert_with(|| format!("pod {name} failed"));
        }
        for statuses in ["/status/initContainerStatuses", "/status/containerStatuses"] {
            for status in pod
                .pointer(statuses)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let container = status
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let waiting = status
                    .pointer("/state/waiting/reason")
                    .and_then(Value::as_str);
                if let Some(reason) = waiting.filter(|r| FAILING_STATES.contains(r)) {
                    health.broken_pod.get_or_insert_with(|| {
                        format!("pod {name} container {container}: {reason}")
                    });
                }
                let restarts = status
                    .get("restartCount")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if restarts > 0 {
                    health.restarted_pod.get_or_insert_with(|| {
                        format!("pod {name} container {container} restarted {restarts} times")
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(first: u32, settle: u64) -> WaveSettings {
        WaveSettings {
            first_wave: first,
            settle_seconds: settle,
            timeout_seconds: 600,
            fail_on_restarts: true,
        }
    }

    fn w(name: &str) -> WorkloadKey {
        ("Deployment", "shop".into(), name.into())
    }

    fn cm(name: &str) -> ObjectKey {
        (Source::ConfigMap, "shop".into(), name.into())
    }

    fn healthy() -> Health {
        Health {
            settled: true,
            available: true,
            shows_health: true,
            ..Health::default()
        }
    }

    #[test]
    fn the_first_reader_is_the_canary_and_the_others_wait() {
        let mut waves = Waves::default();
        let s = settings(1, 30);
        assert!(waves.begin(cm("shared"), 7));
        assert!(!waves.begin(cm("shared"), 7), "the same change is one wave");
        let objects = [(cm("shared"), 7)];
        assert_eq!(
            waves.admit(&w("a"), &objects, &s),
            Admission::Canary(vec![cm("shared")])
        );
        assert_eq!(waves.admit(&w("a"), &objects, &s), Admission::Go);
        assert_eq!(
            waves.admit(&w("b"), &objects, &s),
            Admission::Wait(cm("shared"))
        );
        // Another version of the object (not begun): not held by this wave.
        assert_eq!(
            waves.admit(&w("b"), &[(cm("shared"), 8)], &s),
            Admission::Go
        );
        // An object with no change in flight holds nothing.
        assert_eq!(waves.admit(&w("b"), &[(cm("other"), 1)], &s), Admission::Go);
    }

    #[test]
    fn a_healthy_first_wave_releases_the_rest_after_the_settle_time() {
        let mut waves = Waves::default();
        let s = settings(1, 30);
        waves.begin(cm("shared"), 7);
        let objects = [(cm("shared"), 7)];
        waves.admit(&w("a"), &objects, &s);
        let t0 = Instant::now();
        // Not written yet: nothing to judge.
        assert!(waves.watched().is_empty());
        waves.written(&w("a"), t0, Some("2026-12-07T02:00:00Z".into()));
        assert_eq!(waves.watched().len(), 1);
        let rolling = Health {
            settled: false,
            ..healthy()
        };
        assert!(waves.observe(&w("a"), &rolling, t0).is_empty());
        assert!(
            waves
                .observe(&w("a"), &healthy(), t0 + Duration::from_secs(5))
                .is_empty()
        );
        assert!(
            waves
                .observe(&w("a"), &healthy(), t0 + Duration::from_secs(34))
                .is_empty()
        );
        assert_eq!(
            waves.observe(&w("a"), &healthy(), t0 + Duration::from_secs(35)),
            vec![Outcome::Passed(cm("shared"))]
        );
        assert_eq!(waves.admit(&w("b"), &objects, &s), Admission::Go);
        assert!(waves.watched().is_empty());
    }

    #[test]
    fn a_failed_canary_halts_the_change_until_the_object_changes_again() {
        let mut waves = Waves::default();
        let s = settings(1, 30);
        waves.begin(cm("shared"), 7);
        let objects = [(cm("shared"), 7)];
        waves.admit(&w("a"), &objects, &s);
        let t0 = Instant::now();
        waves.written(&w("a"), t0, None);
        let crashing = Health {
            broken_pod: Some("pod a-1 container app: CrashLoopBackOff".into()),
            ..Health::default()
        };
        let outcomes = waves.observe(&w("a"), &crashing, t0 + Duration::from_secs(3));
        assert_eq!(
            outcomes,
            vec![Outcome::Failed {
                object: cm("shared"),
                workload: w("a"),
                why: "pod a-1 container app: CrashLoopBackOff".into()
            }]
        );
        assert!(waves.broken(&w("a")));
        assert_eq!(
            waves.admit(&w("b"), &objects, &s),
            Admission::Halted(
                cm("shared"),
                w("a"),
                "pod a-1 container app: CrashLoopBackOff".into()
            )
        );
        // The next edit starts again; the broken canary stays broken until it is rolled.
        assert!(waves.begin(cm("shared"), 9));
        let fixed = [(cm("shared"), 9)];
        assert_eq!(
            waves.admit(&w("a"), &fixed, &s),
            Admission::Canary(vec![cm("shared")])
        );
        assert!(waves.broken(&w("a")));
        waves.written(&w("a"), t0, None);
        assert!(!waves.broken(&w("a")));
        assert_eq!(
            waves.admit(&w("b"), &fixed, &s),
            Admission::Wait(cm("shared"))
        );
    }

    #[test]
    fn a_reader_of_two_changes_waits_for_both_and_joins_neither_while_waiting() {
        let mut waves = Waves::default();
        let s = settings(1, 0);
        waves.begin(cm("one"), 1);
        waves.begin(cm("two"), 2);
        assert_eq!(
            waves.admit(&w("a"), &[(cm("one"), 1)], &s),
            Admission::Canary(vec![cm("one")])
        );
        // b reads both: "one" makes it wait, so it does not become the canary of "two".
        assert_eq!(
            waves.admit(&w("b"), &[(cm("one"), 1), (cm("two"), 2)], &s),
            Admission::Wait(cm("one"))
        );
        assert_eq!(
            waves.admit(&w("c"), &[(cm("two"), 2)], &s),
            Admission::Canary(vec![cm("two")])
        );
    }

    #[test]
    fn a_canary_that_is_gone_is_replaced() {
        let mut waves = Waves::default();
        let s = settings(1, 0);
        waves.begin(cm("shared"), 7);
        let objects = [(cm("shared"), 7)];
        waves.admit(&w("a"), &objects, &s);
        waves.forget(&w("a"));
        assert_eq!(
            waves.admit(&w("b"), &objects, &s),
            Admission::Canary(vec![cm("shared")])
        );
        waves.end(&cm("shared"));
        assert_eq!(waves.admit(&w("c"), &objects, &s), Admission::Go);
    }

    #[test]
    fn a_canary_is_judged_by_its_pods_its_status_and_the_clock() {
        let t0 = Instant::now();
        let s = WaveSettings {
            first_wave: 1,
            settle_seconds: 10,
            timeout_seconds: 60,
            fail_on_restarts: true,
        };
        let lenient = WaveSettings {
            fail_on_restarts: false,
            ..s
        };
        let restarted = Health {
            restarted_pod: Some("pod a-1 container app restarted 2 times".into()),
            ..healthy()
        };
        let scaled_to_zero = Health {
            shows_health: false,
            ..healthy()
        };
        let deadline = Health {
            failing: true,
            ..Health::default()
        };
        let unready = Health {
            settled: true,
            available: false,
            shows_health: true,
            ..Health::default()
        };
        let ok = healthy();
        // (health, seconds since the write, healthy since (seconds after the write), settings)
        // -> verdict
        let table: Vec<(&Health, u64, Option<u64>, &WaveSettings, Verdict)> = vec![
            (&ok, 5, None, &s, Verdict::Pending),
            (&ok, 20, Some(15), &s, Verdict::Pending),
            (&ok, 20, Some(10), &s, Verdict::Healthy),
            (&scaled_to_zero, 1, None, &s, Verdict::Healthy),
            (
                &restarted,
                20,
                Some(0),
                &s,
                Verdict::Failed("pod a-1 container app restarted 2 times".into()),
            ),
            (&restarted, 20, Some(10), &lenient, Verdict::Healthy),
            (
                &deadline,
                5,
                None,
                &s,
                Verdict::Failed(
                    "its progress deadline was exceeded (ProgressDeadlineExceeded)".into(),
                ),
            ),
            (&unready, 59, Some(0), &s, Verdict::Pending),
            (
                &unready,
                60,
                None,
                &s,
                Verdict::Failed("not healthy 60s after its rollout began (timeoutSeconds)".into()),
            ),
        ];
        for (i, (health, after, since, settings, verdict)) in table.into_iter().enumerate() {
            let mut healthy_since = since.map(|s| t0 + Duration::from_secs(s));
            let got = judge(
                health,
                t0,
                &mut healthy_since,
                t0 + Duration::from_secs(after),
                settings,
            );
            assert_eq!(got, verdict, "row {i}");
        }
    }

    #[test]
    fn only_pods_of_the_rollout_count_and_failing_states_name_the_container() {
        let pod = |name: &str, created: &str, status: Value| json!({"metadata": {"name": name, "creationTimestamp": created}, "status": status});
        let pods = vec![
            pod(
                "old",
                "2026-12-07T01:00:00Z",
                json!({"containerStatuses": [{"name": "app", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
            ),
            pod(
                "new",
                "2026-12-07T02:00:01Z",
                json!({"containerStatuses": [{"name": "app", "restartCount": 1, "state": {"waiting": {"reason": "CreateContainerConfigError"}}}]}),
            ),
        ];
        let mut health = Health::default();
        pods_health(&mut health, &pods, Some("2026-12-07T02:00:00Z"));
        assert_eq!(
            health.broken_pod.as_deref(),
            Some("pod new container app: CreateContainerConfigError")
        );
        assert_eq!(
            health.restarted_pod.as_deref(),
            Some("pod new container app restarted 1 times")
        );
        let mut health = Health::default();
        pods_health(&mut health, &pods[..1], Some("2026-12-07T02:00:00Z"));
        assert_eq!(
            health,
            Health::default(),
            "an old Pod is not the change's fault"
        );
    }

    #[test]
    fn a_deployment_is_healthy_when_every_replica_is_available() {
        let d = |available: i64| {
            json!({"metadata": {"generation": 2}, "spec": {"replicas": 2, "template": {"spec": {"containers": []}}},
                "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": available}})
        };
        let h = workload_health("Deployment", &d(2));
        assert!(h.settled && h.available && h.shows_health && !h.failing);
        assert!(!workload_health("Deployment", &d(1)).available);
        // An Argo Rollout counts its available replicas too.
        assert!(workload_health("Rollout", &d(2)).available);
        assert!(!workload_health("Rollout", &d(1)).available);
    }
}
