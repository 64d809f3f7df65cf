//! The policy engine: for one review and one endpoint, runs every matching policy, judges what
//! each found by its `action`/`onError`, and turns all mutations into one JSON Patch.
//!
//! Knows nothing of HTTP: the server, the CLI and the tests call it the same way.

mod decision;
pub mod diff;

pub use decision::{Decision, Outcome, PolicyVerdict};

use crate::admission::Review;
use crate::cluster::ClusterState;
use crate::cluster::fresh::{Fresh, View};
use crate::policy::MatchInput;
use crate::policy::{
    Action, Context, Findings, LoadedPolicy, OnError, Phase, PolicyError, PolicySet,
};
use crate::workload::Source;
use kube::core::admission::Operation;
use serde_json::Value;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Why a review could not be evaluated at all (the request names something that is not there).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// `/mutate/{policy}` or `/validate/{policy}` names no loaded policy.
    #[error("no policy named {0:?} is loaded")]
    UnknownPolicy(String),
    /// The named policy does not take part in this endpoint.
    #[error("policy {policy:?} does not {endpoint}")]
    NotServed {
        policy: String,
        /// `mutate` or `validate`.
        endpoint: &'static str,
    },
}

/// What the background controllers (rollout, audit) judge with: the cluster state, the policies
/// in force, and the metrics they report to. Cheap to clone; the server hands out the same ones
/// it judges reviews with.
#[derive(Clone)]
pub struct Judging {
    /// The cluster state policies read.
    pub cluster: Arc<dyn ClusterState>,
    /// The policies in force.
    pub policies: Arc<crate::policy::PolicyStore>,
    /// Where results are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Which webhook(s) a judgement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// One phase, with every policy serving it or only the named one.
    Phase(Phase, Option<String>),
    /// Mutate, apply the patch, validate the result (as the apiserver does with both webhooks).
    Both,
}

/// Evaluates reviews against a policy set with one cluster state.
#[derive(Clone)]
pub struct Engine {
    cluster: Arc<dyn ClusterState>,
    /// The time policies judge at; `None`: the system clock.
    clock: Option<SystemTime>,
    /// Judge as if every reader had waited out its grace for a Secret (offline).
    settled: bool,
}

impl Engine {
    /// An engine reading `cluster`, judging at the system clock's time.
    pub fn new(cluster: Arc<dyn ClusterState>) -> Self {
        Self {
            cluster,
            clock: None,
            settled: false,
        }
    }

    /// The same engine judging as if every new reader had already waited out its grace for a
    /// Secret: offline, where the reviewed input (with its cluster state) is the whole story
    /// and nothing will be judged again later.
    pub fn settled(mut self) -> Self {
        self.settled = true;
        self
    }

    /// The same engine judging as if it were `now` (for tests).
    pub fn at(mut self, now: SystemTime) -> Self {
        self.clock = Some(now);
        self
    }

    fn now(&self) -> SystemTime {
        self.clock.unwrap_or_else(SystemTime::now)
    }

    /// The cluster state policies read.
    pub fn cluster(&self) -> &Arc<dyn ClusterState> {
        &self.cluster
    }

    /// Reads from the API server what judging `review` needs and no cache holds: the Secrets
    /// its object references when Secrets are read on demand (`--secrets get`). Call it before
    /// [`Engine::evaluate_with`], which never waits on the API server.
    /// Reads already in `known` are not made again.
    pub async fn read_ahead(&self, review: &Review, known: &Fresh) -> Fresh {
        self.read_ahead_as(review, known, false).await
    }

