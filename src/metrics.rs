//! Prometheus metrics (RED per endpoint and per policy, reloads, certificate expiry, cache sizes).

use crate::cluster::ClusterState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Latency buckets in seconds: sub-millisecond resolution where confgate lives, up to the
/// apiserver's maximum webhook timeout (30 s).
const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Kinds counted under their own name; any other kind is `other`.
const KNOWN_KINDS: &[&str] = &["ConfigMap", "Secret", "Namespace", "LimitRange", "Scale"];

/// The `kind` label for `request.kind.kind`: the kind itself when confgate knows it (workload
/// kinds, config kinds, `Scale`), otherwise `other`. The kind comes from the request, so it is
/// never used as a label value as it is: that would let a caller write arbitrary text into
/// `/metrics` and grow the label set, and memory, without bound.
pub fn kind_label(kind: &str) -> &'static str {
    crate::workload::WORKLOAD_KINDS
        .iter()
        .chain(KNOWN_KINDS)
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}

/// Labels of one admission request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `mutate` or `validate`.
    pub endpoint: &'static str,
    /// `request.kind.kind`, one of a fixed set ([`kind_label`]).
    pub kind: &'static str,
    /// `request.operation`.
    pub operation: &'static str,
    /// `allow`, `deny`, or `skip` (not evaluated).
    pub decision: &'static str,
}