    /// [`Engine::read_ahead`], and with `stamping` (the mutating webhook, whose checksum of a
    /// workload's configuration is written into the object) the ConfigMaps too when the caches
    /// may lag: `kubectl apply -f dir/` writes a ConfigMap and its reader milliseconds apart,
    /// and a checksum from a cache that has not seen the first write yet would roll the
    /// workload a second time once the cache catches up.
    pub async fn read_ahead_as(&self, review: &Review, known: &Fresh, stamping: bool) -> Fresh {
        let secrets = self.cluster.reads_secrets_on_demand();
        let config_maps = stamping && self.cluster.lags();
        if !secrets && !config_maps {
            return Fresh::default();
        }
        let namespace = review.request.namespace.as_deref().unwrap_or_default();
        let wanted: Vec<(Source, String)> = referenced(review)
            .into_iter()
            .filter(|(source, name)| {
                let wanted = match source {
                    Source::Secret => secrets,
                    Source::ConfigMap => config_maps,
                };
                wanted && known.get(*source, namespace, name).is_none()
            })
            .collect();
        if wanted.is_empty() {
            return Fresh::default();
        }
        let mut fresh = self.cluster.read_now(namespace, wanted, false).await;
        // A ConfigMap read that failed leaves the answer to the cache (a stale stamp is
        // corrected by the rollout controller; no stamp at all would be worse).
        fresh.forget_failed(Source::ConfigMap);
        fresh
    }

    /// True when `decision` found violations that may rest on a cache lagging behind the API
    /// server: then [`Engine::confirm`] reads what they rest on and the review is judged again.
    pub fn needs_confirming(&self, review: &Review, decision: &Decision) -> bool {
        self.cluster.lags()
            && decision.verdicts.iter().any(|v| !v.violations.is_empty())
            && !referenced(review).is_empty()
    }

    /// Reads, now, every ConfigMap and Secret the review's object references and the Secrets
    /// its namespace is promised, over the reads already in `fresh`.
    pub async fn confirm(&self, review: &Review, mut fresh: Fresh) -> Fresh {
        let namespace = review.request.namespace.as_deref().unwrap_or_default();
        let wanted: Vec<(Source, String)> = referenced(review)
            .into_iter()
            .filter(|(source, name)| fresh.get(*source, namespace, name).is_none())
            .collect();
        let read = self.cluster.read_now(namespace, wanted, true).await;
        fresh.merge(read);
        fresh
    }

    /// Judges a review as the webhook does, from start to end: reads ahead, evaluates, and when
    /// violations may rest on a lagging cache, confirms and evaluates again. For the CLI and
    /// the controllers; the server runs the same steps with evaluation on its own threads.
    pub async fn judge(
        &self,
        set: &PolicySet,
        review: &Review,
        endpoint: Judgement,
        fresh: Fresh,
    ) -> Result<(Decision, Fresh), EngineError> {
        let mut fresh = fresh;
        let ahead = self.read_ahead(review, &fresh).await;
        fresh.merge(ahead);
        let decision = self.evaluate_as(set, review, &endpoint, &fresh)?;
        if !self.needs_confirming(review, &decision) {
            return Ok((decision, fresh));
        }
        let fresh = self.confirm(review, fresh).await;
        let decision = self.evaluate_as(set, review, &endpoint, &fresh)?;
        Ok((decision, fresh))
    }

    fn evaluate_as(
        &self,
        set: &PolicySet,
        review: &Review,
        endpoint: &Judgement,
        fresh: &Fresh,
    ) -> Result<Decision, EngineError> {
        match endpoint {
            Judgement::Phase(phase, only) => {
                self.evaluate_with(set, review, *phase, only.as_deref(), fresh)
            }
            Judgement::Both => self.evaluate_both_with(set, review, fresh),
        }
    }

    /// Evaluates `review` at `endpoint` with every policy of `set` serving it, or only `only`.
    pub fn evaluate(
        &self,
        set: &PolicySet,
        review: &Review,
        endpoint: Phase,
        only: Option<&str>,
    ) -> Result<Decision, EngineError> {
        self.evaluate_with(set, review, endpoint, only, &Fresh::default())
    }

    /// [`Engine::evaluate`] with what was read from the API server for this review over the
    /// caches.
    pub fn evaluate_with(
        &self,
        set: &PolicySet,
        review: &Review,
        endpoint: Phase,
        only: Option<&str>,
        fresh: &Fresh,
    ) -> Result<Decision, EngineError> {
        let policies = select(set, endpoint, only)?;
        let mut decision = Decision::default();
        let Some(object) = subject(review) else {
            decision.skipped = Some("request carries no object".into());
            return Ok(decision);
        };
        let view = View::new(self.cluster.as_ref(), fresh);
        let cx = Context {
            request: &review.request,
            old_object: review.old_object.as_ref(),
            managed_fields: object.pointer("/metadata/managedFields"),
            cluster: &view,
            now: self.now(),
            settled: self.settled,
        };
        let mut working: Option<Value> = None;
        let mut succeeded: Vec<&LoadedPolicy> = Vec::new();
        for policy in policies {
            if let Err(reason) = self.applies(policy, review) {
                decision
                    .verdicts
                    .push(PolicyVerdict::skipped(policy, endpoint, reason));
                continue;
            }
            let span = tracing::info_span!(
                crate::telemetry::POLICY_SPAN,
                policy = %policy.name,
                outcome = tracing::field::Empty
            );
            let _in = span.enter();
            let started = Instant::now();
            let mut findings = Findings::default();
            let result = match endpoint {
                Phase::Validate => guarded(|| policy.policy.validate(&cx, object, &mut findings)),
                Phase::Mutate => {
                    let target = working.get_or_insert_with(|| diff::working_copy(object));
                    let result = guarded(|| policy.policy.mutate(&cx, target, &mut findings));
                    match (&result, policy.on_error) {
                        (Ok(()), _) => succeeded.push(policy),
                        // Drop the failed policy's partial edits: rebuild from the original with
                        // the policies that succeeded (policies are pure, so the result is the
                        // same). Errors are rare; the happy path pays for no snapshot.
                        (Err(_), OnError::Allow) => *target = replay(&cx, object, &succeeded),
                        (Err(_), OnError::Deny) => {}
                    }
                    result
                }
            };
            decision.record(policy, endpoint, findings, result, started.elapsed());
            if let Some(verdict) = decision.verdicts.last() {
                span.record("outcome", verdict.outcome.as_str());
            }
        }
        if let (Phase::Mutate, true, Some(mutated)) = (endpoint, decision.allowed(), working) {
            decision.patch = diff::patch(object, &mutated);
        }
        Ok(decision)
    }

    /// What the apiserver does with both webhooks: mutate, apply the patch, then validate the
    /// patched object. The decision carries the mutation's patch and both phases' verdicts.
    pub fn evaluate_both(&self, set: &PolicySet, review: &Review) -> Result<Decision, EngineError> {
        self.evaluate_both_with(set, review, &Fresh::default())
    }

    /// [`Engine::evaluate_both`] with reads made now over the caches.
    pub fn evaluate_both_with(
        &self,
        set: &PolicySet,
        review: &Review,
        fresh: &Fresh,
    ) -> Result<Decision, EngineError> {
        let mutated = self.evaluate_with(set, review, Phase::Mutate, None, fresh)?;
        if !mutated.allowed() {
            return Ok(mutated);
        }
        let mut patched = review.clone();
        if let (Some(object), false) = (patched.object.as_mut(), mutated.patch.0.is_empty()) {
            // Cannot fail: the patch was computed against this very object.
            if let Err(error) = json_patch::patch(object, &mutated.patch) {
                tracing::error!(%error, "applying confgate's own patch failed");
            }
        }
        let validated = self.evaluate_with(set, &patched, Phase::Validate, None, fresh)?;
        Ok(mutated.then(validated))
    }

    fn applies(&self, policy: &LoadedPolicy, review: &Review) -> Result<(), String> {
        let request = &review.request;
        if let Some(sub) = request.sub_resource.as_deref().filter(|s| !s.is_empty())
            && !policy.policy.handles_subresource(sub)
        {
            return Err(format!("subresource {sub} not evaluated"));
        }
        if request.operation == Operation::Update
            && crate::policy::being_deleted(review.old_object.as_ref())
            && !policy.policy.judges_objects_being_deleted()
        {
            return Err("the object is being deleted".into());
        }
        if let Some((kind, name)) = subject(review).and_then(|o| {
            crate::policy::made_by_judged_controller(o, &policy.matcher.judged_controllers())
        }) {
            return Err(format!(
                "made by {kind} {name:?}, whose pod template is judged"
            ));
        }
        let input = MatchInput {
            kind: &request.kind.kind,
            operation: &request.operation,
            namespace: request.namespace.as_deref().unwrap_or_default(),
            objects: [review.object.as_ref(), review.old_object.as_ref()],
        };
        policy
            .matcher
            .check(&input, |ns| self.cluster.namespace_labels(ns))
    }
}