/// Labels of one policy's verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The policy name.
    pub policy: String,
    /// `mutate` or `validate`.
    pub endpoint: &'static str,
    /// `request.kind.kind`, one of a fixed set ([`kind_label`]).
    pub kind: &'static str,
    /// `request.operation`.
    pub operation: &'static str,
    /// `pass`, `deny`, `warn`, `audit`, `error` (policies that do not apply are not counted).
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyNameLabels {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    source: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// All of confgate's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    policy_verdicts: Family<PolicyLabels, Counter>,
    policy_duration: Family<PolicyNameLabels, Histogram, fn() -> Histogram>,
    rejected: Family<ReasonLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    cert_expiry: Gauge,
    policies_loaded: Gauge,
    cache_objects: Family<ResourceLabels, Gauge>,
    cache_stale: Family<ResourceLabels, Gauge<f64, AtomicU64>>,
    connections_open: Gauge,
    connections_refused: Counter,
    accept_errors: Family<ReasonLabels, Counter>,
    rollouts: Family<ResultLabels, Counter>,
    audit_violations: Family<AuditLabels, Gauge>,
    cache_forbidden: Family<ResourceLabels, Gauge>,
    deletions_deferred: Gauge,
    change_to_write: Histogram,
    rollouts_held: Family<ReasonLabels, Gauge>,
    rollout_waves: Family<ResultLabels, Counter>,
    confirmations: Family<ResultLabels, Counter>,
    confirmation_duration: Histogram,
    followups: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditLabels {
    policy: String,
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `confgate_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("confgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by endpoint, kind, operation and decision",
            requests.clone(),
        );
        let request_duration =
            Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "admission_request_duration_seconds",
            "Time from request body received to answer encoded",
            request_duration.clone(),
        );
        let policy_verdicts = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "policy_verdicts",
            "Verdicts by policy, endpoint, kind, operation and verdict",
            policy_verdicts.clone(),
        );
        let policy_duration =
            Family::<PolicyNameLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "policy_evaluation_duration_seconds",
            "Time spent in each policy",
            policy_duration.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register("rejected_requests", "HTTP requests refused before evaluation (bad JSON, too large, wrong content type, unknown policy)", rejected.clone());
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Reloads of policies and TLS certificates by result",
            reloads.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate, Unix time",
            cert_expiry.clone(),
        );
        let policies_loaded = Gauge::default();
        registry.register(
            "policies_loaded",
            "Policies in force",
            policies_loaded.clone(),
        );
        let cache_objects = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "cache_objects",
            "Objects in the cluster state caches",
            cache_objects.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections open now",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because --max-connections were open",
            connections_refused.clone(),
        );
        let accept_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "accept_errors",
            "Failures to accept a connection on the listening socket, by reason (too_many_open_files: the process or system file limit; other)",
            accept_errors.clone(),
        );
        // Both series from the start, at 0: a rate() sees the first failure.
        for reason in ["too_many_open_files", "other"] {
            let _ = accept_errors.get_or_create(&ReasonLabels { reason });
        }
        let rollouts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rollouts",
            "Workload rollouts for configuration changes, by result (triggered, coalesced, throttled, skipped, held: the configuration its new Pods read is incomplete, failed)",
            rollouts.clone(),
        );
        let audit_violations = Family::<AuditLabels, Gauge>::default();
        registry.register(
            "audit_violations",
            "Violations the last background audit found in existing workloads, by policy and namespace",
            audit_violations.clone(),
        );
        for result in [
            "triggered",
            "coalesced",
            "throttled",
            "skipped",
            "held",
            "failed",
        ] {
            drop(rollouts.get_or_create(&ResultLabels { result }));
        }
        let cache_forbidden = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "cache_forbidden",
            "1 for each resource the API server refuses to let confgate list (RBAC): what needs it is left out",
            cache_forbidden.clone(),
        );
        let deletions_deferred = Gauge::default();
        registry.register(
            "deletions_deferred",
            "ConfigMaps and Secrets whose deletion waits for the live workloads that read them (the config guard's finalizer)",
            deletions_deferred.clone(),
        );
        let change_to_write = Histogram::new([
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ]);
        registry.register(
            "rollout_change_to_write_seconds",
            "Time from a configuration change being seen to the rollout write of one of its consumers (pacing and holds included)",
            change_to_write.clone(),
        );
        let rollouts_held = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "rollouts_held",
            "Rollouts held now, by reason (throttled: pace, interval or an unfinished rollout; config_missing: the new Pods could not start; failing_writes: backing off; wave_waiting: the first wave of a change it reads is rolling; wave_failed: that first wave failed)",
            rollouts_held.clone(),
        );
        for reason in [
            "throttled",
            "config_missing",
            "failing_writes",
            "wave_waiting",
            "wave_failed",
        ] {
            drop(rollouts_held.get_or_create(&ReasonLabels { reason }));
        }
        let rollout_waves = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rollout_waves",
            "First waves of progressive config rollouts that finished, by result (passed: the other readers roll; failed: the change is held for them until the object is edited again)",
            rollout_waves.clone(),
        );
        for result in ["passed", "failed"] {
            drop(rollout_waves.get_or_create(&ResultLabels { result }));
        }
        let confirmations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "confirmations",
            "Reviews whose violations were read again from the API server before answering, by result (upheld: still denied; overturned: denied on the caches, allowed on the reads; rechecked: violations that did not deny; read_failed: a read failed or timed out, its object counted as not checked)",
            confirmations.clone(),
        );
        for result in ["upheld", "overturned", "rechecked", "read_failed"] {
            drop(confirmations.get_or_create(&ResultLabels { result }));
        }
        let confirmation_duration = latency_histogram();
        registry.register(
            "confirmation_duration_seconds",
            "Time spent reading what a denial rests on from the API server",
            confirmation_duration.clone(),
        );
        let followups = Family::<ResultLabels, Counter>::default();
        registry.register(
            "followups",
            "Workloads admitted while a Secret they read did not exist yet, judged again after the grace, by result (resolved, still_missing, gone, failed)",
            followups.clone(),
        );
        for result in ["resolved", "still_missing", "gone", "failed"] {
            drop(followups.get_or_create(&ResultLabels { result }));
        }
        let cache_stale = Family::<ResourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "cache_stale_seconds",
            "How long a watch cache has been cut off from the API server (0 while its watch is healthy); lookups then answer from the last state seen",
            cache_stale.clone(),
        );
        // Known label sets start at zero, so rate()/increase() see the first event.
        for source in ["policies", "tls"] {
            for result in ["success", "failure"] {
                drop(reloads.get_or_create(&ReloadLabels { source, result }));
            }
        }
        for reason in [
            "invalid_review",
            "unknown_policy",
            "internal",
            "content_type",
            "too_large",
            "body",
            "not_found",
            "over_budget",
            "busy",
            "timeout",
        ] {
            drop(rejected.get_or_create(&ReasonLabels { reason }));
        }
        Self {
            registry,
            requests,
            request_duration,
            policy_verdicts,
            policy_duration,
            rejected,
            reloads,
            cert_expiry,
            policies_loaded,
            cache_objects,
            cache_stale,
            connections_open,
            connections_refused,
            accept_errors,
            rollouts,
            audit_violations,
            cache_forbidden,
            deletions_deferred,
            change_to_write,
            rollouts_held,
            rollout_waves,
            confirmations,
            confirmation_duration,
            followups,
        }
    }

    /// Counts a confirmation: whether the review was denied on the caches and is allowed on the
    /// reads, how many reads failed, how long it took.
    pub fn confirmed(&self, was_denied: bool, allowed: bool, failed_reads: usize, took: Duration) {
        let result = match (was_denied, allowed) {
            (true, true) => "overturned",
            (true, false) => "upheld",
            (false, _) => "rechecked",
        };
        self.confirmations
            .get_or_create(&ResultLabels { result })
            .inc();
        if failed_reads > 0 {
            self.confirmations
                .get_or_create(&ResultLabels {
                    result: "read_failed",
                })
                .inc_by(failed_reads as u64);
        }
        self.confirmation_duration.observe(took.as_secs_f64());
    }

    /// Observes the time from a configuration change to one of its rollout writes.
    pub fn observe_change_to_write(&self, took: Duration) {
        self.change_to_write.observe(took.as_secs_f64());
    }

    /// How many rollouts are held now for `reason`.
    pub fn set_rollouts_held(&self, reason: &'static str, count: usize) {
        self.rollouts_held
            .get_or_create(&ReasonLabels { reason })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// How many deletions wait for their readers now.
    pub fn set_deletions_deferred(&self, count: usize) {
        self.deletions_deferred
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts the result of a follow-up judgement.
    pub fn followup(&self, result: &'static str) {
        self.followups.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts one answered review and its latency.
    pub fn observe_request(&self, labels: RequestLabels, took: Duration) {
        self.request_duration
            .get_or_create(&EndpointLabels {
                endpoint: labels.endpoint,
            })
            .observe(took.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// Counts one policy verdict and its evaluation time.
    pub fn observe_policy(&self, labels: PolicyLabels, took: Duration) {
        self.policy_duration
            .get_or_create(&PolicyNameLabels {
                policy: labels.policy.clone(),
            })
            .observe(took.as_secs_f64());
        self.policy_verdicts.get_or_create(&labels).inc();
    }

    /// Counts a request refused before evaluation.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a reload of `source` (`policies` or `tls`).
    pub fn reload(&self, source: &'static str, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                source,
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// Records the serving certificate's expiry.
    pub fn set_cert_expiry(&self, not_after_unix: i64) {
        self.cert_expiry.set(not_after_unix);
    }

    /// Records how many connections are open.
    pub fn set_connections_open(&self, open: usize) {
        self.connections_open
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Counts a first wave of a progressive config rollout that finished (`passed`, `failed`).
    pub fn rollout_wave(&self, result: &'static str) {
        self.rollout_waves
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a rollout decision of the rollout controller.
    pub fn rollout(&self, result: &'static str) {
        self.rollouts.get_or_create(&ResultLabels { result }).inc();
    }

    /// Replaces the audit figures with those of the last audit: violations by (policy,
    /// namespace). Pairs no longer found go away.
    pub fn set_audit_violations(
        &self,
        counts: &std::collections::BTreeMap<(String, String), usize>,
    ) {
        self.audit_violations.clear();
        for ((policy, namespace), count) in counts {
            self.audit_violations
                .get_or_create(&AuditLabels {
                    policy: policy.clone(),
                    namespace: namespace.clone(),
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }

    /// Counts a failed `accept` on the listening socket.
    pub fn accept_error(&self, reason: &'static str) {
        self.accept_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a connection closed at the connection limit.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Records how many policies are in force.
    pub fn set_policies_loaded(&self, count: usize) {
        self.policies_loaded
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Encodes everything in the Prometheus text format, refreshing the cache sizes first.
    pub fn encode(&self, cluster: &dyn ClusterState) -> String {
        for (resource, count) in cluster.counts() {
            self.cache_objects
                .get_or_create(&ResourceLabels {
                    resource: resource.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for (resource, stale) in cluster.staleness() {
            self.cache_stale
                .get_or_create(&ResourceLabels {
                    resource: resource.as_str(),
                })
                .set(stale.map_or(0.0, |d| d.as_secs_f64()));
        }
        self.cache_forbidden.clear();
        for resource in cluster.forbidden() {
            self.cache_forbidden
                .get_or_create(&ResourceLabels { resource })
                .set(1);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