/// The working copy after re-running `policies` on a fresh copy of `object`.
fn replay(cx: &Context, object: &Value, policies: &[&LoadedPolicy]) -> Value {
    let mut rebuilt = diff::working_copy(object);
    for policy in policies {
        let mut ignored = Findings::default();
        let _ = guarded(|| policy.policy.mutate(cx, &mut rebuilt, &mut ignored));
    }
    rebuilt
}

/// The ConfigMaps and Secrets a review's object references (sorted, deduplicated): what its
/// judgement reads.
pub fn referenced(review: &Review) -> Vec<(Source, String)> {
    let Some(object) = review.object.as_ref() else {
        return Vec::new();
    };
    let Some(spec) = crate::workload::pod_spec(&review.request.kind.kind, object) else {
        return Vec::new();
    };
    let mut wanted: Vec<(Source, String)> = crate::workload::references(spec)
        .into_iter()
        .map(|r| (r.source, r.name.to_owned()))
        .collect();
    wanted.sort();
    wanted.dedup();
    wanted
}

/// The object a policy judges: the new object, or on DELETE the old one.
fn subject(review: &Review) -> Option<&Value> {
    match review.request.operation {
        Operation::Delete => review.old_object.as_ref(),
        _ => review.object.as_ref(),
    }
}

fn select<'a>(
    set: &'a PolicySet,
    endpoint: Phase,
    only: Option<&str>,
) -> Result<Vec<&'a LoadedPolicy>, EngineError> {
    match only {
        None => Ok(set
            .policies
            .iter()
            .filter(|p| p.policy.capabilities().serves(endpoint))
            .collect()),
        Some(name) => {
            let policy = set
                .get(name)
                .ok_or_else(|| EngineError::UnknownPolicy(name.to_owned()))?;
            if !policy.policy.capabilities().serves(endpoint) {
                return Err(EngineError::NotServed {
                    policy: name.to_owned(),
                    endpoint: endpoint.as_str(),
                });
            }
            Ok(vec![policy])
        }
    }
}

/// Runs a policy, turning a panic into a [`PolicyError`] so one bad policy cannot take the
/// server (and with `failurePolicy: Fail`, the cluster) down.
fn guarded(run: impl FnOnce() -> Result<(), PolicyError>) -> Result<(), PolicyError> {
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(PolicyError::Panicked(message))
        }
    }
}

impl Decision {
    fn record(
        &mut self,
        policy: &LoadedPolicy,
        endpoint: Phase,
        findings: Findings,
        result: Result<(), PolicyError>,
        took: std::time::Duration,
    ) {
        let name = &policy.name;
        self.warnings
            .extend(findings.warnings.iter().map(|w| format!("{name}: {w}")));
        self.recheck_after = self.recheck_after.max(findings.recheck_after);
        let outcome = match result {
            Err(error) => {
                tracing::warn!(policy = %name, %error, "policy failed");
                match policy.on_error {
                    OnError::Deny => {
                        self.denials
                            .push(format!("{name}: internal error: {error}"));
                        Outcome::Error { denied: true }
                    }
                    OnError::Allow => {
                        self.warnings
                            .push(format!("{name}: not evaluated (internal error: {error})"));
                        Outcome::Error { denied: false }
                    }
                }
            }
            Ok(()) if findings.violations.is_empty() => Outcome::Passed,
            Ok(()) => match policy.action {
                Action::Deny => {
                    self.denials
                        .extend(findings.violations.iter().map(|v| format!("{name}: {v}")));
                    Outcome::Denied
                }
                Action::Warn => {
                    self.warnings
                        .extend(findings.violations.iter().map(|v| format!("{name}: {v}")));
                    Outcome::Warned
                }
                Action::Audit => {
                    self.audit_annotations
                        .insert(format!("{name}/violations"), findings.violations.join("; "));
                    Outcome::Audited
                }
            },
        };
        self.verdicts.push(PolicyVerdict {
            policy: name.clone(),
            endpoint,
            outcome,
            violations: findings.violations,
            warnings: findings.warnings,
            duration: took,
        });
    }
}
